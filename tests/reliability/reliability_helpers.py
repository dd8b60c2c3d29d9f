"""Helpers of the reliability suite (tests/reliability/).

Named `reliability_helpers`, not `helpers`: tests/helpers.py is already imported as `helpers`
by tests/conftest.py, and test folders without __init__.py share one module namespace.

- `record()`: keep a measured duration; tests/reliability/conftest.py prints them all at the end
  of the run (and writes them to $PGNE_RELIABILITY_MEASUREMENTS as JSON when that is set).
- `DatabaseRef` / `create_database()`: a fresh database in a TempCluster (or any server), with
  what a config entry needs; `database_entry()` / `config_text()` write events_config.yml.
- `PartitionProxy`: a TCP proxy that can stop forwarding without closing anything.
- `settle()`, `events()`, `run_sql()`, `pgne_backends()`: reading pgne's view and the database's.

Nothing here sleeps and hopes: waits poll a condition until a deadline (runner.wait_until).
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg2
import yaml
from cluster import TempCluster
from helpers import run_sql  # noqa: F401 - re-exported to the suite
from psycopg2 import sql
from psycopg2.extensions import make_dsn
from runner import PgneProcess, throwaway_database, wait_until

CHANNEL = "pg_notify_exporter"
TAG = "rel"

# -- measurements ---------------------------------------------------------------------------------

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


# -- clusters ------------------------------------------------------------------------------------

def start_cluster(attempts: int = 3, hba: str | None = None, settings: dict[str, str] | None = None) -> TempCluster:
    """initdb + start; a new cluster (and port) if the start fails, e.g. because another test
    run took the free port in between. `hba` replaces pg_hba.conf before the first start;
    `settings` are added to postgresql.conf."""
    for attempt in range(attempts):
        cluster = TempCluster(settings=settings)
        if hba is not None:
            with open(os.path.join(cluster.data, "pg_hba.conf"), "w") as f:  # keeps its owner, postgres
                f.write(hba)
        try:
            cluster.start()
            cluster.wait_ready()
            return cluster
        except (subprocess.CalledProcessError, psycopg2.OperationalError) as exc:
            try:
                with open(cluster.log) as f:
                    log = f.read()[-2000:]
            except OSError:
                log = ""
            cluster.destroy()
            if attempt == attempts - 1:
                raise RuntimeError(f"cannot start a throwaway cluster: {exc}\n"
                                   f"{getattr(exc, 'stderr', '')}\n{log}") from exc
    raise AssertionError("unreachable")


# -- configs ---------------------------------------------------------------------------------------

def database_entry(db, monitors: list[dict], **overrides) -> dict:
    """One database entry of events_config.yml for `db` (.name, .port, .user, .password)."""
    entry = {"database": db.name, "tag": TAG, "perform_setup": True, "username": db.user,
             "password": getattr(db, "password", None) or "", "enabled": True, "port": int(db.port),
             "monitors": monitors}
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not None}


def config_text(host: str, *entries: dict) -> str:
    """events_config.yml: pg_notify_exporter's list of {host: [database entries]}."""
    return yaml.safe_dump([{host: list(entries)}], sort_keys=False, allow_unicode=True)


# -- databases --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatabaseRef:
    """A database (in a TempCluster, or on the shared server): what a config entry needs."""

    name: str
    host: str
    port: int
    user: str
    password: str = ""

    @property
    def dsn(self) -> str:
        return make_dsn(host=self.host, port=self.port, user=self.user, dbname=self.name,
                        password=self.password or None, connect_timeout=10)

    def connect(self, autocommit: bool = True, **overrides):
        params = dict(host=self.host, port=self.port, user=self.user, dbname=self.name,
                      connect_timeout=10)
        if self.password:
            params["password"] = self.password
        params.update(overrides)
        conn = psycopg2.connect(**params)
        conn.autocommit = autocommit
        return conn


def create_database(cluster, prefix: str = "rel") -> DatabaseRef:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = cluster.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return DatabaseRef(name=name, host="127.0.0.1", port=cluster.port, user="postgres")


@contextmanager
def database_on(admin_dsn: str, name: str | None = None) -> Iterator[DatabaseRef]:
    """A fresh database (named `name`, else randomly) on the server of `admin_dsn`; dropped after."""
    with throwaway_database(admin_dsn, name) as db:
        yield DatabaseRef(name=db.name, host=db.host, port=db.port, user=db.user, password=db.password or "")


def query(db, statement: str, params=None) -> list[tuple]:
    conn = psycopg2.connect(db.dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()
    finally:
        conn.close()


def pgne_backends(db) -> list[int]:
    """pids of the backends with application_name 'pgne' connected to this database."""
    return [row[0] for row in query(db, "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                        "AND application_name = 'pgne' ORDER BY pid", (db.name,))]


# -- reading pgne ------------------------------------------------------------------------------------

def up_labels(db, tag: str = TAG) -> dict[str, str]:
    return {"host": db.host, "database": db.name, "tag": tag}


def db_labels(db) -> dict[str, str]:
    return {"host": db.host, "database": db.name}


def result_labels(db, result: str) -> dict[str, str]:
    return {"host": db.host, "database": db.name, "result": result}


def events(proc: PgneProcess, db, label: str | None = "code") -> dict[tuple, float]:
    """pgne_events_total of one database: {(operation, schema.table[, label value]): value}."""
    found = {}
    for labels, value in proc.series("pgne_events_total", database=db.name, host=db.host).items():
        d = dict(labels)
        key = (d["operation"], f"{d['schema']}.{d['table']}")
        if label is not None:
            key += (d.get(label, ""),)
        found[key] = value
    return found


def notifications(proc: PgneProcess, db) -> dict[str, float]:
    """pgne_notifications_total of one database: {result: value}."""
    return {dict(labels)["result"]: value
            for labels, value in proc.series("pgne_notifications_total", database=db.name, host=db.host).items()}


def settle(proc: PgneProcess, db, timeout: float = 60, channel: str = CHANNEL) -> None:
    """Return once every notification committed before this call has been processed.

    Sends a payload for a table that is not configured and waits for
    pgne_notifications_total{result="unknown_table"} to count it: one channel's notifications
    arrive in commit order, and the worker counts a whole batch before it is scraped.
    """
    labels = result_labels(db, "unknown_table")
    before = proc.value("pgne_notifications_total", labels)
    assert before is not None, proc.describe()
    run_sql(db, ("SELECT pg_notify(%s, %s)",
                 (channel, json.dumps({"table": "settle_marker", "action": "INSERT", "seq": uuid.uuid4().hex}))))
    proc.wait_for_value("pgne_notifications_total", labels, before + 1, timeout=timeout)


def wait_value(proc: PgneProcess, name: str, labels: dict, predicate, timeout: float, what: str):
    """Poll one sample until predicate(value) holds; return the value. A failed scrape (the
    master is busy, say) counts as 'not yet'."""
    seen = [None]

    def check():
        try:
            seen[0] = proc.value(name, labels)
        except (OSError, AssertionError):
            return False
        return seen[0] is not None and predicate(seen[0])

    wait_until(check, timeout, what, lambda: f"last value: {seen[0]}\n{proc.describe()}")
    return seen[0]


# -- a partitionable TCP proxy -------------------------------------------------------------------------

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


# -- writers -------------------------------------------------------------------------------------------

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

