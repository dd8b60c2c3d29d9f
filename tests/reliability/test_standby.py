"""A hot standby, or a name that points at one after a failover: never a traceback, never a count.

The standby is real: pg_basebackup -R from a primary TempCluster, streaming. pgne pointed at it
says once that the server is a standby, shows pgne_database_up 0 and checks again with backoff;
once the standby is promoted (the failover), pgne sets it up and counts exactly.
"""
from __future__ import annotations

import pytest
from support.clusters import TempCluster, start_cluster
from support.configs import RELIABILITY_TAG, config_text, database_entry
from support.databases import Database, create_database, run_sql
from support.exporter import PgneProcess
from support.faults import Stopwatch, record
from support.metrics import db_labels, events, settle, up_labels, wait_value
from support.outbox import wait_drained
from support.waiting import wait_until

ONE = {"table": "one", "enabled": True, "function": "notification_with_payload",
       "columns_to_label": [{"code": ["alpha", "beta"]}], "events": ["insert"]}
STANDBY_LINE = "the server is a hot standby (in recovery)"


@pytest.mark.parametrize("delivery", ["notify", "outbox"])
def test_a_hot_standby_is_one_clear_line_and_database_down_until_promoted_then_counted_exactly(
        tmp_path, delivery):
    primary = start_cluster()
    standby = None
    try:
        db = create_database(primary)
        run_sql(db, "CREATE TABLE one (id serial PRIMARY KEY, code text)")
        standby = TempCluster.standby_of(primary)
        standby.start()
        standby.wait_ready()
        on_standby = Database(name=db.name, host=db.host, port=standby.port, user=db.user)

        entry = database_entry(on_standby, [ONE], perform_setup=True, delivery=delivery, tag=RELIABILITY_TAG)
        path = tmp_path / "events_config.yml"
        path.write_text(config_text(entry))
        proc = PgneProcess(path, tmp_path / "pgne").start(expect_up=False, timeout=60)
        wait_until(lambda: STANDBY_LINE in proc.stderr_text(), 30, "the standby line", proc.describe)
        # a while on the standby: several checks (backoff 1, 2, 4 s), one line, database down
        wait_value(proc, "pgne_reconnects_total", db_labels(on_standby), lambda v: v >= 3, 30,
                   "three more checks of the standby")
        samples = proc.scrape()
        assert samples[("pgne_database_up", frozenset(up_labels(on_standby).items()))] == 0
        assert samples[("pgne_worker_restarts_total", frozenset(db_labels(on_standby).items()))] == 0
        text = proc.stderr_text()
        assert text.count(STANDBY_LINE) == 1, proc.describe()
        assert "Traceback" not in text and "setup failed" not in text
        assert proc.process.poll() is None and len(proc.worker_pids()) == 1

        primary.stop()  # the failover: the old primary is gone, the standby takes its place
        promoted = Stopwatch()
        standby.promote()
        wait_value(proc, "pgne_database_up", up_labels(on_standby), lambda v: v == 1, 30 * 1.2 + 10,
                   "pgne_database_up 1 after the promotion")
        record(f"hot standby ({delivery}): promoted -> pgne_database_up 1", promoted.elapsed())
        assert "the server is a primary again" in proc.stderr_text()

        run_sql(on_standby, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 9)",
                "INSERT INTO one (code) VALUES ('beta'), ('zeta')")
        if delivery == "outbox":
            wait_drained(proc, on_standby, {("INSERT", "one", "alpha"): 9, ("INSERT", "one", "beta"): 1,
                                           ("INSERT", "one", "other"): 1})
        else:
            proc.wait_for_value("pgne_events_total", {"operation": "INSERT", "host": on_standby.host_label,
                                                      "database": db.name,
                                                      "tag": "rel", "schema": "public", "table": "one",
                                                      "code": "alpha"}, 9)
            settle(proc, on_standby)
            assert events(proc, on_standby) == {("INSERT", "public.one", "alpha"): 9,
                                                ("INSERT", "public.one", "beta"): 1,
                                                ("INSERT", "public.one", "other"): 1}
        assert proc.value("pgne_worker_restarts_total", db_labels(on_standby)) == 0
        assert "Traceback" not in proc.stderr_text()
    finally:
        for cluster in (standby, primary):
            if cluster is not None:
                cluster.destroy()


def test_outbox_on_a_read_only_database_is_one_clear_line_and_database_down_until_it_takes_writes(
        pg_database, tmp_path):
    """default_transaction_read_only on the database: the drain cannot write. One line, up 0,
    retried; once writes are allowed again, the rows are drained and counted exactly."""
    import psycopg2
    from psycopg2 import sql

    run_sql(pg_database, "CREATE TABLE one (id serial PRIMARY KEY, code text)")
    db = Database(name=pg_database.name, host=pg_database.host, port=pg_database.port, user=pg_database.user,
                     password=pg_database.password or "")
    entry = database_entry(db, [ONE], perform_setup=True, delivery="outbox", tag=RELIABILITY_TAG)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(entry))
    proc = PgneProcess(path, tmp_path / "pgne").start(timeout=60)
    run_sql(db, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 4)")
    wait_drained(proc, db, {("INSERT", "one", "alpha"): 4})

    admin = psycopg2.connect(db.dsn, options="-c default_transaction_read_only=off")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                sql.Identifier(db.name)))
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                        "AND application_name = 'pgne'", (db.name,))
        wait_value(proc, "pgne_reconnects_total", db_labels(db), lambda v: v >= 3, 30, "three checks")
        assert proc.value("pgne_database_up", up_labels(db)) == 0
        text = proc.stderr_text()
        assert text.count("the database is read-only (transaction_read_only is on)") == 1, proc.describe()
        assert "Traceback" not in text
        with admin.cursor() as cur:
            cur.execute("INSERT INTO one (code) SELECT 'beta' FROM generate_series(1, 6)")
            cur.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(
                sql.Identifier(db.name)))
    finally:
        admin.close()
    wait_value(proc, "pgne_database_up", up_labels(db), lambda v: v == 1, 30 * 1.2 + 10, "up again")
    wait_drained(proc, db, {("INSERT", "one", "alpha"): 4, ("INSERT", "one", "beta"): 6})
    assert proc.value("pgne_worker_restarts_total", db_labels(db)) == 0
    assert "Traceback" not in proc.stderr_text()
