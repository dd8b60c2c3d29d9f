"""Migrating from pg_notify_exporter: its triggers found by `pgne status`, refused beside pgne's
by `pgne apply`, replaced in one transaction by `pgne apply --replace-legacy` (each row of a
concurrent writer counted exactly once), and the opt-in `pg_notify_exporter` series.

pg_notify_exporter's two trigger functions are written here from their description (a row
trigger that picks OLD for DELETE, else NEW, builds json_build_object('table', schema.table,
'action', TG_OP, 'data', ..., 'timestamp', now()::text) and sends it with pg_notify on channel
pg_notify_exporter; errors are raised as INFO), created unqualified as that exporter creates
them, with its trigger names `trigger_<function>`.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
import pytest
import yaml
from support.exporter import PgneProcess, status_in_process
from support.metrics import labels_key
from support.processes import run_pgne
from support.waiting import wait_until

from pgne.model import Monitor
from pgne.render import function_name

# pg_notify_exporter's config/trigger_functions.yml, as it behaves (not its text).
LEGACY_FUNCTIONS = """
CREATE OR REPLACE FUNCTION notification_with_payload() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  row_image record;
  payload json;
BEGIN
  IF TG_OP = 'DELETE' THEN row_image := OLD; ELSE row_image := NEW; END IF;
  payload := json_build_object('table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 'action', TG_OP,
                               'data', json_build_object('code', NEW.code), 'timestamp', now()::text);
  PERFORM pg_notify('pg_notify_exporter', payload::text);
  RETURN NEW;
EXCEPTION WHEN others THEN
  RAISE INFO 'notification_with_payload: % (%)', SQLERRM, SQLSTATE;
  RETURN NEW;
END
$fn$;
CREATE OR REPLACE FUNCTION simple_event_notification() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  row_image record;
  payload json;
BEGIN
  IF TG_OP = 'DELETE' THEN row_image := OLD; ELSE row_image := NEW; END IF;
  payload := json_build_object('table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 'action', TG_OP,
                               'data', json_build_object('date', now()), 'timestamp', now()::text);
  PERFORM pg_notify('pg_notify_exporter', payload::text);
  RETURN NEW;
EXCEPTION WHEN others THEN
  RAISE INFO 'simple_event_notification: % (%)', SQLERRM, SQLSTATE;
  RETURN NEW;
END
$fn$;
"""

# What pg_notify_exporter runs for the monitors of its README's config (its DROP ... IF EXISTS first).
LEGACY_TRIGGERS = """
DROP TRIGGER IF EXISTS trigger_notification_with_payload ON one;
CREATE TRIGGER trigger_notification_with_payload AFTER INSERT ON one
  FOR EACH ROW EXECUTE PROCEDURE notification_with_payload();
DROP TRIGGER IF EXISTS trigger_simple_event_notification ON two;
CREATE TRIGGER trigger_simple_event_notification AFTER INSERT OR DELETE ON two
  FOR EACH ROW EXECUTE PROCEDURE simple_event_notification();
