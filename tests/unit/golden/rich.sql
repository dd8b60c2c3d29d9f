-- pgne 0.1.0: host "db1.example.com", port 6543, database "shop", tag "production"
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_catalog.pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';
CREATE SCHEMA IF NOT EXISTS "pgne";
REVOKE ALL ON SCHEMA "pgne" FROM PUBLIC;

-- "sales.orders": "notification_with_payload" on INSERT, UPDATE, DELETE, TRUNCATE
CREATE OR REPLACE FUNCTION "pgne"."sales_orders_74609b9789"()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  SET extra_float_digits = 3
  SET DateStyle = 'ISO, MDY'
  SET IntervalStyle = postgres
  SET bytea_output = hex
  SET TimeZone FROM CURRENT
  SET lc_monetary FROM CURRENT
AS $pgne$
<<"pgne-trigger">>
DECLARE
  seq pg_catalog.text;
BEGIN
  BEGIN
    -- The last number + 1, or the clock in microseconds if that is more: the application can
    -- RESET or SET the setting, and the numbers still never repeat within its transaction.
    "pgne-trigger".seq := pg_catalog.set_config('pgne.seq', GREATEST(
      nullif(pg_catalog.current_setting('pgne.seq', true), '')::pg_catalog.int8 + 1,
      (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000000)::pg_catalog.int8)::pg_catalog.text, true);
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
      PERFORM pg_catalog.pg_notify('shop_events',
        '{"table" : "sales.orders", "action" : "' || TG_OP
        || '", "data" : {"status" : ' || pg_catalog.to_json("pgne-g"."pgne-1")::pg_catalog.text
        || ', "priority" : ' || pg_catalog.to_json("pgne-g"."pgne-2")::pg_catalog.text
        || '}, "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (
        SELECT
          CASE WHEN pgne_new."status"::pg_catalog.text COLLATE pg_catalog."C" IN ('new', 'paid', 'shipped')
               THEN pgne_new."status"::pg_catalog.text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-1",
          CASE WHEN pgne_new."priority"::pg_catalog.text COLLATE pg_catalog."C" IN ('1', '2', 'true', '1.5')
               THEN pgne_new."priority"::pg_catalog.text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-2",
          pg_catalog.count(*) AS "pgne-n"
        FROM pgne_new
        GROUP BY 1, 2
      ) AS "pgne-g";
    ELSIF TG_OP = 'DELETE' THEN
      PERFORM pg_catalog.pg_notify('shop_events',
        '{"table" : "sales.orders", "action" : "' || TG_OP
        || '", "data" : {"status" : ' || pg_catalog.to_json("pgne-g"."pgne-1")::pg_catalog.text
        || ', "priority" : ' || pg_catalog.to_json("pgne-g"."pgne-2")::pg_catalog.text
        || '}, "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (
        SELECT
          CASE WHEN pgne_old."status"::pg_catalog.text COLLATE pg_catalog."C" IN ('new', 'paid', 'shipped')
               THEN pgne_old."status"::pg_catalog.text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-1",
          CASE WHEN pgne_old."priority"::pg_catalog.text COLLATE pg_catalog."C" IN ('1', '2', 'true', '1.5')
               THEN pgne_old."priority"::pg_catalog.text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-2",
          pg_catalog.count(*) AS "pgne-n"
        FROM pgne_old
        GROUP BY 1, 2
      ) AS "pgne-g";
    ELSE
      PERFORM pg_catalog.pg_notify('shop_events',
        '{"table" : "sales.orders", "action" : "' || TG_OP || '", "count" : 1, "seq" : ' || "pgne-trigger".seq || '}');
    END IF;
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."sales_orders_74609b9789"() IS 'pgne sha256:6ce3375563af8481c9ded3ce96d2d0b51f270a1fb01ee5c19207408f998f16fc';
DO $pgne$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"sales"."orders"'::pg_catalog.regclass
                   AND tgname = 'pgne_insert' AND tgparentid = 0
                   AND tgfoid = '"pgne"."sales_orders_74609b9789"()'::pg_catalog.regprocedure
                   AND tgtype = 4 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable = 'pgne_new'
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_insert
      AFTER INSERT ON "sales"."orders"
      REFERENCING NEW TABLE AS pgne_new
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."sales_orders_74609b9789"();
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"sales"."orders"'::pg_catalog.regclass
                   AND tgname = 'pgne_update' AND tgparentid = 0
                   AND tgfoid = '"pgne"."sales_orders_74609b9789"()'::pg_catalog.regprocedure
                   AND tgtype = 16 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable = 'pgne_new'
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_update
      AFTER UPDATE ON "sales"."orders"
      REFERENCING NEW TABLE AS pgne_new
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."sales_orders_74609b9789"();
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"sales"."orders"'::pg_catalog.regclass
                   AND tgname = 'pgne_delete' AND tgparentid = 0
                   AND tgfoid = '"pgne"."sales_orders_74609b9789"()'::pg_catalog.regprocedure
                   AND tgtype = 8 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable IS NULL
                   AND tgoldtable = 'pgne_old') THEN
    CREATE OR REPLACE TRIGGER pgne_delete
      AFTER DELETE ON "sales"."orders"
      REFERENCING OLD TABLE AS pgne_old
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."sales_orders_74609b9789"();
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"sales"."orders"'::pg_catalog.regclass
                   AND tgname = 'pgne_truncate' AND tgparentid = 0
                   AND tgfoid = '"pgne"."sales_orders_74609b9789"()'::pg_catalog.regprocedure
                   AND tgtype = 32 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable IS NULL
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_truncate
      AFTER TRUNCATE ON "sales"."orders"
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."sales_orders_74609b9789"();
  END IF;
