"""Histograms of observed columns in `delivery: outbox` are as durable as its counts: while the
application writes (bulk, multi-statement, rolled back, UPDATE, DELETE, NULL, NaN, negative
values), pgne's worker is SIGKILLed three times (once in the middle of a drain of a large
backlog), its master once (pgne restarted on a new state dir); afterwards every exported
histogram equals, exactly, what SQL computes over the committed rows, and no bucket, _count or
skipped counter ever went down between scrapes.

The values are multiples of 1/4, so that every sum is exact in float64 too: after a worker
restart, /metrics adds the dead worker's _sum and the new one's share in float64 (see
pgne.outbox), which can only round where a sum is not representable.
"""
from __future__ import annotations

import os
import signal

from support.configs import config_text, database_entry
from support.exporter import PgneProcess
from support.observed import MONITORS, TABLES, expected_histograms, run_workload, wait_histograms
from support.outbox import outbox_entry
from support.processes import wait_gone
from support.waiting import wait_until

STEP = [
    ([("INSERT INTO orders (supplier, amount) SELECT (ARRAY['acme','globex','umbrella'])[g % 3 + 1], "
       "(g % 2000 - 300) / 4.0 FROM generate_series(1, 20000) AS g", None),
      ("INSERT INTO lines (qty) SELECT g % 9 - 2 FROM generate_series(1, 3000) AS g", None)], True),
    ([("INSERT INTO orders (supplier, amount) VALUES ('acme', NULL), ('globex', 'NaN'), ('acme', -12.75)", None),
      ("UPDATE orders SET amount = amount + 0.25 WHERE id % 11 = 0", None)], True),
    ([("INSERT INTO orders (supplier, amount) VALUES ('acme', 99999)", None)], False),
    ([("DELETE FROM orders WHERE id % 13 = 0", None), ("DELETE FROM lines WHERE qty = 1", None)], True),
]


class Watch:
    """Fails as soon as a bucket, _count or skipped counter of a histogram goes down."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def scrape(self, proc: PgneProcess) -> None:
        try:
            samples = proc.scrape()
        except (OSError, AssertionError):  # pgne restarting
            return
        for (name, labels), value in samples.items():
            if name.startswith("pgne_observed_") and not name.endswith("_sum"):
                key = (name, labels)
                assert value >= self.seen.get(key, 0.0), f"{name}{dict(labels)} went down: {self.seen[key]} -> {value}"
                self.seen[key] = value


def test_outbox_histograms_are_exact_through_worker_and_master_kills(pg_database, tmp_path):
    pg_database.execute(TABLES)
    config = tmp_path / "events_config.yml"
    config.write_text(config_text(outbox_entry(pg_database, MONITORS, perform_setup=True)), encoding="utf-8")
    watch = Watch()
    runs = [PgneProcess(config, tmp_path / "pgne-1").start()]

    def worker(proc: PgneProcess, not_pid: int | None = None) -> int:
        def found():
            watch.scrape(proc)
            pids = [p for p in proc.worker_pids() if p != not_pid]
            return pids[0] if pids else None
        return wait_until(found, 30, "pgne's worker", proc.describe)

    try:
        proc = runs[0]
        for round_ in range(4):
            run_workload(pg_database.dsn, STEP)
            pid = worker(proc)
            if round_ == 2:  # the master: pgne restarted on a new state dir
                children = proc.worker_pids()
                proc.send_signal(signal.SIGKILL)
                proc.process.wait(10)
                wait_gone(children, 6, "the workers of a SIGKILLed master to exit by themselves")
                proc = PgneProcess(config, tmp_path / f"pgne-{len(runs) + 1}")
                runs.append(proc.start())
            else:  # the worker, while it drains what was just written (20,000+ rows)
                os.kill(pid, signal.SIGKILL)
                worker(proc, not_pid=pid)
            watch.scrape(proc)
        expected = expected_histograms(pg_database.dsn)
        wait_histograms(proc, pg_database, expected, timeout=60)
        watch.scrape(proc)
        assert sum(h["count"] for h in expected.values()) > 80000
    finally:
        for run in runs:
            run.kill_leftovers()


def test_a_sighup_switch_from_notify_to_outbox_keeps_the_histograms_across_restarts_of_pgne(pg_database, tmp_path):
    """The notify worker's histograms are folded into pgne.totals at the switch, as its counts are:
    the histograms continue from them, and a restarted pgne (fresh state dir) serves the same."""
    pg_database.execute(TABLES)
    config = tmp_path / "events_config.yml"
    config.write_text(config_text(database_entry(pg_database, MONITORS)), encoding="utf-8")
    proc = PgneProcess(config, tmp_path / "pgne")
    try:
        proc.start()
        run_workload(pg_database.dsn, STEP[:2])
        wait_histograms(proc, pg_database, expected_histograms(pg_database.dsn))
        config.write_text(config_text(outbox_entry(pg_database, MONITORS, perform_setup=True)), encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "draining pgne.event_log" in proc.stderr_text(), 30, "the outbox worker", proc.describe)
        run_workload(pg_database.dsn, STEP[1:])
        wait_histograms(proc, pg_database, expected_histograms(pg_database.dsn))
        assert proc.stop()[0] == 0
    finally:
        proc.kill_leftovers()
    proc = PgneProcess(config, tmp_path / "pgne-restarted")  # nothing kept on disk
    try:
        proc.start()
        run_workload(pg_database.dsn, STEP[3:])
        wait_histograms(proc, pg_database, expected_histograms(pg_database.dsn))
    finally:
        proc.kill_leftovers()
