"""A silent network partition in `delivery: outbox` mode: noticed within 30 s, nothing lost.

pgne connects through tests/reliability's PartitionProxy, which stops forwarding without closing
anything (the kernel still ACKs: keepalives and tcp_user_timeout see a healthy peer). Only a
statement that gets no answer can tell: the drain and the heartbeat each have a deadline.
Rows committed during the partition wait in pgne.event_log and are counted after it heals.
"""
from __future__ import annotations

import pytest
from support.configs import RELIABILITY_TAG, config_text, database_entry
from support.databases import create_database, run_sql
from support.exporter import PgneProcess
from support.faults import PartitionProxy, Stopwatch, record
from support.metrics import db_labels, up_labels, wait_value
from support.outbox import wait_drained

ONE = {"table": "one", "enabled": True, "function": "notification_with_payload",
       "columns_to_label": [{"code": ["alpha", "beta", "gamma"]}], "events": ["insert"]}
NOTICE_BOUND = 30.0


@pytest.mark.parametrize("drain_interval", [1, 600])
def test_outbox_silent_partition_is_noticed_within_30_s_and_nothing_is_lost(cluster, tmp_path, drain_interval):
    """drain_interval 1 s: the drain's own deadline notices; 600 s: the heartbeat between drains."""
    db = create_database(cluster)
    run_sql(db, "CREATE TABLE one (id serial PRIMARY KEY, code text)")
    proxy = PartitionProxy(cluster.port)
    try:
        entry = database_entry(db, [ONE], port=proxy.port, delivery="outbox", drain_interval=drain_interval,
                               tag=RELIABILITY_TAG)
        path = tmp_path / "events_config.yml"
        path.write_text(config_text(entry))
        proc = PgneProcess(path, tmp_path / "pgne").start(timeout=60)
        via = type(db)(name=db.name, host=db.host, port=proxy.port, user=db.user)  # pgne's labels
        run_sql(db, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 3)")
        if drain_interval == 1:
            wait_drained(proc, via, {("INSERT", "one", "alpha"): 3})

        proxy.partition()
        cut = Stopwatch()
        wait_value(proc, "pgne_database_up", up_labels(via), lambda v: v == 0, NOTICE_BOUND + 10,
                   "pgne_database_up 0 after the partition")
        noticed = record(f"outbox silent partition (drain_interval {drain_interval} s): cut -> pgne_database_up 0",
                         cut.elapsed())
        assert noticed <= NOTICE_BOUND, f"noticed after {noticed:.1f} s"
        assert proc.process.poll() is None

        run_sql(db, "INSERT INTO one (code) SELECT 'beta' FROM generate_series(1, 5)")  # waits in event_log
        proxy.heal()
        healed = Stopwatch()
        wait_value(proc, "pgne_database_up", up_labels(via), lambda v: v == 1, 60,
                   "pgne_database_up 1 after the proxy healed")
        record(f"outbox silent partition (drain_interval {drain_interval} s): healed -> pgne_database_up 1",
               healed.elapsed())
        if drain_interval == 1:
            run_sql(db, "INSERT INTO one (code) SELECT 'gamma' FROM generate_series(1, 2)")
            wait_drained(proc, via, {("INSERT", "one", "alpha"): 3, ("INSERT", "one", "beta"): 5,
                                     ("INSERT", "one", "gamma"): 2})
        else:  # a drain at every (re)connect: the first one after healing moved what was waiting
            wait_drained(proc, via, {("INSERT", "one", "alpha"): 3, ("INSERT", "one", "beta"): 5}, timeout=60)
        assert proc.value("pgne_worker_restarts_total", db_labels(via)) == 0
        assert proc.value("pgne_reconnects_total", db_labels(via)) >= 1
        assert "Traceback" not in proc.stderr_text()
    finally:
        proxy.close()