END
$pgne$;

-- "public.customers": "simple_event_notification" on TRUNCATE
CREATE OR REPLACE FUNCTION "pgne"."public_customers_746dedf2f4"()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  SET extra_float_digits = 3
  SET DateStyle = 'ISO, MDY'
  SET IntervalStyle = postgres
  SET bytea_output = hex
  SET TimeZone FROM CURRENT
  SET lc_monetary FROM CURRENT
AS $pgne$
<<"pgne-trigger">>
DECLARE
  seq pg_catalog.text;
BEGIN
  BEGIN
    -- The last number + 1, or the clock in microseconds if that is more: the application can
    -- RESET or SET the setting, and the numbers still never repeat within its transaction.
    "pgne-trigger".seq := pg_catalog.set_config('pgne.seq', GREATEST(
      nullif(pg_catalog.current_setting('pgne.seq', true), '')::pg_catalog.int8 + 1,
      (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000000)::pg_catalog.int8)::pg_catalog.text, true);
    PERFORM pg_catalog.pg_notify('shop_events',
      '{"table" : "public.customers", "action" : "' || TG_OP || '", "count" : 1, "seq" : ' || "pgne-trigger".seq || '}');
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."public_customers_746dedf2f4"() IS 'pgne sha256:3d6104f94a773f1847be1c5441cbf65750323a1fd342f05a24fa299aa3ad2b44';
DO $pgne$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."customers"'::pg_catalog.regclass
               AND tgname = 'pgne_insert' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_insert ON "public"."customers";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."customers"'::pg_catalog.regclass
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."customers";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."customers"'::pg_catalog.regclass
               AND tgname = 'pgne_delete' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_delete ON "public"."customers";
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."customers"'::pg_catalog.regclass
                   AND tgname = 'pgne_truncate' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_customers_746dedf2f4"()'::pg_catalog.regprocedure
                   AND tgtype = 32 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable IS NULL
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_truncate
      AFTER TRUNCATE ON "public"."customers"
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_customers_746dedf2f4"();
  END IF;
END
$pgne$;

