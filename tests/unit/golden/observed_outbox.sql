-- pgne 0.1.0: host "localhost", port 5432, database "shop", tag "production"
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_catalog.pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';
CREATE SCHEMA IF NOT EXISTS "pgne";
REVOKE ALL ON SCHEMA "pgne" FROM PUBLIC;

-- delivery: outbox. The triggers append one row per statement and label group to
-- pgne.event_log in the application's transaction; pgne moves them into pgne.totals.
-- A queue: no index, and autovacuum that keeps up with constant inserts and deletes.
CREATE TABLE IF NOT EXISTS "pgne".event_log (
  table_name text NOT NULL,
  operation text NOT NULL,
  labels jsonb NOT NULL,
  n bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  observed jsonb  -- columns_to_observe: the group's histograms; '{}' where nothing is observed
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000);
-- The durable counts that pgne exports.
CREATE TABLE IF NOT EXISTS "pgne".totals (
  table_name text NOT NULL,
  operation text NOT NULL,
  labels jsonb NOT NULL,
  total bigint NOT NULL,
  last_event timestamptz NOT NULL,
  PRIMARY KEY (table_name, operation, labels)
);
REVOKE ALL ON "pgne".event_log, "pgne".totals FROM PUBLIC;
-- The column `observed` (columns_to_observe: each group's histograms ({"column": {"count", "sum"
-- (exact, as text), "buckets", "null", "not_finite"}})): always in pgne.event_log, whose layout
-- the triggers check by its number of columns; in pgne.totals where a column is observed.
-- Nullable, no default: adding it rewrites no row of a table that existed before. Only where it
-- is missing: ALTER TABLE locks pgne.event_log, which the application's writes insert into.
DO $pgne$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute
                 WHERE attrelid = '"pgne".event_log'::pg_catalog.regclass
                   AND attname = 'observed' AND NOT attisdropped) THEN
    ALTER TABLE "pgne".event_log ADD COLUMN observed jsonb;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute
                 WHERE attrelid = '"pgne".totals'::pg_catalog.regclass
                   AND attname = 'observed' AND NOT attisdropped) THEN
    ALTER TABLE "pgne".totals ADD COLUMN observed jsonb;
  END IF;
END
$pgne$;

-- pgne.event_log as pgne made it, or rebuilt (its rows and grants kept): the triggers'
-- INSERT into it must never fail (a DBA's constraint, trigger, rule, row-level security,
-- an older layout...). Nothing is done to one that is intact.
DO $pgne$
DECLARE
  damage pg_catalog.text := (SELECT CASE
      WHEN "pgne-c".oid IS NULL THEN 'is missing'
      WHEN "pgne-c".relkind <> 'r' OR "pgne-c".relispartition THEN 'is not a plain table'
      WHEN "pgne-c".relrowsecurity OR "pgne-c".relforcerowsecurity THEN 'has row-level security'
      WHEN "pgne-c".relhasrules THEN 'has (or had) a rule'
      WHEN "pgne-c".relhastriggers THEN 'has (or had) a trigger'
      WHEN "pgne-c".relhasindex THEN 'has (or had) an index'
      WHEN "pgne-c".relchecks <> 0 OR EXISTS (SELECT FROM pg_catalog.pg_constraint AS "pgne-k"
                   WHERE "pgne-k".conrelid = "pgne-c".oid AND "pgne-k".contype <> 'n') THEN 'has a constraint'
      WHEN NOT (pg_catalog.has_table_privilege("pgne-c".relowner, "pgne-c".oid, 'INSERT')
                AND pg_catalog.has_table_privilege("pgne-c".relowner, "pgne-c".oid, 'SELECT'))
        THEN 'has an owner without the INSERT or SELECT privilege'
      WHEN EXISTS (SELECT FROM pg_catalog.pg_attribute AS "pgne-a"
                   WHERE "pgne-a".attrelid = "pgne-c".oid AND "pgne-a".attnum > 0 AND NOT "pgne-a".attisdropped
                     AND ("pgne-a".attname, "pgne-a".atttypid, "pgne-a".attnotnull, "pgne-a".atthasdef,
                          "pgne-a".attgenerated, "pgne-a".attidentity) NOT IN (
                       ('table_name', 'pg_catalog.text'::pg_catalog.regtype, true, false, '', ''),
                       ('operation', 'pg_catalog.text'::pg_catalog.regtype, true, false, '', ''),
                       ('labels', 'pg_catalog.jsonb'::pg_catalog.regtype, true, false, '', ''),
                       ('n', 'pg_catalog.int8'::pg_catalog.regtype, true, false, '', ''),
                       ('created_at', 'pg_catalog.timestamptz'::pg_catalog.regtype, true, true, '', ''),
                       ('observed', 'pg_catalog.jsonb'::pg_catalog.regtype, false, false, '', '')))
        THEN 'has other columns, types, defaults or NOT NULLs than pgne''s'
      WHEN (SELECT pg_catalog.count(*) FILTER (WHERE "pgne-a".attname <> 'observed')
                     || '/' || pg_catalog.count(*) FILTER (WHERE "pgne-a".attname = 'observed')
            FROM pg_catalog.pg_attribute AS "pgne-a"
            WHERE "pgne-a".attrelid = "pgne-c".oid AND "pgne-a".attnum > 0 AND NOT "pgne-a".attisdropped)
           <> '5/1'  -- only `observed` missing (an older layout): apply adds it before it checks
        THEN 'lacks a column of pgne''s'
      WHEN EXISTS (SELECT FROM pg_catalog.pg_attribute AS "pgne-a"
                   WHERE "pgne-a".attrelid = "pgne-c".oid AND "pgne-a".attnum > 0 AND "pgne-a".attisdropped)
        THEN 'has a dropped column'
      WHEN (SELECT pg_catalog.pg_get_expr("pgne-d".adbin, "pgne-d".adrelid) FROM pg_catalog.pg_attrdef AS "pgne-d"
            WHERE "pgne-d".adrelid = "pgne-c".oid) IS DISTINCT FROM 'now()'
        THEN 'has another default than pgne''s'
    END
    FROM pg_catalog.pg_class AS "pgne-c" WHERE "pgne-c".oid = 'pgne.event_log'::pg_catalog.regclass
);
  copied pg_catalog.int8;
  privilege record;
