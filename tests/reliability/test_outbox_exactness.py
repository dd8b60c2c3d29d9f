"""`delivery: outbox` stays exact when the config changes, and across restarts of pgne.

A real `pgne run` counts known rows; the config is changed by SIGHUP (a whitelist value removed
or added, a label column added or removed, a monitor's event removed, a monitor removed and
re-added) or while pgne is stopped. After every step each series of pgne_events_total has an
exact expected value, the sum over series is the number of rows committed, no series ever
reads less than before (MonotonicWatch, also across restarts), and no series is served twice
(to Prometheus an empty label is no label: `{table="two"}` and `{table="two",note=""}` are one
series and must not both be printed).

Also: the counters of a SIGHUP switch from notify to outbox survive restarts of pgne, a SIGKILL
of its master included, with a fresh state dir (the continuity lives in pgne.totals).
"""
from __future__ import annotations

import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.configs import RELIABILITY_TAG, config_text, database_entry
from support.databases import run_sql
from support.exporter import PgneProcess
from support.metrics import MonotonicWatch
from support.processes import wait_gone
from support.waiting import wait_until

TABLES = """
CREATE TABLE one (id serial PRIMARY KEY, code text, note text);
CREATE TABLE two (id serial PRIMARY KEY, note text);
"""
BUILTIN = {"host", "database", "tag", "schema"}


def one(codes=None, note=None, events=("insert",)) -> dict:
    labels = []
    if codes is not None:
        labels.append({"code": list(codes)})
    if note is not None:
        labels.append({"note": list(note)})
    monitor = {"table": "one", "enabled": True, "function": "notification_with_payload", "events": list(events)}
    if labels:
        monitor["columns_to_label"] = labels
    return monitor


def two(events=("insert", "delete")) -> dict:
    return {"table": "two", "enabled": True, "function": "simple_event_notification", "events": list(events)}


def write_config(path, db, monitors) -> None:
    path.write_text(config_text(database_entry(db, monitors, delivery="outbox", drain_interval=0.1,
                                               tag=RELIABILITY_TAG)))


def series(proc: PgneProcess, db, watch: MonotonicWatch | None = None) -> dict[tuple, float]:
    """pgne_events_total of `db`, keyed by (operation, table, (non-empty label columns...)).

    Fails if two printed samples are one series to Prometheus (equal but for empty labels)."""
    text = proc.metrics_text()
    found: dict[tuple, float] = {}
    raw = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "pgne_events_total" or sample.labels.get("database") != db.name:
                continue
            assert sample.labels["host"] == db.host_label
            labels = {k: v for k, v in sample.labels.items() if k not in BUILTIN and v != ""}
            key = (labels.pop("operation"), labels.pop("table"), tuple(sorted(labels.items())))
            assert key not in found, f"served twice: {raw[key]} and {sample.labels}"
            found[key], raw[key] = sample.value, sample.labels
    if watch is not None:
        watch.observe({(name, labels): value for (name, labels), value in proc.scrape().items()})
    return found


def nonzero(values: dict) -> dict:
    return {k: v for k, v in values.items() if v}


def wait_series(proc: PgneProcess, db, expected: dict, watch: MonotonicWatch, what: str) -> dict:
    seen = {}

    def reached():
        seen["values"] = values = series(proc, db, watch)
        return values if nonzero(values) == expected else None

    return wait_until(reached, 30, what, lambda: f"seen {nonzero(seen.get('values', {}))}\n"
                                               f"expected {expected}\n{proc.describe()}")


def reload(proc: PgneProcess, path, db, monitors) -> None:
    """SIGHUP with a new config; returns once the new worker has set up and drained."""
    before = set(proc.worker_pids())
    write_config(path, db, monitors)
    proc.send_signal(signal.SIGHUP)
    up = {"host": db.host_label, "database": db.name, "tag": "rel"}

    def new_worker_up() -> bool:
        children = set(proc.worker_pids())
        return bool(children) and not children & before and proc.value("pgne_database_up", up) == 1

    wait_until(new_worker_up, 30, "the new worker to drain", proc.describe)


def k(operation: str, table: str, **labels: str) -> tuple:
    return (operation, table, tuple(sorted(labels.items())))


