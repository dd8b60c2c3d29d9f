-- pgne 0.1.0 --prune: host "db1.example.com", port 6543, database "shop", tag "production"
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_catalog.pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';
-- pgne's triggers and functions that the config does not name (`pgne status`: extra).
DO $pgne$
DECLARE
  extra record;
BEGIN
  FOR extra IN
    SELECT 'trigger'::pg_catalog.text AS kind, n.nspname::pg_catalog.text AS table_schema, c.relname::pg_catalog.text AS table_name,
           t.tgname::pg_catalog.text AS name
    FROM pg_catalog.pg_trigger t
    JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
    JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
    WHERE NOT t.tgisinternal AND t.tgparentid = 0
      AND t.tgname IN ('pgne_insert', 'pgne_update', 'pgne_delete', 'pgne_truncate')
      AND pn.nspname = 'pgne'
      AND (n.nspname, c.relname) NOT IN (('sales', 'orders'), ('public', 'customers'), ('audit', 'Log'), ('public', 'legacy'))
    UNION ALL
    SELECT 'function'::pg_catalog.text, NULL, NULL, p.proname::pg_catalog.text
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'pgne' AND p.pronargs = 0
      AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
      AND p.proname NOT IN ('sales_orders_74609b9789', 'public_customers_746dedf2f4', 'audit_log_dd556fb87f', 'public_legacy_3f1e6d0630')
    ORDER BY 1 DESC, 2, 3, 4
  LOOP
    IF extra.kind = 'trigger' THEN
      RAISE NOTICE 'pgne: dropping trigger % on %.%', extra.name, extra.table_schema, extra.table_name;
      EXECUTE pg_catalog.format('DROP TRIGGER %I ON %I.%I', extra.name, extra.table_schema, extra.table_name);
    ELSE
      RAISE NOTICE 'pgne: dropping function %.%()', 'pgne', extra.name;
      EXECUTE pg_catalog.format('DROP FUNCTION %I.%I()', 'pgne', extra.name);
    END IF;
  END LOOP;
END
$pgne$;
COMMIT;

-- pgne 0.1.0 --prune: host "db1.example.com", port 5432, database "reports", tag ""
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_catalog.pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';
-- pgne's triggers and functions that the config does not name (`pgne status`: extra).
DO $pgne$
DECLARE
  extra record;
BEGIN
  FOR extra IN
    SELECT 'trigger'::pg_catalog.text AS kind, n.nspname::pg_catalog.text AS table_schema, c.relname::pg_catalog.text AS table_name,
           t.tgname::pg_catalog.text AS name
    FROM pg_catalog.pg_trigger t
    JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
    JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
    WHERE NOT t.tgisinternal AND t.tgparentid = 0
      AND t.tgname IN ('pgne_insert', 'pgne_update', 'pgne_delete', 'pgne_truncate')
      AND pn.nspname = 'pgne'
      AND (n.nspname, c.relname) NOT IN (('public', 'refunds'))
    UNION ALL
    SELECT 'function'::pg_catalog.text, NULL, NULL, p.proname::pg_catalog.text
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'pgne' AND p.pronargs = 0
      AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
      AND p.proname NOT IN ('public_refunds_520c957fdd')
    ORDER BY 1 DESC, 2, 3, 4
  LOOP
    IF extra.kind = 'trigger' THEN
      RAISE NOTICE 'pgne: dropping trigger % on %.%', extra.name, extra.table_schema, extra.table_name;
      EXECUTE pg_catalog.format('DROP TRIGGER %I ON %I.%I', extra.name, extra.table_schema, extra.table_name);
    ELSE
      RAISE NOTICE 'pgne: dropping function %.%()', 'pgne', extra.name;
      EXECUTE pg_catalog.format('DROP FUNCTION %I.%I()', 'pgne', extra.name);
    END IF;
  END LOOP;
END
$pgne$;
COMMIT;

-- pgne 0.1.0 --prune: host "localhost", port 5432, database "archive", tag "old"
BEGIN;
-- One apply at a time per database (pgne apply, and pgne run's perform_setup).
SELECT pg_catalog.pg_advisory_xact_lock(1885826661);
-- Fail rather than queue behind application traffic for a table lock.
SET LOCAL lock_timeout = '5000ms';
-- pgne's triggers and functions that the config does not name (`pgne status`: extra).
DO $pgne$
DECLARE
  extra record;
BEGIN
  FOR extra IN
    SELECT 'trigger'::pg_catalog.text AS kind, n.nspname::pg_catalog.text AS table_schema, c.relname::pg_catalog.text AS table_name,
           t.tgname::pg_catalog.text AS name
    FROM pg_catalog.pg_trigger t
    JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
    JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
    WHERE NOT t.tgisinternal AND t.tgparentid = 0
      AND t.tgname IN ('pgne_insert', 'pgne_update', 'pgne_delete', 'pgne_truncate')
      AND pn.nspname = 'pgne'
      AND (n.nspname, c.relname) NOT IN (('public', 'one'), ('public', 'two'))
    UNION ALL
    SELECT 'function'::pg_catalog.text, NULL, NULL, p.proname::pg_catalog.text
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'pgne' AND p.pronargs = 0
      AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
      AND p.proname NOT IN ('public_one_6415285b3b', 'public_two_93be4d32ed')
    ORDER BY 1 DESC, 2, 3, 4
  LOOP
    IF extra.kind = 'trigger' THEN
      RAISE NOTICE 'pgne: dropping trigger % on %.%', extra.name, extra.table_schema, extra.table_name;
      EXECUTE pg_catalog.format('DROP TRIGGER %I ON %I.%I', extra.name, extra.table_schema, extra.table_name);
    ELSE
      RAISE NOTICE 'pgne: dropping function %.%()', 'pgne', extra.name;
      EXECUTE pg_catalog.format('DROP FUNCTION %I.%I()', 'pgne', extra.name);
    END IF;
  END LOOP;
END
$pgne$;
COMMIT;
