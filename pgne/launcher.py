"""How the master starts workers: forks of a multiprocessing forkserver.

The forkserver is a clean process that the master starts once (fork+exec, before it is ever
needed again: multiprocessing restarts it if it dies). It imports pgne.worker and everything a
worker uses, then forks a worker per request. The workers share those imported pages with it
(copy-on-write), where each fork+exec'd worker used to import all of it again: the marginal
memory of a database is what the worker itself allocates (BENCHMARKS.md, "fleet").

What fork+exec gave is kept:
- Nothing of the master's threads or locks is inherited: the forkserver is single-threaded and
  never runs the master's code (HTTP threads, prometheus_client's locks).
- The password is never in argv or the environment: the forkserver is started without the
  variables that hold passwords (`hidden`), and each worker gets its spec on a pipe of its own
  from the master (pgne.protocol), as before.
- Workers end with the master: the pipe's EOF, and PR_SET_PDEATHSIG (their parent, the
  forkserver, exits when the master does: its "alive" pipe reaches EOF).

The workers are the forkserver's children, not the master's. The master learns of a worker's
end through its sentinel (the forkserver sends the exit status on it) and signals it through a
pidfd (pidfd_open right after the start): a pid that someone else reaps could be reused by an
unrelated process, a pidfd cannot.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import select
import signal
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator

from pgne import protocol

_CONTEXT = multiprocessing.get_context("forkserver")
# The master's descriptors per running worker: its spec pipe, its sentinel, the parent sentinel
# multiprocessing keeps for it, its pidfd (a fork+exec'd worker took one). Beside them: the state
# dir's files, HTTP connections, the forkserver's and the resource tracker's pipes.
DESCRIPTORS_PER_WORKER, DESCRIPTORS_BESIDE = 4, 256


@dataclass(eq=False)
class StartedWorker:
    """A worker the forkserver forked for us."""

    process: multiprocessing.process.BaseProcess
    pid: int
    pidfd: int  # -1 where pidfd_open is missing (not Linux 5.3+): then signals go by pid
    stdin: int  # the write end of the worker's spec pipe (pgne.protocol), held only by the master
    forkserver: int | None  # its parent's pid, read at its start
    lost: bool = False  # its exit status was lost: its forkserver died (see exitcode)

    @property
    def sentinel(self) -> int:
        """Readable once the worker has ended (or the forkserver has: see exitcode)."""
        return self.process.sentinel

    def exitcode(self) -> int | None:
        """As os.waitstatus_to_exitcode (-N: killed by signal N); None while it runs. When the
        forkserver itself died, the status is lost (multiprocessing then says 255): `lost` is
        set, and a worker still running (it dies with its parent, PR_SET_PDEATHSIG, but not
        always at once) is killed here, so that it is gone when this returns."""
        code = self.process.exitcode
        if code is None:
            return None
        if not self.gone(timeout=0):  # the sentinel ended with the forkserver, not the worker
            self.lost = True
            self.signal(signal.SIGKILL)
            self.gone(timeout=5.0)
        elif code == 255 and self.forkserver is not None:
            self.lost = not _running(self.forkserver)
        return code

    def gone(self, timeout: float) -> bool:
        """Whether the process has exited (waiting up to `timeout` seconds)."""
        if self.pidfd < 0:
            return True  # nothing better to go by than the sentinel
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def signal(self, signum: int) -> None:
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def release(self) -> None:
        """After it has ended: close what we hold of it."""
        if self.stdin >= 0:
            os.close(self.stdin)  # unbuffered: nothing to flush into a dead pipe
            self.stdin = -1
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.process.close()


def start_worker(hidden: Iterable[str]) -> StartedWorker:
    """Fork a worker (module protocol.WORKER_MODULE) from the forkserver, starting the forkserver
    first if it is not running, without the environment variables named in `hidden`."""
    _CONTEXT.set_forkserver_preload(["__main__", protocol.WORKER_MODULE])
    read_end, write_end = os.pipe()
    channel = multiprocessing.connection.Connection(read_end, writable=False)
    process = _CONTEXT.Process(target=_run_worker, args=(protocol.WORKER_MODULE, channel), daemon=True)
    try:
        with _environment_without(hidden):  # the forkserver (re)starts in here, if it must
            process.start()
    except BaseException:
        os.close(write_end)
        raise
    finally:
        channel.close()  # the worker has its own copy (passed with SCM_RIGHTS)
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or it is gone already (its sentinel says so)
        pidfd = -1
    return StartedWorker(process, process.pid, pidfd, write_end, forkserver=_parent(process.pid))


def make_room_for(workers: int) -> str | None:
    """Raise the soft limit on open files (RLIMIT_NOFILE) to what `workers` workers need, up to
    the hard limit: systemd's default soft limit (1024) holds about 190 workers. None when they
    fit, else why not (the workers that cannot start fail with EMFILE and are retried)."""
    need = workers * DESCRIPTORS_PER_WORKER + DESCRIPTORS_BESIDE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        return (f"{workers} worker(s) need about {need} open files, and the hard limit is {hard}: raise it "
                "(systemd: LimitNOFILE=; a shell: ulimit -Hn) or some workers will not start")
    return None


def wait_for(fds: list[int], timeout: float | None) -> list[int]:
    """The fds of `fds` that are readable, waiting up to `timeout` for one (poll(2): no
    FD_SETSIZE limit with hundreds of workers)."""
    return multiprocessing.connection.wait(fds, timeout)


def ended(workers: Iterable[StartedWorker], timeout: float | None) -> list[StartedWorker]:
    """The workers whose sentinel is ready (they have ended), waiting up to `timeout` for one."""
    by_sentinel = {worker.sentinel: worker for worker in workers}
    return [by_sentinel[fd] for fd in wait_for(list(by_sentinel), timeout)]


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (state first); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def _parent(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[1]) if fields else None


def _running(pid: int) -> bool:
    """Whether `pid` is alive (not a zombie). The forkserver is our child: its pid is not reused
    before multiprocessing reaps it, when it starts the next one."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


@contextlib.contextmanager
def _environment_without(names: Iterable[str]) -> Iterator[None]:
    """os.environ without `names` for the duration (the forkserver inherits the environment
    when it starts). Only the master's main thread reads these variables (config loads)."""
    saved = {name: os.environ.pop(name) for name in set(names) if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _run_worker(module: str, channel: multiprocessing.connection.Connection) -> None:
    """A worker's first code, in the forkserver's child.

    It keeps only the descriptors it uses (stdio, its spec pipe): multiprocessing hands every
    child the write end of the forkserver's "alive" pipe (and the resource tracker's), and a
    worker holding it keeps the forkserver alive after the master's death, so PR_SET_PDEATHSIG
    never fires and a worker blocked in libpq (a drain waiting for a lock) outlives the master.
    Then the preloaded objects go to the permanent generation, so that the worker's garbage
    collections never write to (and so never copy) the pages it shares with the forkserver and
    the other workers."""
    _close_all_but({0, 1, 2, channel.fileno(), *_fileno(sys.stdin)})
    gc.freeze()
    sys.exit(importlib.import_module(module).main(channel.fileno()))


def _fileno(stream) -> list[int]:
    try:
        return [stream.fileno()]
    except (AttributeError, ValueError, OSError):
        return []


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, closed already
                pass