BEGIN
  IF damage IS NULL THEN
    RETURN;
  END IF;
  ALTER TABLE "pgne".event_log RENAME TO "event_log-damaged";
  CREATE TABLE IF NOT EXISTS "pgne".event_log (
    table_name text NOT NULL,
    operation text NOT NULL,
    labels jsonb NOT NULL,
    n bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    observed jsonb  -- columns_to_observe: the group's histograms; '{}' where nothing is observed
  ) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
          autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000);
  REVOKE ALL ON "pgne".event_log FROM PUBLIC;
  FOR privilege IN
    SELECT "pgne-g".privilege_type, "pgne-r".rolname
    FROM pg_catalog.pg_class AS "pgne-c",
         LATERAL pg_catalog.aclexplode("pgne-c".relacl) AS "pgne-g"
         JOIN pg_catalog.pg_roles AS "pgne-r" ON "pgne-r".oid = "pgne-g".grantee
    WHERE "pgne-c".oid = '"pgne"."event_log-damaged"'::pg_catalog.regclass
      AND "pgne-g".grantee <> "pgne-c".relowner
  LOOP
    EXECUTE pg_catalog.format('GRANT %s ON "pgne".event_log TO %I', privilege.privilege_type, privilege.rolname);
  END LOOP;
  BEGIN  -- the rows not drained yet, as far as they can be read
    EXECUTE pg_catalog.format(
      'INSERT INTO "pgne".event_log (table_name, operation, labels, n, created_at, observed) '
      'SELECT table_name::text, operation::text, labels::jsonb, n::int8, COALESCE(created_at::timestamptz, now()), %s '
      'FROM ONLY "pgne"."event_log-damaged"',
      CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_attribute
                        WHERE attrelid = '"pgne"."event_log-damaged"'::pg_catalog.regclass
                          AND attname = 'observed' AND NOT attisdropped) THEN 'observed::jsonb'
           ELSE 'NULL' END);
    GET DIAGNOSTICS copied = ROW_COUNT;
    RAISE WARNING 'pgne: pgne.event_log %: rebuilt as pgne makes it, % row(s) kept', damage, copied;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgne: pgne.event_log %: rebuilt as pgne makes it; its rows could not be read (%), they are not counted',
      damage, SQLERRM;
  END;
  EXECUTE pg_catalog.format('DROP %s "pgne"."event_log-damaged" CASCADE',
    (SELECT CASE relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END
     FROM pg_catalog.pg_class WHERE oid = '"pgne"."event_log-damaged"'::pg_catalog.regclass));
END
$pgne$;

-- "sales.orders": "notification_with_payload" on INSERT, UPDATE, DELETE, TRUNCATE
CREATE OR REPLACE FUNCTION "pgne"."sales_orders_74609b9789"()
  RETURNS trigger
  LANGUAGE plpgsql
  SECURITY DEFINER
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
  labels pg_catalog.jsonb[];  -- the label groups of a statement
  counts pg_catalog.int8[];
  observed pg_catalog.jsonb[];  -- their histograms (columns_to_observe)
