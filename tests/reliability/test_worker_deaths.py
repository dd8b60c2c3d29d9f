"""Workers that die at any moment, again and again: the master survives them all.

A real `pgne run` with two databases (one `delivery: notify`, one `delivery: outbox`) on the
shared server; its workers are SIGKILLed at random moments (right after they appear, half-way
through their start, while they count) for a bounded time while /metrics is scraped throughout.
Then the workers are left alone: every kill that hit is one restart, and counting is exact
again (outbox: exact across the whole storm, nothing lost, nothing twice).
"""
from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time

import pytest
from support.configs import config_text
from support.databases import host_label, run_sql
from support.exporter import PgneProcess
from support.faults import Stopwatch, record
from support.metrics import wait_value
from support.outbox import outbox_entry, wait_drained
from support.processes import children_of, process_gone
from support.waiting import wait_until

WHITELIST = ["alpha", "beta", "gamma"]
ONE = {"table": "one", "enabled": True, "function": "notification_with_payload",
       "columns_to_label": [{"code": WHITELIST}], "events": ["insert"]}
TABLES = "CREATE TABLE one (id serial PRIMARY KEY, code text)"
STORM = 25.0  # seconds of kills
TAG = "it"


def db_labels(db) -> dict[str, str]:
    return {"host": host_label(db.host, db.port), "database": db.name}


def insert_labels(db, code: str) -> dict[str, str]:
    return {"operation": "INSERT", "host": host_label(db.host, db.port), "database": db.name, "tag": TAG,
            "schema": "public", "table": "one", "code": code}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except FileNotFoundError:  # gone, or no CONFIG_PROC_CHILDREN
        return children_of(pid)


class Killer(threading.Thread):
    """SIGKILLs the master's workers every 0.2-0.4 s; a new worker is killed after a random
    delay drawn from [0, 0.4) s, a quarter of them at once (before it has read its spec)."""

    def __init__(self, master_pid: int, seconds: float):
        super().__init__(daemon=True, name="killer")
        self.master_pid, self.seconds = master_pid, seconds
        self.hits: dict[int, int] = {}  # pid -> 1 for every worker our SIGKILL ended
        self.rng = random.Random(12)

    def children(self) -> list[int]:
        """The workers: the children of the master's children (its launcher's), read the fast
        way (each forks from its main thread): fast enough to see a worker before it has read
        its spec."""
        return [worker for child in _children(self.master_pid) for worker in _children(child)]

    def run(self) -> None:
        clock = Stopwatch()
        due: dict[int, float] = {}
        while clock.elapsed() < self.seconds:
            now = time.monotonic()
            for pid in self.children():
                if pid in self.hits:
                    continue
                if pid not in due:
                    due[pid] = now + (0.0 if self.rng.random() < 0.25 else self.rng.uniform(0.0, 0.4))
                if due[pid] <= now and not process_gone(pid):
                    os.kill(pid, signal.SIGKILL)
                    self.hits[pid] = 1
            time.sleep(0.0005)


def two_databases_counting(pg_database_factory, tmp_path) -> tuple[PgneProcess, object, object]:
    """A real `pgne run` with a notify and an outbox database, each of which has counted 7 rows."""
    notify_db, outbox_db = pg_database_factory(), pg_database_factory()
    for db in (notify_db, outbox_db):
        run_sql(db, TABLES)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(outbox_entry(notify_db, [ONE], delivery=None, perform_setup=True),
                                outbox_entry(outbox_db, [ONE], perform_setup=True)))
    proc = PgneProcess(path, tmp_path / "pgne").start(timeout=60)
    for db in (notify_db, outbox_db):
        run_sql(db, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 7)")
    proc.wait_for_value("pgne_events_total", insert_labels(notify_db, "alpha"), 7)
    wait_drained(proc, outbox_db, {("INSERT", "one", "alpha"): 7})
    return proc, notify_db, outbox_db


