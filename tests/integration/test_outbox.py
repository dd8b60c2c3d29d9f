"""`delivery: outbox` against the real PostgreSQL and real `pgne` processes.

Config and commands (`check`, `render-sql`, `apply`, `status`) in both delivery modes and the
switch between them; then counting through a running `pgne run`: exact counts, rows committed
while pgne was stopped, the backlog gauges, the same series as notify mode, privileges, two
instances draining one database, and a counter that never goes backwards across a worker
SIGKILL and a full restart of pgne.

"Drained" is observable: pgne.event_log is empty, and pgne.totals and the exported
pgne_events_total both equal what the test committed (support.outbox.wait_drained).
"""
from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import uuid
from types import SimpleNamespace

import psycopg2
import pytest
from psycopg2 import sql
from support.configs import TAG, config_text
from support.databases import query, throwaway_database
from support.exporter import PgneProcess
from support.metrics import MonotonicWatch
from support.outbox import (
    OTHER,
    WHITELIST,
    backlog_rows,
    db_totals,
    exported,
    nonzero,
    outbox_config,
    outbox_entry,
    wait_drained,
    whitelisted,
)
from support.processes import free_port, run_pgne
from support.waiting import wait_until

from pgne.model import Monitor
from pgne.render import function_name

ONE = {"table": "one", "enabled": True, "function": "notification_with_payload",
       "columns_to_label": [{"code": list(WHITELIST)}], "events": ["insert", "update", "delete", "truncate"]}
TWO = {"table": "two", "enabled": True, "function": "simple_event_notification", "events": ["insert", "delete"]}
MONITORS = [ONE, TWO]
TABLES = """
CREATE TABLE one (id serial PRIMARY KEY, code text, note text);
CREATE TABLE two (id serial PRIMARY KEY, note text);
"""
CODES = (*WHITELIST, OTHER)
# (operation, table, code) of every series the config above names
CONFIGURED = frozenset(
    {(op, "one", code) for op in ("INSERT", "UPDATE", "DELETE") for code in CODES}
    | {("TRUNCATE", "one", ""), ("INSERT", "two", ""), ("DELETE", "two", "")})
FN_ONE = function_name(Monitor("public", "one", True, "notification_with_payload", ("INSERT",)))
FN_TWO = function_name(Monitor("public", "two", True, "simple_event_notification", ("INSERT",)))
OUTBOX_ONLY_METRICS = {"pgne_outbox_backlog_rows", "pgne_outbox_oldest_event_age_seconds"}


# -- helpers ------------------------------------------------------------------------------------

def execute(dsn: str, *statements, conn=None) -> None:
    """Each statement (text, or (text, params)) in its own autocommitted transaction."""
    own = conn is None
    if own:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(*(statement if isinstance(statement, tuple) else (statement,)))
    finally:
        if own:
            conn.close()


