"""`pgne run` as a real process against the real PostgreSQL: exact counts, faults, signals, HTTP.

Every test starts its own master (support.exporter.PgneProcess) on a throwaway database and reads /metrics
over HTTP. To know that every notification sent so far has been processed, `settle()` sends a
marker payload for a table that is not configured and waits until
pgne_notifications_total{result="unknown_table"} has counted it: notifications of one channel
are delivered in commit order, and a worker counts a batch's events before its rejects.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from support.databases import run_sql, throwaway_database
from support.exporter import PgneProcess
from support.metrics import parse_metrics
from support.processes import children_of, free_port, pgne_env, process_gone, wait_gone
from support.waiting import wait_until

CHANNEL = "pg_notify_exporter"
TAG = "it"
WHITELIST = ["alpha", "beta", "gamma"]
ONE = {"table": "one", "enabled": True, "function": "notification_with_payload",
       "columns_to_label": [{"code": WHITELIST}], "events": ["insert"]}
TWO = {"table": "two", "enabled": True, "function": "simple_event_notification",
       "events": ["INSERT", "delete"]}
THREE = {"table": "three", "enabled": True, "function": "notification_with_payload",
         "columns_to_label": [{"code": WHITELIST}], "events": ["update", "DELETE"]}
MONITORS = [ONE, TWO, THREE]
TABLES = """
CREATE TABLE one (id serial PRIMARY KEY, code text);
CREATE TABLE two (id serial PRIMARY KEY, note text);
CREATE TABLE three (id serial PRIMARY KEY, code text);
"""
CODES = WHITELIST + ["other"]
# (operation, table, code) of every series the config above names
CONFIGURED = (
    {("INSERT", "one", code) for code in CODES}
    | {("INSERT", "two", ""), ("DELETE", "two", "")}
    | {(op, "three", code) for op in ("UPDATE", "DELETE") for code in CODES}
)


# -- helpers ------------------------------------------------------------------------------------


def notify(db, *payloads: str) -> None:
    run_sql(db, *[("SELECT pg_notify(%s, %s)", (CHANNEL, payload)) for payload in payloads])


def write_standard(write_config, db, monitors=MONITORS, **options):
    """The config of these tests (conftest's write_config), with perform_setup: pgne installs
    the triggers itself when a worker connects."""
    return write_config(db, monitors, tag=TAG, perform_setup=True, **options)


def db_labels(db) -> dict[str, str]:
    return {"host": db.host_label, "database": db.name}


def up_labels(db) -> dict[str, str]:
    return {"host": db.host_label, "database": db.name, "tag": TAG}


def result_labels(db, result: str) -> dict[str, str]:
    return {"host": db.host_label, "database": db.name, "result": result}


def event_labels(db, operation: str, table: str, code: str = "") -> dict[str, str]:
    return {"operation": operation, "host": db.host_label, "database": db.name, "tag": TAG,
            "schema": "public", "table": table, "code": code}


def events(proc: PgneProcess, db) -> dict[tuple[str, str, str], float]:
    """pgne_events_total of one database: {(operation, table, code): value}."""
    found = {}
    for labels, value in proc.series("pgne_events_total", database=db.name, host=db.host_label).items():
        d = dict(labels)
        assert d["tag"] == TAG and d["schema"] == "public", d
        found[(d["operation"], d["table"], d["code"])] = value
    return found


def expected_events(**counts: float) -> dict[tuple[str, str, str], float]:
    """Every configured series at 0, except `counts` given as OPERATION_table_code=value."""
    table = dict.fromkeys(CONFIGURED, 0.0)
    for key, value in counts.items():
        operation, name, code = (key.split("_", 2) + [""])[:3]
        assert (operation, name, code) in table, key
        table[(operation, name, code)] = float(value)
    return table


def settle(proc: PgneProcess, db) -> None:
    """Return once every notification sent before this call has been processed."""
    labels = result_labels(db, "unknown_table")
    before = proc.value("pgne_notifications_total", labels)
    notify(db, json.dumps({"table": "settle_marker", "action": "INSERT", "seq": time.monotonic()}))
    proc.wait_for_value("pgne_notifications_total", labels, before + 1)


def listening_backends(db) -> int:
    """pgne's connections to this test's database (other tests' pgne use other databases)."""
    conn = psycopg2.connect(db.dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'pgne'",
                        (db.name,))
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def tables(pg_database):
    run_sql(pg_database, TABLES)
    return pg_database


@pytest.fixture
def exporter(tables, write_config, tmp_path):
    """A running pgne on the standard config, every database up."""
    with PgneProcess(write_standard(write_config, tables), tmp_path / "pgne").running() as proc:
        yield proc


# -- counting -----------------------------------------------------------------------------------

def test_every_configured_series_exists_at_zero_before_any_write(exporter, tables):
    db = tables
    assert events(exporter, db) == expected_events()
    samples = exporter.scrape()
    for result in ("counted", "invalid", "unknown_table", "unmonitored_event"):
        assert samples[("pgne_notifications_total", frozenset(result_labels(db, result).items()))] == 0
    assert exporter.value("pgne_database_up", up_labels(db)) == 1
    assert exporter.value("pgne_worker_restarts_total", db_labels(db)) == 0
    assert exporter.value("pgne_reconnects_total", db_labels(db)) == 0
    assert exporter.value("pgne_config_last_reload_successful", {}) == 1
    for table, event in [("one", "INSERT"), ("two", "INSERT"), ("two", "DELETE"),
                         ("three", "UPDATE"), ("three", "DELETE")]:
        labels = dict(db_labels(db), schema="public", table=table, event=event)
        assert exporter.value("pgne_trigger_installed", labels) == 1, labels


def test_10000_row_insert_is_counted_exactly_with_whitelist_split(exporter, tables):
    db = tables
    run_sql(db, """
        INSERT INTO one (code)
        SELECT CASE i % 4 WHEN 0 THEN 'alpha' WHEN 1 THEN 'beta' WHEN 2 THEN 'zeta' END
        FROM generate_series(1, 10000) AS i
    """)  # 2500 alpha, 2500 beta, 2500 'zeta' and 2500 NULL: 5000 other
    expected = expected_events(INSERT_one_alpha=2500, INSERT_one_beta=2500, INSERT_one_other=5000)
    exporter.wait_for_values({("pgne_events_total", frozenset(event_labels(db, *k).items())): v
                              for k, v in expected.items()})
    settle(exporter, db)
    assert events(exporter, db) == expected
    # one notification per statement and label group
    assert exporter.value("pgne_notifications_total", result_labels(db, "counted")) == 3


def test_two_inserts_in_one_transaction_count_2_and_a_rolled_back_insert_counts_0(exporter, tables):
    db = tables
    conn = psycopg2.connect(db.dsn)
    try:
        with conn.cursor() as cur:  # psycopg2 opens a transaction
            cur.execute("INSERT INTO one (code) VALUES ('gamma')")
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO one (code) VALUES ('alpha')")
            cur.execute("INSERT INTO one (code) VALUES ('alpha')")  # an identical notification
        conn.commit()
    finally:
        conn.close()
    exporter.wait_for_value("pgne_events_total", event_labels(db, "INSERT", "one", "alpha"), 2)
    settle(exporter, db)
    assert events(exporter, db) == expected_events(INSERT_one_alpha=2)


def test_update_and_delete_are_counted_with_their_labels(exporter, tables):
    db = tables
    run_sql(
        db,
        "INSERT INTO three (code) VALUES ('alpha'), ('alpha'), ('alpha'), ('zeta')",  # INSERT: not configured
        "UPDATE three SET code = 'beta' WHERE code = 'alpha'",  # 3 x UPDATE beta (the new row)
        "UPDATE three SET code = code WHERE code = 'zeta'",  # 1 x UPDATE other
        "DELETE FROM three",  # 3 x DELETE beta, 1 x DELETE other (the old row)
        "INSERT INTO two (note) VALUES ('a'), ('b')",
        "DELETE FROM two WHERE note = 'a'",
    )
    settle(exporter, db)
    assert events(exporter, db) == expected_events(
        UPDATE_three_beta=3, UPDATE_three_other=1, DELETE_three_beta=3, DELETE_three_other=1,
        INSERT_two=2, DELETE_two=1)


def test_an_event_not_configured_for_the_table_is_not_counted_and_creates_no_series(exporter, tables):
    db = tables
    run_sql(
        db,
        "INSERT INTO one (code) VALUES ('alpha')",
        "DELETE FROM one",  # one is insert-only
        "UPDATE two SET note = 'x'",  # two has INSERT and DELETE only
        "INSERT INTO three (code) VALUES ('beta')",  # three has UPDATE and DELETE only
    )
    settle(exporter, db)
    assert events(exporter, db) == expected_events(INSERT_one_alpha=1)
    assert exporter.value("pgne_notifications_total", result_labels(db, "unmonitored_event")) == 0
    assert exporter.value("pgne_notifications_total", result_labels(db, "counted")) == 1


def test_bad_payloads_are_counted_by_result_never_as_events_and_the_worker_keeps_counting(exporter, tables):
    db = tables
    [worker] = exporter.worker_pids()
    invalid = [
        "not json at all",
        '[{"table": "one", "action": "INSERT"}]',
        '{"table": "one", "action": "UPSERT", "count": 1}',
        '{"table": "one", "action": "INSERT", "count": -1}',
        '{"table": "one", "action": "INSERT", "count": 1.5}',
    ]
    unknown_table = ['{"table": "nosuch", "action": "INSERT"}']
    unmonitored = ['{"table": "one", "action": "DELETE", "count": 4}']
    notify(db, *invalid, *unknown_table, *unmonitored)
    notify(db, '{"table": "public.one", "action": "INSERT", "data": {"code": "beta"}, "count": 3}')
    expected = {
        "invalid": len(invalid), "unknown_table": len(unknown_table),
        "unmonitored_event": len(unmonitored), "counted": 1,
    }
    exporter.wait_for_values({("pgne_notifications_total", frozenset(result_labels(db, r).items())): n
                              for r, n in expected.items()})
    assert events(exporter, db) == expected_events(INSERT_one_beta=3)
    assert exporter.worker_pids() == [worker]
    assert exporter.value("pgne_worker_restarts_total", db_labels(db)) == 0
    # and it keeps counting real events
    run_sql(db, "INSERT INTO one (code) VALUES ('beta'), ('gamma')")
    exporter.wait_for_value("pgne_events_total", event_labels(db, "INSERT", "one", "gamma"), 1)
    settle(exporter, db)
    assert events(exporter, db) == expected_events(INSERT_one_beta=4, INSERT_one_gamma=1)
    assert exporter.worker_pids() == [worker]


def test_pg_notify_exporter_payloads_are_counted_and_raw_values_become_other(exporter, tables):
    db = tables
    notify(
        db,
        '{"table":"one","action":"insert","data":{"code":"alpha"}}',
        '{"table":"one","action":"insert","data":{"code":"alpha"}}',  # another transaction: counted too
        '{"table":"one","action":"insert","data":{"code":"a raw value"}}',
        '{"table":"one","action":"insert","data":{"code":null}}',
        '{"table":"two","action":"delete","timestamp":"2024-01-01 00:00:00"}',
    )
    settle(exporter, db)
    assert events(exporter, db) == expected_events(INSERT_one_alpha=2, INSERT_one_other=2, DELETE_two=1)
    assert exporter.value("pgne_notifications_total", result_labels(db, "counted")) == 5
    assert exporter.value("pgne_notifications_total", result_labels(db, "invalid")) == 0


# -- processes and signals ------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_stops_the_workers_and_the_master_exits_0_within_10_s(exporter, tables, signum):
    workers = exporter.worker_pids()
    assert len(workers) == 1
    code, seconds = exporter.stop(signum)
    assert code == 0, exporter.describe()
    assert seconds < 10
    assert all(process_gone(pid) for pid in workers)
    wait_until(lambda: listening_backends(tables) == 0, 5, "pgne's backend to go away")


def test_a_killed_worker_is_restarted_and_its_counts_are_kept(exporter, tables):
    db = tables
    run_sql(db, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 7)")
    exporter.wait_for_value("pgne_events_total", event_labels(db, "INSERT", "one", "alpha"), 7)
    [old] = exporter.worker_pids()
    os.kill(old, signal.SIGKILL)
    # down (0, not absent) while it is away, then a new worker, up again
    exporter.wait_for_value("pgne_database_up", up_labels(db), 0)
    new = wait_until(lambda: [p for p in exporter.worker_pids() if p != old], 30, "a new worker",
                     exporter.describe)
    assert len(new) == 1 and process_gone(old)
    exporter.wait_for_value("pgne_database_up", up_labels(db), 1)
    assert exporter.value("pgne_worker_restarts_total", db_labels(db)) == 1
    assert events(exporter, db) == expected_events(INSERT_one_alpha=7)  # not reset
    run_sql(db, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 5)")
    exporter.wait_for_value("pgne_events_total", event_labels(db, "INSERT", "one", "alpha"), 12)
    settle(exporter, db)
    assert events(exporter, db) == expected_events(INSERT_one_alpha=12)
    assert exporter.worker_pids() == new


def test_workers_exit_within_5_s_when_the_master_is_killed(exporter, tables):
    """The workers, and the launcher the master started, all end by themselves when the master
    is SIGKILLed (nobody tells them)."""
    workers = exporter.worker_pids()
    helpers = children_of(exporter.pid)  # the launcher
    assert len(workers) == 1 and len(helpers) == 1 and listening_backends(tables) == 1
    killed = time.monotonic()
    exporter.send_signal(signal.SIGKILL)
    exporter.process.wait(10)
    wait_gone(workers + helpers, 5, "the workers and the launcher to exit after the master was killed")
    remaining = max(0.1, 5 - (time.monotonic() - killed))
    wait_until(lambda: listening_backends(tables) == 0, remaining,
               "no backend with application_name='pgne' 5 s after the master was killed")


RUN_WITH_NOFILE = """
import resource, runpy, sys
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard if hard > 0 else resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
sys.argv = ["pgne", *sys.argv[3:]]
runpy.run_module("pgne", run_name="__main__")
"""


def max_open_files(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a process, from /proc/PID/limits."""
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


@pytest.mark.parametrize("hard", [0, 64])  # 0: the hard limit as it is (far above 64)
def test_the_master_raises_its_open_files_limit_for_its_workers_or_says_it_cannot(tables, write_config, tmp_path,
                                                                                 hard):
    """Each worker takes 2 of the master's descriptors: with a soft limit of 64, the master
    raises it to 2 + 256 for one worker; when the hard limit is 64 too, it says what to raise.
    One worker fits in 64 either way: it counts."""
    proc = PgneProcess(write_standard(write_config, tables, [ONE]), tmp_path / "pgne")
    proc.command = lambda: [sys.executable, "-c", RUN_WITH_NOFILE, "64", str(hard), "run", "-c", proc.config,
                            "--listen-address", f"127.0.0.1:{proc.port}", "--state-dir", str(proc.state_dir)]
    with proc.running():
        soft_now, hard_now = max_open_files(proc.pid)
        warning = "1 worker(s) need about 258 open files, and the hard limit is 64: raise it"
        if hard:
            assert (soft_now, hard_now) == (64, 64) and warning in proc.stderr_text(), proc.describe()
        else:
            assert soft_now == 258 and hard_now > 258 and "open files" not in proc.stderr_text()
        run_sql(tables, "INSERT INTO one (code) VALUES ('alpha')")
        proc.wait_for_value("pgne_events_total", {"operation": "INSERT", "host": tables.host_label,
                                                  "database": tables.name, "tag": TAG, "schema": "public",
                                                  "table": "one", "code": "alpha"}, 1)


def test_database_up_is_0_not_absent_while_the_database_is_unreachable(pg_database, write_config, tmp_path):
    db = pg_database
    path = write_standard(write_config, db, [ONE], host="127.0.0.1", port=1, connect_timeout=2)
    proc = PgneProcess(path, tmp_path / "pgne")
    try:
        proc.start(expect_up=False)
        labels = {"host": "127.0.0.1:1", "database": db.name}  # port 1: the host label names it
        proc.wait_for_value("pgne_database_up", dict(labels, tag=TAG), 0)
        # it keeps retrying (the first retry comes after about 1 s)
        wait_until(lambda: (proc.value("pgne_reconnects_total", labels) or 0) >= 1, 15,
                   "a reconnect attempt", proc.describe)
        samples = proc.scrape()
        assert samples[("pgne_database_up", frozenset(dict(labels, tag=TAG).items()))] == 0
        zero = {k: v for k, v in samples.items()
                if k[0] == "pgne_events_total" and ("database", db.name) in k[1]}
        assert len(zero) == 4 and set(zero.values()) == {0}
        assert len(proc.worker_pids()) == 1
        assert "cannot connect" in proc.stderr_text()
        code, seconds = proc.stop(signal.SIGTERM)  # also while a worker waits to retry
        assert code == 0 and seconds < 10
    finally:
        proc.kill_leftovers()


def test_an_invalid_config_exits_2_and_starts_nothing(pg_database, write_config, tmp_path):
    bad = dict(ONE, events=["insert", "upsert"])
    path = write_standard(write_config, pg_database, [bad])
    port = free_port()
    state = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "pgne", "run", "-c", str(path), "--listen-address", f"127.0.0.1:{port}",
         "--state-dir", str(state)],
        cwd=tmp_path, env=pgne_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and "upsert" in result.stderr
    assert "Traceback" not in result.stderr
    assert not state.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert listening_backends(pg_database) == 0


# -- HTTP ---------------------------------------------------------------------------------------

def test_the_exposition_passes_promtool_and_openmetrics_is_served_when_asked(exporter, tables):
    db = tables
    run_sql(db, "INSERT INTO one (code) VALUES ('alpha'), ('nope')", "INSERT INTO two (note) VALUES ('x')")
    exporter.wait_for_value("pgne_events_total", event_labels(db, "INSERT", "two"), 1)
    text = exporter.metrics_text()
    assert exporter.get("/metrics")[1]["Content-Type"].startswith("text/plain; version=0.0.4")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")

    status, headers, body = exporter.get("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    om = body.decode("utf-8")
    assert om.endswith("# EOF\n")
    counts = {}
    for family in parse_openmetrics(om):
        for s in family.samples:
            if s.name == "pgne_events_total" and s.labels["database"] == db.name:
                counts[(s.labels["operation"], s.labels["table"], s.labels["code"])] = s.value
    assert counts == expected_events(INSERT_one_alpha=1, INSERT_one_other=1, INSERT_two=1)
    assert parse_metrics(text)[("pgne_build_info", frozenset({("version", _version())}))] == 1


def _version() -> str:
    from pgne import __version__

    return __version__


def test_the_landing_page_names_the_database_and_health_answers_200(exporter, tables):
    status, headers, body = exporter.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode("utf-8")
    assert tables.name in page and "<html" in page.lower()
    status, _, body = exporter.get("/-/healthy")
    assert status == 200
    assert exporter.get("/no/such/page")[0] == 404


# -- SIGHUP ---------------------------------------------------------------------------------------

@pytest.fixture
def second_database(pg_dsn):
    """Another throwaway database with the standard tables (for reloads that add one)."""
    with throwaway_database(pg_dsn) as db:
        run_sql(db, TABLES)
        yield db


def test_sighup_adds_or_changes_a_database_and_leaves_the_unchanged_one_running(
        tables, second_database, write_config, tmp_path):
    a, b = tables, second_database
    path = write_standard(write_config, a)
    proc = PgneProcess(path, tmp_path / "pgne")
    try:
        proc.start()
        run_sql(a, "INSERT INTO one (code) VALUES ('alpha'), ('beta'), ('beta')")
        proc.wait_for_value("pgne_events_total", event_labels(a, "INSERT", "one", "beta"), 2)
        [worker_a] = proc.worker_pids()

        write_standard(write_config, a, also=[(b, [ONE], {"tag": TAG, "perform_setup": True})])
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(proc.worker_pids()) == 2, 30, "a worker for the added database", proc.describe)
        proc.wait_for_value("pgne_database_up", up_labels(b), 1)
        assert worker_a in proc.worker_pids()
        assert proc.value("pgne_config_last_reload_successful", {}) == 1
        assert proc.value("pgne_database_up", up_labels(a)) == 1
        assert events(proc, a) == expected_events(INSERT_one_alpha=1, INSERT_one_beta=2)

        run_sql(a, "INSERT INTO one (code) VALUES ('alpha')")
        run_sql(b, "INSERT INTO one (code) VALUES ('gamma'), ('gamma')")
        proc.wait_for_value("pgne_events_total", event_labels(b, "INSERT", "one", "gamma"), 2)
        proc.wait_for_value("pgne_events_total", event_labels(a, "INSERT", "one", "alpha"), 2)
        settle(proc, a)
        assert events(proc, a) == expected_events(INSERT_one_alpha=2, INSERT_one_beta=2)
        assert worker_a in proc.worker_pids()
        assert proc.value("pgne_worker_restarts_total", db_labels(a)) == 0

        # change b's monitor: b's worker restarts (its counts stay), a's does not
        [worker_b] = [p for p in proc.worker_pids() if p != worker_a]
        changed = dict(ONE, events=["insert", "delete"])
        write_standard(write_config, a, also=[(b, [changed], {"tag": TAG, "perform_setup": True})])
        proc.send_signal(signal.SIGHUP)
        # reaped by the master, which called mark_process_dead(): the old worker's
        # pgne_database_up 1 no longer counts, so 1 below is the new worker listening (the
        # launcher reaps the process a moment before the master hears of it)
        wait_until(lambda: len(proc.worker_pids()) == 2 and not os.path.exists(f"/proc/{worker_b}")
                   and not (proc.state_dir / f"gauge_livemax_{worker_b}.db").exists(), 30,
                   "b's worker to be replaced and reaped, its live gauges removed", proc.describe)
        proc.wait_for_value("pgne_database_up", up_labels(b), 1)
        assert proc.value("pgne_events_total", event_labels(b, "DELETE", "one", "other")) == 0
        assert worker_a in proc.worker_pids()
        assert proc.value("pgne_config_last_reload_successful", {}) == 1
        assert proc.value("pgne_events_total", event_labels(b, "INSERT", "one", "gamma")) == 2  # kept
        run_sql(b, "DELETE FROM one WHERE code = 'gamma'")
        proc.wait_for_value("pgne_events_total", event_labels(b, "DELETE", "one", "gamma"), 2)
        settle(proc, a)
        assert events(proc, a) == expected_events(INSERT_one_alpha=2, INSERT_one_beta=2)
    finally:
        proc.kill_leftovers()


def test_sighup_with_an_invalid_config_keeps_the_old_one_running(exporter, tables, write_config):
    db = tables
    run_sql(db, "INSERT INTO one (code) VALUES ('gamma')")
    exporter.wait_for_value("pgne_events_total", event_labels(db, "INSERT", "one", "gamma"), 1)
    [worker] = exporter.worker_pids()
    good = exporter.value("pgne_config_last_reload_success_timestamp_seconds", {})

    path = write_standard(write_config, db, [dict(ONE, events=["insert", "upsert"]), TWO, THREE])
    assert str(path) == exporter.config
    exporter.send_signal(signal.SIGHUP)
    exporter.wait_for_value("pgne_config_last_reload_successful", {}, 0)
    wait_until(lambda: "upsert" in exporter.stderr_text(), 10, "the reload error in the log", exporter.describe)
    log = exporter.stderr_text()
    assert f"reload: {path}" in log
    assert exporter.value("pgne_config_last_reload_success_timestamp_seconds", {}) == good

    run_sql(db, "INSERT INTO one (code) VALUES ('gamma')")
    exporter.wait_for_value("pgne_events_total", event_labels(db, "INSERT", "one", "gamma"), 2)
    settle(exporter, db)
    assert events(exporter, db) == expected_events(INSERT_one_gamma=2)
    assert exporter.worker_pids() == [worker]
    assert exporter.process.poll() is None


def _break_template(path, how: str) -> None:
    """What a `pip install` of another version (or an edit) may leave where a template was."""
    if how == "removed":
        path.unlink()
    elif how == "undecodable":  # a new file (new mtime), not UTF-8
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data + b"\xff\xfe -- not UTF-8\n")
    else:  # "unreadable" for anyone, even root: the name is now a folder
        path.unlink()
        path.mkdir()


def _check_then_set_up_again(proc: PgneProcess, db) -> None:
    """A trigger check (every second) finds the dropped trigger, then perform_setup (after a
    reconnect) installs it again: both render templates."""
    installed = {**db_labels(db), "schema": "public", "table": "two", "event": "INSERT"}
    run_sql(db, "DROP TRIGGER pgne_insert ON two")
    proc.wait_for_value("pgne_trigger_installed", installed, 0)
    run_sql(db, ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                 "AND application_name = 'pgne'", (db.name,)))
    proc.wait_for_value("pgne_trigger_installed", installed, 1)


@pytest.mark.parametrize("how", ["removed", "undecodable", "unreadable"])
def test_templates_of_a_folder_changed_under_a_running_pgne_change_nothing_until_restart(
        tables, write_config, tmp_path, how):
    """A worker holds its templates in memory from its start: a --templates folder edited (or
    pgne's files replaced) under a running pgne changes neither its setup nor its trigger check,
    and nothing is logged: no traceback, no worker death, every row counted."""
    from pgne.resources import builtin_templates_dir

    db = tables
    templates = tmp_path / "templates"
    templates.mkdir()
    for name in ("simple_event_notification.sql.j2", "_extra_objects.sql.j2", "_database.sql.j2"):
        (templates / name).write_text((builtin_templates_dir() / name).read_text())
    (templates / "mine.sql.j2").write_text((builtin_templates_dir() / "simple_event_notification.sql.j2").read_text())
    mine = {"table": "two", "enabled": True, "function": "mine", "events": ["INSERT"]}
    config = write_standard(write_config, db, monitors=[mine])
    with PgneProcess(config, tmp_path / "pgne", "--templates", str(templates),
                     "--trigger-check-interval", "1").running() as proc:
        [worker] = proc.worker_pids()
        for name in ("mine.sql.j2", "_extra_objects.sql.j2", "_database.sql.j2"):
            _break_template(templates / name, how)
        _check_then_set_up_again(proc, db)
        run_sql(db, "INSERT INTO two (note) SELECT 'x' FROM generate_series(1, 4)")
        no_code = {k: v for k, v in event_labels(db, "INSERT", "two").items() if k != "code"}  # no label columns
        proc.wait_for_value("pgne_events_total", no_code, 4)
        assert proc.worker_pids() == [worker]
        assert proc.value("pgne_worker_restarts_total", db_labels(db)) == 0
        log = proc.stderr_text()
        assert log.count(f"{db.host_label}/{db.name}: setup: applied") == 2, log
        assert "Traceback" not in log and "Error" not in log and "cannot load" not in log, log


def test_pgnes_own_templates_replaced_under_a_running_pgne_change_nothing_until_restart(
        tables, write_config, tmp_path):
    """As after a `pip install` by root with umask 077 or of a broken file under a running pgne:
    the built-in templates are read when pgne starts, never again by its workers (not even by one
    started after the change)."""
    import pgne
    from pgne.resources import builtin_templates_dir, config_schema_path

    db = tables
    package = tmp_path / "package"
    shutil.copytree(Path(pgne.__file__).parent, package / "pgne", ignore=shutil.ignore_patterns("__pycache__"))
    from_copy = package / "pgne" / "sql_templates"  # as installed; a checkout has them beside pgne/
    if not from_copy.is_dir():
        shutil.copytree(builtin_templates_dir(), from_copy)
        shutil.copytree(config_schema_path().parent, package / "pgne" / "schema")

    class CopiedPgne(PgneProcess):
        def environment(self):
            env = super().environment()
            env["PYTHONPATH"] = os.pathsep.join([str(package), env["PYTHONPATH"]])
            return env

    config = write_standard(write_config, db, monitors=[TWO])
    with CopiedPgne(config, tmp_path / "pgne", "--trigger-check-interval", "1").running() as proc:
        [worker] = proc.worker_pids()
        for path in sorted(from_copy.glob("*.j2")):
            _break_template(path, "undecodable")
        _check_then_set_up_again(proc, db)
        assert proc.worker_pids() == [worker]
        assert proc.value("pgne_worker_restarts_total", db_labels(db)) == 0
        os.kill(worker, signal.SIGKILL)  # a worker started after the change
        proc.wait_for_value("pgne_worker_restarts_total", db_labels(db), 1)
        wait_until(lambda: proc.worker_pids() not in ([], [worker]), 30, "a new worker", proc.describe)
        proc.wait_for_value("pgne_database_up", up_labels(db), 1)
        _check_then_set_up_again(proc, db)
        run_sql(db, "INSERT INTO two (note) SELECT 'x' FROM generate_series(1, 4)")
        no_code = {k: v for k, v in event_labels(db, "INSERT", "two").items() if k != "code"}  # no label columns
        proc.wait_for_value("pgne_events_total", no_code, 4)
        assert proc.value("pgne_worker_restarts_total", db_labels(db)) == 1
        log = proc.stderr_text()
        assert "Traceback" not in log and "cannot load" not in log and "Decode" not in log, log