-- "audit.Log": "notification_with_payload" on DELETE, UPDATE
CREATE OR REPLACE FUNCTION "pgne"."audit_log_dd556fb87f"()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  SET extra_float_digits = 3
  SET DateStyle = 'ISO, MDY'
  SET IntervalStyle = postgres
  SET bytea_output = hex
  SET TimeZone FROM CURRENT
  SET lc_monetary FROM CURRENT
AS $pgne$
<<"pgne-trigger">>
DECLARE
  seq pg_catalog.text;
BEGIN
  BEGIN
    -- The last number + 1, or the clock in microseconds if that is more: the application can
    -- RESET or SET the setting, and the numbers still never repeat within its transaction.
    "pgne-trigger".seq := pg_catalog.set_config('pgne.seq', GREATEST(
      nullif(pg_catalog.current_setting('pgne.seq', true), '')::pg_catalog.int8 + 1,
      (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000000)::pg_catalog.int8)::pg_catalog.text, true);
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
      PERFORM pg_catalog.pg_notify('shop_events',
        '{"table" : "audit.Log", "action" : "' || TG_OP
        || '", "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (
        SELECT
          pg_catalog.count(*) AS "pgne-n"
        FROM pgne_new
        HAVING pg_catalog.count(*) > 0
      ) AS "pgne-g";
    ELSE
      PERFORM pg_catalog.pg_notify('shop_events',
        '{"table" : "audit.Log", "action" : "' || TG_OP
        || '", "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (
        SELECT
          pg_catalog.count(*) AS "pgne-n"
        FROM pgne_old
        HAVING pg_catalog.count(*) > 0
      ) AS "pgne-g";
    END IF;
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."audit_log_dd556fb87f"() IS 'pgne sha256:24b621664424f54cca618400058737e3713e311c68ac6c18b8d2f8412c8491c3';
DO $pgne$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"audit"."Log"'::pg_catalog.regclass
               AND tgname = 'pgne_insert' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_insert ON "audit"."Log";
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"audit"."Log"'::pg_catalog.regclass
                   AND tgname = 'pgne_update' AND tgparentid = 0
                   AND tgfoid = '"pgne"."audit_log_dd556fb87f"()'::pg_catalog.regprocedure
                   AND tgtype = 16 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable = 'pgne_new'
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_update
      AFTER UPDATE ON "audit"."Log"
      REFERENCING NEW TABLE AS pgne_new
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."audit_log_dd556fb87f"();
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"audit"."Log"'::pg_catalog.regclass
                   AND tgname = 'pgne_delete' AND tgparentid = 0
                   AND tgfoid = '"pgne"."audit_log_dd556fb87f"()'::pg_catalog.regprocedure
                   AND tgtype = 8 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable IS NULL
                   AND tgoldtable = 'pgne_old') THEN
    CREATE OR REPLACE TRIGGER pgne_delete
      AFTER DELETE ON "audit"."Log"
      REFERENCING OLD TABLE AS pgne_old
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."audit_log_dd556fb87f"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"audit"."Log"'::pg_catalog.regclass
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "audit"."Log";
  END IF;
END
$pgne$;

-- "public.legacy": disabled; its triggers and function are removed
DO $pgne$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."legacy"')
               AND tgname = 'pgne_insert' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_insert ON "public"."legacy";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."legacy"')
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."legacy";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."legacy"')
               AND tgname = 'pgne_delete' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_delete ON "public"."legacy";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."legacy"')
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "public"."legacy";
  END IF;
END
$pgne$;
DROP FUNCTION IF EXISTS "pgne"."public_legacy_3f1e6d0630"();
COMMIT;

-- pgne 0.1.0: host "db1.example.com", port 5432, database "reports", tag ""
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_catalog.pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';
CREATE SCHEMA IF NOT EXISTS "pgne";
REVOKE ALL ON SCHEMA "pgne" FROM PUBLIC;

