"""The launcher that forks the workers, attacked: out of file descriptors, SIGSTOPped, a long
TMPDIR, a master SIGKILLed, a password variable that a reload adds. Real `pgne run` masters,
real workers, real PostgreSQL; every wait bounded."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from support.configs import config_text, database_entry
from support.databases import host_label, run_sql
from support.exporter import PgneProcess
from support.faults import Stopwatch, record
from support.metrics import wait_value
from support.processes import children_of, pgne_env, process_gone, wait_gone
from support.waiting import wait_until

ONE = {"table": "one", "enabled": True, "function": "notification_with_payload",
       "columns_to_label": [{"code": ["alpha", "beta"]}], "events": ["insert"]}
TABLES = "CREATE TABLE one (id serial PRIMARY KEY, code text)"
TAG = "it"


def db_labels(db) -> dict[str, str]:
    return {"host": host_label(db.host, db.port), "database": db.name}


def insert_labels(db, code: str = "alpha") -> dict[str, str]:
    return {"operation": "INSERT", **db_labels(db), "tag": TAG, "schema": "public", "table": "one", "code": code}


def databases_with_tables(pg_database_factory, n: int) -> list:
    databases = [pg_database_factory() for _ in range(n)]
    for db in databases:
        run_sql(db, TABLES)
    return databases


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode("utf-8", "replace") for k, v in pairs}


def pgne_processes(proc: PgneProcess) -> list[int]:
    """The master's descendants: its launcher(s) and their workers."""
    found, todo = [], [proc.pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


# -- out of file descriptors ---------------------------------------------------------------------

RUN_WITH_NOFILE = """
import resource, runpy, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
sys.argv = ["pgne", *sys.argv[2:]]
runpy.run_module("pgne", run_name="__main__")
"""
DATABASES, NOFILE = 30, 100


def test_out_of_file_descriptors_the_workers_that_fit_run_and_the_rest_are_retried_until_the_limit_allows(
        pg_database_factory, tmp_path):
    """30 databases under an open-files limit of 100 (soft and hard; a start keeps room for every
    HTTP connection pgne accepts, 33, and 16 more): every start that does not
    fit fails (logged, pgne_worker_start_failures_total) and is retried with backoff; no running
    worker is ever lost, and they count exactly. A reload that removes 15 running databases
    makes room: the 15 left all come up and count."""
    databases = databases_with_tables(pg_database_factory, DATABASES)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(*(database_entry(db, [ONE], perform_setup=True) for db in databases)))
    proc = PgneProcess(path, tmp_path / "pgne")
    proc.command = lambda: [sys.executable, "-c", RUN_WITH_NOFILE, str(NOFILE), "run", "-c", proc.config,
                            "--listen-address", f"127.0.0.1:{proc.port}", "--state-dir", str(proc.state_dir)]
    with proc.running(expect_up=False):
        def split():
            samples = proc.scrape()
            up = [db for db in databases
                  if samples.get(("pgne_database_up", frozenset({**db_labels(db), "tag": TAG}.items()))) == 1]
            failures = {db.name: samples.get(("pgne_worker_start_failures_total", frozenset(db_labels(db).items())))
                        for db in databases}
            failed = [db for db in databases if (failures[db.name] or 0) >= 2]
            return (up, failed) if up and failed and len(up) + len(failed) == DATABASES else None

        up, failed = wait_until(split, 60, "some databases up, the others failing to start (twice each)",
                                proc.describe)
        record(f"{DATABASES} databases, open files limit {NOFILE}: databases up", len(up))
        workers = proc.worker_pids()
        assert len(workers) == len(up), proc.describe()
        assert "too many open files" in proc.stderr_text()
        for db in up:
            run_sql(db, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 3)")
        for db in up:
            proc.wait_for_value("pgne_events_total", insert_labels(db), 3)
        samples = proc.scrape()
        assert all(samples[("pgne_worker_restarts_total", frozenset(db_labels(db).items()))] == 0 for db in databases)
        assert proc.worker_pids() == workers  # not one of them lost
        assert "Traceback" not in proc.stderr_text() and "was lost" not in proc.stderr_text()

        # room made by a reload that removes 15 running databases: the 15 left all start
        kept = [db for db in databases if db not in up[:15]]
        path.write_text(config_text(*(database_entry(db, [ONE], perform_setup=True) for db in kept)))
        proc.send_signal(signal.SIGHUP)
        clock = Stopwatch()
        wait_until(lambda: all(proc.value("pgne_database_up", {**db_labels(db), "tag": TAG}) == 1 for db in kept),
                   90, "the 15 databases left up", proc.describe)  # a failing start's backoff: up to 30 s
        record(f"{DATABASES} databases, open files limit {NOFILE}: 15 removed -> the rest up", clock.elapsed())
        for db in kept:
            run_sql(db, "INSERT INTO one (code) VALUES ('beta')")
        for db in kept:
            proc.wait_for_value("pgne_events_total", insert_labels(db, "beta"), 1)
            assert proc.value("pgne_events_total", insert_labels(db)) == (3 if db in up else 0)
        assert all(proc.value("pgne_worker_restarts_total", db_labels(db)) == 0 for db in kept)
        assert "Traceback" not in proc.stderr_text() and "was lost" not in proc.stderr_text()
        code, seconds = proc.stop()
        assert code == 0 and seconds < 10, proc.describe()