def insert_one(db, *rows: tuple) -> None:
    """One INSERT of (code, note) rows into `one`."""
    run_sql(db, ("INSERT INTO one (code, note) SELECT * FROM unnest(%s::text[], %s::text[])",
                 ([r[0] for r in rows], [r[1] for r in rows])))


@pytest.fixture
def db(pg_database):
    pg_database.execute(TABLES)
    return pg_database


def test_outbox_config_changes_by_sighup_keep_every_series_and_count_each_row_once(db, tmp_path):
    path = tmp_path / "events_config.yml"
    write_config(path, db, [one(codes=("alpha", "beta", "gamma")), two()])
    proc = PgneProcess(path, tmp_path / "pgne")
    watch = MonotonicWatch()
    try:
        proc.start()
        insert_one(db, *[("alpha", None)] * 3, *[("beta", None)] * 2, ("zeta", None), ("delta", None),
                   ("delta", None))
        run_sql(db, "INSERT INTO two (note) VALUES ('a'), ('b')", "DELETE FROM two WHERE note = 'b'")
        expected = {k("INSERT", "one", code="alpha"): 3, k("INSERT", "one", code="beta"): 2,
                    k("INSERT", "one", code="other"): 3, k("INSERT", "two"): 2, k("DELETE", "two"): 1}
        committed = 11
        wait_series(proc, db, expected, watch, "the first rows")

        # 1. a value removed from the whitelist: alpha's series keeps its 3; new alpha rows are `other`
        reload(proc, path, db, [one(codes=("beta", "gamma")), two()])
        insert_one(db, ("alpha", None), ("alpha", None), ("beta", None))
        committed += 3
        expected.update({k("INSERT", "one", code="other"): 3 + 2, k("INSERT", "one", code="beta"): 3})
        got = wait_series(proc, db, expected, watch, "after removing alpha")
        assert sum(got.values()) == committed

        # 2. a value added: the past `other` rows stay `other`; new delta rows are delta's
        reload(proc, path, db, [one(codes=("beta", "gamma", "delta")), two()])
        insert_one(db, ("delta", None))
        committed += 1
        expected[k("INSERT", "one", code="delta")] = 1
        got = wait_series(proc, db, expected, watch, "after adding delta")
        assert got[k("INSERT", "one", code="other")] == 5 and sum(got.values()) == committed

        # 3. a label column added: every past series keeps its value (now with note=""), new
        # rows count with their note
        reload(proc, path, db, [one(codes=("beta", "gamma", "delta"), note=("x",)), two()])
        insert_one(db, ("beta", "x"), ("beta", "x"), ("beta", None), ("zeta", "y"))
        committed += 4
        expected.update({k("INSERT", "one", code="beta", note="x"): 2, k("INSERT", "one", code="beta", note="other"): 1,
                         k("INSERT", "one", code="other", note="other"): 1})
        got = wait_series(proc, db, expected, watch, "after adding the label column note")
        assert sum(got.values()) == committed

        # 4. a label column removed: the series with a code keep their values (and their code);
        # new rows count without it
        reload(proc, path, db, [one(note=("x",)), two()])
        insert_one(db, ("beta", "x"), ("gamma", None))
        committed += 2
        expected.update({k("INSERT", "one", note="x"): 1, k("INSERT", "one", note="other"): 1})
        got = wait_series(proc, db, expected, watch, "after removing the label column code")
        assert sum(got.values()) == committed

        # 5. an event removed: DELETE on two keeps its 1, further DELETEs are not counted
        reload(proc, path, db, [one(note=("x",)), two(events=("insert",))])
        run_sql(db, "DELETE FROM two WHERE note = 'a'")
        insert_one(db, ("beta", "x"))
        committed += 1
        expected[k("INSERT", "one", note="x")] = 2
        got = wait_series(proc, db, expected, watch, "after removing DELETE from two")
        assert sum(got.values()) == committed

        # 6. a monitor removed: its series keep their values while it is gone. pgne leaves its
        # trigger installed (apply without --prune), so rows written meanwhile are kept in
        # pgne.totals and counted when the monitor is back: late, never twice.
        reload(proc, path, db, [one(note=("x",))])
        run_sql(db, "INSERT INTO two (note) VALUES ('c')")
        got = wait_series(proc, db, expected, watch, "after removing two")
        assert sum(got.values()) == committed
        reload(proc, path, db, [one(note=("x",)), two(events=("insert",))])
        run_sql(db, "INSERT INTO two (note) VALUES ('d')")
        committed += 2
        expected[k("INSERT", "two")] = 2 + 1 + 1
        got = wait_series(proc, db, expected, watch, "after adding two again")
        assert sum(got.values()) == committed
        before_restart = got
    finally:
        proc.kill_leftovers()

    # 7. a restart of pgne (a fresh state dir): every series of a monitored table and event is
    # back at its value; DELETE on two is no longer monitored
    proc = PgneProcess(path, tmp_path / "pgne-restarted")
    try:
        proc.start()
        del expected[k("DELETE", "two")]
        got = wait_series(proc, db, expected, watch, "after a restart")
        assert nonzero(got) == {key: v for key, v in nonzero(before_restart).items() if key != k("DELETE", "two")}
        assert sum(got.values()) == committed - 1
    finally:
        proc.kill_leftovers()


