"""What a client of the HTTP port can do to pgne, against real `pgne run` processes over real
sockets (issue 21 items 2 and 16): many and idle connections, slow clients, huge or many
headers, huge bodies; basic-auth guesses whose timing would tell which user names exist."""
from __future__ import annotations

import base64
import os
import select
import signal
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import bcrypt
import pytest
import yaml
from support.configs import RELIABILITY_TAG
from support.databases import run_sql
from support.exporter import PgneProcess
from support.metrics import labels_key
from support.waiting import wait_until

from pgne.http import HEAD_TIMEOUT, MAX_CONNECTIONS
from pgne.webconfig import WebConfig

MONITOR = {"table": "one", "enabled": True, "function": "notification_with_payload", "events": ["insert"]}


@pytest.fixture
def table(pg_database):
    run_sql(pg_database, "CREATE TABLE one (id serial PRIMARY KEY)")
    return pg_database


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- basic auth timing -----------------------------------------------------------------------------

def test_the_dummy_hash_has_the_cost_most_users_have():
    fast, slow = (bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=rounds)) for rounds in (4, 5))
    assert WebConfig(users={"a": fast, "b": fast, "c": slow}).dummy_hash()[:7] == b"$2b$04$"
    assert WebConfig(users={"a": fast, "c": slow}).dummy_hash()[:7] == b"$2b$05$"  # a tie: the higher
    config = WebConfig(users={"a": fast})
    assert config.check_password("a", "x", "10.0.0.1") and not config.check_password("a", "y", "10.0.0.1")
    assert not config.check_password("nobody", "x", "10.0.0.1") and not config.check_password("nobody", "", "::1")


