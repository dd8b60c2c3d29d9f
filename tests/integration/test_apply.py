"""`pgne apply` and `pgne status` against the real PostgreSQL: idempotence, locks, failures,
enabling and disabling, exit codes and output lines (SPEC.md, "Command line" and "SQL")."""
from __future__ import annotations

import select
import subprocess
import sys
import time

import psycopg2.extensions
import pytest
from support.databases import pgne_functions, pgne_triggers, query, schema_exists
from support.exporter import PgneProcess, apply_in_process, status_in_process
from support.listener import event
from support.processes import pgne_env, run_pgne

from pgne import __version__
from pgne.apply import APPLIED, apply_on_connection
from pgne.config import load_config
from pgne.model import Monitor
from pgne.render import Renderer, function_name

TABLES = """
CREATE TABLE t (id serial PRIMARY KEY, code text);
CREATE TABLE u (id serial PRIMARY KEY, note text);
"""
T_EVENTS = ["insert", "update"]
U_EVENTS = ["insert", "delete"]
FN_T = function_name(Monitor("public", "t", True, "notification_with_payload", ()))
FN_U = function_name(Monitor("public", "u", True, "simple_event_notification", ()))
ALL_TRIGGERS = {("public", "t", "pgne_insert"), ("public", "t", "pgne_update"),
                ("public", "u", "pgne_insert"), ("public", "u", "pgne_delete")}


def monitors(t: bool = True, u: bool = True, t_events=T_EVENTS, extra: list[dict] = ()) -> list[dict]:
    return [
        {"table": "t", "enabled": t, "function": "notification_with_payload",
         "columns_to_label": [{"code": ["alpha", "beta"]}], "events": list(t_events)},
        {"table": "u", "enabled": u, "function": "simple_event_notification", "events": U_EVENTS},
        *extra,
    ]


def name(db) -> str:
    """How apply and status name a database: host:port/database."""
    return f"{db.host}:{db.port}/{db.name}"


def state(db) -> tuple[bool, set, set]:
    """(schema pgne exists, pgne triggers, functions in schema pgne)."""
    with db.connect(autocommit=True) as conn:
        return schema_exists(conn), pgne_triggers(conn), pgne_functions(conn)


NOTHING = (False, set(), set())
INSTALLED = (True, ALL_TRIGGERS, {FN_T, FN_U})


def catalog_versions(db) -> list[tuple]:
    """xmin of pgne's pg_trigger and pg_proc rows and of schema pgne: any DDL on them changes it."""
    return query(db.connect(autocommit=True), """
        SELECT 'trigger', tgname, xmin::text FROM pg_trigger WHERE tgname LIKE 'pgne\\_%'
        UNION ALL SELECT 'function', p.proname, p.xmin::text FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgne'
        UNION ALL SELECT 'schema', nspname, xmin::text FROM pg_namespace WHERE nspname = 'pgne'
        ORDER BY 1, 2, 3""")


@pytest.fixture
def db(pg_database):
    pg_database.execute(TABLES)
    return pg_database


def applied(outcome, db) -> None:
    assert outcome.code == 0, outcome.stdout
    [line] = outcome.lines
    assert line.startswith(f"{name(db)}: applied: "), line


def assert_lock_timeout(lines: list[str], db) -> None:
    [line] = lines
    assert line.startswith(f"{name(db)}: FAILED: "), line
    assert "canceling statement due to lock timeout" in line and line.endswith(" (nothing applied)"), line


# -- idempotence and locks -------------------------------------------------------------------


def test_apply_is_idempotent_and_a_second_run_is_up_to_date(db, write_config):
    path = write_config(db, monitors())
    first = apply_in_process(path)
    assert first.code == 0
    assert first.lines == [f"{name(db)}: applied: 7 changes: missing: schema pgne; "
                           f"missing: function pgne.{FN_T} for public.t; "
                           f"missing: trigger pgne_insert on public.t; missing: trigger pgne_update on public.t; "
                           f"missing: function pgne.{FN_U} for public.u; "
                           f"missing: trigger pgne_insert on public.u; missing: trigger pgne_delete on public.u"]
    assert state(db) == INSTALLED
    before = catalog_versions(db)

    second = run_pgne("apply", "-c", path)
    assert (second.returncode, second.stdout, second.stderr) == (0, f"{name(db)}: up to date\n", "")
    assert catalog_versions(db) == before  # not one catalog row rewritten
    assert apply_in_process(path).lines == [f"{name(db)}: up to date"]