BEGIN
  BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
      SELECT pg_catalog.array_agg(pg_catalog.jsonb_build_object('supplier', "pgne-g"."pgne-1")),
             pg_catalog.array_agg("pgne-g"."pgne-n"),
             pg_catalog.array_agg(pg_catalog.jsonb_build_object(
               'amount', pg_catalog.jsonb_build_object('count', "pgne-g"."pgne-c1", 'sum', "pgne-g"."pgne-s1"::pg_catalog.text,
                 'buckets', pg_catalog.jsonb_build_object('-100', "pgne-g"."pgne-b1-1", '0', "pgne-g"."pgne-b1-2", '10', "pgne-g"."pgne-b1-3", '100', "pgne-g"."pgne-b1-4", '1000.5', "pgne-g"."pgne-b1-5", '1e+20', "pgne-g"."pgne-b1-6"),
                 'null', "pgne-g"."pgne-z1", 'not_finite', "pgne-g"."pgne-x1"),
               'Qty "x"', pg_catalog.jsonb_build_object('count', "pgne-g"."pgne-c2", 'sum', "pgne-g"."pgne-s2"::pg_catalog.text,
                 'null', "pgne-g"."pgne-z2", 'not_finite', "pgne-g"."pgne-x2")))
        INTO "pgne-trigger".labels, "pgne-trigger".counts, "pgne-trigger".observed
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
      ) AS "pgne-g";
    ELSIF TG_OP = 'DELETE' THEN
      SELECT pg_catalog.array_agg(pg_catalog.jsonb_build_object('supplier', "pgne-g"."pgne-1")),
             pg_catalog.array_agg("pgne-g"."pgne-n"),
             pg_catalog.array_agg(pg_catalog.jsonb_build_object(
               'amount', pg_catalog.jsonb_build_object('count', "pgne-g"."pgne-c1", 'sum', "pgne-g"."pgne-s1"::pg_catalog.text,
                 'buckets', pg_catalog.jsonb_build_object('-100', "pgne-g"."pgne-b1-1", '0', "pgne-g"."pgne-b1-2", '10', "pgne-g"."pgne-b1-3", '100', "pgne-g"."pgne-b1-4", '1000.5', "pgne-g"."pgne-b1-5", '1e+20', "pgne-g"."pgne-b1-6"),
                 'null', "pgne-g"."pgne-z1", 'not_finite', "pgne-g"."pgne-x1"),
               'Qty "x"', pg_catalog.jsonb_build_object('count', "pgne-g"."pgne-c2", 'sum', "pgne-g"."pgne-s2"::pg_catalog.text,
                 'null', "pgne-g"."pgne-z2", 'not_finite', "pgne-g"."pgne-x2")))
        INTO "pgne-trigger".labels, "pgne-trigger".counts, "pgne-trigger".observed
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
      ) AS "pgne-g";
    ELSE
      "pgne-trigger".labels := '{"{}"}';
      "pgne-trigger".counts := '{1}';
    END IF;
    PERFORM FROM pg_catalog.pg_class AS "pgne-c"
      LEFT JOIN pgne.event_log AS "pgne-e" ON false  -- no row read: the columns' types, and a plan
                                                     -- that an ALTER of pgne.event_log invalidates
    WHERE "pgne-c".oid = 'pgne.event_log'::pg_catalog.regclass  -- fails here if it is missing
      AND "pgne-c".relkind = 'r' AND "pgne-c".relnatts = 6 AND "pgne-c".relchecks = 0
      AND NOT ("pgne-c".relhastriggers OR "pgne-c".relhasrules OR "pgne-c".relhasindex OR "pgne-c".relispartition
               OR "pgne-c".relrowsecurity OR "pgne-c".relforcerowsecurity)
      AND pg_catalog.pg_typeof("pgne-e".table_name) = 'pg_catalog.text'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".operation) = 'pg_catalog.text'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".labels) = 'pg_catalog.jsonb'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".n) = 'pg_catalog.int8'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".created_at) = 'pg_catalog.timestamptz'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".observed) = 'pg_catalog.jsonb'::pg_catalog.regtype;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'pgne.event_log differs from pgne''s layout: pgne rebuilds it at its next setup (pgne apply)';
    END IF;
    -- Only now (a trigger on pgne.event_log would fire): what the INSERT after this block would
    -- raise at plan time, with the same types (the trigger's INSERTs give these types exactly).
    INSERT INTO pgne.event_log (table_name, operation, labels, n, created_at, observed)
    SELECT NULL::pg_catalog.text, NULL::pg_catalog.text, NULL::pg_catalog.jsonb, NULL::pg_catalog.int8,
           NULL::pg_catalog.timestamptz, NULL::pg_catalog.jsonb
    WHERE false;
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
    RETURN NULL;
  END;
  IF "pgne-trigger".counts IS NOT NULL THEN  -- NULL: the statement touched no row
    INSERT INTO pgne.event_log (table_name, operation, labels, n, created_at, observed)
    SELECT 'sales.orders'::pg_catalog.text, TG_OP, "pgne-u"."pgne-labels", "pgne-u"."pgne-n", pg_catalog.now(),
           "pgne-u"."pgne-observed"
    FROM unnest("pgne-trigger".labels, "pgne-trigger".counts, "pgne-trigger".observed)
      AS "pgne-u" ("pgne-labels", "pgne-n", "pgne-observed");  -- ROWS FROM syntax, no schema
  END IF;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."sales_orders_74609b9789"() IS 'pgne sha256:e01819da84011c92071367dc051c226c6a1b379e5d38eaa0da85b4466a35f9bf';
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
  SECURITY DEFINER
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
  labels pg_catalog.jsonb[];  -- the label groups of a statement
  counts pg_catalog.int8[];
  observed pg_catalog.jsonb[];  -- their histograms (columns_to_observe)
BEGIN
  BEGIN
    SELECT pg_catalog.array_agg(pg_catalog.jsonb_build_object()),
           pg_catalog.array_agg("pgne-g"."pgne-n"),
           pg_catalog.array_agg(pg_catalog.jsonb_build_object(
             'weight', pg_catalog.jsonb_build_object('count', "pgne-g"."pgne-c1", 'sum', "pgne-g"."pgne-s1"::pg_catalog.text,
               'buckets', pg_catalog.jsonb_build_object('0.5', "pgne-g"."pgne-b1-1"),
               'null', "pgne-g"."pgne-z1", 'not_finite', "pgne-g"."pgne-x1")))
      INTO "pgne-trigger".labels, "pgne-trigger".counts, "pgne-trigger".observed
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
    ) AS "pgne-g";
    PERFORM FROM pg_catalog.pg_class AS "pgne-c"
      LEFT JOIN pgne.event_log AS "pgne-e" ON false  -- no row read: the columns' types, and a plan
                                                     -- that an ALTER of pgne.event_log invalidates
    WHERE "pgne-c".oid = 'pgne.event_log'::pg_catalog.regclass  -- fails here if it is missing
      AND "pgne-c".relkind = 'r' AND "pgne-c".relnatts = 6 AND "pgne-c".relchecks = 0
      AND NOT ("pgne-c".relhastriggers OR "pgne-c".relhasrules OR "pgne-c".relhasindex OR "pgne-c".relispartition
               OR "pgne-c".relrowsecurity OR "pgne-c".relforcerowsecurity)
      AND pg_catalog.pg_typeof("pgne-e".table_name) = 'pg_catalog.text'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".operation) = 'pg_catalog.text'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".labels) = 'pg_catalog.jsonb'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".n) = 'pg_catalog.int8'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".created_at) = 'pg_catalog.timestamptz'::pg_catalog.regtype
      AND pg_catalog.pg_typeof("pgne-e".observed) = 'pg_catalog.jsonb'::pg_catalog.regtype;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'pgne.event_log differs from pgne''s layout: pgne rebuilds it at its next setup (pgne apply)';
    END IF;
    -- Only now (a trigger on pgne.event_log would fire): what the INSERT after this block would
    -- raise at plan time, with the same types (the trigger's INSERTs give these types exactly).
    INSERT INTO pgne.event_log (table_name, operation, labels, n, created_at, observed)
    SELECT NULL::pg_catalog.text, NULL::pg_catalog.text, NULL::pg_catalog.jsonb, NULL::pg_catalog.int8,
           NULL::pg_catalog.timestamptz, NULL::pg_catalog.jsonb
    WHERE false;
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's statement: this statement's events are not counted.
    RAISE WARNING 'pgne: % on %.% not counted: % (SQLSTATE %)',
      TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM, SQLSTATE;
    RETURN NULL;
  END;
  IF "pgne-trigger".counts IS NOT NULL THEN  -- NULL: the statement touched no row
    INSERT INTO pgne.event_log (table_name, operation, labels, n, created_at, observed)
    SELECT 'public.lines'::pg_catalog.text, TG_OP, "pgne-u"."pgne-labels", "pgne-u"."pgne-n", pg_catalog.now(),
           "pgne-u"."pgne-observed"
    FROM unnest("pgne-trigger".labels, "pgne-trigger".counts, "pgne-trigger".observed)
      AS "pgne-u" ("pgne-labels", "pgne-n", "pgne-observed");  -- ROWS FROM syntax, no schema
  END IF;
  RETURN NULL;
END
$pgne$;

COMMENT ON FUNCTION "pgne"."public_lines_87680e081c"() IS 'pgne sha256:2fc3c71c67d73b5d4da1273f1db4bba549563a6c963269b413e9fcb9acedd580';
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