# -- a stopped launcher ----------------------------------------------------------------------------

def test_a_stopped_launcher_hides_no_death_blocks_nothing_and_is_replaced(pg_database_factory, tmp_path):
    """SIGSTOP on the launcher: a worker killed meanwhile shows pgne_database_up 0 within a few
    seconds (its pidfd says it ended; its status never comes: lost), the master keeps serving,
    and its restart goes to the stopped launcher, which sends nothing for 8 s: it is retired and
    a new launcher starts the worker (the database counts again), while the stopped one keeps
    its other worker running. Once that worker has ended, the retired launcher is killed and
    collected. A SIGSTOPped launcher, then SIGTERM: the master exits 0 in < 10 s and leaves
    nothing running."""
    a, b = databases_with_tables(pg_database_factory, 2)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(a, [ONE]), database_entry(b, [ONE])))
    proc = PgneProcess(path, tmp_path / "pgne")
    with proc.running():
        [launcher] = children_of(proc.pid)
        worker_a, worker_b = (pid for db in (a, b) for pid in proc.worker_pids()
                              if f"/{db.name}: listen worker started (pid {pid})" in proc.stderr_text())
        os.kill(launcher, signal.SIGSTOP)
        try:
            clock = Stopwatch()
            os.kill(worker_a, signal.SIGKILL)
            wait_value(proc, "pgne_database_up", {**db_labels(a), "tag": TAG}, lambda v: v == 0, 8, "a down")
            record("stopped launcher: worker killed -> pgne_database_up 0", clock.elapsed())
            for _ in range(10):
                assert proc.get("/metrics")[0] == 200  # the master never blocked
            wait_value(proc, "pgne_database_up", {**db_labels(a), "tag": TAG}, lambda v: v == 1, 30, "a up again")
            record("stopped launcher: worker killed -> restarted by a new launcher", clock.elapsed())
            log = proc.stderr_text()
            assert f"worker (pid {worker_a}) was lost: ended, and its launcher (pid {launcher}) did not report " \
                   "its exit status within 2 s (stopped?)" in log, proc.describe()
            assert f"the launcher (pid {launcher}) has sent nothing for 8 s with 1 start(s) pending (stopped?): " \
                   "retiring it" in log, proc.describe()
            assert "did not answer" not in log and "cannot start a worker" not in log, proc.describe()
            assert proc.value("pgne_worker_start_failures_total", db_labels(a)) == 0
            [new_launcher] = [pid for pid in children_of(proc.pid) if pid != launcher]
            assert children_of(launcher) == [worker_b] and len(children_of(new_launcher)) == 1
            run_sql(a, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 4)")
            run_sql(b, "INSERT INTO one (code) VALUES ('alpha')")  # b's worker runs on
            proc.wait_for_value("pgne_events_total", insert_labels(a), 4)
            proc.wait_for_value("pgne_events_total", insert_labels(b), 1)
            # b's worker ends: its restart goes to the new launcher; the stopped one has no worker left
            os.kill(worker_b, signal.SIGKILL)
            wait_gone([launcher], 20, "the retired launcher to be killed once its last worker ended")
            wait_until(lambda: children_of(proc.pid) == [new_launcher] and len(proc.worker_pids()) == 2, 30,
                       "b restarted by the new launcher", proc.describe)
        finally:
            if not process_gone(launcher):
                os.kill(launcher, signal.SIGCONT)
        proc.wait_all_up(timeout=60)
        run_sql(b, "INSERT INTO one (code) VALUES ('alpha')")
        proc.wait_for_value("pgne_events_total", insert_labels(b), 2)
        assert proc.value("pgne_events_total", insert_labels(a)) == 4

        everyone = pgne_processes(proc)
        os.kill(new_launcher, signal.SIGSTOP)
        code, seconds = proc.stop()
        record("SIGTERM with a SIGSTOPped launcher: signal -> master exited", seconds)
        assert code == 0 and seconds < 10, proc.describe()
        wait_gone(everyone, 5, "the launcher and the workers to be gone")