def test_an_unknown_user_takes_as_long_as_a_wrong_password(table, write_config, tmp_path, pgne_processes):
    """Today (before the fix) an unknown user is answered in 1-2 ms, a wrong password after a
    bcrypt run: at cost 10 here, about 50x apart. Fixed, both run bcrypt once: their medians over
    interleaved attempts are within 2x of each other (a margin no scheduling noise reaches)."""
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {
        "prometheus": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()}}))
    config = write_config(table, [MONITOR], tag=RELIABILITY_TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne", "--web.config.file", str(web))
    pgne_processes.append(proc)
    proc.spawn()
    good = basic("prometheus", "s3cret")
    wait_until(lambda: _status(proc, "/-/healthy", good) == 200, 60, "/-/healthy", proc.describe)

    def timed(headers: dict[str, str]) -> float:
        started = time.perf_counter()
        assert _status(proc, "/-/healthy", headers) == 401
        return time.perf_counter() - started

    unknown, wrong = [], []
    for attempt in range(15):
        unknown.append(timed(basic(f"nobody{attempt}", "s3cret")))
        wrong.append(timed(basic("prometheus", f"wrong{attempt}")))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 <= ratio <= 2.0, (sorted(unknown), sorted(wrong))
    assert statistics.median(wrong) >= 0.01  # bcrypt ran (cost 10: tens of ms)
    assert _status(proc, "/-/healthy", good) == 200


FLOOD_ADDRESS = "127.0.0.2"  # all of 127/8 reaches pgne's 127.0.0.1: another client address
GUESSERS = 8
FIRST_SCRAPES = 10


def status_from(port: int, source: str, headers: dict[str, str], timeout: float = 20.0) -> int:
    """GET /metrics over a connection from `source` (HTTP/1.0: pgne closes it): the status."""
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(f"GET /metrics HTTP/1.0\r\n{head}\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_a_guessing_flood_from_one_address_refuses_no_first_scrape_from_another(
        table, write_config, tmp_path, pgne_processes):
    """8 clients of one address guess passwords as fast as pgne answers. Before the fix they kept
    the 4 places of the bcrypt queue full and a scrape with the right password, not yet verified
    (Prometheus' first after a restart), got 429 in 9 of 10 tries. Now one address holds one
    place: each of 10 first scrapes (10 users, so none skips bcrypt as already verified) from
    another address is answered 200, while the flood gets only 401 and 429."""
    passwords = {f"prometheus{n}": f"s3cret{n}" for n in range(FIRST_SCRAPES)}
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {
        user: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
        for user, password in passwords.items()}}))
    config = write_config(table, [MONITOR], tag=RELIABILITY_TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne", "--web.config.file", str(web))
    pgne_processes.append(proc)
    proc.spawn()
    guess = basic("prometheus0", "guess")
    wait_until(lambda: _status(proc, "/-/healthy", guess) == 401, 60, "pgne answering", proc.describe)

    stop, flood, lock = threading.Event(), [], threading.Lock()

    def guesser() -> None:
        while not stop.is_set():
            try:
                status = status_from(proc.port, FLOOD_ADDRESS, guess)
            except OSError as exc:
                status = repr(exc)
            with lock:
                flood.append(status)

    threads = [threading.Thread(target=guesser, daemon=True) for _ in range(GUESSERS)]
    for thread in threads:
        thread.start()
    try:
        # the flood is on: its address has been refused a place (429) and had its turns (401)
        wait_until(lambda: {401, 429} <= set(flood), 30, "the flood under way", lambda: str(flood[-20:]))
        answers, took = [], []
        for user, password in passwords.items():
            started = time.monotonic()
            answers.append(status_from(proc.port, "127.0.0.1", basic(user, password)))
            took.append(time.monotonic() - started)
        with lock:
            flooded = list(flood)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    print(f"first scrapes: {answers}, seconds: max {max(took):.3f} median {statistics.median(took):.3f}; "
          f"flood answers until then: {len(flooded)} ({flooded.count(401)} 401, {flooded.count(429)} 429)")
    assert answers == [200] * FIRST_SCRAPES, (answers, took)
    assert set(flood) == {401, 429}, sorted({str(status) for status in flood})
    assert "Traceback" not in proc.stderr_text()


def _status(proc: PgneProcess, path: str, headers=None) -> int | None:
    try:
        return proc.request("GET", path, headers)[0]
    except OSError:
        return None


# -- connections: many, idle, slow ---------------------------------------------------------------

FILES = 300  # RLIMIT_NOFILE of the master (soft = hard): 3 workers need 3 * 4 + 256 by its own sizing
IDLE = 400  # idle connections opened at once: more than the limit, far more than MAX_CONNECTIONS
SLOW = 10  # clients that send their request a byte a second
LIMITED = ("import os, resource, sys; n = int(sys.argv[1]); "
           "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])")


class LimitedPgne(PgneProcess):
    """`pgne run` under `ulimit -n FILES` (soft and hard), set in the child before it runs pgne."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", LIMITED, str(FILES), *super().command()]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never send a byte (non-blocking connects: those beyond the
    server's listen backlog keep retrying their SYN without blocking the test)."""
    made = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        made.append(sock)
    return made


def established(socks: list[socket.socket]) -> int:
    """How many of these non-blocking connects have completed (accepted, or in the backlog)."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLOUT)
    writable = {fd for fd, _ in poller.poll(0)}
    return sum(1 for sock in socks
               if sock.fileno() in writable and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)


class SlowClients:
    """`count` clients that each send `GET /metrics HTTP/1.1\r\nHost: x\r\n...` one byte a second,
    and note when the server closed them (EOF or an error on send or recv)."""

    REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"

    def __init__(self, port: int, count: int):
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        self.started = time.monotonic()
        self.closed_after: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        for i in range(len(self.REQUEST)):
            for n, sock in enumerate(self.socks):
                if n in self.closed_after:
                    continue
                try:
                    sock.send(self.REQUEST[i:i + 1])
                    sock.setblocking(False)
                    try:
                        gone = sock.recv(1) == b""
                    except BlockingIOError:
                        gone = False
                    sock.setblocking(True)
                except OSError:
                    gone = True
                if gone:
                    self.closed_after[n] = time.monotonic() - self.started
            if len(self.closed_after) == len(self.socks) or self.stop.wait(1.0):
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


def test_idle_and_slow_connections_never_cost_a_worker_and_scrapes_go_on_while_they_are_held(
        pg_database_factory, write_config, tmp_path, pgne_processes):
    """Before the fix: every connection took a descriptor and a thread for up to 60 s; under a
    limit of 300, 400 idle connections left none for a worker's restart. Now: at most
    MAX_CONNECTIONS are open; the listen backlog holds the rest; a new one (a scrape) closes the
    one that waited longest for its request; a slow client is cut off after HEAD_TIMEOUT."""
    dbs = [pg_database_factory() for _ in range(3)]
    for db in dbs:
        run_sql(db, "CREATE TABLE one (id serial PRIMARY KEY)")
    config = write_config(dbs[0], [MONITOR], tag=RELIABILITY_TAG, perform_setup=True,
                          also=[(db, [MONITOR], {"tag": RELIABILITY_TAG, "perform_setup": True}) for db in dbs[1:]])
    proc = LimitedPgne(config, tmp_path / "pgne")
    pgne_processes.append(proc)
    proc.start()
    workers = proc.worker_pids()
    assert len(workers) == 3
    fds_before, threads_before = open_fds(proc.pid), threads(proc.pid)

    def events(db) -> dict:
        return {"operation": "INSERT", "host": db.host_label, "database": db.name, "tag": RELIABILITY_TAG,
                "schema": "public", "table": "one"}

    for db in dbs:
        run_sql(db, "INSERT INTO one DEFAULT VALUES", "INSERT INTO one DEFAULT VALUES")
    proc.wait_for_values({labels_key("pgne_events_total", events(db)): 2 for db in dbs})

    idle = idle_connections(proc.port, IDLE)
    slow = SlowClients(proc.port, SLOW)
    try:
        # held: the master's descriptors and threads stay bounded, and scrapes are answered
        # held: 32 accepted and 128 in the backlog (the rest retry their SYN); before the fix
        # the master accepted every one that arrived, a descriptor and a thread each
        wait_until(lambda: established(idle) >= MAX_CONNECTIONS + 100 or open_fds(proc.pid) > fds_before + 100,
                   30, "the idle connections to be established", proc.describe)
        peak_fds, peak_threads = open_fds(proc.pid), threads(proc.pid)
        for _ in range(3):
            assert proc.scrape()[labels_key("pgne_events_total", events(dbs[0]))] == 2
            peak_fds, peak_threads = max(peak_fds, open_fds(proc.pid)), max(peak_threads, threads(proc.pid))
        print(f"\nHELD fds {fds_before} -> {peak_fds}; threads {threads_before} -> {peak_threads}")
        # + 1 for the connection being accepted
        assert peak_fds <= fds_before + MAX_CONNECTIONS + 1, (fds_before, peak_fds)

        # an ordinary worker restart while they are held: only the killed worker is lost
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(proc.worker_pids()) == 3 and victim not in proc.worker_pids(), 30,
                   "the killed worker's replacement", proc.describe)
        assert set(workers[1:]) <= set(proc.worker_pids())  # no other worker lost
        proc.wait_all_up()
        for db in dbs:
            run_sql(db, "INSERT INTO one DEFAULT VALUES")
        proc.wait_for_values({labels_key("pgne_events_total", events(db)): 3 for db in dbs})
        peak_fds, peak_threads = max(peak_fds, open_fds(proc.pid)), max(peak_threads, threads(proc.pid))
        assert set(workers[1:]) <= set(proc.worker_pids())

        # slow clients are cut off once HEAD_TIMEOUT has passed since their connection began
        wait_until(lambda: len(slow.closed_after) == SLOW, HEAD_TIMEOUT + 10, "every slow client to be closed")
        assert max(slow.closed_after.values()) <= HEAD_TIMEOUT + 3, slow.closed_after
    finally:
        slow.close()
        for sock in idle:
            sock.close()
    print(f"\nMEASURED fds {fds_before} -> peak {peak_fds}; threads {threads_before} -> peak {peak_threads}; "
          f"slow clients closed after {sorted(round(t, 1) for t in slow.closed_after.values())} s")
    # + 1 for the connection being accepted, + the replacement worker's while it starts
    assert peak_fds <= fds_before + MAX_CONNECTIONS + 4, (fds_before, peak_fds)
    assert peak_threads <= threads_before + MAX_CONNECTIONS + 2, (threads_before, peak_threads)
    assert "Too many open files" not in proc.stderr_text()
    assert "Traceback" not in proc.stderr_text()
    assert proc.stop()[0] == 0


# -- hostile requests ------------------------------------------------------------------------------

def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send `data`, read until the server closes: (what it answered, seconds until it closed)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # it may answer and close before reading everything
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, time.monotonic() - started


@pytest.fixture
def exporter_process(table, write_config, tmp_path, pgne_processes):
    config = write_config(table, [MONITOR], tag=RELIABILITY_TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne")
    pgne_processes.append(proc)
    return proc.start()


def test_huge_or_many_headers_are_431_and_a_huge_body_is_not_read(exporter_process):
    proc = exporter_process
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
    answer, _ = raw_exchange(proc.port, huge)
    assert answer.startswith(b"HTTP/1.0 431 "), answer[:200]
    many = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n"
    answer, _ = raw_exchange(proc.port, many)
    assert answer.startswith(b"HTTP/1.0 431 "), answer[:200]
    long_line = b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"
    answer, _ = raw_exchange(proc.port, long_line)
    assert answer.startswith(b"HTTP/1.0 431 "), answer[:200]
    # a body pgne will not read: answered at once and closed, not waited for
    for method in (b"POST", b"PUT"):
        answer, took = raw_exchange(proc.port, method + b" /-/reload HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 1000000000000\r\n\r\nabc")
        assert answer.startswith(b"HTTP/1.0 403 ") and took < 5, (answer[:200], took)
    # a head that never ends is cut off after HEAD_TIMEOUT, answered nothing
    answer, took = raw_exchange(proc.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", timeout=HEAD_TIMEOUT + 10)
    assert answer == b"" and HEAD_TIMEOUT - 1 <= took <= HEAD_TIMEOUT + 3, (answer, took)
    assert proc.scrape()  # still serving
    assert "Traceback" not in proc.stderr_text()
