"""The master-worker protocol: how a worker is started, what it is told, how it answers.

- The master has a worker forked from its launcher (pgne.launcher: nothing of the master's
  threads or locks is inherited), which runs `WORKER_MODULE.main(fd)`: `fd` is the read end of a
  pipe of the worker's own, PROMETHEUS_MULTIPROC_DIR is in its environment.
- The master writes the WorkerSpec on that pipe (encode_spec: a 4-byte big-endian length, then
  the pickled spec; the password travels here, never in argv or the environment); the worker
  reads it with read_spec(). The pipe then stays open: its write end is held only by the master,
  so EOF tells the worker that the master is gone.
- A worker LISTENs (and counts) until it is stopped, or TEARs DOWN a disabled database's setup
  and exits: 0 when done, EXIT_TEARDOWN_FAILED when the SQL failed (the master does not retry
  it). Any other exit is a crash, restarted with backoff.

Nothing here imports prometheus_client: the master imports this before it sets
PROMETHEUS_MULTIPROC_DIR.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import struct
from dataclasses import dataclass

from pgne.model import Database

# The module whose main(fd) a worker runs (the launcher imports it ahead); tests replace it
# with stand-ins that exit as they are told.
WORKER_MODULE = "pgne.worker"

LISTEN, TEARDOWN = "listen", "teardown"  # WorkerSpec.mode
EXIT_TEARDOWN_FAILED = 3  # the master does not restart a teardown that failed on SQL

_LENGTH = struct.Struct("!I")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, sent by the master on stdin."""

    database: Database
    label_names: tuple[str, ...]
    mode: str  # LISTEN or TEARDOWN
    template_dirs: tuple[str, ...]
    lock_timeout: float
    log_level: str
    trigger_check_interval: float = 60.0
    compat_metric: bool = False  # pgne run --compat-metric: pg_notify_exporter's series too
    log_format: str | None = None  # pgne run --log.format (pgne.logs): the master's format, in every worker


def encode_spec(spec: WorkerSpec) -> bytes:
    data = pickle.dumps(spec)
    return _LENGTH.pack(len(data)) + data


def read_spec(fd: int) -> WorkerSpec:
    """The spec the master wrote on `fd` (blocking); EOFError if the master closed it first."""
    def read_exactly(n: int) -> bytes:
        chunks = b""
        while len(chunks) < n:
            chunk = os.read(fd, n - len(chunks))
            if not chunk:
                raise EOFError("the master closed the pipe before sending the worker spec")
            chunks += chunk
        return chunks

    (length,) = _LENGTH.unpack(read_exactly(_LENGTH.size))
    return pickle.loads(read_exactly(length))


def die_with_parent(signum: int) -> None:
    """Ask Linux to send us `signum` when our parent's forking thread exits (PR_SET_PDEATHSIG).

    It covers the moments a child cannot notice by itself (a worker blocked in libpq, which
    retries on EINTR). Elsewhere (not Linux) nothing happens: the worker's stdin pipe still
    tells it. Called in the child, before it does anything else."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass
