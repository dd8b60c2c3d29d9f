"""Processes: pids read from /proc, a free port, and `python -m pgne ...` subprocesses with the
pgne that this process imports first on the import path."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from pgne.cluster import free_port  # noqa: F401 - the suite's free_port is pgne.cluster's
from support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


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


def wait_gone(pids: Iterable[int], timeout: float, what: str = "processes to exit") -> None:
    pids = list(pids)
    wait_until(lambda: all(process_gone(p) for p in pids), timeout, what,
               lambda: f"still running: {[p for p in pids if not process_gone(p)]}")


def kill_session(process: subprocess.Popen | None) -> None:
    """Teardown: SIGKILL the whole session of `process` (started with start_new_session=True),
    whatever state it is in, and reap it."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass


def pgne_env(**extra: str) -> dict[str, str]:
    """Environment for a pgne subprocess: the pgne that this process imports comes first on the
    import path (the checkout, or the installed package under tox); no inherited PGNE_CONFIG or
    PROMETHEUS_MULTIPROC_DIR."""
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
