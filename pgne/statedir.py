"""The state directory (`--state-dir`, else $PROMETHEUS_MULTIPROC_DIR): pgne's own, nobody else's.

This module owns it: its file names, taking it at start (marker, run lock, wipe), the lock that
its readers and pgne.compaction share, listing its metric files, and reading them (collect()).

pgne deletes its metrics files there at every start (stale counts must never be served), so it
only takes a directory that is its own:
- one it created, or an empty one: it is marked with MARKER;
- a marked one (pgne's, from an earlier run);
- one that an earlier pgne without the marker left (nothing but pgne's file names, its
  readers' lock among them): it is marked, then used.
Anything else is refused (exit 2) with the names of the files pgne did not create, and nothing
is deleted. Only files with pgne's names are ever deleted.

While pgne runs it holds an exclusive flock on the marker, so a second `pgne run` on the same
directory is refused instead of wiping the first one's files. The lock dies with the master
(workers do not inherit it): a new master can start at once after a crash.

The files in it:
- `<kind>_<pid>.db`: prometheus_client's multiprocess files, one per process and kind
  (`counter`, `gauge_livemax`, ...), written by the master and the workers;
- `<kind>_merged.db`: what pgne.compaction folded into one file from reaped workers' files;
- READERS_LOCK: every reader of the *.db files holds it shared (reading()), compaction and the
  outbox worker's series creation exclusively (exclusive());
- MARKER: says whose directory this is, and carries the running master's flock.

The master imports this module before it sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client
picks its value class when it is first imported: so this module imports prometheus_client only
inside collect(), which runs in processes that have the variable set (the master's HTTP threads,
an outbox worker). One module with a lazy import rather than a second module for the reading
part: the listing, the lock and the retry that collect() uses are this module's own.
"""
from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from pgne.errors import EXIT_CONFIG, UserError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

ENV_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's: where every process writes
MARKER = ".pgne-state-dir"
READERS_LOCK = ".pgne-compaction.lock"  # not *.db: prometheus_client ignores it
MERGED = "merged"  # stands where the pid is in a file name: counter_merged.db
MARKER_TEXT = ("This directory belongs to pgne (its --state-dir): pgne deletes its metrics files here "
               "at every start. Put nothing else in it.\n")
# Every name pgne (or prometheus_client in its workers) writes in the directory. Nothing writes
# `outbox-offsets-*.json` any more (the outbox's notify-to-outbox switch recorded per-series
# offsets there until its counts moved into pgne.totals): the name stays only so that the
# directory of such an earlier pgne is still taken over (and the file deleted) at the upgrade.
OWN_FILE = re.compile(rf"""
    (?:counter|histogram|summary|gauge_[a-z]+)_(?:[0-9]+|{MERGED})\.db(?:\.tmp|\.folding|\.corrupt)?
  | outbox-offsets-[0-9a-f]{{16}}\.json(?:\.tmp)?
  | {re.escape(READERS_LOCK)}
  | \.pgne-probe-\w+
""", re.VERBOSE)
SHOWN = 5  # foreign file names listed in the refusal
LOCK_POLL = 0.01
VANISHED_RETRIES = 5  # a file gone between listing and reading: list again, this many times

T = TypeVar("T")


@dataclass
class StateDir:
    path: str
    remove_at_exit: bool  # a private temporary directory
    lock_fd: int  # the flock on the marker, held until close()

    def close(self) -> None:
        """Give the directory up: a private temporary one is removed, the run lock released."""
        if self.remove_at_exit:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def prepare_state_dir(requested: str | None) -> StateDir:
    """Take (create, check, lock, clean) the state directory; UserError (exit 2) if it is not
    pgne's to take. Without one: a private temporary directory, removed at exit."""
    source = "--state-dir"
    if not requested and os.environ.get(ENV_VARIABLE):
        requested, source = os.environ[ENV_VARIABLE], ENV_VARIABLE
    if not requested:
        path = tempfile.mkdtemp(prefix="pgne-metrics-")
        return StateDir(path, True, _lock(path, f"state dir {path}", new=True))
    where = f"{source} {requested}"
    if "\0" in requested:
        raise UserError(f"{where!r}: a path cannot contain a NUL byte", EXIT_CONFIG)
    try:
        path, new = _directory(requested, where)
        lock_fd = _lock(path, where, new)
        try:
            _clean(path, where)
        except BaseException:
            os.close(lock_fd)
            raise
    except OSError as exc:
        raise UserError(f"{where}: {exc.strerror or exc}", EXIT_CONFIG) from None
    return StateDir(path, False, lock_fd)


def _directory(requested: str, where: str) -> tuple[str, bool]:
    """(the real path, created now?)."""
    if os.path.islink(requested) and not os.path.exists(requested):
        raise UserError(f"{where}: a symbolic link to {os.readlink(requested)}, which does not exist",
                        EXIT_CONFIG)
    if os.path.exists(requested):
        if not os.path.isdir(requested):
            raise UserError(f"{where}: not a directory", EXIT_CONFIG)
        return os.path.realpath(requested), False
    os.makedirs(requested)
    return os.path.realpath(requested), True


