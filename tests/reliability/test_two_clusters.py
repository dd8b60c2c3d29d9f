"""Two PostgreSQL clusters on one host, each with a database `app`: config entries that differ
only in their port. Each has series of its own in every metric (the `host` label is host:port
off port 5432): exact counts per cluster, `pgne_database_up` 0 only for the one that stops,
and outbox counts of both exported across a restart of pgne and of a worker.
"""
from __future__ import annotations

import os
import signal

import pytest
from support.clusters import start_cluster
from support.configs import RELIABILITY_TAG, config_text, database_entry
from support.databases import Database, create_database, drop_database, run_sql
from support.exporter import PgneProcess
from support.waiting import wait_until

MONITOR = {"table": "t", "enabled": True, "function": "simple_event_notification", "events": ["insert"]}
PER_DATABASE = ("pgne_database_up", "pgne_notifications_total", "pgne_reconnects_total",
                "pgne_notify_queue_usage_ratio", "pgne_trigger_installed", "pgne_worker_restarts_total",
                "pgne_events_total", "pgne_last_event_timestamp_seconds")


@pytest.fixture(scope="module")
def clusters():
    first = start_cluster()
    try:
        second = start_cluster()
        try:
            yield first, second
        finally:
            second.destroy()
    finally:
        first.destroy()


@pytest.fixture
def apps(clusters):
    """Database `app` with a table `t`, fresh, in each cluster."""
    refs = []
    for cluster in clusters:
        if not cluster.is_running():
            cluster.start()
        cluster.wait_ready()
        drop_database(cluster, Database("app"))
        ref = create_database(cluster, name="app")
        run_sql(ref, "CREATE TABLE t (id serial PRIMARY KEY)")
        refs.append(ref)
    return refs


def insert(db, n: int) -> None:
    """n single-row INSERT statements (n notifications in notify mode)."""
    run_sql(db, *["INSERT INTO t DEFAULT VALUES"] * n)


def events(proc: PgneProcess, db) -> float | None:
    return proc.value("pgne_events_total", {"operation": "INSERT", "host": db.host_label, "database": "app",
                                            "tag": "rel", "schema": "public", "table": "t"})


def insert_and_wait(proc: PgneProcess, apps, rows: tuple[int, int], expected: tuple[int, int],
                    timeout: float = 30) -> None:
    """INSERT rows[i] rows into apps[i], then wait until pgne exports `expected` for the two."""
    first, second = apps
    insert(first, rows[0])
    insert(second, rows[1])
    wait_until(lambda: (events(proc, first), events(proc, second)) == expected, timeout,
               f"{expected[0]} and {expected[1]}", proc.describe)


def hosts_of(proc: PgneProcess, name: str) -> set[str]:
    return {dict(labels)["host"] for labels in proc.series(name, database="app")}


def test_two_clusters_with_database_app_have_their_own_series_and_up(clusters, apps, tmp_path):
    first, second = apps
    assert first.host_label == f"127.0.0.1:{first.port}" and second.host_label == f"127.0.0.1:{second.port}"
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(first, [MONITOR], tag=RELIABILITY_TAG),
                                database_entry(second, [MONITOR], tag=RELIABILITY_TAG)))
    proc = PgneProcess(path, tmp_path / "pgne")
    try:
        proc.start()
        insert_and_wait(proc, apps, (3, 5), (3, 5))
        for name in PER_DATABASE:
            assert hosts_of(proc, name) == {first.host_label, second.host_label}, name
        counted = {db.host_label: proc.value("pgne_notifications_total", {"host": db.host_label, "database": "app",
                                                                          "result": "counted"})
                   for db in apps}
        assert counted == {first.host_label: 3, second.host_label: 5}

        clusters[1].stop("fast")
        up = {db.host_label: {"host": db.host_label, "database": "app", "tag": "rel"} for db in apps}
        proc.wait_for_value("pgne_database_up", up[second.host_label], 0, timeout=30)
        assert proc.value("pgne_database_up", up[first.host_label]) == 1
        insert(first, 2)
        wait_until(lambda: events(proc, first) == 5, 30, "5 on the first cluster", proc.describe)
        assert events(proc, second) == 5
        assert proc.value("pgne_reconnects_total", {"host": first.host_label, "database": "app"}) == 0

        clusters[1].start()
        proc.wait_for_value("pgne_database_up", up[second.host_label], 1, timeout=60)
        insert(second, 1)
        wait_until(lambda: (events(proc, first), events(proc, second)) == (5, 6), 30, "5 and 6", proc.describe)
    finally:
        proc.kill_leftovers()


def test_two_clusters_with_database_app_in_outbox_mode_export_both_across_restarts(apps, tmp_path):
    first, second = apps
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(*(database_entry(db, [MONITOR], delivery="outbox", drain_interval=0.1,
                                                 tag=RELIABILITY_TAG) for db in apps)))
    proc = PgneProcess(path, tmp_path / "pgne")
    try:
        proc.start()
        insert_and_wait(proc, apps, (3, 5), (3, 5))
        assert proc.stop()[0] == 0
        insert(first, 1)  # while pgne is stopped: kept in pgne.event_log
        insert(second, 2)

        proc.start()
        wait_until(lambda: (events(proc, first), events(proc, second)) == (4, 7), 30, "4 and 7", proc.describe)
        for worker in proc.worker_pids():  # restarted workers read back what is exported, per database
            os.kill(worker, signal.SIGKILL)
        insert_and_wait(proc, apps, (10, 20), (14, 27), timeout=60)
        restarts = {db.host_label: proc.value("pgne_worker_restarts_total", {"host": db.host_label, "database": "app"})
                    for db in apps}
        assert restarts == {first.host_label: 1, second.host_label: 1}
    finally:
        proc.kill_leftovers()