def test_a_launcher_that_answers_late_is_not_a_failed_start(pg_database_factory, tmp_path):
    """Starts are judged by the launcher's progress, not each by a deadline: a launcher that
    answers 6 s late (stopped for 6 s while a reload adds 6 databases: a busy machine) is
    neither retired nor the cause of a single failed start; the same launcher starts all six."""
    first, *added = databases_with_tables(pg_database_factory, 7)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(first, [ONE])))
    proc = PgneProcess(path, tmp_path / "pgne")
    with proc.running():
        [launcher] = children_of(proc.pid)
        os.kill(launcher, signal.SIGSTOP)
        try:
            path.write_text(config_text(*(database_entry(db, [ONE]) for db in (first, *added))))
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "reload: " in proc.stderr_text() and " loaded" in proc.stderr_text(), 10,
                       "the reload", proc.describe)
            time.sleep(6)  # the launcher stopped this long: a slow machine, not a failure
        finally:
            os.kill(launcher, signal.SIGCONT)
        proc.wait_all_up(timeout=60)
        assert children_of(proc.pid) == [launcher] and len(proc.worker_pids()) == 7
        for db in (first, *added):
            assert proc.value("pgne_worker_start_failures_total", db_labels(db)) == 0
        log = proc.stderr_text()
        assert "cannot start a worker" not in log and "retiring it" not in log, proc.describe()
        for db in added:
            run_sql(db, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 2)")
        for db in added:
            proc.wait_for_value("pgne_events_total", insert_labels(db), 2)
        assert proc.stop()[0] == 0


def test_a_replaced_worker_that_ignores_sigterm_is_killed_and_its_replacement_starts(pg_database, tmp_path):
    """A reload replaces a database's worker (its tag changed) while that worker is stopped
    (SIGSTOP: SIGTERM does nothing): it is SIGKILLed 5 s after the SIGTERM, and its replacement
    starts and counts."""
    run_sql(pg_database, TABLES)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(pg_database, [ONE])))
    proc = PgneProcess(path, tmp_path / "pgne")
    with proc.running():
        [old] = proc.worker_pids()
        os.kill(old, signal.SIGSTOP)
        path.write_text(config_text(database_entry(pg_database, [ONE], tag="other")))
        clock = Stopwatch()
        proc.send_signal(signal.SIGHUP)
        wait_gone([old], 15, "the stopped, replaced worker to be killed")
        record("replaced worker stopped: SIGHUP -> killed", clock.elapsed())
        assert f"replaced worker (pid {old}) still runs 5 s after SIGTERM; killing it" in proc.stderr_text()
        wait_value(proc, "pgne_database_up", {**db_labels(pg_database), "tag": "other"}, lambda v: v == 1, 20,
                   "the replacement up")
        run_sql(pg_database, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 3)")
        proc.wait_for_value("pgne_events_total", {**insert_labels(pg_database), "tag": "other"}, 3)
        assert proc.stop()[0] == 0


# -- TMPDIR ----------------------------------------------------------------------------------------