"""

TABLES = """
CREATE TABLE one (id serial PRIMARY KEY, code text);
CREATE TABLE two (id serial PRIMARY KEY, note text);
"""

MONITORS = [
    {"table": "one", "enabled": True, "function": "notification_with_payload",
     "columns_to_label": [{"code": ["alpha", "beta", "gamma"]}], "events": ["insert"]},
    {"table": "two", "enabled": True, "function": "simple_event_notification", "events": ["INSERT", "delete"]},
]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: install Debian's prometheus package", pytrace=False)
    return path


def execute(db, script: str) -> None:
    conn = psycopg2.connect(db.dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(script)
    finally:
        conn.close()


def rows(db, statement: str) -> list[tuple]:
    conn = psycopg2.connect(db.dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


def triggers(db) -> set[tuple[str, str, str]]:
    """(table, trigger, function) of every user trigger."""
    return set(rows(db, """
        SELECT c.relname::text, t.tgname::text, p.proname::text
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE NOT t.tgisinternal"""))


def legacy_database(db) -> None:
    execute(db, TABLES + LEGACY_FUNCTIONS + LEGACY_TRIGGERS)


LEGACY = {("one", "trigger_notification_with_payload", "notification_with_payload"),
          ("two", "trigger_simple_event_notification", "simple_event_notification")}


def name(db) -> str:
    return f"{db.host}:{db.port}/{db.name}"


def test_status_lists_pg_notify_exporters_triggers_by_what_they_do_and_apply_refuses_to_install_beside_them(
        pg_database, write_config):
    db = pg_database
    legacy_database(db)
    execute(db, """
        -- the same kind of function under other names: found all the same
        CREATE TABLE three (id serial PRIMARY KEY, note text);
        CREATE FUNCTION my_notifier() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
          PERFORM pg_notify('pg_notify_exporter', json_build_object('table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
                                                                      'action', TG_OP)::text);
          RETURN NEW;
        END $fn$;
        CREATE TRIGGER audit_events AFTER UPDATE ON two FOR EACH ROW EXECUTE FUNCTION my_notifier();
        -- not like them: another channel; no pg_notify; a table pgne does not monitor
        CREATE FUNCTION other_channel() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
          PERFORM pg_notify('audit', json_build_object('table', TG_TABLE_NAME, 'action', TG_OP)::text);
          RETURN NEW;
        END $fn$;
        CREATE TRIGGER trigger_other_channel AFTER INSERT ON one FOR EACH ROW EXECUTE FUNCTION other_channel();
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN RETURN NEW; END $fn$;
        CREATE TRIGGER trigger_touch BEFORE INSERT ON one FOR EACH ROW EXECUTE FUNCTION touch();
        CREATE TRIGGER trigger_notification_with_payload AFTER INSERT ON three
          FOR EACH ROW EXECUTE PROCEDURE notification_with_payload();
    """)
    config = write_config(db, MONITORS)
    before = triggers(db)

    status = status_in_process(config)
    assert status.code == 1
    tail = ("which notifies on channel pg_notify_exporter: beside pgne's triggers every row would count twice "
            "(pgne apply --replace-legacy replaces {} in one transaction)")
    assert [line.split(None, 1)[1] for line in status.lines[1:] if "legacy trigger" in line] == [
        "legacy trigger  trigger trigger_notification_with_payload on public.one calls "
        "public.notification_with_payload(), " + tail.format("it"),
        "legacy trigger  trigger audit_events on public.two calls public.my_notifier(); trigger "
        "trigger_simple_event_notification on public.two calls public.simple_event_notification(), "
        + tail.format("them"),
    ]

    # without the option: nothing is installed beside them
    refused = run_pgne("apply", "-c", config)
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout.startswith(f"{name(db)}: FAILED: trigger trigger_notification_with_payload on public.one")
    assert refused.stdout.rstrip().endswith("(nothing applied)")
    assert triggers(db) == before

    # render-sql shows the drop; apply runs exactly that
    script = run_pgne("render-sql", "-c", config, "--replace-legacy")
    assert script.returncode == 0, script.stderr
    assert "EXECUTE pg_catalog.format('DROP TRIGGER %I ON %I.%I'" in script.stdout
    assert "EXECUTE pg_catalog.format" not in run_pgne("render-sql", "-c", config).stdout

    applied = run_pgne("apply", "-c", config, "--replace-legacy")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.startswith(f"{name(db)}: applied: ")
    after = triggers(db)
    gone = before - after
    assert gone == LEGACY | {("two", "audit_events", "my_notifier")}
    fn_one = function_name(Monitor("public", "one", True, "notification_with_payload", ()))
    fn_two = function_name(Monitor("public", "two", True, "simple_event_notification", ()))
    assert after - before == {("one", "pgne_insert", fn_one), ("two", "pgne_insert", fn_two),
                              ("two", "pgne_delete", fn_two)}
    # untouched: other channels, other work, unmonitored tables; and every legacy function
    assert ("one", "trigger_other_channel", "other_channel") in after
    assert ("one", "trigger_touch", "touch") in after
    assert ("three", "trigger_notification_with_payload", "notification_with_payload") in after
    assert {r[0] for r in rows(db, "SELECT proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = "
                                   "p.pronamespace WHERE n.nspname = 'public'")} == {
        "notification_with_payload", "simple_event_notification", "my_notifier", "other_channel", "touch"}

    assert status_in_process(config).lines[1:] == [f"{name(db)}  in sync"]
    again = run_pgne("apply", "-c", config, "--replace-legacy")
    assert (again.returncode, again.stdout) == (0, f"{name(db)}: up to date\n")


def test_replace_legacy_switches_under_a_concurrent_writer_and_counts_every_committed_row_once(
        pg_database, write_config, tmp_path):
    db = pg_database
    legacy_database(db)
    config = write_config(db, MONITORS, tag="shop")
    pgne = PgneProcess(config, tmp_path / "run", "--compat-metric", "--trigger-check-interval", "0.5").start()
    legacy_problem = labels_key("pgne_setup_problem", {"host": db.host_label, "database": db.name, "schema": "public",
                                                       "table": "one", "column": "", "problem": "legacy_trigger"})
    wait_until(lambda: pgne.scrape().get(legacy_problem) == 1, 30, "the legacy trigger in pgne_setup_problem",
               pgne.describe)

    committed = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            conn = psycopg2.connect(db.dsn)
            conn.autocommit = True
            codes = ("alpha", "beta", "x")  # 'x' is outside the whitelist: `other`
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("INSERT INTO one (code) VALUES (%s)", (codes[committed[0] % 3],))
                    committed[0] += 1
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        wait_until(lambda: committed[0] >= 300 or errors, 30, "300 rows before the switch")
        at_switch = committed[0]
        applied = run_pgne("apply", "-c", config, "--replace-legacy")
        after_switch = committed[0]
        assert applied.returncode == 0, applied.stdout + applied.stderr
        wait_until(lambda: committed[0] >= after_switch + 300 or errors, 30, "300 rows after the switch")
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert LEGACY.isdisjoint(triggers(db))
    wait_until(lambda: pgne.scrape().get(legacy_problem) == 0, 30, "pgne_setup_problem legacy_trigger 0",
               pgne.describe)

    # notifications arrive in commit order: once this one is counted, every row of `one` is
    execute(db, "INSERT INTO two (note) VALUES ('sentinel')")
    base = {"host": db.host_label, "database": db.name, "tag": "shop", "operation": "INSERT"}
    two = labels_key("pgne_events_total", dict(base, schema="public", table="two", code=""))
    wait_until(lambda: pgne.scrape().get(two) == 1, 30, "the sentinel counted", pgne.describe)
    samples = pgne.scrape()

    by_code = dict(rows(db, "SELECT CASE WHEN code IN ('alpha', 'beta', 'gamma') THEN code ELSE 'other' END, "
                            "count(*) FROM one GROUP BY 1"))
    total = sum(by_code.values())
    assert total == committed[0]
    counted = {code: samples.get(labels_key("pgne_events_total", dict(base, schema="public", table="one",
                                                                       code=code)))
               for code in ("alpha", "beta", "gamma", "other")}
    assert counted == {"alpha": by_code["alpha"], "beta": by_code["beta"], "gamma": 0, "other": by_code["other"]}
    compat = {code: samples.get(labels_key("pg_notify_exporter", dict(base, table="public.one", code=code)))
              for code in ("alpha", "beta", "gamma", "other")}
    assert compat == counted
    print(f"rows: {total} ({at_switch} before apply started, {after_switch - at_switch} while it ran); "
          f"counted: {sum(counted.values())}")


# --------------------------------------------------------------------------- the compatibility series


def promtool_series(name: str, labels: frozenset) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels) if v != "")  # an empty label is no label
    return f"{name}{{{inner}}}"


def test_compat_series_equals_pgne_events_total_and_old_and_new_promql_give_the_same_numbers(
        pg_database, write_config, tmp_path):
    db = pg_database
    execute(db, TABLES)
    config = write_config(db, MONITORS, tag="shop", perform_setup=True)
    pgne = PgneProcess(config, tmp_path / "run", "--compat-metric").start()
    before = pgne.scrape()

    execute(db, """
        INSERT INTO one (code) SELECT (ARRAY['alpha', 'beta', 'x'])[1 + i % 3] FROM generate_series(1, 1000) AS i;
        INSERT INTO one (code) VALUES ('gamma');
        INSERT INTO two (note) SELECT 'n' FROM generate_series(1, 5);
        DELETE FROM two WHERE id <= 2;
    """)
    truth = {("public.one", "INSERT", "alpha"): 333, ("public.one", "INSERT", "beta"): 334,
             ("public.one", "INSERT", "gamma"): 1, ("public.one", "INSERT", "other"): 333,
             ("public.two", "INSERT", ""): 5, ("public.two", "DELETE", ""): 2}
    base = {"host": db.host_label, "database": db.name, "tag": "shop"}

    def old(table: str, operation: str, code: str) -> tuple:
        return labels_key("pg_notify_exporter", dict(base, table=table, operation=operation, code=code))

    def twins_of(scrape) -> dict:
        """pgne_events_total's series under pg_notify_exporter's labels."""
        twins = {}
        for (name, labels), value in scrape.items():
            if name == "pgne_events_total":
                d = dict(labels)
                d["table"] = f"{d.pop('schema')}.{d['table']}"
                twins[frozenset(d.items())] = value
        return twins

    # The worker raises pgne_events_total, then its twin; a scrape reads their files one after the
    # other, so one that falls between the two may see them differ: wait for both.
    pgne.wait_for_values({old(*key): n for key, n in truth.items()})
    def consistent():
        scrape = pgne.scrape()
        compat = {labels: v for (name, labels), v in scrape.items() if name == "pg_notify_exporter"}
        return scrape if compat == twins_of(scrape) else None

    after = wait_until(consistent, 10, "pgne_events_total to equal its pg_notify_exporter twins")

    # one scrape: every pgne_events_total series has its twin, with the same value, and no other
    compat = {labels: v for (name, labels), v in after.items() if name == "pg_notify_exporter"}
    assert compat == twins_of(after)
    assert {(d["table"], d["operation"], d["code"]): v for d, v in ((dict(k), v) for k, v in compat.items())} == truth
    assert "# TYPE pg_notify_exporter gauge" in pgne.metrics_text()

    # The same numbers through Prometheus's own PromQL engine: a typical old query and its rewrite.
    series = []
    for name in ("pg_notify_exporter", "pgne_events_total"):
        for (n, labels), value in after.items():
            if n == name:
                series.append({"series": promtool_series(name, labels),
                               "values": f"{before.get((n, labels), 0):g} {value:g}"})
    by_code = [{"labels": f'{{table="{t}", code="{c}"}}', "value": n}
               for (t, op, c), n in truth.items() if op == "INSERT" and t == "public.one"]
    by_operation = [{"labels": f'{{operation="{op}"}}', "value": n}
                    for (t, op, c), n in truth.items() if t == "public.two"]
    queries = [
        ('sum by (table, code) (increase(pg_notify_exporter{table="public.one", operation="INSERT"}[2m]))',
         'sum by (table, code) (label_join(increase(pgne_events_total{schema="public", table="one", '
         'operation="INSERT"}[2m]), "table", ".", "schema", "table"))', by_code),
        ('sum by (operation) (pg_notify_exporter{table="public.two"})',
         'sum by (operation) (pgne_events_total{schema="public", table="two"})', by_operation),
    ]
    tests = [{"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": expr, "eval_time": "1m", "exp_samples": expected}
        for old_expr, new_expr, expected in queries for expr in (old_expr, new_expr)]}]
    rules = tmp_path / "compat.test.yml"
    rules.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([need("promtool"), "test", "rules", str(rules)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr + rules.read_text()
    assert "SUCCESS" in result.stdout


# --------------------------------------------------------------------------- a custom trigger function

# pg_notify_exporter's notification_with_payload as a user edited it: one more payload field,
# the class of the row's amount (README, "Migrating from pg_notify_exporter", step 3).
EDITED_FUNCTION = """
CREATE TABLE orders (id serial PRIMARY KEY, code text, amount numeric);
CREATE FUNCTION notification_with_amount_class() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  payload json;
BEGIN
  payload := json_build_object('table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 'action', TG_OP,
                               'data', json_build_object('code', NEW.code,
                                                         'amount', CASE WHEN NEW.amount >= 100 THEN 'large'
                                                                        ELSE 'small' END),
                               'timestamp', now()::text);
  PERFORM pg_notify('pg_notify_exporter', payload::text);
  RETURN NEW;
