"""Runs a real `pgne run` subprocess for the integration tests and reads its /metrics over HTTP.

Nothing here sleeps and hopes: every wait polls a condition until a deadline and then fails
with what it saw and the tail of pgne's stderr.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

from helpers import pgne_env  # noqa: F401 - also imported from here by other tests
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 30.0
POLL = 0.05

T = TypeVar("T")
Samples = dict[tuple[str, frozenset], float]


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_metrics(text: str) -> Samples:
    """{(sample name, frozenset(label items)): value} of a Prometheus text exposition."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def wait_until(condition: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, what: str = "condition",
               describe: Callable[[], str] | None = None, interval: float = POLL) -> T:
    """Poll `condition` until it returns something truthy; return that. Fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = describe() if describe else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{detail}")
        time.sleep(interval)


def process_gone(pid: int) -> bool:
    """True if `pid` no longer runs (absent, or a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid` (scans /proc: .../task/*/children needs CONFIG_PROC_CHILDREN)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def labels_key(name: str, labels: Mapping[str, str]) -> tuple[str, frozenset]:
    return (name, frozenset(labels.items()))


SPAWNED: list["PgneProcess"] = []


class PgneProcess:
    """One `pgne run` master (and its workers), in its own session so that teardown can kill
    whatever is left of it."""

    def __init__(self, config: str | os.PathLike, workdir: str | os.PathLike, *extra_args: str,
                 log_level: str = "INFO"):
        self.config = str(config)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.stderr_path = self.workdir / "pgne.stderr"
        self.extra_args = extra_args
        self.log_level = log_level
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    # -- lifetime -----------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pgne", "run", "-c", self.config,
                "--listen-address", f"127.0.0.1:{self.port}", "--state-dir", str(self.state_dir),
                "--log-level", self.log_level, *self.extra_args]

    def spawn(self) -> subprocess.Popen:
        """Start the master without waiting for anything."""
        self.port = free_port()
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=pgne_env(),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=stderr, start_new_session=True)
        SPAWNED.append(self)  # conftest kills whatever a test leaves running, even if it failed early
        return self.process

    def start(self, expect_up: bool = True, timeout: float = DEFAULT_TIMEOUT) -> "PgneProcess":
        """Start, wait for /-/healthy and (unless expect_up is false) for every configured
        database's pgne_database_up to read 1."""
        self.spawn()
        wait_until(self._healthy, timeout, "GET /-/healthy to answer 200", self.describe)
        if expect_up:
            self.wait_all_up(timeout)
        return self

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"pgne run exited with {self.process.returncode} while starting\n"
                                 + self.describe())
        try:
            return http_get(self.url("/-/healthy"), timeout=2)[0] == 200
        except OSError:
            return False

    def wait_all_up(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        def all_up() -> bool:
            ups = [v for (name, _), v in self.scrape().items() if name == "pgne_database_up"]
            return bool(ups) and all(v == 1 for v in ups)

        wait_until(all_up, timeout, "every pgne_database_up to be 1", self.describe)

    @property
    def pid(self) -> int:
        return self.process.pid

    def child_pids(self) -> list[int]:
        return children_of(self.pid)

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, float]:
        """Send `signum` to the master; (exit code, seconds until it exited)."""
        started = time.monotonic()
        self.send_signal(signum)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def kill_leftovers(self) -> None:
        """Teardown: SIGKILL the master's whole session, whatever state it is in."""
        if self.process is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass

    # -- HTTP ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict, bytes]:
        return http_get(self.url(path), headers)

    def metrics_text(self) -> str:
        status, _, body = self.get("/metrics")
        assert status == 200, f"GET /metrics answered {status}: {body[:500]!r}"
        return body.decode("utf-8")

    def scrape(self) -> Samples:
        return parse_metrics(self.metrics_text())

    def value(self, name: str, labels: Mapping[str, str]) -> float | None:
        """The value of the sample with exactly these labels, or None if it is absent."""
        return self.scrape().get(labels_key(name, labels))

    def series(self, name: str, **match: str) -> dict[frozenset, float]:
        """Every sample of `name` whose labels include `match`: {frozenset(labels): value}."""
        return {labels: value for (n, labels), value in self.scrape().items()
                if n == name and all((k, v) in labels for k, v in match.items())}

    def wait_for_value(self, name: str, labels: Mapping[str, str], expected: float,
                       timeout: float = DEFAULT_TIMEOUT) -> None:
        seen: list[float | None] = [None]

        def reached() -> bool:
            seen[0] = self.value(name, labels)
            return seen[0] == expected

        wait_until(reached, timeout, f"{name}{dict(labels)} == {expected}",
                   lambda: f"last value: {seen[0]}\n" + self.describe())

    def wait_for_values(self, expected: Mapping[tuple[str, frozenset], float],
                        timeout: float = DEFAULT_TIMEOUT) -> Samples:
        """Wait until every (name, labels) of `expected` has its value; return that scrape."""
        last: list[Samples] = [{}]

        def reached() -> Samples | None:
            last[0] = self.scrape()
            return last[0] if all(last[0].get(k) == v for k, v in expected.items()) else None

        def describe() -> str:
            wrong = {f"{k[0]}{dict(k[1])}": (last[0].get(k), v) for k, v in expected.items()
                     if last[0].get(k) != v}
            return f"(seen, expected): {wrong}\n" + self.describe()

        return wait_until(reached, timeout, "metric values", describe)

    # -- diagnostics ----------------------------------------------------------------------------

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self, lines: int = 40) -> str:
        tail = "\n".join(self.stderr_text().splitlines()[-lines:])
        return f"--- pgne stderr (last {lines} lines) ---\n{tail}"


def wait_gone(pids: Iterable[int], timeout: float, what: str = "processes to exit") -> None:
    pids = list(pids)
    wait_until(lambda: all(process_gone(p) for p in pids), timeout, what,
               lambda: f"still running: {[p for p in pids if not process_gone(p)]}")


# -- configs (for tests that build the YAML themselves; conftest's write_config covers most) ----

def database_entry(database, monitors: list[dict], **overrides: object) -> dict:
    """One database of an events_config.yml for a PgDatabase-like object
    (.name, .host, .port, .user, optional .password)."""
    entry = {
        "database": database.name,
        "tag": "it",
        "perform_setup": True,
        "username": database.user,
        "password": getattr(database, "password", None) or "",
        "enabled": True,
        "port": int(database.port),
        "monitors": monitors,
    }
    entry.update(overrides)
    return entry


def config_yaml(*hosts: tuple[str, list[dict]]) -> str:
    """events_config.yml text: pg_notify_exporter's list of {host: [database entries]}."""
    import yaml

    return yaml.safe_dump([{host: entries} for host, entries in hosts], sort_keys=False)


# -- an extra database ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ExtraDatabase:
    """The attributes of conftest's PgDatabase that write_config and the tests use."""

    name: str
    dsn: str
    host: str
    port: int
    user: str
    password: str | None = None

    @property
    def host_label(self) -> str:
        """pgne's `host` label of this database (`host:port` off port 5432)."""
        from helpers import host_label

        return host_label(self.host, self.port)


@contextmanager
def throwaway_database(admin_dsn: str, name: str | None = None) -> Iterator[ExtraDatabase]:
    """One more fresh database (named `name`, else randomly) on the server of `admin_dsn`, dropped
    afterwards (for tests that need two, such as a reload that adds a database)."""
    import psycopg2
    from psycopg2 import sql
    from psycopg2.extensions import make_dsn, parse_dsn

    params = parse_dsn(admin_dsn)
    name = name or f"pgne_it_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield ExtraDatabase(name=name, dsn=make_dsn(admin_dsn, dbname=name),
                                host=params.get("host", "127.0.0.1"), port=int(params.get("port", 5432)),
                                user=params.get("user", "postgres"), password=params.get("password"))
        finally:
            with admin.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()