def test_workers_killed_every_few_hundred_ms_for_25_s_never_stop_the_master_and_counts_stay_exact(
        pg_database_factory, tmp_path):
    proc, notify_db, outbox_db = two_databases_counting(pg_database_factory, tmp_path)

    killer = Killer(proc.pid, STORM)
    killer.start()
    scrapes = committed = 0
    while killer.is_alive():  # the application writes and Prometheus scrapes all along
        try:
            status, _, body = proc.get("/metrics")
        except OSError:
            status, body = None, b""
        assert proc.process.poll() is None, f"the master exited with {proc.process.returncode}\n{proc.describe()}"
        assert status == 200, body[:300]
        scrapes += 1
        run_sql(outbox_db, "INSERT INTO one (code) VALUES ('beta')")
        committed += 1
        time.sleep(0.05)
    killer.join()
    hits = len(killer.hits)
    record(f"worker kill storm ({STORM:g} s): workers killed", hits)
    assert hits >= 8, f"only {hits} kills hit a worker"
    assert scrapes >= 100

    # left alone: the last killed workers come back after their backoff (at most 30 s + jitter)
    calm = Stopwatch()
    proc.wait_all_up(timeout=60)
    record("worker kill storm: last kill -> every database up", calm.elapsed())
    restarts = sum(proc.value("pgne_worker_restarts_total", db_labels(db)) for db in (notify_db, outbox_db))
    assert restarts == hits, proc.describe()
    assert proc.process.poll() is None
    assert "Traceback" not in proc.stderr_text(), proc.describe(80)

    # exact again: outbox lost nothing during the storm; notify counts what is committed now
    run_sql(notify_db, "INSERT INTO one (code) SELECT 'gamma' FROM generate_series(1, 11)")
    run_sql(outbox_db, "INSERT INTO one (code) SELECT 'gamma' FROM generate_series(1, 11)")
    proc.wait_for_value("pgne_events_total", insert_labels(notify_db, "gamma"), 11)
    assert proc.value("pgne_events_total", insert_labels(notify_db, "alpha")) == 7  # never reset
    wait_drained(proc, outbox_db, {("INSERT", "one", "alpha"): 7, ("INSERT", "one", "beta"): committed,
                                   ("INSERT", "one", "gamma"): 11})
    code = proc.stop()[0]
    assert code == 0, proc.describe()


def test_a_stopped_worker_neither_blocks_the_master_nor_its_shutdown(pg_database, tmp_path):
    """SIGSTOP: the master keeps serving; SIGCONT: the worker counts what it missed; SIGTERM
    to the master while a worker is stopped: the master kills it and exits 0 within 10 s."""
    run_sql(pg_database, TABLES)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(outbox_entry(pg_database, [ONE], delivery=None, perform_setup=True)))
    proc = PgneProcess(path, tmp_path / "pgne").start(timeout=60)
    [worker] = proc.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    try:
        run_sql(pg_database, "INSERT INTO one (code) SELECT 'beta' FROM generate_series(1, 5)")
        for _ in range(20):
            assert proc.get("/metrics")[0] == 200
        assert proc.process.poll() is None
    finally:
        os.kill(worker, signal.SIGCONT)
    proc.wait_for_value("pgne_events_total", insert_labels(pg_database, "beta"), 5)

    os.kill(worker, signal.SIGSTOP)
    code, seconds = proc.stop()
    record("SIGTERM with a SIGSTOPped worker: signal -> master exited", seconds)
    assert code == 0 and seconds < 10, proc.describe()
    wait_until(lambda: process_gone(worker), 5, "the stopped worker to be gone")


FAKE_WORKER = """
import os, sys, time


def main(spec_fd):
    how = {how!r}
    if how == "hang":  # never reads its spec, never exits: a worker stopped right at its start
        time.sleep(3600)
    if how.startswith("read:"):
        os.read(spec_fd, 4)
    return int(how.rsplit(":", 1)[1])
"""