def test_outbox_config_changed_while_pgne_is_stopped_keeps_every_series_and_counts_each_row_once(db, tmp_path):
    path = tmp_path / "events_config.yml"
    write_config(path, db, [one(codes=("alpha", "beta")), two()])
    proc = PgneProcess(path, tmp_path / "pgne")
    watch = MonotonicWatch()
    try:
        proc.start()
        insert_one(db, ("alpha", None), ("alpha", None), ("beta", None), ("zeta", None))
        expected = {k("INSERT", "one", code="alpha"): 2, k("INSERT", "one", code="beta"): 1,
                    k("INSERT", "one", code="other"): 1}
        wait_series(proc, db, expected, watch, "the first rows")
    finally:
        proc.stop()

    # alpha leaves the whitelist, gamma joins it, and a label column is added
    write_config(path, db, [one(codes=("beta", "gamma"), note=("x",)), two()])
    proc = PgneProcess(path, tmp_path / "pgne-changed")
    try:
        proc.start()
        got = wait_series(proc, db, expected, watch, "the same series after the restart")
        assert sum(got.values()) == 4
        insert_one(db, ("alpha", "x"), ("gamma", None), ("beta", "x"))
        expected.update({k("INSERT", "one", code="other", note="x"): 1,
                         k("INSERT", "one", code="gamma", note="other"): 1,
                         k("INSERT", "one", code="beta", note="x"): 1})
        got = wait_series(proc, db, expected, watch, "new rows under the new labels")
        assert sum(got.values()) == 7
    finally:
        proc.kill_leftovers()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_notify_to_outbox_sighup_switch_keeps_its_count_across_restarts_of_pgne(db, tmp_path, how):
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(db, [two()], tag=RELIABILITY_TAG)))
    proc = PgneProcess(path, tmp_path / "pgne")
    labels = {"operation": "INSERT", "host": db.host_label, "database": db.name, "tag": "rel", "schema": "public",
              "table": "two"}
    try:
        proc.start()
        run_sql(db, "INSERT INTO two (note) SELECT 'n' FROM generate_series(1, 100)")
        proc.wait_for_value("pgne_events_total", labels, 100)
        write_config(path, db, [two()])  # perform_setup: the new worker installs the outbox functions
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "draining pgne.event_log" in proc.stderr_text(), 30, "the outbox worker", proc.describe)
        for _ in range(10):
            run_sql(db, "INSERT INTO two (note) VALUES ('o')")
        proc.wait_for_value("pgne_events_total", labels, 110)
        if how == "sigkill":  # the master alone: its workers exit by themselves
            workers = proc.worker_pids()
            proc.process.kill()
            proc.process.wait()
            wait_gone(workers, 10, "the workers of the killed master")
        else:
            assert proc.stop()[0] == 0
    finally:
        proc.kill_leftovers()

    proc = PgneProcess(path, tmp_path / "pgne-restarted")  # a fresh state dir: nothing kept on disk
    try:
        proc.start()
        proc.wait_for_value("pgne_events_total", labels, 110)
        for _ in range(5):
            run_sql(db, "INSERT INTO two (note) VALUES ('p')")
        proc.wait_for_value("pgne_events_total", labels, 115)
    finally:
        proc.kill_leftovers()
