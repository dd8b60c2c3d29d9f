"""Setup problems of one monitor: a domain over a domain over numeric is numeric (not a problem),
a problem of one monitor (a missing label column, PostgreSQL 18's virtual generated columns) keeps
only that monitor from being set up, never the database's other monitors."""
from __future__ import annotations

import psycopg2
import pytest
from support.configs import config_text, database_entry
from support.databases import host_label, throwaway_database
from support.exporter import PgneProcess, apply_in_process, status_in_process
from support.metrics import settle
from support.outbox import outbox_entry
from support.waiting import wait_until

from pgne.cluster import ThrowawayCluster, find_binaries

ORDERS = {"table": "orders", "enabled": True, "function": "notification_with_payload",
          "columns_to_observe": [{"name": "amount", "buckets": [10]}], "events": ["insert"]}
FINE = {"table": "fine", "enabled": True, "function": "notification_with_payload", "events": ["insert"]}


def write(tmp_path, entry):
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(entry), encoding="utf-8")
    return path


def insert(db, *statements: str) -> None:
    conn = psycopg2.connect(db.dsn)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        conn.commit()
    finally:
        conn.close()


def counted(proc, db) -> dict:
    host = host_label(db.host, db.port)
    return {dict(k[1])["table"]: v for k, v in proc.scrape().items() if k[0] == "pgne_events_total"
            and dict(k[1])["database"] == db.name and dict(k[1])["host"] == host and v}


def wait_counted(proc, db, wanted: dict) -> None:
    wait_until(lambda: counted(proc, db) == wanted, 30, f"the counts {wanted}",
               lambda: f"{counted(proc, db)}\n{proc.describe()}")


def entry_for(db, delivery: str, monitors):
    return (outbox_entry(db, monitors, perform_setup=True) if delivery == "outbox"
            else database_entry(db, monitors))


@pytest.mark.parametrize("delivery", ["notify", "outbox"])
def test_a_domain_over_a_domain_over_numeric_is_observed(pg_database, tmp_path, delivery):
    pg_database.execute("CREATE DOMAIN money1 AS numeric CHECK (VALUE >= 0); CREATE DOMAIN money2 AS money1; "
                        "CREATE DOMAIN money3 AS money2; CREATE TABLE orders (id serial, amount money3); "
                        "CREATE TABLE fine (id serial)")
    config = write(tmp_path, entry_for(pg_database, delivery, [ORDERS, FINE]))
    assert status_in_process(config).code == 1  # not set up yet: drift, but no setup problem
    assert "not numeric" not in status_in_process(config).stdout
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        insert(pg_database, "INSERT INTO orders (amount) VALUES (1.5), (2), (20)", "INSERT INTO fine DEFAULT VALUES")
        wait_counted(proc, pg_database, {"orders": 3.0, "fine": 1.0})  # was 0/3 and 0/1
        sums = [v for k, v in proc.scrape().items() if k[0] == "pgne_observed_values_sum"
                and dict(k[1])["database"] == pg_database.name and v]
        assert sums == [23.5]


@pytest.mark.parametrize("delivery", ["notify", "outbox"])
def test_a_problem_of_one_monitor_does_not_keep_the_others_from_being_set_up(pg_database, tmp_path, delivery):
    pg_database.execute("CREATE TABLE orders (id serial, amount text); CREATE TABLE fine (id serial)")
    config = write(tmp_path, entry_for(pg_database, delivery, [ORDERS, FINE]))
    outcome = apply_in_process(config)
    assert outcome.code == 1
    [line] = outcome.lines
    assert "observed column amount of table public.orders is not of a numeric type" in line
    assert "(not set up: public.orders); " in line and "trigger pgne_insert on public.fine" in line
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        insert(pg_database, "INSERT INTO orders (amount) VALUES ('x')", "INSERT INTO fine DEFAULT VALUES")
        wait_counted(proc, pg_database, {"fine": 1.0})
        if delivery == "notify":
            settle(proc, pg_database)
        labels = {"host": host_label(pg_database.host, pg_database.port), "database": pg_database.name,
                  "schema": "public", "table": "orders", "column": "amount", "problem": "observed_column_not_numeric"}
        assert proc.value("pgne_setup_problem", labels) == 1.0
        assert counted(proc, pg_database) == {"fine": 1.0}
    again = apply_in_process(config)  # the rest is in place: only the problem remains
    assert again.code == 1
    assert again.lines[0].endswith("(not set up: public.orders; nothing else to apply)")


@pytest.fixture
def pg18_database(pg_server_version, pg_database, tmp_path):
    """A database on PostgreSQL 18 whichever server PGNE_TEST_SERVER selects: the test server's
    when it is 18, else one of the embedded server's own (virtual generated columns exist only
    from 18 on: the test runs on every server, never skipped)."""
    if pg_server_version >= 180000:
        yield pg_database
        return
    binaries = find_binaries(prefer="embedded")
    assert binaries.major >= 18, binaries.describe()
    with ThrowawayCluster(binaries, prefix="pgne-test-pg18-") as cluster:
        cluster.start()
        with throwaway_database(cluster.dsn) as database:
            yield database


@pytest.mark.parametrize("delivery", ["notify", "outbox"])
def test_a_virtual_generated_column_is_a_setup_problem_of_its_monitor(pg18_database, tmp_path, delivery):
    db = pg18_database
    db.execute("CREATE TABLE orders (id serial, base numeric, amount numeric GENERATED ALWAYS AS (base * 2) VIRTUAL, "
               "kind text GENERATED ALWAYS AS ('k' || id) VIRTUAL); CREATE TABLE fine (id serial)")
    labelled = dict(ORDERS, columns_to_label=[{"kind": ["k1"]}])
    config = write(tmp_path, entry_for(db, delivery, [labelled, FINE]))
    outcome = apply_in_process(config)
    assert outcome.code == 1
    [line] = outcome.lines
    for column in ("kind", "amount"):
        assert (f"column {column} of table public.orders is a virtual generated column, which a trigger cannot "
                f"read (make it STORED, or do not label or observe it)") in line
    status = status_in_process(config)
    assert status.code == 1 and "virtual generated column" in status.stdout
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        insert(db, "INSERT INTO orders (base) VALUES (1)", "INSERT INTO fine DEFAULT VALUES")
        wait_counted(proc, db, {"fine": 1.0})
        labels = {"host": host_label(db.host, db.port), "database": db.name, "schema": "public",
                  "table": "orders", "column": "amount", "problem": "virtual_generated_column"}
        assert proc.value("pgne_setup_problem", labels) == 1.0
