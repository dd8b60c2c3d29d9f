"""Faults and load for the reliability suite: a TCP proxy that can partition, a background
writer, and the measured durations that tests/reliability/conftest.py prints at the end.

- `record()`: keep a measured duration (printed in pytest's terminal summary, and written to
  $PGNE_RELIABILITY_MEASUREMENTS as JSON when that is set); `Stopwatch`.
- `PartitionProxy`: a TCP proxy that can stop forwarding without closing anything.
- `BackgroundWriter`: autocommitted INSERTs in a thread until stopped.
"""
from __future__ import annotations

import select
import socket
import threading
import time

import psycopg2

MEASUREMENTS: dict[str, float] = {}


def record(name: str, seconds: float) -> float:
    """Keep a measured duration (printed in pytest's terminal summary); returns it."""
    MEASUREMENTS[name] = round(seconds, 2)
    return seconds


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class PartitionProxy:
    """Forwards 127.0.0.1:<port> to an upstream port, one pump thread per connection.

    `partition()` stops all forwarding *without closing anything*: established connections
    stay open but nothing is read or written (the kernel still ACKs what arrives, as a
    half-dead NAT or a frozen middlebox would), and new connections wait in the listen
    backlog, unaccepted. `heal()` resumes forwarding on every connection and accepts again.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepted = 0
        self.threads = [threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept")]
        self.threads[0].start()

    def partition(self) -> None:
        self.forwarding.clear()

    def heal(self) -> None:
        self.forwarding.set()

    def _wait_forwarding(self) -> bool:
        """False once the proxy is closed."""
        while not self.forwarding.wait(0.1):
            if self.closed.is_set():
                return False
        return not self.closed.is_set()

    def _accept_loop(self) -> None:
        while self._wait_forwarding():
            readable, _, _ = select.select([self.listener], [], [], 0.1)
            if not readable or not self.forwarding.is_set():
                continue
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
                self.accepted += 1
            thread = threading.Thread(target=self._pump, args=(client, server), daemon=True, name="proxy-pump")
            self.threads.append(thread)
            thread.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while self._wait_forwarding():
                readable, _, _ = select.select([a, b], [], [], 0.1)
                if not self.forwarding.is_set():
                    continue  # partitioned between select and now: read nothing
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        self.forwarding.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in self.threads:
            thread.join(5)


class BackgroundWriter(threading.Thread):
    """Inserts rows one autocommitted statement at a time until stop() (write load)."""

    def __init__(self, db, statement: str):
        super().__init__(daemon=True, name="writer")
        self.db, self.statement = db, statement
        self.stopping = threading.Event()
        self.committed = 0
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            conn = psycopg2.connect(self.db.dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                while not self.stopping.is_set():
                    cur.execute(self.statement)
                    self.committed += 1
            conn.close()
        except psycopg2.Error as exc:  # pragma: no cover - reported by the test
            self.errors.append(str(exc))

    def stop(self) -> int:
        self.stopping.set()
        self.join(30)
        return self.committed
