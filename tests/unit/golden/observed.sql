-- pgne 0.1.0: host "localhost", port 5432, database "shop", tag "production"
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
      PERFORM pg_catalog.pg_notify('pg_notify_exporter', "pgne-p"."pgne-head"
        || CASE WHEN pg_catalog.octet_length("pgne-p"."pgne-head") + pg_catalog.octet_length("pgne-p"."pgne-values")
                    + pg_catalog.octet_length("pgne-trigger".seq) + 11 < 8000 THEN "pgne-p"."pgne-values"
                ELSE ', "values" : null' END  -- too long for NOTIFY (a sum of thousands of digits)
        || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (
        SELECT '{"table" : "sales.orders", "action" : "' || TG_OP
          || '", "data" : {"supplier" : ' || pg_catalog.to_json("pgne-g"."pgne-1")::pg_catalog.text
          || '}, "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text AS "pgne-head",
          ''
          || ', "values" : {"amount" : {"count" : ' || "pgne-g"."pgne-c1"::pg_catalog.text || ', "sum" : "' || "pgne-g"."pgne-s1"::pg_catalog.text || '"'
          || ', "buckets" : {"-100" : ' || "pgne-g"."pgne-b1-1"::pg_catalog.text
          || ', "0" : ' || "pgne-g"."pgne-b1-2"::pg_catalog.text
          || ', "10" : ' || "pgne-g"."pgne-b1-3"::pg_catalog.text
          || ', "100" : ' || "pgne-g"."pgne-b1-4"::pg_catalog.text
          || ', "1000.5" : ' || "pgne-g"."pgne-b1-5"::pg_catalog.text
          || ', "1e+20" : ' || "pgne-g"."pgne-b1-6"::pg_catalog.text || '}'
          || ', "null" : ' || "pgne-g"."pgne-z1"::pg_catalog.text || ', "not_finite" : ' || "pgne-g"."pgne-x1"::pg_catalog.text || '}'
          || E', "Qty \\"x\\"" : {"count" : ' || "pgne-g"."pgne-c2"::pg_catalog.text || ', "sum" : "' || "pgne-g"."pgne-s2"::pg_catalog.text || '"'
          || ', "null" : ' || "pgne-g"."pgne-z2"::pg_catalog.text || ', "not_finite" : ' || "pgne-g"."pgne-x2"::pg_catalog.text || '}}'
            AS "pgne-values"
        FROM (
          SELECT
            "pgne-r"."pgne-1",
            pg_catalog.count("pgne-r"."pgne-v1") AS "pgne-c1",
            COALESCE(pg_catalog.sum("pgne-r"."pgne-v1"), 0) AS "pgne-s1",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= -100) AS "pgne-b1-1",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 0) AS "pgne-b1-2",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 10) AS "pgne-b1-3",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 100) AS "pgne-b1-4",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 1000.5) AS "pgne-b1-5",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 1e+20) AS "pgne-b1-6",
            pg_catalog.count(*) - pg_catalog.count("pgne-r"."pgne-o1") AS "pgne-z1",
            pg_catalog.count("pgne-r"."pgne-o1") - pg_catalog.count("pgne-r"."pgne-v1") AS "pgne-x1",
            pg_catalog.count("pgne-r"."pgne-v2") AS "pgne-c2",
            COALESCE(pg_catalog.sum("pgne-r"."pgne-v2"), 0) AS "pgne-s2",
            pg_catalog.count(*) - pg_catalog.count("pgne-r"."pgne-o2") AS "pgne-z2",
            pg_catalog.count("pgne-r"."pgne-o2") - pg_catalog.count("pgne-r"."pgne-v2") AS "pgne-x2",
            pg_catalog.count(*) AS "pgne-n"
          FROM (
            SELECT
              CASE WHEN pgne_new."supplier"::pg_catalog.text COLLATE pg_catalog."C" IN ('acme', 'globex')
                   THEN pgne_new."supplier"::pg_catalog.text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-1",
              pgne_new."amount" AS "pgne-o1",
              CASE WHEN pgne_new."amount" - pgne_new."amount" = 0 THEN pgne_new."amount" END AS "pgne-v1",
              pgne_new."Qty ""x""" AS "pgne-o2",
              CASE WHEN pgne_new."Qty ""x""" - pgne_new."Qty ""x""" = 0 THEN pgne_new."Qty ""x""" END AS "pgne-v2",
              1 AS "pgne-one"
            FROM pgne_new
            OFFSET 0  -- each row's values once, not once per aggregate
          ) AS "pgne-r"
          GROUP BY 1
        ) AS "pgne-g"
        OFFSET 0  -- each payload built once, not once per reference
      ) AS "pgne-p";
    ELSIF TG_OP = 'DELETE' THEN
      PERFORM pg_catalog.pg_notify('pg_notify_exporter', "pgne-p"."pgne-head"
        || CASE WHEN pg_catalog.octet_length("pgne-p"."pgne-head") + pg_catalog.octet_length("pgne-p"."pgne-values")
                    + pg_catalog.octet_length("pgne-trigger".seq) + 11 < 8000 THEN "pgne-p"."pgne-values"
                ELSE ', "values" : null' END  -- too long for NOTIFY (a sum of thousands of digits)
        || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (
        SELECT '{"table" : "sales.orders", "action" : "' || TG_OP
          || '", "data" : {"supplier" : ' || pg_catalog.to_json("pgne-g"."pgne-1")::pg_catalog.text
          || '}, "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text AS "pgne-head",
          ''
          || ', "values" : {"amount" : {"count" : ' || "pgne-g"."pgne-c1"::pg_catalog.text || ', "sum" : "' || "pgne-g"."pgne-s1"::pg_catalog.text || '"'
          || ', "buckets" : {"-100" : ' || "pgne-g"."pgne-b1-1"::pg_catalog.text
          || ', "0" : ' || "pgne-g"."pgne-b1-2"::pg_catalog.text
          || ', "10" : ' || "pgne-g"."pgne-b1-3"::pg_catalog.text
          || ', "100" : ' || "pgne-g"."pgne-b1-4"::pg_catalog.text
          || ', "1000.5" : ' || "pgne-g"."pgne-b1-5"::pg_catalog.text
          || ', "1e+20" : ' || "pgne-g"."pgne-b1-6"::pg_catalog.text || '}'
          || ', "null" : ' || "pgne-g"."pgne-z1"::pg_catalog.text || ', "not_finite" : ' || "pgne-g"."pgne-x1"::pg_catalog.text || '}'
          || E', "Qty \\"x\\"" : {"count" : ' || "pgne-g"."pgne-c2"::pg_catalog.text || ', "sum" : "' || "pgne-g"."pgne-s2"::pg_catalog.text || '"'
          || ', "null" : ' || "pgne-g"."pgne-z2"::pg_catalog.text || ', "not_finite" : ' || "pgne-g"."pgne-x2"::pg_catalog.text || '}}'
            AS "pgne-values"
        FROM (
          SELECT
            "pgne-r"."pgne-1",
            pg_catalog.count("pgne-r"."pgne-v1") AS "pgne-c1",
            COALESCE(pg_catalog.sum("pgne-r"."pgne-v1"), 0) AS "pgne-s1",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= -100) AS "pgne-b1-1",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 0) AS "pgne-b1-2",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 10) AS "pgne-b1-3",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 100) AS "pgne-b1-4",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 1000.5) AS "pgne-b1-5",
            pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 1e+20) AS "pgne-b1-6",
            pg_catalog.count(*) - pg_catalog.count("pgne-r"."pgne-o1") AS "pgne-z1",
            pg_catalog.count("pgne-r"."pgne-o1") - pg_catalog.count("pgne-r"."pgne-v1") AS "pgne-x1",
            pg_catalog.count("pgne-r"."pgne-v2") AS "pgne-c2",
            COALESCE(pg_catalog.sum("pgne-r"."pgne-v2"), 0) AS "pgne-s2",
            pg_catalog.count(*) - pg_catalog.count("pgne-r"."pgne-o2") AS "pgne-z2",
            pg_catalog.count("pgne-r"."pgne-o2") - pg_catalog.count("pgne-r"."pgne-v2") AS "pgne-x2",
            pg_catalog.count(*) AS "pgne-n"
          FROM (
            SELECT
              CASE WHEN pgne_old."supplier"::pg_catalog.text COLLATE pg_catalog."C" IN ('acme', 'globex')
                   THEN pgne_old."supplier"::pg_catalog.text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-1",
              pgne_old."amount" AS "pgne-o1",
              CASE WHEN pgne_old."amount" - pgne_old."amount" = 0 THEN pgne_old."amount" END AS "pgne-v1",
              pgne_old."Qty ""x""" AS "pgne-o2",
              CASE WHEN pgne_old."Qty ""x""" - pgne_old."Qty ""x""" = 0 THEN pgne_old."Qty ""x""" END AS "pgne-v2",
              1 AS "pgne-one"
            FROM pgne_old
            OFFSET 0  -- each row's values once, not once per aggregate
          ) AS "pgne-r"
          GROUP BY 1
        ) AS "pgne-g"
        OFFSET 0  -- each payload built once, not once per reference
      ) AS "pgne-p";
    ELSE
      PERFORM pg_catalog.pg_notify('pg_notify_exporter',
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

COMMENT ON FUNCTION "pgne"."sales_orders_74609b9789"() IS 'pgne sha256:0d9184e097e2651aab92f54646ad8ec40ffc0d44970eaa9d222d24f63831d217';
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

-- "public.lines": "notification_with_payload" on INSERT
CREATE OR REPLACE FUNCTION "pgne"."public_lines_87680e081c"()
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
    PERFORM pg_catalog.pg_notify('pg_notify_exporter', "pgne-p"."pgne-head"
      || CASE WHEN pg_catalog.octet_length("pgne-p"."pgne-head") + pg_catalog.octet_length("pgne-p"."pgne-values")
                  + pg_catalog.octet_length("pgne-trigger".seq) + 11 < 8000 THEN "pgne-p"."pgne-values"
              ELSE ', "values" : null' END  -- too long for NOTIFY (a sum of thousands of digits)
      || ', "seq" : ' || "pgne-trigger".seq || '}')
    FROM (
      SELECT '{"table" : "public.lines", "action" : "' || TG_OP
        || '", "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text AS "pgne-head",
        ''
        || ', "values" : {"weight" : {"count" : ' || "pgne-g"."pgne-c1"::pg_catalog.text || ', "sum" : "' || "pgne-g"."pgne-s1"::pg_catalog.text || '"'
        || ', "buckets" : {"0.5" : ' || "pgne-g"."pgne-b1-1"::pg_catalog.text || '}'
        || ', "null" : ' || "pgne-g"."pgne-z1"::pg_catalog.text || ', "not_finite" : ' || "pgne-g"."pgne-x1"::pg_catalog.text || '}}'
          AS "pgne-values"
      FROM (
        SELECT
          pg_catalog.count("pgne-r"."pgne-v1") AS "pgne-c1",
          COALESCE(pg_catalog.sum("pgne-r"."pgne-v1"), 0) AS "pgne-s1",
          pg_catalog.count(*) FILTER (WHERE "pgne-r"."pgne-v1" <= 0.5) AS "pgne-b1-1",
          pg_catalog.count(*) - pg_catalog.count("pgne-r"."pgne-o1") AS "pgne-z1",
          pg_catalog.count("pgne-r"."pgne-o1") - pg_catalog.count("pgne-r"."pgne-v1") AS "pgne-x1",
          pg_catalog.count(*) AS "pgne-n"
        FROM (
          SELECT
            pgne_new."weight" AS "pgne-o1",
            CASE WHEN pgne_new."weight" - pgne_new."weight" = 0 THEN pgne_new."weight" END AS "pgne-v1",
            1 AS "pgne-one"
          FROM pgne_new
          OFFSET 0  -- each row's values once, not once per aggregate
        ) AS "pgne-r"
        HAVING pg_catalog.count(*) > 0
      ) AS "pgne-g"
      OFFSET 0  -- each payload built once, not once per reference
    ) AS "pgne-p";
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."public_lines_87680e081c"() IS 'pgne sha256:25410701ef4b91e92c7df71e2aa9f267be9729a8043b381aee2f4391b8733a07';
DO $pgne$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."lines"'::pg_catalog.regclass
                   AND tgname = 'pgne_insert' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_lines_87680e081c"()'::pg_catalog.regprocedure
                   AND tgtype = 4 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable = 'pgne_new'
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_insert
      AFTER INSERT ON "public"."lines"
      REFERENCING NEW TABLE AS pgne_new
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_lines_87680e081c"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."lines"'::pg_catalog.regclass
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."lines";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."lines"'::pg_catalog.regclass
               AND tgname = 'pgne_delete' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_delete ON "public"."lines";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."lines"'::pg_catalog.regclass
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "public"."lines";
  END IF;
END
$pgne$;
COMMIT;
