"""Databases: the one handle (`Database`), one create/drop, and the one SQL helper.

- `Database`: what a test and a config entry need of one database (name, host, port, user,
  password, dsn) and `connect()` / `execute()`.
- `create_database()` / `drop_database()`: CREATE DATABASE <prefix>_<random> on a server (an
  admin DSN, or a cluster with `.dsn`) and DROP DATABASE ... WITH (FORCE); `throwaway_database()`
  both around a `with` block; `DatabasePool` keeps spares ready for the `pg_database` fixture.
- `query()`: rows of one statement; `run_sql()`: several statements, each in its own
  autocommitted transaction. DDL goes through psycopg2.sql, never string formatting.
- `pgne_triggers()`, `pgne_functions()`, `schema_exists()`, `pgne_backends()`: catalog queries.
"""
from __future__ import annotations

import os
import queue
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

CONNECT_TIMEOUT = 10  # seconds, for every connection the tests open themselves


def host_label(host: str, port: int) -> str:
    """pgne's `host` label of a database: the host, with `:port` unless the port is 5432."""
    if port == 5432:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Database:
    """One database on a test server: what a config entry needs, and connections to it.

    `name`, `host`, `port`, `user`, `password` (None: no password) are a config entry's keys.
    `dsn` is the libpq DSN of this database: given (a server's DSN with this dbname, so that its
    other options are kept), else made from the fields with a 10 s connect_timeout.
    `connect()` opens a psycopg2 connection that `close_connections()` closes (the fixtures call
    it at teardown); `execute()` runs one autocommitted statement and returns its rows.
    """

    name: str
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str | None = None
    dsn: str = ""
    _connections: list = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.dsn:
            object.__setattr__(self, "dsn", make_dsn(host=self.host, port=self.port, user=self.user,
                                                     dbname=self.name, password=self.password or None,
                                                     connect_timeout=CONNECT_TIMEOUT))

    @classmethod
    def on_server(cls, server_dsn: str, name: str) -> Database:
        """Database `name` on the server of `server_dsn` (its password, else $PGPASSWORD)."""
        params = parse_dsn(server_dsn)
        return cls(name=name, dsn=make_dsn(server_dsn, dbname=name),
                   host=params.get("host") or "127.0.0.1", port=int(params.get("port") or 5432),
                   user=params.get("user") or "postgres",
                   password=params.get("password") or os.environ.get("PGPASSWORD"))

    @property
    def host_label(self) -> str:
        """pgne's `host` label of this database (`host:port` off port 5432)."""
        return host_label(self.host, self.port)

    def connect(self, autocommit: bool = False, **kwargs: Any):
        """A new psycopg2 connection to this database (`kwargs` override the DSN's keys, e.g.
        user=...); closed by close_connections(). `conn.notices` collects the server's WARNINGs
        and NOTICEs of that connection."""
        conn = psycopg2.connect(self.dsn, **kwargs)
        conn.autocommit = autocommit
        self._connections.append(conn)
        return conn

    def execute(self, statement: Any, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[tuple]:
        """Run one statement (or a ;-separated script without params) in autocommit; its rows."""
        return query(self, statement, params)

    def close_connections(self) -> None:
        for conn in self._connections:
            if not conn.closed:
                conn.close()
        self._connections.clear()


# Where SQL runs: a DSN, anything with a `.dsn` (a Database, a cluster), or an open connection.
Target = Union[str, Database, Any]


def _admin_dsn(server: Target) -> str:
    return server if isinstance(server, str) else server.dsn


@contextmanager
def connection(target: Target) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection to `target`, closed afterwards (an open connection is used as
    it is, and left open)."""
    if isinstance(target, psycopg2.extensions.connection):
        yield target
        return
    conn = psycopg2.connect(_admin_dsn(target), connect_timeout=CONNECT_TIMEOUT)
    try:
        conn.autocommit = True
        yield conn
    finally:
        conn.close()


def query(target: Target, statement: Any, params: Iterable[Any] | Mapping[str, Any] | None = None) -> list[tuple]:
    """Rows of one statement (text or psycopg2.sql; or a ;-separated script without params), in
    autocommit on a new connection to `target` (or on the open connection given); [] when it
    returns none."""
    with connection(target) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def run_sql(target: Target, *statements: Any) -> list[tuple]:
    """Each statement (text, psycopg2.sql, or (either, params)) in its own autocommitted
    transaction, on one connection; the rows of the last."""
    rows: list[tuple] = []
    with connection(target) as conn:
        for statement in statements:
            rows = query(conn, *statement) if isinstance(statement, tuple) else query(conn, statement)
    return rows


# --------------------------------------------------------------------------- create / drop


def create_database(server: Target, prefix: str = "pgne_it", name: str | None = None) -> Database:
    """CREATE DATABASE <prefix>_<random> (or `name`) on `server` (an admin DSN, or a cluster)."""
    admin_dsn = _admin_dsn(server)
    name = name or f"{prefix}_{uuid.uuid4().hex[:12]}"
    query(admin_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return Database.on_server(admin_dsn, name)


def drop_database(server: Target, database: Database) -> None:
    """DROP DATABASE ... WITH (FORCE): also ends sessions the test left open."""
    database.close_connections()
    query(_admin_dsn(server), sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database.name)))


@contextmanager
def throwaway_database(server: Target, name: str | None = None) -> Iterator[Database]:
    """One more fresh database (named `name`, else randomly) on `server`, dropped afterwards."""
    database = create_database(server, name=name)
    try:
        yield database
    finally:
        drop_database(server, database)


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
        self._ready: queue.Queue[Database] = queue.Queue()
        self._tasks: queue.Queue[tuple] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="pgne-test-databases", daemon=True)
        self._thread.start()
        for _ in range(spares):
            self._tasks.put(("create",))

    def _drop_all(self, databases: list[Database]) -> None:
        def drop(database: Database) -> None:
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

    def acquire(self) -> Database:
        try:
            database = self._ready.get_nowait()
        except queue.Empty:
            database = create_database(self.admin_dsn)
        self._tasks.put(("create",))
        return database

    def release(self, database: Database) -> None:
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


# --------------------------------------------------------------------------- catalog queries


def pgne_triggers(target: Target) -> set[tuple[str, str, str]]:
    """(schema, table, trigger) of every pgne_* trigger in the database (clones included)."""
    return set(query(target, """
        SELECT n.nspname, c.relname, t.tgname
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND t.tgname LIKE 'pgne\\_%'"""))


def pgne_functions(target: Target) -> set[str]:
    """Names of the functions in schema pgne (empty when the schema does not exist)."""
    return {row[0] for row in query(target, """
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'pgne'""")}


def schema_exists(target: Target, name: str = "pgne") -> bool:
    return query(target, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (name,))[0][0]


def pgne_backends(db: Database) -> list[int]:
    """pids of the backends with application_name 'pgne' connected to this database."""
    return [row[0] for row in query(db, "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                        "AND application_name = 'pgne' ORDER BY pid", (db.name,))]