EXCEPTION WHEN others THEN
  RAISE INFO 'notification_with_amount_class: % (%)', SQLERRM, SQLSTATE;
  RETURN NEW;
END
$fn$;
CREATE TRIGGER trigger_notification_with_amount_class AFTER INSERT ON orders
  FOR EACH ROW EXECUTE PROCEDURE notification_with_amount_class();
"""
EXAMPLE_TEMPLATES = str(Path(__file__).resolve().parents[2] / "config" / "templates")


def test_an_edited_pg_notify_exporter_function_becomes_a_template_that_counts_as_the_old_one_did(
        pg_database, write_config, tmp_path):
    db = pg_database
    execute(db, EDITED_FUNCTION)
    monitors = [{"table": "orders", "enabled": True, "function": "notification_with_amount_class",
                 "columns_to_label": [{"code": ["alpha", "beta"]}, {"amount": ["large", "small"]}],
                 "events": ["insert"]}]
    config = write_config(db, monitors, tag="shop")
    assert run_pgne("check", "-c", config).returncode == 2  # no such template among the built-in ones
    pgne = PgneProcess(config, tmp_path / "run", "--templates", EXAMPLE_TEMPLATES).start()
    base = {"host": db.host_label, "database": db.name, "tag": "shop", "operation": "INSERT", "schema": "public",
            "table": "orders"}
    truth_sql = ("SELECT CASE WHEN code IN ('alpha', 'beta') THEN code ELSE 'other' END, "
                 "CASE WHEN amount >= 100 THEN 'large' ELSE 'small' END, count(*) FROM orders GROUP BY 1, 2")

    def expected() -> dict:
        truth = {(c, a): 0 for c in ("alpha", "beta", "other") for a in ("large", "small")}
        truth.update({(c, a): n for c, a, n in rows(db, truth_sql)})
        return {labels_key("pgne_events_total", dict(base, code=c, amount=a)): n for (c, a), n in truth.items()}

    # the old function's payloads, one row per transaction (it folds identical ones in a transaction)
    for i in range(30):
        execute(db, f"INSERT INTO orders (code, amount) VALUES ('{('alpha', 'beta', 'zeta')[i % 3]}', {i * 7})")
    pgne.wait_for_values(expected())

    applied = run_pgne("apply", "-c", config, "--templates", EXAMPLE_TEMPLATES, "--replace-legacy")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert ("orders", "trigger_notification_with_amount_class", "notification_with_amount_class") not in triggers(db)

    # pgne's trigger from the template: one statement of 1000 rows, counted as the old function labelled them
    execute(db, "INSERT INTO orders (code, amount) SELECT (ARRAY['alpha', 'beta', 'zeta'])[1 + i % 3], i % 150 "
                "FROM generate_series(1, 1000) AS i")
    want = expected()
    assert sum(want.values()) == 1030
    pgne.wait_for_values(want)
    # alpha and >= 100: i in {15, 18, 21, 24, 27} of the 30, and 16 of every 150 of the 1000 (6 full blocks)
    assert want[labels_key("pgne_events_total", dict(base, code="alpha", amount="large"))] == 5 + 96


def test_a_running_pgne_learns_of_apply_replace_legacy_at_once_not_at_its_next_trigger_check(
        pg_database, write_config, pgne_processes, tmp_path):
    """`pgne apply` NOTIFYs pgne_applied once it has committed; the running worker (default
    --trigger-check-interval: 60 s) checks the database again at once."""
    db = pg_database
    legacy_database(db)
    config = write_config(db, MONITORS)
    proc = PgneProcess(config, tmp_path / "run", log_level="DEBUG")
    pgne_processes.append(proc)
    proc.start()
    host = dict(next(iter(proc.series("pgne_database_up", database=db.name))))["host"]
    labels = {"host": host, "database": db.name}
    problem = {("pgne_setup_problem", frozenset(dict(labels, problem="legacy_trigger", schema="public", table=t,
                                                     column="").items())): 1 for t in ("one", "two")}
    installed = {labels_key("pgne_trigger_installed", dict(labels, schema="public", table=t, event=e)): 0
                 for t, e in (("one", "INSERT"), ("two", "INSERT"), ("two", "DELETE"))}
    samples = proc.scrape()
    assert {k: samples.get(k) for k in {**problem, **installed}} == {**problem, **installed}
    assert b"SETUP FAILED" in proc.get("/")[2]

    applied = run_pgne("apply", "-c", config, "--replace-legacy")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    done = time.monotonic()
    fixed = {**{k: 0 for k in problem}, **{k: 1 for k in installed}}
    proc.wait_for_values(fixed, timeout=10)
    took = time.monotonic() - done
    assert b"SETUP FAILED" not in proc.get("/")[2]
    assert took < 10, took
    assert (f"INFO pgne.worker[{proc.worker_pids()[0]}]: {host}/{db.name}: a NOTIFY on pgne_applied (pgne apply "
            "sends one): checking the database now") in proc.stderr_text()
    # the apply's NOTIFY is not an event: nothing counted, nothing rejected
    results = ("counted", "invalid", "unknown_table", "unmonitored_event")
    assert {r: proc.value("pgne_notifications_total", dict(labels, result=r)) for r in results} == {
        r: 0 for r in results}
    assert proc.stderr_text().count("checking the database now") == 1

    # anyone who may connect can NOTIFY pgne_applied: 300 of them cost a check a second at most
    checks = proc.stderr_text().count("checking the database now")
    started = time.monotonic()
    conn = psycopg2.connect(db.dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for _ in range(300):
                cur.execute("NOTIFY pgne_applied")
            cur.execute("INSERT INTO one (code) VALUES ('alpha')")
    finally:
        conn.close()
    one_alpha = labels_key("pgne_events_total", dict(labels, tag="it", operation="INSERT", schema="public",
                                                     table="one", code="alpha"))
    proc.wait_for_values({one_alpha: 1}, timeout=10)
    wait_until(lambda: proc.stderr_text().count("checking the database now") > checks, 10, "the check it asked for")
    elapsed = time.monotonic() - started
    assert 1 <= proc.stderr_text().count("checking the database now") - checks <= int(elapsed) + 2, elapsed
    # at INFO, one line a minute: the flood's checks are DEBUG lines
    info = [line for line in proc.stderr_text().splitlines()
            if " INFO " in line and "checking the database now" in line]
    assert len(info) == 1, info
    assert proc.value("pgne_notifications_total", dict(labels, result="counted")) == 1
    assert proc.value("pgne_notifications_total", dict(labels, result="invalid")) == 0