-- "public.refunds": "notification_with_payload" on DELETE
CREATE OR REPLACE FUNCTION "pgne"."public_refunds_520c957fdd"()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
  SET extra_float_digits = 3
  SET DateStyle = 'ISO, MDY'
  SET IntervalStyle = postgres
  SET bytea_output = hex
  SET TimeZone FROM CURRENT
  SET lc_monetary FROM CURRENT
AS $pgne$
<<"pgne-trigger">>
DECLARE
  seq pg_catalog.text;
BEGIN
  BEGIN
    -- The last number + 1, or the clock in microseconds if that is more: the application can
    -- RESET or SET the setting, and the numbers still never repeat within its transaction.
    "pgne-trigger".seq := pg_catalog.set_config('pgne.seq', GREATEST(
      nullif(pg_catalog.current_setting('pgne.seq', true), '')::pg_catalog.int8 + 1,
      (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000000)::pg_catalog.int8)::pg_catalog.text, true);
    PERFORM pg_catalog.pg_notify('pg_notify_exporter',
      '{"table" : "public.refunds", "action" : "' || TG_OP
      || '", "data" : {"reason" : ' || pg_catalog.to_json("pgne-g"."pgne-1")::pg_catalog.text
      || '}, "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text || ', "seq" : ' || "pgne-trigger".seq || '}')
    FROM (
      SELECT
        CASE WHEN pgne_old."reason"::pg_catalog.text COLLATE pg_catalog."C" IN ('fraud', 'damaged')
             THEN pgne_old."reason"::pg_catalog.text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-1",
        pg_catalog.count(*) AS "pgne-n"
      FROM pgne_old
      GROUP BY 1
    ) AS "pgne-g";
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."public_refunds_520c957fdd"() IS 'pgne sha256:48cfffa33c961c8bb9ac712bbeb69cc220aad26685f90eb07301b0f6acf77985';
DO $pgne$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."refunds"'::pg_catalog.regclass
               AND tgname = 'pgne_insert' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_insert ON "public"."refunds";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."refunds"'::pg_catalog.regclass
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."refunds";
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."refunds"'::pg_catalog.regclass
                   AND tgname = 'pgne_delete' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_refunds_520c957fdd"()'::pg_catalog.regprocedure
                   AND tgtype = 8 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable IS NULL
                   AND tgoldtable = 'pgne_old') THEN
    CREATE OR REPLACE TRIGGER pgne_delete
      AFTER DELETE ON "public"."refunds"
      REFERENCING OLD TABLE AS pgne_old
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_refunds_520c957fdd"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."refunds"'::pg_catalog.regclass
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "public"."refunds";
  END IF;
END
$pgne$;
COMMIT;

-- pgne 0.1.0: host "localhost", port 5432, database "archive", tag "old"
-- This database is disabled in the config: every pgne object is removed from it.
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_catalog.pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';

-- "public.one": disabled; its triggers and function are removed
DO $pgne$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."one"')
               AND tgname = 'pgne_insert' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_insert ON "public"."one";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."one"')
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."one";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."one"')
               AND tgname = 'pgne_delete' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_delete ON "public"."one";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."one"')
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "public"."one";
  END IF;
END
$pgne$;
DROP FUNCTION IF EXISTS "pgne"."public_one_6415285b3b"();

-- "public.two": disabled; its triggers and function are removed
DO $pgne$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."two"')
               AND tgname = 'pgne_insert' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_insert ON "public"."two";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."two"')
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."two";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."two"')
               AND tgname = 'pgne_delete' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_delete ON "public"."two";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = pg_catalog.to_regclass('"public"."two"')
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "public"."two";
  END IF;
END
$pgne$;
DROP FUNCTION IF EXISTS "pgne"."public_two_93be4d32ed"();

-- Schema pgne holds only pgne's objects; CASCADE also removes functions (and their
-- triggers) of monitors that were deleted from the config instead of disabled.
DROP SCHEMA IF EXISTS "pgne" CASCADE;
COMMIT;