def test_a_200_character_tmpdir_changes_nothing(pg_database, tmp_path):
    """No socket path, no temporary directory: workers start and count exactly with a TMPDIR
    far beyond an AF_UNIX path's 107 bytes."""
    run_sql(pg_database, TABLES)
    tmpdir = tmp_path / "t"
    while len(str(tmpdir)) < 200:
        tmpdir = tmpdir / ("d" * min(50, 200 - len(str(tmpdir)) - 1 or 1))
    tmpdir.mkdir(parents=True)
    assert len(str(tmpdir)) >= 200
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(pg_database, [ONE])))
    proc = PgneProcess(path, tmp_path / "pgne")
    proc.environment = lambda: pgne_env(TMPDIR=str(tmpdir))
    with proc.running(expect_up=False):
        proc.wait_all_up(timeout=30)
        run_sql(pg_database, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 6)")
        proc.wait_for_value("pgne_events_total", insert_labels(pg_database), 6)
        assert list(tmpdir.iterdir()) == []
        assert proc.stop()[0] == 0


# -- a master SIGKILLed ----------------------------------------------------------------------------

def _master_without_state_dir(db, tmp_path: Path, **entry) -> tuple[PgneProcess, Path]:
    """A pgne for `db`'s table `one`, without --state-dir (a private state directory) and with
    a TMPDIR of its own (returned), which it must leave empty whatever kills it."""
    run_sql(db, TABLES)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(db, [ONE], **entry)))
    proc = PgneProcess(path, tmp_path / "pgne")
    proc.environment = lambda: pgne_env(TMPDIR=str(tmpdir))
    proc.command = lambda: [sys.executable, "-m", "pgne", "run", "-c", proc.config,
                            "--listen-address", f"127.0.0.1:{proc.port}"]
    return proc, tmpdir


def test_a_master_killed_with_sigkill_leaves_no_process_and_no_temporary_file(pg_database, tmp_path):
    """Without --state-dir (a private temporary state directory) and TMPDIR a directory of its
    own: after a SIGKILL of the master, every pgne process is gone within 5 s and TMPDIR is
    empty again (the launcher removes the state directory the master could not)."""
    proc, tmpdir = _master_without_state_dir(pg_database, tmp_path)
    with proc.running():
        run_sql(pg_database, "INSERT INTO one (code) VALUES ('alpha')")
        proc.wait_for_value("pgne_events_total", insert_labels(pg_database), 1)
        [state] = list(tmpdir.iterdir())
        assert state.name.startswith("pgne-metrics-")
        everyone = pgne_processes(proc)
        assert len(everyone) == 2  # the launcher, the worker
        proc.send_signal(signal.SIGKILL)
        proc.process.wait(10)
        wait_gone(everyone, 5, "the launcher and the worker to exit after the master was killed")
        wait_until(lambda: list(tmpdir.iterdir()) == [], 5, "TMPDIR to be empty",
                   lambda: str(list(tmpdir.iterdir())))




def _kill_master_and_expect_nothing_left(proc: PgneProcess, tmpdir: Path) -> None:
    everyone = pgne_processes(proc)
    proc.send_signal(signal.SIGKILL)
    proc.process.wait(10)
    wait_gone(everyone, 5, "every pgne process to exit after the master was killed")
    wait_until(lambda: list(tmpdir.iterdir()) == [], 5, "TMPDIR to be empty", lambda: str(list(tmpdir.iterdir())))


def test_a_master_killed_without_any_worker_leaves_nothing(pg_database, tmp_path):
    """Every database disabled (no worker to start): the launcher runs all the same, so a
    master SIGKILL leaves no private state directory behind."""
    proc, tmpdir = _master_without_state_dir(pg_database, tmp_path, enabled=False, perform_setup=False)
    with proc.running(expect_up=False):
        wait_until(lambda: len(children_of(proc.pid)) == 1, 10, "the launcher", proc.describe)
        [state] = list(tmpdir.iterdir())
        assert state.name.startswith("pgne-metrics-")
        _kill_master_and_expect_nothing_left(proc, tmpdir)


def test_a_master_killed_right_after_its_launcher_leaves_nothing(pg_database, tmp_path):
    """The launcher SIGKILLed, the master SIGKILLed 0.3 s later: a new launcher was started
    at once (not at the next worker start), and it removes the private state directory."""
    proc, tmpdir = _master_without_state_dir(pg_database, tmp_path)
    with proc.running():
        [launcher] = children_of(proc.pid)
        os.kill(launcher, signal.SIGKILL)
        time.sleep(0.3)  # the window under test: shorter than a worker's restart backoff (1 s)
        assert [pid for pid in children_of(proc.pid) if pid != launcher], proc.describe()
        _kill_master_and_expect_nothing_left(proc, tmpdir)