def test_apply_on_an_in_sync_database_takes_no_lock_on_the_application_table(db, write_config):
    path = write_config(db, monitors())
    applied(apply_in_process(path), db)
    locker = db.connect()
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        cur.execute("LOCK TABLE u IN ACCESS EXCLUSIVE MODE")

    started = time.monotonic()
    proc = run_pgne("apply", "-c", path, "--lock-timeout", "120", timeout=100)
    elapsed = time.monotonic() - started
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{name(db)}: up to date\n", "")
    # blocked, it would wait for the 120 s lock_timeout; the margin is for a loaded machine
    assert elapsed < 30, f"apply took {elapsed:.1f}s behind the application's lock"
    status = run_pgne("status", "-c", path, timeout=100)
    assert status.returncode == 0, status.stdout + status.stderr
    locker.rollback()


def test_with_drift_and_a_locked_table_apply_fails_after_lock_timeout_and_applies_nothing(db, write_config):
    path = write_config(db, monitors())
    locker = db.connect()
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")

    started = time.monotonic()
    proc = run_pgne("apply", "-c", path, "--lock-timeout", "1", timeout=50)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_lock_timeout(proc.stdout.splitlines(), db)
    assert 0.9 < elapsed < 30, elapsed  # it waited for the lock, then gave up
    assert state(db) == NOTHING
    locker.rollback()

    # installed, then drift (a new event on t) while t is locked: the old installation stays as it was
    applied(apply_in_process(path), db)
    before = catalog_versions(db)
    path = write_config(db, monitors(t_events=T_EVENTS + ["delete"]))
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    started = time.monotonic()
    outcome = apply_in_process(path, lock_timeout=1)
    elapsed = time.monotonic() - started
    assert outcome.code == 1
    assert 0.9 < elapsed < 4, elapsed  # the lock_timeout given, not the default 5 s
    assert_lock_timeout(outcome.lines, db)
    assert catalog_versions(db) == before
    assert state(db) == INSTALLED
    locker.rollback()

    assert apply_in_process(path).lines == [f"{name(db)}: applied: 2 changes: outdated: function pgne.{FN_T} "
                                            f"for public.t; missing: trigger pgne_delete on public.t"]
    assert state(db)[1] == ALL_TRIGGERS | {("public", "t", "pgne_delete")}


