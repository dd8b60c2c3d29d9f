-- pgne 0.1.0: host "localhost", port 5432, database "test", tag "business_tag"
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_catalog.pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';
CREATE SCHEMA IF NOT EXISTS "pgne";
REVOKE ALL ON SCHEMA "pgne" FROM PUBLIC;

-- "public.one": "notification_with_payload" on INSERT
CREATE OR REPLACE FUNCTION "pgne"."public_one_6415285b3b"()
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
      '{"table" : "public.one", "action" : "' || TG_OP
      || '", "data" : {"code" : ' || pg_catalog.to_json("pgne-g"."pgne-1")::pg_catalog.text
      || '}, "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text || ', "seq" : ' || "pgne-trigger".seq || '}')
    FROM (
      SELECT
        CASE WHEN pgne_new."code"::pg_catalog.text COLLATE pg_catalog."C" IN ('alpha', 'beta', 'gamma')
             THEN pgne_new."code"::pg_catalog.text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-1",
        pg_catalog.count(*) AS "pgne-n"
      FROM pgne_new
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

COMMENT ON FUNCTION "pgne"."public_one_6415285b3b"() IS 'pgne sha256:244c1a22fea2cb5f1699768e1c55952748d14d3e1936fe591f9a6b375eff313e';
DO $pgne$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."one"'::pg_catalog.regclass
                   AND tgname = 'pgne_insert' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_one_6415285b3b"()'::pg_catalog.regprocedure
                   AND tgtype = 4 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable = 'pgne_new'
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_insert
      AFTER INSERT ON "public"."one"
      REFERENCING NEW TABLE AS pgne_new
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_one_6415285b3b"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."one"'::pg_catalog.regclass
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."one";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."one"'::pg_catalog.regclass
               AND tgname = 'pgne_delete' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_delete ON "public"."one";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."one"'::pg_catalog.regclass
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "public"."one";
  END IF;
END
$pgne$;

-- "public.two": "simple_event_notification" on INSERT, DELETE
CREATE OR REPLACE FUNCTION "pgne"."public_two_93be4d32ed"()
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
      PERFORM pg_catalog.pg_notify('pg_notify_exporter',
        '{"table" : "public.two", "action" : "' || TG_OP || '", "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (SELECT pg_catalog.count(*) AS "pgne-n" FROM pgne_new HAVING pg_catalog.count(*) > 0) AS "pgne-g";
    ELSE
      PERFORM pg_catalog.pg_notify('pg_notify_exporter',
        '{"table" : "public.two", "action" : "' || TG_OP || '", "count" : ' || "pgne-g"."pgne-n"::pg_catalog.text || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (SELECT pg_catalog.count(*) AS "pgne-n" FROM pgne_old HAVING pg_catalog.count(*) > 0) AS "pgne-g";
    END IF;
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."public_two_93be4d32ed"() IS 'pgne sha256:d89a75e538c8866def93f8e1b5be9fd2bc941975e64869ca979d7796787eaaec';
DO $pgne$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."two"'::pg_catalog.regclass
                   AND tgname = 'pgne_insert' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_two_93be4d32ed"()'::pg_catalog.regprocedure
                   AND tgtype = 4 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable = 'pgne_new'
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_insert
      AFTER INSERT ON "public"."two"
      REFERENCING NEW TABLE AS pgne_new
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_two_93be4d32ed"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."two"'::pg_catalog.regclass
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."two";
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."two"'::pg_catalog.regclass
                   AND tgname = 'pgne_delete' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_two_93be4d32ed"()'::pg_catalog.regprocedure
                   AND tgtype = 8 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable IS NULL
                   AND tgoldtable = 'pgne_old') THEN
    CREATE OR REPLACE TRIGGER pgne_delete
      AFTER DELETE ON "public"."two"
      REFERENCING OLD TABLE AS pgne_old
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_two_93be4d32ed"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."two"'::pg_catalog.regclass
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "public"."two";
  END IF;
END
$pgne$;
COMMIT;