def test_a_master_killed_while_its_launcher_is_stopped_leaves_nothing(pg_database, tmp_path):
    """The launcher SIGSTOPped, then the master SIGKILLed: the launcher's death signal is
    SIGCONT, so it resumes, reads its socket's EOF, removes the private state directory and
    exits; its worker dies with it."""
    proc, tmpdir = _master_without_state_dir(pg_database, tmp_path)
    with proc.running():
        [launcher] = children_of(proc.pid)
        os.kill(launcher, signal.SIGSTOP)
        wait_until(lambda: Path(f"/proc/{launcher}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", 5,
                   "the launcher to be stopped")
        _kill_master_and_expect_nothing_left(proc, tmpdir)


# -- pids --------------------------------------------------------------------------------------------

def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_an_ended_worker_keeps_its_pid_until_the_master_has_handled_it(pg_database, tmp_path):
    """A worker killed while the master is stopped stays a zombie of its launcher (its pid
    nobody else's: no new worker can be taken for it, nor write into its pid's metrics files)
    until the master has handled its end and folded its files; then the launcher reaps it, and
    its replacement counts exactly."""
    run_sql(pg_database, TABLES)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(pg_database, [ONE])))
    proc = PgneProcess(path, tmp_path / "pgne")
    with proc.running():
        [launcher] = children_of(proc.pid)
        [worker] = proc.worker_pids()
        run_sql(pg_database, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 2)")
        proc.wait_for_value("pgne_events_total", insert_labels(pg_database), 2)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            os.kill(worker, signal.SIGKILL)
            wait_until(lambda: _state(worker) == "Z", 5, "the worker to be a zombie")
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # the launcher runs, the master does not
                assert _state(worker) == "Z", "the launcher reaped a worker the master had not handled"
                time.sleep(0.05)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: _state(worker) is None, 10, "the launcher to reap it once released", proc.describe)
        wait_until(lambda: len(proc.worker_pids()) == 1 and proc.worker_pids() != [worker], 20, "its replacement")
        assert children_of(proc.pid) == [launcher]
        proc.wait_all_up(timeout=30)
        run_sql(pg_database, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 3)")
        proc.wait_for_value("pgne_events_total", insert_labels(pg_database), 5)
        assert proc.stop()[0] == 0


# -- HTTP clients and the descriptor budget ----------------------------------------------------------

HTTP_DATABASES, HTTP_NOFILE, IDLE_CONNECTIONS = 12, 70, 40


def test_idle_http_connections_never_keep_a_dead_worker_from_restarting(pg_database_factory, tmp_path):
    """12 databases under an open-files limit of 70: the workers that fit leave room for every
    HTTP connection pgne accepts (32, and one being accepted). While a client holds 40 idle
    connections, a worker killed is restarted at once and the same number of databases is up."""
    databases = databases_with_tables(pg_database_factory, HTTP_DATABASES)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(*(database_entry(db, [ONE]) for db in databases)))
    proc = PgneProcess(path, tmp_path / "pgne")
    proc.command = lambda: [sys.executable, "-c", RUN_WITH_NOFILE, str(HTTP_NOFILE), "run", "-c", proc.config,
                            "--listen-address", f"127.0.0.1:{proc.port}", "--state-dir", str(proc.state_dir)]
    held: list[socket.socket] = []
    with proc.running(expect_up=False):
        def settled():
            samples = proc.scrape()
            failures = [samples.get(("pgne_worker_start_failures_total", frozenset(db_labels(db).items()))) or 0
                        for db in databases]
            up = [db for db in databases
                  if samples.get(("pgne_database_up", frozenset({**db_labels(db), "tag": TAG}.items()))) == 1]
            return up if up and all(f >= 2 for db, f in zip(databases, failures) if db not in up) else None

        up = wait_until(settled, 60, "the databases that fit up, the others failing to start", proc.describe)
        record(f"{HTTP_DATABASES} databases, open files limit {HTTP_NOFILE}: databases up", len(up))
        workers = proc.worker_pids()
        assert len(workers) == len(up), proc.describe()
        try:
            for _ in range(IDLE_CONNECTIONS):
                held.append(socket.create_connection(("127.0.0.1", proc.port), timeout=5))
            time.sleep(1)  # the server accepts what it will (32, and one waiting)
            victim = workers[0]
            os.kill(victim, signal.SIGKILL)
            # within 6 s: before the server closes the idle connections (10 s for a request's head)
            wait_until(lambda: len(proc.worker_pids()) == len(up) and victim not in proc.worker_pids(), 6,
                       "the killed worker restarted while a client holds idle connections", proc.describe)
        finally:
            for sock in held:
                sock.close()
        # the room the dead worker freed is a restart's: its own, or (its backoff is 1 s) that of
        # a database whose retry came first; either way as many databases are up as before
        now_up = wait_until(lambda: (lambda up_now: up_now if len(up_now) == len(up) else None)(
            [db for db in databases if proc.value("pgne_database_up", {**db_labels(db), "tag": TAG}) == 1]),
            10, "as many databases up as before", proc.describe)
        for db in now_up:
            run_sql(db, "INSERT INTO one (code) VALUES ('alpha')")
        for db in now_up:
            proc.wait_for_value("pgne_events_total", insert_labels(db), 1)
        assert len(proc.worker_pids()) == len(up)
        assert proc.stop()[0] == 0