def _foreign(path: str) -> list[str]:
    """Entries that pgne did not create (anything that is not a regular file with pgne's names)."""
    foreign = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name == MARKER and entry.is_file(follow_symlinks=False):
                continue
            if not (OWN_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
                foreign.append(entry.name)
    return sorted(foreign)


def _lock(path: str, where: str, new: bool) -> int:
    """Mark the directory if it is pgne's to take; lock the marker; return its descriptor."""
    marker = os.path.join(path, MARKER)
    if not new and not os.path.isfile(marker):
        names = os.listdir(path)
        foreign = _foreign(path)
        if foreign:
            shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
            raise UserError(
                f"{where}: holds files that pgne did not create ({shown}); pgne deletes its files in its "
                f"state directory at every start, so it takes only a new or empty directory, or one it "
                f"created: give another one (nothing was deleted)", EXIT_CONFIG)
        if names and READERS_LOCK not in names:  # pgne's names, but not proof of pgne's hand
            raise UserError(
                f"{where}: holds prometheus_client files ({', '.join(sorted(names)[:SHOWN])}) without "
                f"pgne's marker or lock: another program's multiprocess directory? Give pgne a directory "
                f"of its own (nothing was deleted)", EXIT_CONFIG)
        if names:
            log.info("%s: taking over the state directory of an earlier pgne (it had no marker yet)", where)
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").rpartition("pid ")[2].strip()
            raise UserError(f"{where}: in use by another pgne run{f' (pid {holder})' if holder.isdigit() else ''}",
                            EXIT_CONFIG) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{MARKER_TEXT}Used by pgne run, pid {os.getpid()}\n".encode(), 0)
        # A probe: the workers must be able to create their files here (read-only, or not ours).
        try:
            probe_fd, probe = tempfile.mkstemp(prefix=".pgne-probe-", dir=path)
        except OSError as exc:
            raise UserError(f"{where}: pgne cannot create files in it: {exc.strerror or exc}", EXIT_CONFIG) from None
        os.close(probe_fd)
        os.unlink(probe)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _clean(path: str, where: str) -> None:
    """Delete pgne's files of an earlier run (stale counts must not be served); refuse if
    anything else is there."""
    foreign = _foreign(path)
    if foreign:
        raise UserError(f"{where}: holds files that pgne did not create ({', '.join(foreign[:SHOWN])}); "
                        f"pgne's state directory must be its own: move them away (nothing was deleted)",
                        EXIT_CONFIG)
    for name in os.listdir(path):
        if name != READERS_LOCK and OWN_FILE.fullmatch(name):
            os.unlink(os.path.join(path, name))


# -- the readers' lock -------------------------------------------------------------------------


class Busy(Exception):
    """The lock was not free within the time given."""


@contextmanager
def _flock(state_dir: str, mode: int, timeout: float | None = None) -> Iterator[None]:
    fd = os.open(os.path.join(state_dir, READERS_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # per open file description: threads of one process exclude each other too
        if timeout is None:
            fcntl.flock(fd, mode)
        else:  # a reader that never lets go (a SIGSTOPped worker) must not hang the master
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Busy() from None
                    time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def reading(state_dir: str):
    """Hold this while reading the state dir's *.db files (a shared lock: readers do not wait
    for each other, only for a compaction in progress)."""
    return _flock(state_dir, fcntl.LOCK_SH)


def exclusive(state_dir: str, timeout: float | None = None):
    """Hold this while no reader may read the *.db files (a compaction moving counts from file
    to file; series being created at 0 before they are raised). Raises Busy if readers hold the
    directory longer than `timeout` seconds."""
    return _flock(state_dir, fcntl.LOCK_EX, timeout)


# -- the metric files ---------------------------------------------------------------------------


def metric_file(state_dir: str, prefix: str, pid: int | str) -> str:
    """The file of process `pid` (or MERGED) and kind `prefix` (`counter`, `gauge_max`, ...)."""
    return os.path.join(state_dir, f"{prefix}_{pid}.db")


def metric_files(state_dir: str) -> list[str]:
    """The *.db files that hold something: a process that is just creating its file leaves it
    0 bytes long for a moment (opened, not yet sized), and reading it would fail."""
    files = []
    for path in glob.glob(os.path.join(state_dir, "*.db")):
        try:
            if os.path.getsize(path) >= 8:  # past the 4-byte used-size header and its padding
                files.append(path)
        except FileNotFoundError:
            pass
    return files


def retry_vanished(read: Callable[[], T]) -> T:
    """read(), again if a file vanished between its listing and its reading (mark_process_dead()
    removes a reaped worker's live gauges): read() lists the directory again."""
    for attempt in range(VANISHED_RETRIES + 1):
        try:
            return read()
        except FileNotFoundError:
            if attempt == VANISHED_RETRIES:
                raise
    raise AssertionError("unreachable")


class _TolerantCollector:
    """prometheus_client's MultiProcessCollector, tolerant of the files of processes starting or
    being reaped: empty files are skipped, a vanished file makes it list the directory again, and
    it reads under the readers' lock (never while pgne.compaction moves a dead worker's counts).

    With `databases`, samples labelled with a host and database that the running config no
    longer has (removed by a reload) are left out: their dead workers' files stay on disk.
    """

    def __init__(self, path: str, databases: frozenset[tuple[str, str]] | None = None):
        if not os.path.isdir(path):
            raise ValueError(f"state dir {path} is not a directory")
        self.path, self.databases = path, databases

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector  # lazy: see the module's doc

        with reading(self.path):
            metrics = retry_vanished(lambda: MultiProcessCollector.merge(metric_files(self.path), accumulate=True))
        if self.databases is not None:
            for metric in metrics:
                metric.samples = [s for s in metric.samples
                                  if (s.labels.get("host"), s.labels.get("database")) in self.databases
                                  or "database" not in s.labels]
        return metrics


def collect(state_dir: str, databases: frozenset[tuple[str, str]] | None = None) -> CollectorRegistry:
    """A fresh CollectorRegistry that reads the state dir's totals (as prometheus_client documents
    for multiprocess mode), tolerant of workers starting and being reaped; see _TolerantCollector."""
    from prometheus_client import CollectorRegistry  # lazy: see the module's doc

    registry = CollectorRegistry()
    registry.register(_TolerantCollector(state_dir, databases))
    return registry