RUN_WITH_FAKE_WORKERS = """
import sys
sys.path.insert(0, {directory!r})  # the launcher gets the master's sys.path
from pgne import protocol
protocol.WORKER_MODULE = "pgne_fake_worker"
from pgne.cli import main
sys.exit(main(sys.argv[1:]))
"""


def fake_workers_pgne(db, tmp_path, monkeypatch, how: str, big: bool = False) -> PgneProcess:
    """A real master whose workers are stand-ins that do `how` (see FAKE_WORKER). `big`: a config
    whose worker spec (about 100 kB) does not fit in a pipe's buffer."""
    monitors = [ONE]
    if big:
        monitors = [{"table": f"t{i}", "enabled": True, "function": "notification_with_payload",
                     "columns_to_label": [{"code": [f"value_{j}" for j in range(20)]}], "events": ["insert"]}
                    for i in range(300)]
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(outbox_entry(db, monitors, delivery=None)))
    proc = PgneProcess(path, tmp_path / "pgne")
    # the worker's environment is the launcher's whitelist: `how` is in the module's text
    (tmp_path / "pgne_fake_worker.py").write_text(FAKE_WORKER.format(how=how))
    script = RUN_WITH_FAKE_WORKERS.format(directory=str(tmp_path))
    proc.command = lambda: [sys.executable, "-c", script, "run", "-c", proc.config, "--listen-address",
                            f"127.0.0.1:{proc.port}", "--state-dir", str(proc.state_dir)]
    return proc.start(expect_up=False)


@pytest.mark.parametrize("how", ["read:0", "read:1", "read:2", "read:3", "read:70", "read:255",
                                 "big:0", "big:1"])
def test_a_worker_that_exits_with_any_status_is_logged_and_restarted(how, pg_database, tmp_path, monkeypatch):
    """A real master whose workers exit at once with a status (`big`: before reading a spec
    larger than the pipe's buffer): each exit is one log line and one restart (with backoff:
    1 s, then 2 s), never the master's end."""
    big = how.startswith("big:")
    proc = fake_workers_pgne(pg_database, tmp_path, monkeypatch, how.replace("big", "noread"), big)
    code = int(how.rsplit(":", 1)[1])
    wait_value(proc, "pgne_worker_restarts_total", db_labels(pg_database), lambda v: v == 2, 30, "two restarts")
    assert proc.process.poll() is None, proc.describe()
    lines = [line for line in proc.stderr_text().splitlines() if "exited with status" in line]
    assert len(lines) >= 2 and all(f"exited with status {code}; restarting in" in line for line in lines[:2])
    assert "Traceback" not in proc.stderr_text()
    assert proc.stop()[0] == 0


def test_a_worker_that_never_reads_its_spec_is_killed_and_the_master_stays_responsive(
        pg_database, tmp_path, monkeypatch):
    """A worker stopped right at its start never reads its spec: with a spec larger than the
    pipe's buffer, writing it would block the master for ever (no reaping, no SIGTERM)."""
    proc = fake_workers_pgne(pg_database, tmp_path, monkeypatch, "hang", big=True)
    wait_value(proc, "pgne_worker_restarts_total", db_labels(pg_database), lambda v: v == 1, 30, "one restart")
    assert "did not read its spec within 2 s; killing it" in proc.stderr_text()
    assert "killed by signal 9; restarting in 1 s" in proc.stderr_text()
    code, seconds = proc.stop()
    assert code == 0 and seconds < 10, proc.describe()


