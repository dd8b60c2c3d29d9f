"""Helpers for the integration tests (plain functions and classes; the fixtures are in conftest.py).

- `Listener`: LISTENs on a channel and sums the `count` of pgne's JSON payloads per
  (table, action, labels); `wait_for()` asserts exact totals without sleeping and hoping.
- `config_text()` / `database_entry_text()`: events_config.yml text (the `write_config` fixture
  uses them).
- `run_pgne()`: `python -m pgne ...` as a subprocess; `apply_in_process()`: pgne.commands.apply
  on a config file, in this process (faster, same code path below the argparse layer).

Nothing here sleeps and hopes: every wait polls with `select` until a deadline, then fails
saying what it saw.
"""
from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

DEFAULT_CHANNEL = "pg_notify_exporter"
DEFAULT_TIMEOUT = 15.0
SENTINEL_KEY = "pgne_test_sentinel"

# A key of Listener.totals: (table, action, ((label, value), ...) sorted by label name).
EventKey = tuple[str, str, tuple[tuple[str, str], ...]]


def host_label(host: str, port: int) -> str:
    """pgne's `host` label of a database: the host, with `:port` unless the port is 5432."""
    if port == 5432:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def event(table: str, action: str, **labels: Any) -> EventKey:
    """The Listener.totals key of `action` on `table` with these labels (none for payloads
    without `data`): event("public.one", "INSERT", code="alpha")."""
    return (table, action, tuple(sorted((name, value) for name, value in labels.items())))


# --------------------------------------------------------------------------- Listener