# -- secrets and reloads ---------------------------------------------------------------------------

SECRET_BY_RELOAD = "reload-added-secret-5c1e9f2b7a"


def test_a_variable_that_a_reload_makes_a_password_is_in_no_environment_of_the_launcher_or_workers(
        pg_database_factory, tmp_path, monkeypatch):
    """Two variables that the first config does not use: DB_B_PASSWORD (not whitelisted) and
    LC_PGNE_PASSWORD (LC_* is whitelisted: the launcher inherits it). A reload makes them b's
    and c's password: neither is in /proc/PID/environ of the launcher or of any worker after it
    (the launcher holding LC_PGNE_PASSWORD is replaced; every worker restarts, and counts on)."""
    a, b, c = databases_with_tables(pg_database_factory, 3)
    monkeypatch.setenv("DB_B_PASSWORD", SECRET_BY_RELOAD + "-b")
    monkeypatch.setenv("LC_PGNE_PASSWORD", SECRET_BY_RELOAD + "-c")
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(a, [ONE])))
    proc = PgneProcess(path, tmp_path / "pgne")
    with proc.running():
        [first_launcher] = children_of(proc.pid)
        assert "LC_PGNE_PASSWORD" in environ_of(first_launcher) and "DB_B_PASSWORD" not in environ_of(first_launcher)
        run_sql(a, "INSERT INTO one (code) VALUES ('alpha')")
        proc.wait_for_value("pgne_events_total", insert_labels(a), 1)

        # b and c get their passwords from the variables (the server trusts local connections:
        # a password is sent only if asked, so any value connects)
        path.write_text(config_text(database_entry(a, [ONE]),
                                    database_entry(b, [ONE], password="${DB_B_PASSWORD}"),
                                    database_entry(c, [ONE], password="${LC_PGNE_PASSWORD}")))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload: the launcher's environment holds LC_PGNE_PASSWORD, now a password variable"
                   in proc.stderr_text(), 30, "the launcher's replacement", proc.describe)
        wait_until(lambda: len(proc.worker_pids()) == 3 and children_of(proc.pid) != [first_launcher], 60,
                   "three workers of a new launcher", proc.describe)
        wait_gone([first_launcher], 10, "the first launcher to exit")
        proc.wait_all_up(timeout=60)
        everyone = pgne_processes(proc)
        assert len(everyone) == 4  # a launcher, three workers
        for pid in everyone:
            environ = environ_of(pid)
            assert "LC_PGNE_PASSWORD" not in environ and "DB_B_PASSWORD" not in environ, (pid, sorted(environ))
            assert not [v for v in environ.values() if SECRET_BY_RELOAD in v], pid
        for db in (a, b, c):
            run_sql(db, "INSERT INTO one (code) VALUES ('alpha')")
        proc.wait_for_value("pgne_events_total", insert_labels(a), 2)
        for db in (b, c):
            proc.wait_for_value("pgne_events_total", insert_labels(db), 1)
        assert proc.stop()[0] == 0