def write(tmp_path, text: str, name: str = "events_config.yml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def status_rows(out: str) -> list[tuple[str, str]]:
    """(STATE, OBJECT) of each line of `pgne status` output after the header."""
    rows = []
    for line in out.splitlines()[1:]:
        _name, state, *what = re.split(r"\s{2,}", line.strip(), maxsplit=2)
        rows.append((state, what[0] if what else ""))
    return rows


def pgne(*args) -> tuple[int, str, str]:
    result = run_pgne(*args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout, result.stderr


def insert_codes(dsn: str, codes, conn=None) -> None:
    """One single-statement INSERT into `one` with these code values."""
    execute(dsn, ("INSERT INTO one (code) SELECT unnest(%s::text[])", (list(codes),)), conn=conn)


def split(codes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for code in codes:
        counts[whitelisted(code)] = counts.get(whitelisted(code), 0) + 1
    return counts


def start_pgne(tmp_path, config_path, name: str = "pgne", **kwargs) -> PgneProcess:
    proc = PgneProcess(config_path, tmp_path / name, **kwargs)
    return proc


@pytest.fixture
def db(pg_database):
    pg_database.execute(TABLES)
    return pg_database


@pytest.fixture
def running(db, tmp_path):
    """pgne run on an outbox config with perform_setup (pgne installs pgne.event_log itself)."""
    with start_pgne(tmp_path, write(tmp_path, outbox_config(db, MONITORS, perform_setup=True))).running() as proc:
        yield proc


# -- config and commands ------------------------------------------------------------------------

def test_check_render_sql_apply_and_status_handle_delivery_outbox(db, tmp_path):
    config = write(tmp_path, outbox_config(db, MONITORS))

    code, out, err = pgne("check", "-c", config)
    assert (code, err) == (0, "")
    assert out == f"{config}: valid: 1 host, 1 database (1 enabled), 2 monitors (2 enabled), 6 triggers\n"

    code, script, err = pgne("render-sql", "-c", config)
    assert (code, err) == (0, "")
    assert pgne("render-sql", "-c", config)[1] == script  # byte-identical
    assert 'CREATE TABLE IF NOT EXISTS "pgne".event_log' in script
    assert 'CREATE TABLE IF NOT EXISTS "pgne".totals' in script
    assert 'REVOKE ALL ON SCHEMA "pgne" FROM PUBLIC;' in script
    assert script.count("SECURITY DEFINER") == 2
    assert script.count("SET search_path = pg_catalog, pg_temp") == 2
    assert "INSERT INTO pgne.event_log" in script
    assert "pg_notify" not in script
    notify_script = pgne("render-sql", "-c", write(tmp_path, outbox_config(db, MONITORS, delivery="notify"),
                                                   "notify.yml"))[1]
    assert "pg_notify" in notify_script and "event_log" not in notify_script

    code, out, _ = pgne("status", "-c", config)
    assert code == 1
    assert status_rows(out)[:3] == [("missing", "schema pgne"), ("missing", "table pgne.event_log"),
                                    ("missing", "table pgne.totals")]

    code, out, err = pgne("apply", "-c", config)
    assert (code, err) == (0, "")
    assert out == (
        f"{db.host}:{db.port}/{db.name}: applied: 11 changes: missing: schema pgne; "
        f"missing: table pgne.event_log; missing: table pgne.totals; "
        f"missing: function pgne.{FN_ONE} for public.one; missing: trigger pgne_insert on public.one; "
        f"missing: trigger pgne_update on public.one; missing: trigger pgne_delete on public.one; "
        f"missing: trigger pgne_truncate on public.one; missing: function pgne.{FN_TWO} for public.two; "
        f"missing: trigger pgne_insert on public.two; missing: trigger pgne_delete on public.two\n")
    code, out, _ = pgne("status", "-c", config)
    assert (code, status_rows(out)) == (0, [("in sync", "")])
    assert pgne("apply", "-c", config)[:2] == (0, f"{db.host}:{db.port}/{db.name}: up to date\n")

    # a queue without index, with autovacuum settings for constant inserts and deletes
    assert query(db.dsn, "SELECT count(*) FROM pg_index WHERE indrelid = 'pgne.event_log'::regclass") == [(0,)]
    (options,), = query(db.dsn, "SELECT reloptions FROM pg_class WHERE oid = 'pgne.event_log'::regclass")
    assert "autovacuum_vacuum_scale_factor=0" in options and "autovacuum_vacuum_insert_scale_factor=0" in options
    assert query(db.dsn, """
        SELECT array_agg(a.attname ORDER BY k.n)
        FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY AS k(attnum, n), pg_attribute a
        WHERE c.conrelid = 'pgne.totals'::regclass AND c.contype = 'p'
          AND a.attrelid = c.conrelid AND a.attnum = k.attnum""") == [(["table_name", "operation", "labels"],)]


def trigger_oids(dsn: str) -> dict[str, int]:
    return dict(query(dsn, "SELECT tgrelid::regclass::text || ' ' || tgname, oid::int FROM pg_trigger "
                              "WHERE tgname LIKE 'pgne\\_%'"))


def test_switching_notify_to_outbox_and_back_is_one_apply_and_counts_work_after_each_switch(db, tmp_path):
    name = f"{db.host}:{db.port}/{db.name}"
    notify_config = write(tmp_path, outbox_config(db, MONITORS, delivery="notify"), "notify.yml")
    outbox = write(tmp_path, outbox_config(db, MONITORS), "outbox.yml")
    # drain_interval is optional with outbox; the default (1 s) must work as well
    outbox_default = write(tmp_path, outbox_config(db, MONITORS, drain_interval=None), "outbox-default.yml")
    functions_outdated = (f"outdated: function pgne.{FN_ONE} for public.one; "
                          f"outdated: function pgne.{FN_TWO} for public.two")

    # 1. notify
    assert pgne("apply", "-c", notify_config)[:2] == (0, f"{name}: applied: 9 changes: missing: schema pgne; "
        f"missing: function pgne.{FN_ONE} for public.one; missing: trigger pgne_insert on public.one; "
        f"missing: trigger pgne_update on public.one; missing: trigger pgne_delete on public.one; "
        f"missing: trigger pgne_truncate on public.one; missing: function pgne.{FN_TWO} for public.two; "
        f"missing: trigger pgne_insert on public.two; missing: trigger pgne_delete on public.two\n")
    triggers = trigger_oids(db.dsn)
    assert len(triggers) == 6
    proc = start_pgne(tmp_path, notify_config, "pgne-notify-1").start()
    try:
        insert_codes(db.dsn, ["alpha", "beta", None])
        proc.wait_for_values({("pgne_events_total", frozenset({
            "operation": "INSERT", "host": db.host_label, "database": db.name, "tag": TAG, "schema": "public",
            "table": "one", "code": code}.items())): 1.0 for code in ("alpha", "beta", OTHER)})
        assert nonzero(exported(proc, db)) == {("INSERT", "one", c): 1 for c in ("alpha", "beta", OTHER)}
    finally:
        proc.stop()

    # 2. notify -> outbox: one apply; the triggers stay (no DDL on the application tables)
    code, out, _ = pgne("status", "-c", outbox)
    assert (code, status_rows(out)) == (1, [
        ("missing", "table pgne.event_log"), ("missing", "table pgne.totals"),
        ("outdated", f"function pgne.{FN_ONE} for public.one"), ("outdated", f"function pgne.{FN_TWO} for public.two")])
    assert pgne("apply", "-c", outbox)[:2] == (0, f"{name}: applied: 4 changes: missing: table pgne.event_log; "
                                                  f"missing: table pgne.totals; {functions_outdated}\n")
    assert pgne("status", "-c", outbox)[0] == 0
    assert pgne("status", "-c", notify_config)[0] == 1  # the functions are outbox functions now
    assert trigger_oids(db.dsn) == triggers
    insert_codes(db.dsn, ["gamma", "gamma"])  # before pgne runs: kept in pgne.event_log
    execute(db.dsn, "INSERT INTO two (note) VALUES ('x')")
    assert backlog_rows(db.dsn) == 2
    proc = start_pgne(tmp_path, outbox_default, "pgne-outbox-1").start()
    try:
        wait_drained(proc, db, {("INSERT", "one", "gamma"): 2, ("INSERT", "two", ""): 1})
        execute(db.dsn, "DELETE FROM one WHERE code = 'alpha'")
        wait_drained(proc, db, {("INSERT", "one", "gamma"): 2, ("INSERT", "two", ""): 1,
                                ("DELETE", "one", "alpha"): 1})
    finally:
        proc.stop()

    # 3. outbox -> notify: one apply; nothing is written to pgne.event_log any more
    assert pgne("apply", "-c", notify_config)[:2] == (0, f"{name}: applied: 2 changes: {functions_outdated}\n")
    assert pgne("status", "-c", notify_config)[0] == 0
    assert trigger_oids(db.dsn) == triggers
    proc = start_pgne(tmp_path, notify_config, "pgne-notify-2").start()
    try:
        insert_codes(db.dsn, ["beta", "zeta"])
        execute(db.dsn, "UPDATE one SET note = 'n' WHERE code = 'gamma'")
        expected = {("INSERT", "one", "beta"): 1.0, ("INSERT", "one", OTHER): 1.0, ("UPDATE", "one", "gamma"): 2.0}
        wait_until(lambda: nonzero(exported(proc, db)) == expected, 15, "notify counts after the switch back",
                   lambda: f"{nonzero(exported(proc, db))}\n{proc.describe()}")
        assert backlog_rows(db.dsn) == 0
    finally:
        proc.stop()

    # 4. and outbox again: pgne.totals kept its counts; new rows add to them
    assert pgne("apply", "-c", outbox)[:2] == (0, f"{name}: applied: 2 changes: {functions_outdated}\n")
    insert_codes(db.dsn, ["alpha"])
    proc = start_pgne(tmp_path, outbox, "pgne-outbox-2").start()
    try:
        wait_drained(proc, db, {("INSERT", "one", "gamma"): 2, ("INSERT", "two", ""): 1,
                                ("DELETE", "one", "alpha"): 1, ("INSERT", "one", "alpha"): 1})
    finally:
        proc.stop()


def test_a_sighup_switch_from_notify_to_outbox_keeps_counting_the_new_rows_also_after_a_worker_restart(db, tmp_path):
    config = write(tmp_path, outbox_config(db, MONITORS, delivery="notify"))
    assert pgne("apply", "-c", config)[0] == 0
    proc = start_pgne(tmp_path, config).start()
    try:
        insert_codes(db.dsn, ["alpha"] * 5)
        wait_until(lambda: exported(proc, db).get(("INSERT", "one", "alpha")) == 5, 15, "5 alpha", proc.describe)
        config.write_text(outbox_config(db, MONITORS), encoding="utf-8")
        assert pgne("apply", "-c", config)[0] == 0  # from here on, rows go to pgne.event_log
        proc.send_signal(signal.SIGHUP)
        insert_codes(db.dsn, ["alpha"] * 3)
        # the 5 notify counts became part of pgne.totals at the switch, then the 3 rows were added
        wait_until(lambda: backlog_rows(db.dsn) == 0 and db_totals(db.dsn) == {("INSERT", "one", "alpha"): 5 + 3},
                   15, "the 3 rows drained", proc.describe)
        (drained_at,), = query(db.dsn, "SELECT extract(epoch FROM max(last_event)) FROM pgne.totals")
        labels = {"operation": "INSERT", "host": db.host_label, "database": db.name, "tag": TAG, "schema": "public",
                  "table": "one", "code": "alpha"}
        wait_until(lambda: (proc.value("pgne_last_event_timestamp_seconds", labels) or 0) >= float(drained_at),
                   15, "an export after the drain", proc.describe)
        assert exported(proc, db)[("INSERT", "one", "alpha")] == 5 + 3

        # A restarted outbox worker of the same switch adds nothing more: no flat counter, no double count.
        (worker,) = proc.worker_pids()
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: proc.worker_pids() not in ([], [worker]), 30, "a new worker", proc.describe)
        insert_codes(db.dsn, ["alpha"] * 2)
        wait_until(lambda: exported(proc, db).get(("INSERT", "one", "alpha")) == 5 + 3 + 2, 30, "10 alpha",
                   proc.describe)
        assert db_totals(db.dsn) == {("INSERT", "one", "alpha"): 5 + 3 + 2}
    finally:
        proc.kill_leftovers()


DRAIN_INTERVAL_ERROR = "{path}: {host} > {name} > drain_interval: only used with delivery: outbox\n"


@pytest.mark.parametrize("delivery", [None, "notify"], ids=["default-delivery", "delivery-notify"])
def test_drain_interval_without_outbox_is_a_config_error_for_every_command(db, tmp_path, delivery):
    config = write(tmp_path, outbox_config(db, MONITORS, delivery=delivery, drain_interval=2))
    message = DRAIN_INTERVAL_ERROR.format(path=config, host=db.host, name=db.name)
    port = free_port()
    for command in (["check"], ["render-sql"], ["apply"], ["status"],
                    ["run", "--listen-address", f"127.0.0.1:{port}"]):
        code, out, err = pgne(*command, "-c", config)
        assert (code, out, err) == (2, "", message), command
    assert query(db.dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgne'") == [(0,)]


@pytest.mark.parametrize("value", ["durable", "Outbox", "NOTIFY", ""])
def test_unknown_delivery_value_is_rejected(db, tmp_path, value):
    config = write(tmp_path, outbox_config(db, MONITORS, delivery=value))
    for command in ("check", "render-sql", "apply"):
        code, out, err = pgne(command, "-c", config)
        assert (code, out) == (2, ""), command
        assert err == (f"{config}: {db.host} > {db.name} > delivery: {value!r} is not one of "
                       f"['notify', 'outbox']\n"), command


def test_drain_interval_must_be_positive(db, tmp_path):
    config = write(tmp_path, outbox_config(db, MONITORS, drain_interval=0))
    code, out, err = pgne("check", "-c", config)
    assert (code, out) == (2, "")
    assert err.startswith(f"{config}: {db.host} > {db.name} > drain_interval: ") and err.count("\n") == 1


# -- exact counts through a running pgne ----------------------------------------------------------

def test_10000_row_insert_select_is_exact_with_whitelist_split(db, running):
    execute(db.dsn, """
        INSERT INTO one (code)
        SELECT CASE i % 4 WHEN 0 THEN 'alpha' WHEN 1 THEN 'beta' WHEN 2 THEN 'zeta' END
        FROM generate_series(1, 10000) AS i
    """)  # 2500 alpha, 2500 beta, 2500 'zeta' and 2500 NULL: 5000 other
    values = wait_drained(running, db, {("INSERT", "one", "alpha"): 2500, ("INSERT", "one", "beta"): 2500,
                                        ("INSERT", "one", OTHER): 5000})
    assert set(values) == CONFIGURED  # every configured series is there, the rest at 0
    # one pgne.event_log row per statement and label group was drained: nothing else was counted
    assert running.value("pgne_notifications_total",
                         {"host": db.host_label, "database": db.name, "result": "counted"}) == 0


def test_two_single_row_inserts_in_one_transaction_count_2_and_a_rollback_0(db, running):
    conn = psycopg2.connect(db.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO one (code) VALUES ('alpha')")
            cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO one (code) SELECT 'beta' FROM generate_series(1, 100)")
            cur.execute("INSERT INTO two (note) VALUES ('rolled back')")
            cur.execute("DELETE FROM one")
        conn.rollback()
    finally:
        conn.close()
    values = wait_drained(running, db, {("INSERT", "one", "alpha"): 2})
    assert values[("INSERT", "one", "beta")] == 0 and values[("INSERT", "two", "")] == 0
    assert values[("DELETE", "one", "alpha")] == 0


def test_update_delete_and_truncate_are_counted(db, running):
    insert_codes(db.dsn, ["alpha"] * 3 + ["beta"] * 2 + [None])
    execute(db.dsn, "INSERT INTO two (note) SELECT 'n' FROM generate_series(1, 5)")
    execute(db.dsn,
            "UPDATE one SET note = 'u'",                                     # alpha 3, beta 2, other 1
            "UPDATE one SET code = 'gamma' WHERE code = 'beta'",            # counted with the new value
            "UPDATE one SET note = 'none' WHERE false",                      # no row: nothing
            "DELETE FROM one WHERE code = 'gamma'",                          # gamma 2
            "DELETE FROM two WHERE id <= 3",
            "TRUNCATE one")
    wait_drained(running, db, {
        ("INSERT", "one", "alpha"): 3, ("INSERT", "one", "beta"): 2, ("INSERT", "one", OTHER): 1,
        ("UPDATE", "one", "alpha"): 3, ("UPDATE", "one", "beta"): 2, ("UPDATE", "one", OTHER): 1,
        ("UPDATE", "one", "gamma"): 2, ("DELETE", "one", "gamma"): 2, ("TRUNCATE", "one", ""): 1,
        ("INSERT", "two", ""): 5, ("DELETE", "two", ""): 3})


def test_rows_committed_while_pgne_was_stopped_are_counted_as_soon_as_it_starts(db, tmp_path):
    config = write(tmp_path, outbox_config(db, MONITORS))
    assert pgne("apply", "-c", config)[0] == 0
    insert_codes(db.dsn, ["alpha", "beta", "zeta", None])  # 3 label groups: alpha, beta, other
    execute(db.dsn, "INSERT INTO two (note) VALUES ('a'), ('b')", "DELETE FROM one WHERE code = 'beta'")
    assert backlog_rows(db.dsn) == 5  # nobody drains yet
    (age,), = query(db.dsn, "SELECT count(*) FROM pgne.event_log WHERE created_at <= now()")
    assert age == 5

    proc = start_pgne(tmp_path, config)
    try:
        started = time.monotonic()
        proc.start()
        values = wait_drained(proc, db, {("INSERT", "one", "alpha"): 1, ("INSERT", "one", "beta"): 1,
                                         ("INSERT", "one", OTHER): 2, ("INSERT", "two", ""): 2,
                                         ("DELETE", "one", "beta"): 1}, timeout=10)
        assert time.monotonic() - started < 10
        assert set(values) == CONFIGURED
        labels = {"host": db.host_label, "database": db.name}
        assert proc.value("pgne_outbox_backlog_rows", labels) == 0
        assert proc.value("pgne_outbox_oldest_event_age_seconds", labels) == 0
        assert proc.value("pgne_database_up", dict(labels, tag=TAG)) == 1
    finally:
        proc.kill_leftovers()


def test_backlog_gauges_show_rows_that_cannot_be_drained_yet(db, tmp_path):
    """Rows locked by another session are skipped by the drain (SKIP LOCKED) and stay in the
    backlog: pgne_outbox_backlog_rows counts them and the oldest one's age grows."""
    config = write(tmp_path, outbox_config(db, MONITORS))
    assert pgne("apply", "-c", config)[0] == 0
    insert_codes(db.dsn, ["alpha", "beta", "gamma"])
    locker = psycopg2.connect(db.dsn)
    proc = start_pgne(tmp_path, config)
    try:
        with locker.cursor() as cur:
            cur.execute("SELECT * FROM pgne.event_log FOR UPDATE")
            assert cur.rowcount == 3
        proc.start()
        labels = {"host": db.host_label, "database": db.name}
        wait_until(lambda: proc.value("pgne_outbox_backlog_rows", labels) == 3
                   and proc.value("pgne_outbox_oldest_event_age_seconds", labels) > 0.3,
                   15, "backlog 3 with an age above 0.3 s", proc.describe)
        insert_codes(db.dsn, ["beta"])  # not locked: drained meanwhile
        wait_until(lambda: exported(proc, db)[("INSERT", "one", "beta")] == 1, 15, "the unlocked row counted",
                   proc.describe)
        assert proc.value("pgne_outbox_backlog_rows", labels) == 3
        assert exported(proc, db)[("INSERT", "one", "alpha")] == 0
        locker.rollback()
        wait_drained(proc, db, {("INSERT", "one", "alpha"): 1, ("INSERT", "one", "beta"): 2,
                                ("INSERT", "one", "gamma"): 1})
        wait_until(lambda: proc.value("pgne_outbox_backlog_rows", labels) == 0
                   and proc.value("pgne_outbox_oldest_event_age_seconds", labels) == 0,
                   15, "both backlog gauges at 0", proc.describe)
    finally:
        locker.close()
        proc.kill_leftovers()


def series_set(samples, database) -> set[tuple]:
    """(name, labels without `database`) of every sample that names `database`."""
    return {(name, frozenset((k, v) for k, v in labels if k != "database"))
            for (name, labels), _ in samples.items() if ("database", database.name) in labels}


def test_same_metric_names_labels_and_preinitialised_series_as_notify_mode(db, pg_dsn, tmp_path):
    with throwaway_database(pg_dsn) as other:
        execute(other.dsn, TABLES)
        text = config_text(outbox_entry(db, MONITORS, perform_setup=True),
                           outbox_entry(other, MONITORS, delivery="notify", perform_setup=True))
        proc = start_pgne(tmp_path, write(tmp_path, text))
        try:
            proc.start()
            def all_series():
                samples = proc.scrape()
                return samples if set(exported(proc, db, samples)) == CONFIGURED else None

            samples = wait_until(all_series, 15, "the outbox database's series", proc.describe)
            assert set(exported(proc, other, samples)) == CONFIGURED
            assert not nonzero(exported(proc, db, samples)) and not nonzero(exported(proc, other, samples))
            outbox_series, notify_series = series_set(samples, db), series_set(samples, other)
            assert {name for name, _ in outbox_series - notify_series} == OUTBOX_ONLY_METRICS
            assert notify_series - outbox_series == set()

            # the same writes give the same numbers in both modes
            for database in (db, other):
                insert_codes(database.dsn, ["alpha", "beta", "zeta", None])
                execute(database.dsn, "UPDATE one SET note = 'x' WHERE code = 'alpha'",
                        "INSERT INTO two (note) VALUES ('a')", "DELETE FROM two", "TRUNCATE one")
            expected = {("INSERT", "one", "alpha"): 1, ("INSERT", "one", "beta"): 1, ("INSERT", "one", OTHER): 2,
                        ("UPDATE", "one", "alpha"): 1, ("INSERT", "two", ""): 1, ("DELETE", "two", ""): 1,
                        ("TRUNCATE", "one", ""): 1}
            wait_drained(proc, db, expected)
            wait_until(lambda: nonzero(exported(proc, other)) == expected, 15, "the notify database's counts",
                       lambda: f"{nonzero(exported(proc, other))}\n{proc.describe()}")
            samples = proc.scrape()
            assert exported(proc, db, samples) == exported(proc, other, samples)
            assert series_set(samples, db) - series_set(samples, other) == {
                s for s in series_set(samples, db) if s[0] in OUTBOX_ONLY_METRICS}
        finally:
            proc.kill_leftovers()


# -- privileges ---------------------------------------------------------------------------------

@pytest.fixture
def make_role(db, pg_dsn):
    """make_role(*grants) -> (name, password): a LOGIN role with CONNECT on the test database and
    these GRANT statements ({role} is filled in); dropped after the test."""
    made = []

    def make(*grants: str) -> tuple[str, str]:
        name, password = f"pgne_it_role_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
        made.append(name)
        role = sql.Identifier(name)
        execute(db.dsn, (sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(role), (password,)),
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db.name), role),
                *[sql.SQL(grant).format(role=role) for grant in grants])
        return name, password

    yield make
    for name in made:
        execute(db.dsn, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        execute(pg_dsn, sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def has(dsn: str, check: str, *args) -> bool:
    return query(dsn, f"SELECT {check}", args)[0][0]


def test_application_role_needs_no_rights_on_schema_pgne_and_public_has_none(db, running, make_role):
    app, app_password = make_role("GRANT INSERT ON one TO {role}")
    nobody, _ = make_role()
    # PUBLIC: no entry in the ACLs of schema pgne and of its tables, so a fresh role can do nothing
    assert query(db.dsn, "SELECT count(*) FROM pg_namespace, aclexplode(nspacl) a "
                            "WHERE nspname = 'pgne' AND a.grantee = 0") == [(0,)]
    assert query(db.dsn, "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a "
                            "WHERE c.relnamespace = 'pgne'::regnamespace AND a.grantee = 0") == [(0,)]
    for role in (nobody, app):
        for privilege in ("USAGE", "CREATE"):
            assert not has(db.dsn, "has_schema_privilege(%s, 'pgne', %s)", role, privilege), (role, privilege)
        for table in ("pgne.event_log", "pgne.totals"):
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
                assert not has(db.dsn, "has_table_privilege(%s, %s, %s)", role, table, privilege)

    conn = psycopg2.connect(db.dsn, user=app, password=app_password)
    try:
        with conn.cursor() as cur:
            # explicit ids: the role has no rights on one's sequence either
            cur.execute("INSERT INTO one (id, code) SELECT i, CASE WHEN i % 2 = 0 THEN 'alpha' ELSE 'zeta' END "
                        "FROM generate_series(1, 10) AS i")
            cur.execute("INSERT INTO one (id, code) VALUES (11, 'gamma')")
        conn.commit()
        assert not [n for n in conn.notices if "pgne" in n], conn.notices  # no WARNING from the trigger
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):  # and cannot forge counts
            with conn.cursor() as cur:
                cur.execute("INSERT INTO pgne.event_log (table_name, operation, labels, n) "
                            "VALUES ('public.one', 'INSERT', '{\"code\": \"beta\"}', 1000)")
        conn.rollback()
    finally:
        conn.close()
    wait_drained(running, db, {("INSERT", "one", "alpha"): 5, ("INSERT", "one", OTHER): 5,
                               ("INSERT", "one", "gamma"): 1})


def test_pgne_run_role_with_the_documented_least_privilege_grants_drains_and_exports(db, tmp_path, make_role):
    """docs: USAGE on schema pgne; SELECT, UPDATE, DELETE on pgne.event_log (the drain locks
    rows with SELECT ... FOR UPDATE SKIP LOCKED, which needs UPDATE); SELECT, INSERT, UPDATE on
    pgne.totals. No rights on the application's tables."""
    assert pgne("apply", "-c", write(tmp_path, outbox_config(db, MONITORS), "admin.yml"))[0] == 0
    role, password = make_role("GRANT USAGE ON SCHEMA pgne TO {role}",
                               "GRANT SELECT, UPDATE, DELETE ON pgne.event_log TO {role}",
                               "GRANT SELECT, INSERT, UPDATE ON pgne.totals TO {role}")
    assert not has(db.dsn, "has_table_privilege(%s, 'public.one', 'SELECT')", role)
    as_role = SimpleNamespace(name=db.name, host=db.host, port=db.port, user=role, password=password)
    text = outbox_config(as_role, MONITORS)
    insert_codes(db.dsn, ["alpha", "zeta"])
    proc = start_pgne(tmp_path, write(tmp_path, text))
    try:
        proc.start()
        execute(db.dsn, "DELETE FROM one", "TRUNCATE two")
        wait_drained(proc, db, {("INSERT", "one", "alpha"): 1, ("INSERT", "one", OTHER): 1,
                                ("DELETE", "one", "alpha"): 1, ("DELETE", "one", OTHER): 1})
        assert "permission denied" not in proc.stderr_text()
        assert set(query(db.dsn, "SELECT usename FROM pg_stat_activity WHERE datname = %s "
                                    "AND application_name = 'pgne'", (db.name,))) == {(role,)}
    finally:
        proc.kill_leftovers()


# -- several pgne, killed workers, restarts -------------------------------------------------------

def writer_thread(dsn: str, seed: int, errors: list, transactions: int | None = None,
                  stop: threading.Event | None = None) -> threading.Thread:
    """Small committed transactions into `one` (1-3 INSERTs of 1-4 rows with random codes) and
    sometimes `two`: `transactions` of them, or until `stop` is set."""
    def run() -> None:
        rng = random.Random(seed)
        try:
            conn = psycopg2.connect(dsn)
            try:
                done = 0
                while (transactions is None or done < transactions) and not (stop and stop.is_set()):
                    with conn.cursor() as cur:
                        for _ in range(rng.randint(1, 3)):
                            codes = [rng.choice([*WHITELIST, "zeta", None]) for _ in range(rng.randint(1, 4))]
                            cur.execute("INSERT INTO one (code) SELECT unnest(%s::text[])", (codes,))
                        if rng.random() < 0.3:
                            cur.execute("INSERT INTO two (note) VALUES ('w')")
                    conn.commit()
                    done += 1
            finally:
                conn.close()
        except Exception as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def committed_inserts(dsn: str) -> dict[tuple, int]:
    """What the writers committed, from the application tables themselves."""
    expected: dict[tuple, int] = {}
    for code, n in query(dsn, "SELECT code, count(*) FROM one GROUP BY code"):
        key = ("INSERT", "one", whitelisted(code))
        expected[key] = expected.get(key, 0) + n
    (n,), = query(dsn, "SELECT count(*) FROM two")
    if n:
        expected[("INSERT", "two", "")] = n
    return expected


def test_two_pgne_instances_draining_one_database_count_every_row_once(db, tmp_path):
    config = write(tmp_path, outbox_config(db, MONITORS, drain_interval=0.02))
    assert pgne("apply", "-c", config)[0] == 0
    first = start_pgne(tmp_path, config, "pgne-a")
    second = start_pgne(tmp_path, config, "pgne-b")
    try:
        first.start()
        second.start()
        errors: list = []
        threads = [writer_thread(db.dsn, seed, errors, transactions=150) for seed in range(4)]
        for thread in threads:
            thread.join(120)
        assert not errors and not any(t.is_alive() for t in threads), errors
        expected = committed_inserts(db.dsn)
        assert sum(expected.values()) > 600
        for proc in (first, second):
            wait_drained(proc, db, expected)
        (total,), = query(db.dsn, "SELECT sum(total) FROM pgne.totals")
        assert total == sum(expected.values())
        for proc in (first, second):  # both were draining all along, and neither had to reconnect
            assert "draining pgne.event_log every 0.02 s" in proc.stderr_text()
            reconnects = proc.value("pgne_reconnects_total", {"host": db.host_label, "database": db.name})
            assert reconnects == 0, proc.describe()
    finally:
        first.kill_leftovers()
        second.kill_leftovers()


def test_concurrent_drains_of_many_label_groups_never_deadlock(db, tmp_path):
    """Drainers (pgne instances) add to pgne.totals rows in one order: they never deadlock, which
    a worker would take for a lost connection (reconnect, pgne_database_up 0 for a while)."""
    from pgne.outbox import drain_chunk

    values = [f"v{i}" for i in range(40)]
    many = {"table": "many", "enabled": True, "function": "notification_with_payload",
            "columns_to_label": [{"code": values}], "events": ["insert"]}
    execute(db.dsn, "CREATE TABLE many (code text)")
    assert pgne("apply", "-c", write(tmp_path, outbox_config(db, [many])))[0] == 0
    writers_done = threading.Event()
    errors: list = []
    deadlocks, drains = [0], [0]

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        conn = psycopg2.connect(db.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for _ in range(300):
                    cur.execute("INSERT INTO many (code) SELECT unnest(%s::text[])", (rng.sample(values, 20),))
        except Exception as exc:
            errors.append(exc)
        finally:
            conn.close()

    def drainer() -> None:
        conn = psycopg2.connect(db.dsn)
        conn.autocommit = True
        try:
            while not writers_done.is_set() or backlog_rows(db.dsn):
                try:
                    drain_chunk(conn, lambda _table, _operation, labels: labels)
                    drains[0] += 1
                except psycopg2.errors.DeadlockDetected:
                    deadlocks[0] += 1
        except Exception as exc:
            errors.append(exc)
        finally:
            conn.close()

    writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    drainers = [threading.Thread(target=drainer) for _ in range(3)]
    for thread in writers + drainers:
        thread.start()
    for thread in writers:
        thread.join(120)
    writers_done.set()
    for thread in drainers:
        thread.join(120)
    assert not errors, errors
    assert deadlocks[0] == 0, f"{deadlocks[0]} deadlocks in {drains[0]} drains"
    assert query(db.dsn, "SELECT sum(total) FROM pgne.totals") == [(3 * 300 * 20,)]
    assert backlog_rows(db.dsn) == 0


def test_exported_counter_never_goes_backwards_across_a_worker_sigkill_and_a_restart_of_pgne(db, tmp_path):
    config = write(tmp_path, outbox_config(db, MONITORS, perform_setup=True, drain_interval=0.05))
    watch = MonotonicWatch()  # fails at once if any scraped value is below an earlier one
    proc = start_pgne(tmp_path, config, "pgne-1")
    errors: list = []
    stop = threading.Event()
    try:
        proc.start()
        (worker,) = proc.worker_pids()
        thread = writer_thread(db.dsn, 1, errors, stop=stop)
        wait_until(lambda: watch.scrape_quietly(proc) and sum(exported(proc, db).values()) > 100,
                   30, "some rows counted", proc.describe)
        # SIGKILL the worker mid-write: the master restarts it; the counts stay
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: watch.scrape_quietly(proc) is not None and proc.worker_pids() not in ([], [worker]),
                   15, "a new worker", proc.describe)
        restarted = sum(exported(proc, db).values())
        wait_until(lambda: watch.scrape_quietly(proc) and sum(exported(proc, db).values()) > restarted + 100,
                   30, "more rows counted by the new worker", proc.describe)
        stop.set()
        thread.join(30)
        assert not thread.is_alive() and not errors, errors
        expected = committed_inserts(db.dsn)
        wait_drained(proc, db, expected, watch=watch)
        assert proc.value("pgne_worker_restarts_total", {"host": db.host_label, "database": db.name}) == 1
        last_run = {labels: value for labels, value in watch.last.items() if ("database", db.name) in labels}
    finally:
        stop.set()
        proc.kill_leftovers()  # SIGKILL to the master and its workers

    # rows committed while no pgne runs; then a new pgne with a new state dir
    insert_codes(db.dsn, ["alpha"] * 7 + ["zeta"] * 3)
    expected = committed_inserts(db.dsn)
    execute(db.dsn, "DELETE FROM two")
    expected[("DELETE", "two", "")] = expected[("INSERT", "two", "")]
    final = {key: expected.get(key, 0) for key in CONFIGURED}

    proc = start_pgne(tmp_path, config, "pgne-2")
    first_seen: dict[tuple, float] = {}
    scrapes = 0
    try:
        proc.spawn()
        deadline = time.monotonic() + 30
        while set(first_seen) != CONFIGURED or nonzero(exported(proc, db)) != nonzero(final):
            assert time.monotonic() < deadline, f"{first_seen}\n{proc.describe()}"
            assert proc.process.poll() is None, proc.describe()
            samples = watch.scrape_quietly(proc)  # also: every value >= the previous run's last one
            if samples is None:
                time.sleep(0.01)
                continue
            scrapes += 1
            for key, value in exported(proc, db, samples).items():
                first_seen.setdefault(key, value)
        assert first_seen == final  # every series appeared at the database's total, never below it
        assert all(watch.last[labels] >= value for labels, value in last_run.items())
        assert scrapes > 1
        wait_drained(proc, db, expected, watch=watch)
    finally:
        proc.kill_leftovers()


HEARTBEAT_SQL = "SELECT pg_catalog.pg_notification_queue_usage()"


def test_a_notify_pgne_applied_that_comes_during_a_drain_is_acted_on_at_once_not_at_the_next_heartbeat(db, tmp_path):
    """psycopg2 reads a NOTIFY that comes while the worker's drain runs (here it waits for a lock
    on pgne.totals) into conn.notifies, with the statement's answer: the socket stays quiet. The
    worker looks there before it waits: the check comes within a second (APPLIED_CHECK_SPACING),
    not at the next heartbeat (10 s)."""
    config = write(tmp_path, outbox_config(db, [TWO], perform_setup=True, drain_interval=3.3))
    installed = {"host": db.host_label, "database": db.name, "schema": "public", "table": "two", "event": "INSERT"}
    watcher = psycopg2.connect(db.dsn)
    watcher.autocommit = True
    blocker = psycopg2.connect(db.dsn)
    try:
        with PgneProcess(config, tmp_path / "pgne", "--trigger-check-interval", "600").running() as proc, \
                watcher.cursor() as cur, blocker.cursor() as blocked:
            proc.wait_for_value("pgne_trigger_installed", installed, 1)

            def pgne_backend(condition: str):
                cur.execute("SELECT query_start FROM pg_catalog.pg_stat_activity WHERE application_name = 'pgne' "
                            "AND datname = %s AND " + condition, (db.name, HEARTBEAT_SQL))
                rows = cur.fetchall()
                return rows[0][0] if rows else None

            # just after a heartbeat (the worker's last statement until its next drain, unless that
            # comes at once: 3.3 s and 10 s do not stay in step): the next heartbeat is 10 s away
            before = pgne_backend("query = %s")
            heartbeat = wait_until(lambda: (pgne_backend("query = %s") or before) != before and time.monotonic(),
                                   35, "a heartbeat of the worker", proc.describe)
            blocked.execute("LOCK TABLE pgne.totals IN ACCESS EXCLUSIVE MODE")
            cur.execute("INSERT INTO two (note) VALUES ('x')")
            wait_until(lambda: pgne_backend("wait_event_type = 'Lock' AND query <> %s"), 5,
                       "the worker's drain to wait for the lock", proc.describe)
            cur.execute("DROP TRIGGER pgne_insert ON two")  # what the check will find
            cur.execute("NOTIFY pgne_applied")
            blocker.rollback()  # the drain goes on: its answer brings the NOTIFY
            released = time.monotonic()
            assert released - heartbeat < 5, "the next heartbeat is too close to tell the difference"
            proc.wait_for_value("pgne_trigger_installed", installed, 0, timeout=3)
            assert time.monotonic() - heartbeat < 9  # before the next heartbeat could have done it
            proc.wait_for_value("pgne_events_total", {"host": db.host_label, "database": db.name, "tag": TAG,
                                                      "operation": "INSERT", "schema": "public", "table": "two"}, 1)
    finally:
        watcher.close()
        blocker.close()