def test_a_sub_millisecond_lock_timeout_still_times_out(db, write_config):
    """lock_timeout '0ms' would mean "wait for ever": a tiny --lock-timeout must round up to 1 ms."""
    path = write_config(db, monitors())
    locker = db.connect()
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE u IN ACCESS EXCLUSIVE MODE")
    proc = run_pgne("apply", "-c", path, "--lock-timeout", "0.0004", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_lock_timeout(proc.stdout.splitlines(), db)
    assert state(db) == NOTHING
    locker.rollback()


def test_concurrent_applies_are_serialised_and_both_succeed(db, write_config):
    path = write_config(db, monitors())
    procs = [subprocess.Popen([sys.executable, "-m", "pgne", "apply", "-c", str(path)], env=pgne_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    for code, out, err in results:
        assert code == 0 and err == "", (out, err)
        assert out.startswith((f"{name(db)}: applied: ", f"{name(db)}: up to date")), out
    assert state(db) == INSTALLED
    assert status_in_process(path).code == 0


# -- failures and exit codes --------------------------------------------------------------------


def test_a_missing_table_fails_naming_it_and_the_databases_other_monitors_are_applied(db, write_config):
    extra = [{"table": "nosuch", "enabled": True, "function": "simple_event_notification", "events": ["insert"]},
             {"table": "app.gone", "enabled": True, "function": "simple_event_notification", "events": ["delete"]}]
    path = write_config(db, monitors(extra=extra))

    proc = run_pgne("apply", "-c", path)
    assert (proc.returncode, proc.stderr) == (1, "")
    assert proc.stdout.startswith(f"{name(db)}: FAILED: table public.nosuch does not exist; "
                                  f"table app.gone does not exist (not set up: app.gone, public.nosuch); "
                                  f"7 changes: missing: schema pgne; "), proc.stdout
    assert state(db) == INSTALLED  # a problem of one monitor keeps only that monitor from being set up
    path = write_config(db, monitors(extra=extra[:1]))  # the only monitor: nothing applied
    write_config(db, [extra[0]], filename="only.yml")
    proc = run_pgne("apply", "-c", path.parent / "only.yml")
    assert proc.stdout == f"{name(db)}: FAILED: table public.nosuch does not exist (nothing applied)\n"


def test_dry_run_changes_nothing_and_says_what_would_be_applied(db, write_config):
    path = write_config(db, monitors())
    proc = run_pgne("apply", "-c", path, "--dry-run")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"{name(db)}: would apply: 7 changes: missing: schema pgne; "), proc.stdout
    assert "missing: trigger pgne_delete on public.u" in proc.stdout
    assert state(db) == NOTHING

    applied(apply_in_process(path), db)
    before = catalog_versions(db)
    path = write_config(db, monitors(u=False))
    dry = apply_in_process(path, dry_run=True)
    assert dry.code == 0
    assert dry.lines == [f"{name(db)}: would apply: 3 changes: unwanted: function pgne.{FN_U} for disabled public.u; "
                         f"unwanted: trigger pgne_insert on public.u; unwanted: trigger pgne_delete on public.u"]
    assert catalog_versions(db) == before
    assert state(db) == INSTALLED

    applied(apply_in_process(path), db)
    assert apply_in_process(path, dry_run=True).lines == [f"{name(db)}: up to date"]


@pytest.mark.parametrize("case", ["applied", "unreachable", "invalid config", "no such database in the config"])
def test_apply_exit_codes(db, write_config, case):
    """0 all applied, 1 any failed, 2 invalid config (and nothing touched)."""
    if case == "applied":
        proc = run_pgne("apply", "-c", write_config(db, monitors()))
        assert (proc.returncode, proc.stderr) == (0, "")
        assert proc.stdout.startswith(f"{name(db)}: applied: ")
        assert state(db) == INSTALLED
        return
    if case == "unreachable":
        import socket

        with socket.socket() as sock:  # a port that nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = run_pgne("apply", "-c", write_config(db, monitors(), port=port, connect_timeout=5))
        assert (proc.returncode, proc.stderr) == (1, "")
        [line] = proc.stdout.splitlines()
        assert line.startswith(f"{db.host}:{port}/{db.name}: FAILED: cannot connect: "), line
        return
    if case == "invalid config":
        bad = monitors()
        bad[1]["events"] = ["insert", "upsert"]
        path = write_config(db, bad)
        proc = run_pgne("apply", "-c", path)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr.splitlines() == [
            f"{path}: 127.0.0.1 > {db.name} > monitors[1] > events[1]: "
            "'upsert' is not one of insert, update, delete, truncate (any case)"]
    else:
        proc = run_pgne("apply", "-c", write_config(db, monitors()), "--database", "nosuch")
        assert (proc.returncode, proc.stdout) == (2, "")
        assert "no database matches --database 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert state(db) == NOTHING


def test_one_result_line_per_database_in_config_order(pg_database_factory, write_config):
    a, b, c = (pg_database_factory() for _ in range(3))
    for database in (a, b, c):
        database.execute(TABLES)
    path = write_config(b, monitors())
    applied(apply_in_process(path), b)  # b is in sync already
    path = write_config(a, monitors(), also=[(b, monitors()), (c, monitors(), {"enabled": False})])

    proc = run_pgne("apply", "-c", path)
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{name(a)}: applied: 7 changes: ")
    assert lines[1] == f"{name(b)}: up to date"
    assert lines[2] == f"{name(c)}: up to date"  # disabled, and nothing of pgne there
    assert state(a) == state(b) == INSTALLED
    assert state(c) == NOTHING

    only_c = run_pgne("apply", "-c", path, "--database", c.name)
    assert (only_c.returncode, only_c.stdout) == (0, f"{name(c)}: up to date\n")


def test_two_databases_one_failing_exits_1_and_the_other_is_applied(pg_database_factory, write_config):
    a, b = pg_database_factory(), pg_database_factory()
    b.execute(TABLES)  # a has no tables
    path = write_config(a, monitors(), also=[(b, monitors())])

    proc = run_pgne("apply", "-c", path)
    assert (proc.returncode, proc.stderr) == (1, "")
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"{name(a)}: FAILED: table public.t does not exist; table public.u does not exist "
                        f"(nothing applied)")
    assert lines[1].startswith(f"{name(b)}: applied: 7 changes: ")
    assert len(lines) == 2
    assert state(a) == NOTHING
    assert state(b) == INSTALLED


# -- enabling and disabling ---------------------------------------------------------------------


def test_disabling_a_monitor_drops_its_triggers_and_function(db, write_config, listener_factory):
    applied(apply_in_process(write_config(db, monitors())), db)
    path = write_config(db, monitors(u=False))
    applied(apply_in_process(path), db)

    assert state(db) == (True, {t for t in ALL_TRIGGERS if t[1] == "t"}, {FN_T})
    assert status_in_process(path).code == 0
    listener = listener_factory(db)
    db.execute("INSERT INTO u (note) VALUES ('x')")
    db.execute("INSERT INTO t (code) VALUES ('alpha')")
    listener.wait_for({event("public.t", "INSERT", code="alpha"): 1})


def test_disabling_a_database_removes_schema_pgne(db, write_config):
    applied(apply_in_process(write_config(db, monitors())), db)
    path = write_config(db, monitors(), enabled=False)

    outcome = apply_in_process(path)
    assert outcome.lines == [f"{name(db)}: applied: 7 changes: unwanted: function pgne.{FN_T} for disabled public.t; "
                             f"unwanted: trigger pgne_insert on public.t; unwanted: trigger pgne_update on public.t; "
                             f"unwanted: function pgne.{FN_U} for disabled public.u; "
                             f"unwanted: trigger pgne_insert on public.u; unwanted: trigger pgne_delete on public.u; "
                             f"unwanted: schema pgne in a disabled database"]
    assert state(db) == NOTHING
    assert apply_in_process(path).lines == [f"{name(db)}: up to date"]
    status = status_in_process(path)
    assert status.code == 0  # a disabled database is not compared


def test_enabled_false_then_true_round_trip(db, write_config, listener_factory):
    path = write_config(db, monitors())
    applied(apply_in_process(path), db)

    applied(apply_in_process(write_config(db, monitors(t=False))), db)
    assert state(db) == (True, {x for x in ALL_TRIGGERS if x[1] == "u"}, {FN_U})
    applied(apply_in_process(write_config(db, monitors(t=True))), db)
    assert state(db) == INSTALLED

    applied(apply_in_process(write_config(db, monitors(), enabled=False)), db)
    assert state(db) == NOTHING
    path = write_config(db, monitors(), enabled=True)
    applied(apply_in_process(path), db)
    assert state(db) == INSTALLED
    assert status_in_process(path).code == 0
    assert apply_in_process(path).lines == [f"{name(db)}: up to date"]

    listener = listener_factory(db)
    db.execute("INSERT INTO t (code) VALUES ('beta'), ('zeta')")
    db.execute("INSERT INTO u (note) VALUES ('x')")
    listener.wait_for({event("public.t", "INSERT", code="beta"): 1, event("public.t", "INSERT", code="other"): 1,
                       event("public.u", "INSERT"): 1})


# -- status -------------------------------------------------------------------------------------


def test_status_is_0_in_sync_and_1_after_drop_trigger_naming_the_missing_trigger(db, write_config):
    path = write_config(db, monitors())
    applied(apply_in_process(path), db)
    proc = run_pgne("status", "-c", path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines()[1].split() == [name(db), "in", "sync"]

    db.execute("DROP TRIGGER pgne_insert ON t")
    proc = run_pgne("status", "-c", path)
    assert (proc.returncode, proc.stderr) == (1, "")
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["DATABASE", "STATE", "OBJECT"]
    assert [row.split(None, 2) for row in rows] == [[name(db), "missing", "trigger pgne_insert on public.t"]]

    assert apply_in_process(path).lines == [f"{name(db)}: applied: 1 change: missing: trigger pgne_insert on public.t"]
    assert run_pgne("status", "-c", path).returncode == 0


def test_status_and_apply_repair_a_disabled_trigger_and_a_dropped_function(db, write_config):
    path = write_config(db, monitors())
    applied(apply_in_process(path), db)

    db.execute("ALTER TABLE t DISABLE TRIGGER pgne_update")
    db.execute(f'DROP FUNCTION pgne."{FN_U}"() CASCADE')  # takes u's triggers with it
    status = status_in_process(path)
    assert status.code == 1
    assert [row.split(None, 2)[1:] for row in status.lines[1:]] == [
        ["outdated", "trigger pgne_update on public.t"],
        ["missing", f"function pgne.{FN_U} for public.u"],
        ["missing", "trigger pgne_insert on public.u"],
        ["missing", "trigger pgne_delete on public.u"],
    ]
    applied(apply_in_process(path), db)
    assert status_in_process(path).code == 0
    assert state(db) == INSTALLED


def test_objects_the_config_no_longer_names_are_reported_and_dropped_only_with_prune(db, write_config):
    applied(apply_in_process(write_config(db, monitors())), db)
    path = write_config(db, monitors()[:1])  # u deleted from the config instead of disabled

    assert apply_in_process(path).lines == [f"{name(db)}: up to date"]
    status = status_in_process(path)
    assert status.code == 1
    assert [row.split(None, 1)[1].split(None, 1) for row in status.lines[1:]] == [
        ["extra", f"function pgne.{FN_U} (not named by the config)"],
        ["extra", "trigger pgne_delete on public.u (not named by the config)"],
        ["extra", "trigger pgne_insert on public.u (not named by the config)"],
    ]
    assert state(db) == INSTALLED

    pruned = apply_in_process(path, prune=True)
    assert pruned.code == 0
    assert pruned.lines[0].startswith(f"{name(db)}: applied: 3 changes: extra: ")
    assert state(db) == (True, {x for x in ALL_TRIGGERS if x[1] == "t"}, {FN_T})
    assert status_in_process(path).code == 0


def test_apply_prune_runs_exactly_what_render_sql_prune_prints(db, write_config):
    applied(apply_in_process(write_config(db, monitors())), db)
    # u leaves the config and t loses an event: the database's script and its --prune script both run
    path = write_config(db, monitors(t_events=["insert"])[:1])
    printed = run_pgne("render-sql", "--prune", "-c", path)
    assert printed.returncode == 0, printed.stderr

    sent: list = []

    class RecordingCursor(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            sent.append(query)
            return super().execute(query, vars)

    renderer = Renderer()
    [database] = load_config(str(path), renderer).databases
    result = apply_on_connection(db.connect(cursor_factory=RecordingCursor), database, renderer, prune=True)
    assert result.outcome == APPLIED, result.line()
    scripts = [query for query in sent if query.startswith("-- pgne ")]  # not the catalog queries
    assert [script.split(":", 1)[0] for script in scripts] == [f"-- pgne {__version__}",
                                                               f"-- pgne {__version__} --prune"]
    assert "\n".join(scripts) == printed.stdout
    assert state(db) == (True, {("public", "t", "pgne_insert")}, {FN_T})
    assert status_in_process(path).code == 0


def test_prune_in_a_disabled_database_after_the_schema_is_dropped(db, write_config):
    applied(apply_in_process(write_config(db, monitors())), db)
    path = write_config(db, monitors()[:1], enabled=False)  # u deleted from the config, the database disabled
    pruned = apply_in_process(path, prune=True)
    assert pruned.code == 0, pruned.stdout
    assert pruned.lines[0].startswith(f"{name(db)}: applied: ")
    assert f"extra: function pgne.{FN_U} (not named by the config)" in pruned.lines[0]
    assert state(db) == NOTHING


class AppliedListener:
    """LISTEN pgne_applied: how many NOTIFYs came since the last call (exactly: a sentinel sent
    after the command arrives after everything the command sent)."""

    def __init__(self, db):
        self.db = db
        self.conn = db.connect(autocommit=True)
        with self.conn.cursor() as cur:
            cur.execute("LISTEN pgne_applied")
        self.sentinels = 0

    def since_last(self) -> int:
        self.sentinels += 1
        sentinel = f"sentinel {self.sentinels}"
        with self.db.connect(autocommit=True) as sender, sender.cursor() as cur:
            cur.execute("SELECT pg_notify('pgne_applied', %s)", (sentinel,))
        got: list[str] = []
        deadline = time.monotonic() + 10
        while sentinel not in got:
            assert time.monotonic() < deadline, f"no sentinel within 10 s: {got}"
            select.select([self.conn], [], [], 0.5)
            self.conn.poll()
            got += [note.payload for note in self.conn.notifies]
            del self.conn.notifies[:]
        return len([p for p in got if not p.startswith("sentinel ")])


def test_every_apply_but_a_dry_run_tells_running_workers_whatever_its_outcome(db, write_config):
    """A DBA who fixed a setup problem by hand runs `pgne apply` to make the exporter see it: the
    NOTIFY pgne_applied comes with "up to date" and with a failure too; a dry run changes nothing
    and says nothing."""
    path = write_config(db, monitors())
    listener = AppliedListener(db)
    try:
        applied(apply_in_process(path), db)
        assert listener.since_last() == 1
        assert apply_in_process(path).lines == [f"{name(db)}: up to date"]
        assert listener.since_last() == 1
        assert apply_in_process(path, dry_run=True).lines == [f"{name(db)}: up to date"]
        assert listener.since_last() == 0
        db.execute("ALTER TABLE t DROP COLUMN code")
        for dry_run in (False, True):
            failed = apply_in_process(path, dry_run=dry_run)
            assert failed.code == 1, failed.stdout
            assert failed.lines[0].startswith(f"{name(db)}: FAILED: "), failed.lines
            assert listener.since_last() == (0 if dry_run else 1)
    finally:
        listener.conn.close()


def test_a_running_pgne_sees_a_problem_fixed_by_hand_when_apply_finds_the_database_up_to_date(
        db, write_config, tmp_path):
    """Default --trigger-check-interval (60 s): only apply's NOTIFY can make the worker see the
    problem and then its fix within the 10 s allowed here."""
    path = write_config(db, monitors())
    applied(apply_in_process(path), db)
    problem = {"host": db.host_label, "database": db.name, "problem": "missing_label_column", "schema": "public",
               "table": "t", "column": "code"}
    with PgneProcess(path, tmp_path / "pgne").running() as proc:
        assert proc.value("pgne_setup_problem", problem) == 0
        db.execute("ALTER TABLE t DROP COLUMN code")
        failed = run_pgne("apply", "-c", path)  # nothing to apply; it fails with the problem
        assert failed.returncode == 1, failed.stdout + failed.stderr
        proc.wait_for_value("pgne_setup_problem", problem, 1, timeout=10)
        db.execute("ALTER TABLE t ADD COLUMN code text")  # the DBA's fix, by hand
        fixed = run_pgne("apply", "-c", path)
        assert (fixed.returncode, fixed.stdout) == (0, f"{name(db)}: up to date\n"), fixed.stderr
        proc.wait_for_value("pgne_setup_problem", problem, 0, timeout=10)
        assert proc.value("pgne_trigger_installed", {"host": db.host_label, "database": db.name,
                                                     "schema": "public", "table": "t", "event": "INSERT"}) == 1
