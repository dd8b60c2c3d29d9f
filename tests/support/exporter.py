"""pgne under test: a `pgne run` subprocess (`PgneProcess`) and pgne commands run in this process
(`apply_in_process`, `status_in_process`: the same code path below the argparse layer).

Nothing here sleeps and hopes: every wait polls a condition until a deadline and then fails
with what it saw and the tail of pgne's stderr.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from support.metrics import Samples, http_get, http_request, labels_key, parse_metrics
from support.processes import children_of, free_port, kill_session, pgne_env
from support.waiting import DEFAULT_TIMEOUT, wait_until

SPAWNED: list["PgneProcess"] = []


class PgneProcess:
    """One `pgne run` master (and its workers), in its own session so that teardown can kill
    whatever is left of it."""

    def __init__(self, config: str | os.PathLike, workdir: str | os.PathLike, *extra_args: str,
                 log_level: str = "INFO", listen_flag: str = "--listen-address", telemetry_path: str = "/metrics"):
        """`extra_args` follow the standard ones; `listen_flag` names the listen address (its other
        spelling, --web.listen-address); `telemetry_path`: where scrape() finds the metrics (give
        --web.telemetry-path in extra_args too)."""
        self.config = str(config)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.stderr_path = self.workdir / "pgne.stderr"
        self.extra_args = extra_args
        self.log_level = log_level
        self.listen_flag = listen_flag
        self.telemetry_path = telemetry_path
        self.host = "127.0.0.1"  # where url() finds pgne
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    # -- lifetime -----------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pgne", "run", "-c", self.config,
                self.listen_flag, f"127.0.0.1:{self.port}", "--state-dir", str(self.state_dir),
                "--log-level", self.log_level, *self.extra_args]

    def listen_port(self) -> int:
        """The port that command() makes pgne listen on, picked at each spawn."""
        return free_port()

    def environment(self) -> dict[str, str]:
        return pgne_env()

    def spawn(self) -> subprocess.Popen:
        """Start the master without waiting for anything."""
        self.port = self.listen_port()
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=self.environment(),
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

    @contextmanager
    def running(self, expect_up: bool = True) -> Iterator["PgneProcess"]:
        """start() for a `with` block (a fixture's yield); its whole session killed afterwards."""
        try:
            yield self.start(expect_up)
        finally:
            self.kill_leftovers()

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

    def worker_pids(self) -> list[int]:
        """The workers: the children of the master's launcher (its only child)."""
        return sorted(pid for child in children_of(self.pid) for pid in children_of(child))

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
        kill_session(self.process)

    # -- HTTP ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict, bytes]:
        return http_get(self.url(path), headers)

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict, bytes]:
        return http_request(method, self.url(path), headers)

    def metrics_text(self) -> str:
        status, _, body = self.get(self.telemetry_path)
        assert status == 200, f"GET {self.telemetry_path} answered {status}: {body[:500]!r}"
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
