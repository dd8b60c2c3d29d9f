"""The state directory (`--state-dir`, else $PROMETHEUS_MULTIPROC_DIR): pgne's own, nobody else's.

pgne deletes its metrics files there at every start (stale counts must never be served), so it
only takes a directory that is its own:
- one it created, or an empty one: it is marked with MARKER;
- a marked one (pgne's, from an earlier run);
- one that an earlier pgne without the marker left (nothing but pgne's file names, its
  compaction lock among them): it is marked, then used.
Anything else is refused (exit 2) with the names of the files pgne did not create, and nothing
is deleted. Only files with pgne's names are ever deleted.

While pgne runs it holds an exclusive flock on the marker, so a second `pgne run` on the same
directory is refused instead of wiping the first one's files. The lock dies with the master
(workers do not inherit it): a new master can start at once after a crash.

This module must not import prometheus_client (the directory is prepared before anything does).
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
from dataclasses import dataclass

from pgne.errors import EXIT_CONFIG, UserError

log = logging.getLogger("pgne.master")

MARKER = ".pgne-state-dir"
COMPACTION_LOCK = ".pgne-compaction.lock"  # pgne.compaction.LOCK_FILE (not imported: see above)
MARKER_TEXT = ("This directory belongs to pgne (its --state-dir): pgne deletes its metrics files here "
               "at every start. Put nothing else in it.\n")
# Every name pgne (or prometheus_client in its workers) writes in the directory.
OWN_FILE = re.compile(r"""
    (?:counter|histogram|summary|gauge_[a-z]+)_(?:[0-9]+|merged)\.db(?:\.tmp|\.folding|\.corrupt)?
  | outbox-offsets-[0-9a-f]{16}\.json(?:\.tmp)?
  | \.pgne-compaction\.lock
  | \.pgne-probe-\w+
""", re.VERBOSE)
SHOWN = 5  # foreign file names listed in the refusal


@dataclass
class StateDir:
    path: str
    remove_at_exit: bool  # a private temporary directory
    lock_fd: int  # the flock on the marker, held until close()

    def close(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def prepare_state_dir(requested: str | None) -> StateDir:
    """Take (create, check, lock, clean) the state directory; UserError (exit 2) if it is not
    pgne's to take. Without one: a private temporary directory, removed at exit."""
    source = "--state-dir"
    if not requested and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        requested, source = os.environ["PROMETHEUS_MULTIPROC_DIR"], "PROMETHEUS_MULTIPROC_DIR"
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
        if names and COMPACTION_LOCK not in names:  # pgne's names, but not proof of pgne's hand
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
        if name != COMPACTION_LOCK and OWN_FILE.fullmatch(name):
            os.unlink(os.path.join(path, name))