def test_the_launcher_environment_is_a_whitelist(pg_database, tmp_path, monkeypatch):
    """What the launcher (and so every worker) is exec'd with: the whitelisted variables that
    are set, never any other (PGPASSWORD, an application's variables), never a password variable."""
    run_sql(pg_database, TABLES)
    monkeypatch.setenv("SOME_APPLICATION_TOKEN", "not-for-workers")
    monkeypatch.setenv("PGPASSWORD", "not-for-workers-either")
    monkeypatch.setenv("PGSSLMODE", "prefer")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(pg_database, [ONE])))
    proc = PgneProcess(path, tmp_path / "pgne")
    with proc.running():
        [launcher] = children_of(proc.pid)
        [worker] = proc.worker_pids()
        master = environ_of(proc.pid)
        for pid in (launcher, worker):
            environ = environ_of(pid)
            assert environ["PGSSLMODE"] == "prefer" and environ["LC_ALL"] == "C.UTF-8"
            assert environ["PROMETHEUS_MULTIPROC_DIR"] == str(proc.state_dir.resolve())
            assert environ["PATH"] == master["PATH"]
            assert "SOME_APPLICATION_TOKEN" not in environ and "PGPASSWORD" not in environ
            assert set(environ) <= set(master) | {"PROMETHEUS_MULTIPROC_DIR"}
        assert Path(f"/proc/{worker}/cwd").resolve() == Path(f"/proc/{proc.pid}/cwd").resolve()
        assert proc.stop()[0] == 0


# -- a launcher that cannot start -----------------------------------------------------------------

def test_a_launcher_that_dies_at_its_start_is_started_again_with_backoff_not_in_a_loop(pg_database, tmp_path):
    """pgne's files change under a running master (an uninstall, an upgrade that moves them) and
    the launcher is killed once: every new launcher dies at its start ("No module named
    pgne.launcher_process"). The master starts another with backoff (1 s doubling), not one every
    few milliseconds; once the files are back, the next one starts the worker, which counts."""
    import shutil

    import pgne

    run_sql(pg_database, TABLES)
    site = tmp_path / "site"
    shutil.copytree(Path(pgne.__file__).parent, site / "pgne")
    for folder in ("sql_templates", "schema"):  # where a checkout's pgne finds them (pgne.resources)
        if not (site / "pgne" / folder).is_dir():
            shutil.copytree(Path(pgne.__file__).parent.parent / folder, site / folder)
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(pg_database, [ONE])))
    proc = PgneProcess(path, tmp_path / "pgne")
    proc.environment = lambda: pgne_env(PYTHONPATH=str(site))
    with proc.running():
        [launcher] = children_of(proc.pid)
        module = site / "pgne" / "launcher_process.py"
        module.rename(module.with_suffix(".gone"))
        shutil.rmtree(site / "pgne" / "__pycache__", ignore_errors=True)
        os.kill(launcher, signal.SIGKILL)
        seen: set[int] = set()
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:  # every launcher the master starts, however short-lived
            seen.update(pid for pid in children_of(proc.pid) if pid != launcher)
            time.sleep(0.002)
        failures = proc.stderr_text().count("No module named pgne.launcher_process")
        # the first at once, then 1 s doubling: starts at about 0, 0, 1, 3 s, the next at 7 s at
        # the earliest; a loop without backoff started 97-177 in 5 s
        assert 2 <= max(len(seen), failures) <= 5, (len(seen), failures, proc.describe())
        assert "exited" in proc.stderr_text() and "starting another in" in proc.stderr_text()
        module.with_suffix(".gone").rename(module)
        labels = insert_labels(pg_database)
        wait_value(proc, "pgne_database_up", db_labels(pg_database) | {"tag": TAG}, lambda v: v == 1, 40,
                   "the database to be up again through a launcher that starts")
        run_sql(pg_database, "INSERT INTO one (code) VALUES ('alpha'), ('alpha')")
        wait_value(proc, "pgne_events_total", labels, lambda v: v == 2, 10, "the 2 rows to be counted")
