"""Shared pieces of the benchmarks: the cluster, a `pgne run` subprocess, figures and tables.

The cluster is the benchmarks' own (pgne.cluster: initdb into a temporary directory, as the
`postgres` OS user when run as root), never a server of the machine's. Unlike the tests' throwaway
clusters, fsync, synchronous_commit and full_page_writes keep their defaults (on): a write
benchmark with fsync off hides the commit cost that dominates single-row INSERTs. Nothing of
pgne.cluster is copied here (binaries lookup, start/stop); configs, SQL, waits and /proc readings
come from the tests' support package (tests/support/, put on sys.path by run.py): the benchmarks
and the tests share one copy of each.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from psycopg2 import sql
from support.configs import config_text, database_entry
from support.databases import Database, query
from support.processes import children_of, pgne_env
from support.waiting import wait_until

import pgne.cluster as cluster_module
from pgne.cluster import free_port

REPO = Path(__file__).resolve().parent.parent
# The system's newest PostgreSQL (the figures in BENCHMARKS.md), else the embedded server's.
BINARIES = cluster_module.find_binaries(prefer="system")
BENCH_DIR = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- processes


def pg_bin(name: str) -> str:
    """A program of the PostgreSQL installation the benchmarks use (pgne.cluster's choice)."""
    return BINARIES.path(name)


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a server program as the OS user that pgne.cluster runs the server as (root cannot)."""
    user = cluster_module._server_user()
    return subprocess.run(cluster_module.as_server_user(args, user.pw_name if user else None), check=True,
                          capture_output=True, text=True, **kwargs)


def rss_mb(pid: int) -> float:
    """VmRSS of a process, in MiB (from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CODES = ("alpha", "beta", "gamma", "delta")  # the benchmarks' label whitelist; 'epsilon' counts as `other`


class Cluster(cluster_module.ThrowawayCluster):
    """A PostgreSQL cluster of the benchmarks' own (pgne.cluster), on a free port, with durable
    settings."""

    def __init__(self):
        super().__init__(BINARIES, durable=True, prefix="pgne-bench-cluster-", settings={
            "shared_buffers": "'256MB'",
            "max_connections": "300",  # fleet: 200 workers at once
            # no checkpoint in the middle of a timed statement; run.py checkpoints between runs
            "max_wal_size": "'4GB'", "checkpoint_timeout": "'30min'",
        })
        self.data = str(self.data)  # the benchmarks join paths to it as text
        self.remove_when_this_process_exits()  # a killed benchmark run leaves no server behind

    def execute(self, statement, dbname: str = "postgres", params: Sequence | None = None) -> list[tuple]:
        """Rows of one statement (or a ;-separated script) in autocommit on database `dbname`."""
        return query(self.dsn_for(dbname), statement, params)

    def create_database(self, name: str, setup_sql: str = "") -> None:
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if setup_sql:
            self.execute(setup_sql, dbname=name)

    def server_version(self) -> str:
        return self.execute("SHOW server_version")[0][0]


# --------------------------------------------------------------------------- pgne


def config_yaml(cluster: Cluster, databases: Sequence[dict]) -> str:
    """events_config.yml text: one host (the bench cluster), `databases` as entries.

    Each entry: name, monitors (list of (table, label column or None, values, events), and
    optionally a fifth element: columns_to_observe), and optional delivery / perform_setup.
    """
    entries = []
    for db in databases:
        monitors = []
        for table, column, values, events, *observe in db["monitors"]:
            monitor = {"table": table, "enabled": True,
                       "function": "notification_with_payload" if column else "simple_event_notification"}
            if column:
                monitor["columns_to_label"] = [{column: list(values)}]
            if observe:
                monitor["columns_to_observe"] = observe[0]
            monitors.append({**monitor, "events": list(events)})
        database = Database(db["name"], port=cluster.port, password="unused")
        entries.append(database_entry(database, monitors, tag=db.get("tag", "bench"),
                                      perform_setup=bool(db.get("perform_setup")), delivery=db.get("delivery")))
    return config_text(*entries)


def one_table_database(cluster: Cluster, workdir: str, db: str) -> str:
    """Database `db` with table public.t (id, code) and pgne's notify trigger on INSERT (label
    column `code`, whitelist CODES), installed by pgne's apply; returns the config's path."""
    cluster.create_database(db, "CREATE TABLE public.t (id bigint, code text)")
    path = os.path.join(workdir, f"{db}.yml")
    with open(path, "w") as f:
        f.write(config_yaml(cluster, [{"name": db, "monitors": [("t", "code", CODES, ["insert"])]}]))
    apply_config(path)
    return path


def apply_config(config_path: str) -> list[str]:
    """Install the triggers through pgne's own code path (load, render, apply)."""
    from pgne.apply import apply_database
    from pgne.config import load_config
    from pgne.render import Renderer

    renderer = Renderer()
    config = load_config(config_path, renderer)
    lines = []
    for db in config.databases:
        result = apply_database(db, renderer)
        if not result.ok:
            raise RuntimeError(f"pgne apply failed: {result.line()}")
        lines.append(result.line())
    return lines


# pgne run with faster restarts: the master's restart backoff (1 s doubling to 30 s) would make
# 500 restarts take an hour; the restart path itself (reap, mark dead, respawn) is unchanged.
# pgne.master imports prometheus_client, which needs its multiprocess dir set first.
FAST_RESTART_BOOT = (
    "import os, sys; os.environ['PROMETHEUS_MULTIPROC_DIR'] = sys.argv[sys.argv.index('--state-dir') + 1]; "
    "import pgne.master as m; m.RESTART_BACKOFF_FIRST = m.RESTART_BACKOFF_MAX = 0.05; "
    "m.LOOP_TICK = 0.05; from pgne.cli import main; sys.exit(main(sys.argv[1:]))"
)


def console_script() -> str:
    """The `pgne` console script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).with_name("pgne")
    found = str(beside) if beside.exists() else shutil.which("pgne")
    if not found:
        raise RuntimeError("no `pgne` console script: pip install . first")
    return found


class Pgne:
    """A `pgne run` subprocess serving /metrics on a free port, with its own state dir."""

    def __init__(self, config_path: str, workdir: str, fast_restarts: bool = False, log_level: str = "WARNING",
                 env: dict[str, str] | None = None, boot: str = "script"):
        """`boot`: "script", the installed `pgne` console script, as users start it (what it
        imports under PYTHONPATH, a baseline revision's pgne, comes first); "module": `python -m pgne`."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.port = free_port()
        self.stderr_path = self.workdir / "pgne.stderr"
        if fast_restarts:
            start = [sys.executable, "-c", FAST_RESTART_BOOT]
        elif boot == "script":
            start = [console_script()]
        else:
            start = [sys.executable, "-m", "pgne"]
        command = [*start, "run", "-c", config_path, "--listen-address", f"127.0.0.1:{self.port}",
                   "--state-dir", str(self.state_dir), "--log-level", log_level]
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(command, cwd=self.workdir, env=env or pgne_env(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        wait_until(self._healthy, 60, "pgne's /-/healthy", interval=0.02)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"pgne run exited with {self.process.returncode}: {self.stderr_tail()}")
        try:
            with urllib.request.urlopen(self.url("/-/healthy"), timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def scrape(self, timeout: float = 60) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=timeout) as response:
            return response.read().decode("utf-8")

    def workers(self) -> list[int]:
        """The children of the master's launcher (its only child)."""
        return [pid for child in children_of(self.pid) for pid in children_of(child)]

    def wait_up(self, databases: int, timeout: float = 120) -> None:
        def all_up() -> bool:
            ups = sample_values(self.scrape(), "pgne_database_up")
            return len(ups) == databases and all(v == 1 for v in ups)

        wait_until(all_up, timeout, f"{databases} database(s) up in pgne", interval=0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever is left of its session
        except ProcessLookupError:
            pass
        self.process.wait()


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.M)


def sample_values(text: str, name: str, *label_parts: str) -> list[float]:
    """Values of the samples named `name` whose label text contains every one of `label_parts`
    (e.g. 'result="counted"')."""
    values = []
    for match in _SAMPLE_RE.finditer(text):
        if match.group(1) == name and all(part in (match.group(2) or "") for part in label_parts):
            values.append(float(match.group(3)))
    return values


def counted(text: str, database: str) -> float:
    return sum(sample_values(text, "pgne_notifications_total", 'result="counted"', f'database="{database}"'))


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One measured quantity: all runs, reported as their median."""

    name: str
    unit: str
    runs: list[float] = field(default_factory=list)
    baseline: Figure | None = None  # the ratio is median / baseline median
    target: str = ""  # human-readable, e.g. "<= 1.10x no trigger"
    check: Callable[[Figure], bool] | None = None  # PASS/MISS; None: informational
    higher_is_better: bool = False
    digits: int = 1
    # runs[i] and baseline.runs[i] were taken side by side (same repetition): the ratio is the
    # median of the per-repetition ratios, which a slow drift of the machine's speed cancels out of
    paired: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.runs or not self.baseline.median:
            return None
        if self.paired and len(self.runs) == len(self.baseline.runs) and all(self.baseline.runs):
            return statistics.median(r / b for r, b in zip(self.runs, self.baseline.runs))
        return self.median / self.baseline.median

    def verdict(self) -> str:
        if self.check is None or not self.runs:
            return ""
        return "PASS" if self.check(self) else "**MISS**"

    def fmt(self, value: float) -> str:
        return f"{value:,.{self.digits}f}"

    def row(self) -> str:
        runs = ", ".join(self.fmt(v) for v in self.runs)
        ratio = ""
        if self.ratio is not None:
            ratio = f"{self.ratio:.2f}x {self.baseline.name}" + (" (paired)" if self.paired else "")
        return (f"| {self.name} | **{self.fmt(self.median)}** {self.unit} | {len(self.runs)} | {runs} | {ratio} "
                f"| {self.target} | {self.verdict()} |")


TABLE_HEAD = ("| figure | median | n | runs | ratio to baseline | target | result |\n"
              "| --- | ---: | ---: | --- | --- | --- | --- |")


@dataclass
class Section:
    title: str
    method: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", self.method.strip(), "", TABLE_HEAD]
        parts += [f.row() for f in self.figures]
        if self.notes:
            parts.append("")
            parts += [f"- {note}" for note in self.notes]
        parts += ["", f"_Section runtime: {self.seconds:.0f} s._", ""]
        return "\n".join(parts)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil
    return sorted_values[min(rank, len(sorted_values)) - 1]


def checkpoint(cluster: Cluster) -> None:
    cluster.execute("CHECKPOINT")


def flush_latency_ms(directory: str, n: int = 100) -> float:
    """Median time of an 8 kB write + fdatasync in `directory`: what a commit waits for at least."""
    path = os.path.join(directory, "flush-probe")
    block = os.urandom(8192)
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, block, (i % 16) * 8192)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.remove(path)
    return statistics.median(times)


def spread_note(figure: Figure) -> str:
    """A warning when a baseline's runs spread wider than the effects being judged."""
    if len(figure.runs) < 2 or not figure.median:
        return ""
    low, high = min(figure.runs), max(figure.runs)
    spread = (high - low) / figure.median
    if spread <= 0.2:
        return ""
    return (f"Noise: the runs of \"{figure.name}\" range from {figure.fmt(low)} to {figure.fmt(high)} {figure.unit} "
            f"({spread:.0%} of their median), wider than the differences the targets judge; ratios come from "
            "side-by-side runs, but a verdict close to its target can flip between runs on this machine "
            "(see the fixes section for earlier runs).")