class Listener:
    """LISTENs on `channel` (autocommit, so LISTEN takes effect at once) and sums counts.

    Every notification on the channel is parsed as JSON. A payload with `table` and `action`
    adds its `count` (default 1, as the payload spec says) to `totals[event(table, action,
    **data)]`; the parsed payload is appended to `payloads` (in arrival order). Anything else
    lands in `invalid`. The listener's own sentinels are never counted.

    Create it *before* the writes it is to see: notifications reach only sessions that were
    listening when the writer committed.

    `wait_for(expected)` polls until every expected total is reached (or exceeded), then sends a
    sentinel NOTIFY from a separate connection and waits for it: notifications of one channel
    arrive in commit order, so once the sentinel is in, everything committed before the call
    has been received. Then it asserts `totals == expected` exactly. `wait_for({})` therefore
    proves that nothing was sent.
    """

    def __init__(self, dsn: str, channel: str = DEFAULT_CHANNEL):
        self.dsn = dsn
        self.channel = channel
        self.totals: Counter[EventKey] = Counter()
        self.payloads: list[dict] = []
        self.raw_payloads: list[str] = []  # the text of each one in self.payloads, as received
        self.invalid: list[str] = []
        self._sentinels_seen: set[str] = set()
        self._sender = None
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        for conn in (self.conn, self._sender):
            if conn is not None and not conn.closed:
                conn.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def reset(self) -> None:
        """Forget what was counted so far (after settle(), so that nothing is in flight)."""
        self.totals.clear()
        self.payloads.clear()
        self.raw_payloads.clear()
        self.invalid.clear()

    # -- receiving --------------------------------------------------------------------------

    def _handle(self, notify: psycopg2.extensions.Notify) -> None:
        if notify.channel != self.channel:
            return
        try:
            payload = json.loads(notify.payload)
        except ValueError:
            self.invalid.append(notify.payload)
            return
        if isinstance(payload, dict) and SENTINEL_KEY in payload:
            self._sentinels_seen.add(payload[SENTINEL_KEY])
            return
        if not isinstance(payload, dict) or "table" not in payload or "action" not in payload:
            self.invalid.append(notify.payload)
            return
        data = payload.get("data") or {}
        self.totals[event(payload["table"], payload["action"], **data)] += payload.get("count", 1)
        self.payloads.append(payload)
        self.raw_payloads.append(notify.payload)

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the socket, then take every pending notification."""
        if not self.conn.notifies:
            select.select([self.conn], [], [], max(timeout, 0.0))
        self.conn.poll()
        batch, self.conn.notifies[:] = self.conn.notifies[:], []
        for notify in batch:
            self._handle(notify)

    def _poll_until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0)
            if done():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                     f"totals so far: {dict(self.totals)}; payloads: {self.payloads}; "
                                     f"invalid: {self.invalid}")
            self.poll(min(remaining, 0.5))

    # -- sending ----------------------------------------------------------------------------

    def notify(self, payload: str) -> None:
        """pg_notify(channel, payload) from the listener's separate, autocommit sender connection."""
        if self._sender is None or self._sender.closed:
            self._sender = psycopg2.connect(self.dsn)
            self._sender.autocommit = True
        with self._sender.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))

    def settle(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once every notification committed before this call has been received."""
        token = uuid.uuid4().hex
        self.notify(json.dumps({SENTINEL_KEY: token}))
        self._poll_until(lambda: token in self._sentinels_seen, timeout, "the sentinel notification")

    # -- asserting --------------------------------------------------------------------------

    def wait_for(self, expected: Mapping[EventKey, int], timeout: float = DEFAULT_TIMEOUT) -> Counter:
        """Wait until `expected` is reached, settle, then assert the totals equal it exactly.

        Keys with value 0 in `expected` mean "never seen". Returns the totals.
        """
        wanted = {key: value for key, value in expected.items() if value}

        def reached() -> bool:
            return all(self.totals[key] >= value for key, value in wanted.items())

        self._poll_until(reached, timeout, f"totals {wanted}")
        self.settle(timeout)
        actual = {key: value for key, value in self.totals.items() if value}
        assert actual == wanted, (f"counted {actual}, expected {wanted}; payloads: {self.payloads}; "
                                  f"invalid: {self.invalid}")
        assert not self.invalid, f"payloads that are not pgne events: {self.invalid}"
        return self.totals


# --------------------------------------------------------------------------- configs


def _scalar(value: Any) -> str:
    """A YAML flow scalar (JSON is YAML): strings double-quoted, so any text survives."""
    return json.dumps(value, ensure_ascii=False)


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line if line.strip() else line
                   for line in textwrap.dedent(text).strip("\n").splitlines(keepends=True)) + "\n"


def monitors_text(monitors: str | Sequence[Mapping[str, Any]]) -> str:
    """Monitors as YAML text: given text is used as it is (dedented), a list of dicts is dumped."""
    if isinstance(monitors, str):
        return textwrap.dedent(monitors).strip("\n") + "\n"
    import yaml

    return yaml.safe_dump(list(monitors), sort_keys=False, allow_unicode=True, default_flow_style=False)


@dataclass(frozen=True)
class DatabaseEntry:
    """One database of an events_config.yml: its host (the mapping key above it) and its text."""

    host: str
    text: str


def database_entry_text(name: str, monitors: str | Sequence[Mapping[str, Any]], *, host: str = "127.0.0.1",
                        port: int = 5432, username: str = "postgres", password: str | None = "",
                        tag: str = "it", perform_setup: bool = False, enabled: bool = True,
                        **optional: Any) -> DatabaseEntry:
    """A database entry; `optional` adds keys such as channel, delivery, connect_timeout (a value
    of None leaves the key out). `password=None` leaves the password out (give password_file)."""
    keys: dict[str, Any] = {"database": name, "tag": tag, "perform_setup": perform_setup,
                            "username": username}
    if password is not None:
        keys["password"] = password
    keys.update(enabled=enabled, port=port)
    keys.update({k: v for k, v in optional.items() if v is not None})
    lines = [f"- database: {_scalar(name)}"]
    lines += [f"  {key}: {_scalar(value)}" for key, value in keys.items() if key != "database"]
    lines.append("  monitors:")
    text = "\n".join(lines) + "\n" + _indent(monitors_text(monitors), "  ")
    return DatabaseEntry(host, text)


def config_text(*entries: DatabaseEntry) -> str:
    """events_config.yml text: entries grouped under their host, in order of first appearance."""
    hosts: dict[str, list[str]] = {}
    for entry in entries:
        hosts.setdefault(entry.host, []).append(entry.text)
    out = []
    for host, texts in hosts.items():
        out.append(f"- {_scalar(host)}:\n")
        out.extend(_indent(text, "  ") for text in texts)
    return "".join(out)


# --------------------------------------------------------------------------- running pgne


def pgne_env(**extra: str) -> dict[str, str]:
    """Environment for a pgne subprocess: the pgne that this test process imports comes first
    on the import path (the checkout, or the installed package under tox)."""
    import pgne

    env = dict(os.environ)
    env.pop("PGNE_CONFIG", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    package_root = str(Path(pgne.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_pgne(*args: str | os.PathLike, cwd: str | os.PathLike | None = None,
             timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`python -m pgne ARGS...`; returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run([sys.executable, "-m", "pgne", *map(str, args)], cwd=cwd, env=pgne_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class Outcome:
    """What a pgne command returned and printed."""

    code: int
    stdout: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def apply_in_process(config_path: str | os.PathLike, *, dry_run: bool = False, prune: bool = False,
                     lock_timeout: float | None = None, host: str | None = None,
                     database: str | None = None) -> Outcome:
    """pgne.commands.apply on a config file, in this process (UserError propagates)."""
    from pgne import commands
    from pgne.config import load_config
    from pgne.render import DEFAULT_LOCK_TIMEOUT, Renderer

    renderer = Renderer(lock_timeout=DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout)
    config = load_config(str(config_path), renderer)
    out = io.StringIO()
    code = commands.apply(config, renderer, host, database, dry_run=dry_run, prune=prune, out=out)
    return Outcome(code, out.getvalue())


def status_in_process(config_path: str | os.PathLike) -> Outcome:
    """pgne.commands.status on a config file, in this process."""
    from pgne import commands
    from pgne.config import load_config
    from pgne.render import Renderer

    renderer = Renderer()
    config = load_config(str(config_path), renderer)
    out = io.StringIO()
    code = commands.status(config, renderer, out=out)
    return Outcome(code, out.getvalue())


# --------------------------------------------------------------------------- catalog queries


def query(conn, statement: str, params: Iterable[Any] | None = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def pgne_triggers(conn) -> set[tuple[str, str, str]]:
    """(schema, table, trigger) of every pgne_* trigger in the database (clones included)."""
    return set(query(conn, """
        SELECT n.nspname, c.relname, t.tgname
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND t.tgname LIKE 'pgne\\_%'"""))


def pgne_functions(conn) -> set[str]:
    """Names of the functions in schema pgne (empty when the schema does not exist)."""
    return {row[0] for row in query(conn, """
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'pgne'""")}


def schema_exists(conn, name: str = "pgne") -> bool:
    return query(conn, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (name,))[0][0]


def sql_rows(dsn: str, statement: Any, params: Iterable[Any] | Mapping[str, Any] | None = None) -> list[tuple]:
    """Rows of one statement (or a ;-separated script without params), autocommitted on a new
    connection."""
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def run_sql(db, *statements) -> None:
    """Each statement (text, psycopg2.sql.Composed, or (either, params)) in its own autocommitted
    transaction."""
    conn = psycopg2.connect(db.dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                if isinstance(statement, tuple):
                    cur.execute(*statement)
                else:
                    cur.execute(statement)
    finally:
        conn.close()
