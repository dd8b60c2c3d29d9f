-- pgne 0.1.0: host "localhost", port 5432, database "test", tag "business_tag"
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';
CREATE SCHEMA IF NOT EXISTS "pgne";
REVOKE ALL ON SCHEMA "pgne" FROM PUBLIC;

-- "public.one": "notification_with_payload" on INSERT
CREATE OR REPLACE FUNCTION "pgne"."public_one_6415285b3b"()
  RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp
AS $pgne$
<<"pgne-trigger">>
DECLARE
  seq text;
BEGIN
  BEGIN
    -- The last number + 1, or the clock in microseconds if that is more: the application can
    -- RESET or SET the setting, and the numbers still never repeat within its transaction.
    "pgne-trigger".seq := set_config('pgne.seq', GREATEST(nullif(current_setting('pgne.seq', true), '')::bigint + 1,
      (date_part('epoch', clock_timestamp()) * 1000000)::bigint)::text, true);
    PERFORM pg_notify('pg_notify_exporter',
      '{"table" : "public.one", "action" : "' || TG_OP
      || '", "data" : {"code" : ' || to_json("pgne-g"."pgne-1")::text
      || '}, "count" : ' || "pgne-g"."pgne-n"::text || ', "seq" : ' || "pgne-trigger".seq || '}')
    FROM (
      SELECT
        CASE WHEN pgne_new."code"::text COLLATE pg_catalog."C" IN ('alpha', 'beta', 'gamma')
             THEN pgne_new."code"::text COLLATE pg_catalog."C" ELSE 'other' END AS "pgne-1",
        count(*) AS "pgne-n"
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

COMMENT ON FUNCTION "pgne"."public_one_6415285b3b"() IS 'pgne sha256:d6561932fe422fc110f7257d48887e313aafe2f2636fe97e0df4305a387f19a8';
DO $pgne$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."one"'::regclass
                   AND tgname = 'pgne_insert' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_one_6415285b3b"()'::regprocedure
                   AND tgtype = 4 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable = 'pgne_new'
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_insert
      AFTER INSERT ON "public"."one"
      REFERENCING NEW TABLE AS pgne_new
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_one_6415285b3b"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."one"'::regclass
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."one";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."one"'::regclass
               AND tgname = 'pgne_delete' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_delete ON "public"."one";
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."one"'::regclass
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
AS $pgne$
<<"pgne-trigger">>
DECLARE
  seq text;
BEGIN
  BEGIN
    -- The last number + 1, or the clock in microseconds if that is more: the application can
    -- RESET or SET the setting, and the numbers still never repeat within its transaction.
    "pgne-trigger".seq := set_config('pgne.seq', GREATEST(nullif(current_setting('pgne.seq', true), '')::bigint + 1,
      (date_part('epoch', clock_timestamp()) * 1000000)::bigint)::text, true);
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
      PERFORM pg_notify('pg_notify_exporter',
        '{"table" : "public.two", "action" : "' || TG_OP || '", "count" : ' || "pgne-g"."pgne-n"::text || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (SELECT count(*) AS "pgne-n" FROM pgne_new HAVING count(*) > 0) AS "pgne-g";
    ELSE
      PERFORM pg_notify('pg_notify_exporter',
        '{"table" : "public.two", "action" : "' || TG_OP || '", "count" : ' || "pgne-g"."pgne-n"::text || ', "seq" : ' || "pgne-trigger".seq || '}')
      FROM (SELECT count(*) AS "pgne-n" FROM pgne_old HAVING count(*) > 0) AS "pgne-g";
    END IF;
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."public_two_93be4d32ed"() IS 'pgne sha256:85af418f924fa4d8a169c5c00c0a0c63fa2887af52db9c1b5ab67e067ba32df2';
DO $pgne$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."two"'::regclass
                   AND tgname = 'pgne_insert' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_two_93be4d32ed"()'::regprocedure
                   AND tgtype = 4 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable = 'pgne_new'
                   AND tgoldtable IS NULL) THEN
    CREATE OR REPLACE TRIGGER pgne_insert
      AFTER INSERT ON "public"."two"
      REFERENCING NEW TABLE AS pgne_new
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_two_93be4d32ed"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."two"'::regclass
               AND tgname = 'pgne_update' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_update ON "public"."two";
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = '"public"."two"'::regclass
                   AND tgname = 'pgne_delete' AND tgparentid = 0
                   AND tgfoid = '"pgne"."public_two_93be4d32ed"()'::regprocedure
                   AND tgtype = 8 AND tgenabled = 'O' AND tgqual IS NULL AND tgnargs = 0
                   AND tgnewtable IS NULL
                   AND tgoldtable = 'pgne_old') THEN
    CREATE OR REPLACE TRIGGER pgne_delete
      AFTER DELETE ON "public"."two"
      REFERENCING OLD TABLE AS pgne_old
      FOR EACH STATEMENT EXECUTE FUNCTION "pgne"."public_two_93be4d32ed"();
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_trigger
             WHERE tgrelid = '"public"."two"'::regclass
               AND tgname = 'pgne_truncate' AND tgparentid = 0) THEN
    DROP TRIGGER pgne_truncate ON "public"."two";
  END IF;
END
$pgne$;
COMMIT;