RUN_WITH_A_LONG_TICK = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[sys.argv.index("--state-dir") + 1]  # before pgne.master
from pgne import master
master.LOOP_TICK = 3600.0  # the master wakes only for a signal, a worker's end or a due restart
from pgne.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_worker_crash_wakes_the_master_at_once_which_logs_it_and_restarts_the_worker(pg_database, tmp_path):
    """A worker's end wakes the master (it waits on the workers' sentinels): with no periodic
    tick left (an hour), a worker killed with SIGKILL is still reaped, logged with its status and
    restarted after its 1 s backoff, and its database shows up again; otherwise the master would
    sleep on."""
    run_sql(pg_database, TABLES)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(outbox_entry(pg_database, [ONE], delivery=None, perform_setup=True)))
    proc = PgneProcess(path, tmp_path / "pgne")
    proc.command = lambda: [sys.executable, "-c", RUN_WITH_A_LONG_TICK, "run", "-c", proc.config,
                            "--listen-address", f"127.0.0.1:{proc.port}", "--state-dir", str(proc.state_dir)]
    proc.start(timeout=60)
    [worker] = proc.worker_pids()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: f"worker (pid {worker}) killed by signal 9; restarting in 1 s" in proc.stderr_text(),
               30, "the master to log the worker's death")
    [new_worker] = wait_until(lambda: [pid for pid in proc.worker_pids() if pid != worker] or None, 30,
                              "a new worker")
    wait_until(lambda: f"listen worker started (pid {new_worker})" in proc.stderr_text(), 30,
               "the master to log the new worker")  # the launcher forks it before the master logs
    wait_value(proc, "pgne_database_up", {**db_labels(pg_database), "tag": TAG}, lambda v: v == 1, 30,
               "the database up again")
    assert proc.value("pgne_worker_restarts_total", db_labels(pg_database)) == 1
    run_sql(pg_database, "INSERT INTO one (code) VALUES ('alpha')")
    proc.wait_for_value("pgne_events_total", insert_labels(pg_database, "alpha"), 1)
    assert proc.stop()[0] == 0, proc.describe()


def test_a_killed_launcher_takes_its_workers_and_a_new_one_forks_their_successors(pg_database_factory, tmp_path):
    """The launcher (the master's child that forks every worker) SIGKILLed: its workers end
    with it (PR_SET_PDEATHSIG, or the master kills them: two workers of one database never count
    at once), the master says so, starts a new launcher at once, and counts stay
    exact (outbox: the rows committed meanwhile too). The master never exits."""
    proc, notify_db, outbox_db = two_databases_counting(pg_database_factory, tmp_path)
    [launcher] = children_of(proc.pid)
    old_workers = proc.worker_pids()
    assert len(old_workers) == 2 and set(children_of(launcher)) == set(old_workers)

    os.kill(launcher, signal.SIGKILL)
    run_sql(outbox_db, "INSERT INTO one (code) SELECT 'beta' FROM generate_series(1, 5)")  # while no worker runs
    wait_until(lambda: all(process_gone(pid) for pid in old_workers), 30, "the old workers to be gone")
    new_workers = wait_until(lambda: (lambda pids: pids if len(pids) == 2 else None)(proc.worker_pids()), 30,
                             "two new workers", proc.describe)
    assert not set(new_workers) & set(old_workers)
    proc.wait_all_up(timeout=60)
    for pid in old_workers:
        assert (f"worker (pid {pid}) was lost: the launcher that forked it died (a new one has started); "
                "restarting in 1 s") in proc.stderr_text(), proc.describe()
    assert sum(proc.value("pgne_worker_restarts_total", db_labels(db)) for db in (notify_db, outbox_db)) == 2

    for db in (notify_db, outbox_db):
        run_sql(db, "INSERT INTO one (code) SELECT 'gamma' FROM generate_series(1, 11)")
    proc.wait_for_value("pgne_events_total", insert_labels(notify_db, "gamma"), 11)
    assert proc.value("pgne_events_total", insert_labels(notify_db, "alpha")) == 7
    wait_drained(proc, outbox_db, {("INSERT", "one", "alpha"): 7, ("INSERT", "one", "beta"): 5,
                                   ("INSERT", "one", "gamma"): 11})
    assert proc.process.poll() is None and "Traceback" not in proc.stderr_text(), proc.describe(80)
    assert proc.stop()[0] == 0
