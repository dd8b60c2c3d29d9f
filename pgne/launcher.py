"""How the master starts workers: through pgne's own launcher process (pgne.launcher_process).

The launcher is fork+exec'd once by the master (`python -m pgne.launcher_process`) with a
whitelisted environment (ENVIRONMENT: what a worker needs, never a variable that any config so
far named as a password), imports the worker's module ahead, and forks a worker per request:
the workers share those pages with it, and nothing of the master's threads or locks is
inherited. /proc/PID/environ shows what a process was exec'd with, whatever it does to its
environment later: that is why the launcher is exec'd, with a clean environment, and why a
reload whose config names a new password variable that the launcher holds replaces it (its
workers are restarted by a new one; `Launchers.retire_if_holding`).

Requests travel over an inherited socketpair (no path, no temporary directory). Everything the
master waits for has a deadline, so a stopped or dead launcher never blocks its loop:
- a start is asynchronous: a request (with the read end of the worker's spec pipe), answered
  with the worker's pid and a pidfd; no answer within START_TIMEOUT is a failed start (the
  master retries it with backoff). A late answer is recognised by its request id: the master
  closed its end of that spec pipe, so the worker reads EOF and exits without counting;
- a worker's end is seen on its pidfd (poll: it works for the launcher's children, the
  master's grandchildren); its exit status comes from the launcher, which reaps it. A worker
  whose status has not come within STATUS_GRACE (a stopped launcher) ends "lost";
- workers are signalled through their pidfd, never by a pid that the launcher may have reaped
  (and the system reused) already.
"""
from __future__ import annotations

import errno
import itertools
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from pgne import protocol
from pgne.launcher_process import pack, receive

START_TIMEOUT = 5.0  # a start the launcher has not answered by then has failed (stopped? gone?)
STATUS_GRACE = 2.0  # an ended worker whose exit status the launcher has not reported by then is lost
LAUNCHER_EXIT_WAIT = 2.0  # at shutdown: then a launcher that has not exited (stopped) is killed
# The master's descriptors per running worker: its spec pipe's write end and its pidfd. Beside
# them: the state dir's files, HTTP connections, the launcher's socket, a start's pipe.
DESCRIPTORS_PER_WORKER, DESCRIPTORS_BESIDE = 2, 256
# Under a low limit, a start that would leave fewer free descriptors than this fails (and is
# retried): the workers that fit run, and scrapes and the state directory still get theirs.
DESCRIPTORS_KEPT = 16

# The launcher's (and so every worker's) environment: these variables of the master's, if set,
# and no other. libpq's variables except PGPASSWORD (the password comes on the spec pipe);
# what Python needs to find and run pgne; locale and time zone; where temporary files and the
# metrics directory are; the TLS and Kerberos settings libpq may read.
ENVIRONMENT = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PROMETHEUS_MULTIPROC_DIR",
    "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "KRB5_CONFIG", "KRB5CCNAME", "KRB5_KTNAME",
    "PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PYTHONSAFEPATH", "PYTHONPLATLIBDIR",
    "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8",
    "PYTHONUNBUFFERED", "PYTHONWARNINGS", "PYTHONMALLOC", "PYTHONFAULTHANDLER", "PYTHONDEVMODE",
    "PYTHONCOERCECLOCALE",
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE",
    "PGSYSCONFDIR", "PGOPTIONS", "PGAPPNAME", "PGSSLMODE", "PGREQUIRESSL", "PGSSLNEGOTIATION", "PGSSLCOMPRESSION",
    "PGSSLCERT", "PGSSLKEY", "PGSSLCERTMODE", "PGSSLROOTCERT", "PGSSLCRL", "PGSSLCRLDIR", "PGSSLSNI",
    "PGREQUIREPEER", "PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION", "PGGSSENCMODE", "PGKRBSRVNAME",
    "PGGSSLIB", "PGGSSDELEGATION", "PGCONNECT_TIMEOUT", "PGCLIENTENCODING", "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS", "PGCHANNELBINDING", "PGREQUIREAUTH", "PGMINPROTOCOLVERSION", "PGMAXPROTOCOLVERSION",
    "PGDATESTYLE", "PGTZ", "PGGEQO", "PGLOCALEDIR",
})
ENVIRONMENT_PREFIXES = ("LC_",)


def launcher_environment(environ: Mapping[str, str], hidden: Iterable[str]) -> dict[str, str]:
    """The whitelisted part of `environ`, without the variables named in `hidden`."""
    hidden = set(hidden)
    return {name: value for name, value in environ.items()
            if (name in ENVIRONMENT or name.startswith(ENVIRONMENT_PREFIXES)) and name not in hidden}


@dataclass(eq=False)
class StartedWorker:
    """A worker the launcher forked for us."""

    pid: int
    pidfd: int  # -1 where pidfd_open is missing (not Linux 5.3+): then it goes by pid
    stdin: int  # the write end of the worker's spec pipe (pgne.protocol), held only by the master
    launcher: "LauncherProcess"
    ended_at: float | None = None  # when its pidfd said it had exited
    status: int | None = None  # its wait status, as the launcher reported it
    lost: str | None = None  # why its exit status is unknown (then it has ended all the same)

    def exitcode(self) -> int | None:
        """As os.waitstatus_to_exitcode (-N: killed by signal N); None when unknown (lost)."""
        return None if self.status is None else os.waitstatus_to_exitcode(self.status)

    def signal(self, signum: int) -> None:
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, signum)
            elif self.status is None and self.lost is None:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def release(self) -> None:
        """After it has ended (or been abandoned): close what we hold of it. A worker that has
        not read its spec yet reads EOF and exits."""
        if self.stdin >= 0:
            os.close(self.stdin)  # unbuffered: nothing to flush into a dead pipe
            self.stdin = -1
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


@dataclass(eq=False)
class PendingStart:
    """A start request the launcher has not answered yet."""

    request: int
    owner: object  # the master's, handed back with the answer
    stdin: int  # the write end of the spec pipe: the master keeps it, the launcher got the read end
    deadline: float
    launcher: "LauncherProcess"

    def abandon(self) -> None:
        """Close our end: a worker forked for it later reads EOF and exits, counting nothing."""
        if self.stdin >= 0:
            os.close(self.stdin)
            self.stdin = -1


@dataclass
class Started:
    pending: PendingStart
    worker: StartedWorker


@dataclass
class Failed:
    pending: PendingStart
    reason: str


@dataclass
class Ended:
    worker: StartedWorker


_REQUEST_IDS = itertools.count(1)


class LauncherProcess:
    """One launcher process and the master's end of its socket."""

    def __init__(self, hidden: Iterable[str], private_dir: str | None):
        self.environment = launcher_environment(os.environ, hidden)
        master_end, launcher_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            import pgne

            package_root = os.path.dirname(os.path.dirname(os.path.abspath(pgne.__file__)))
            # `-m` puts its working directory first on sys.path: there, it imports this very pgne
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "pgne.launcher_process", str(launcher_end.fileno()), str(os.getpid())],
                env=self.environment, cwd=package_root, pass_fds=(launcher_end.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            master_end.close()
            raise
        finally:
            launcher_end.close()
        self.sock = master_end
        self.sock.setblocking(False)  # the master never waits for the launcher
        self.pending: dict[int, PendingStart] = {}
        self.workers: dict[int, StartedWorker] = {}  # by pid: started and not handed back as Ended
        self.dead = False  # its socket reached EOF: it has exited
        try:
            cwd = os.getcwd()
        except OSError:  # deleted: the launcher stays where it is
            cwd = None
        try:
            self.sock.send(pack({"hello": {"sys_path": sys.path, "cwd": cwd, "module": protocol.WORKER_MODULE,
                                           "private_dir": private_dir}}))
        except OSError:
            self.sock.close()
            self.popen.kill()
            self.popen.wait()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def start(self, owner: object, pending_elsewhere: int = 0) -> PendingStart:
        """Ask for a worker; OSError when the request cannot even be made (EMFILE, a full
        socket: a stopped launcher). `pending_elsewhere`: other launchers' unanswered starts."""
        _check_room(len(self.pending) + pending_elsewhere)
        read_end, write_end = os.pipe()
        request = next(_REQUEST_IDS)
        try:
            socket.send_fds(self.sock, [pack({"start": request})], [read_end], socket.MSG_DONTWAIT)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)  # the launcher has its own copy now
        pending = PendingStart(request, owner, write_end, time.monotonic() + START_TIMEOUT, self)
        self.pending[request] = pending
        return pending

    def read(self, events: list) -> None:
        """Every message waiting on the socket, as events; at EOF, `dead`."""
        while not self.dead:
            try:
                message, fd, truncated = receive(self.sock)
            except BlockingIOError:
                return
            except OSError:  # ECONNRESET and the like: it is gone
                message, fd, truncated = None, None, False
            if message is None:
                self._died(events)
                return
            if "started" in message:
                self._started(message["started"], message["pid"], fd, truncated, events)
            elif "failed" in message:
                pending = self.pending.pop(message["failed"], None)
                if pending is not None:
                    pending.abandon()
                    events.append(Failed(pending, str(message.get("reason"))))
            elif "exited" in message:
                worker = self.workers.get(message["exited"])
                if worker is not None and worker.status is None:
                    worker.status = message["status"]
            if fd is not None and "started" not in message:  # _started took the pidfd
                os.close(fd)

    def _started(self, request: int, pid: int, pidfd: int | None, truncated: bool, events: list) -> None:
        pending = self.pending.pop(request, None)
        if pending is None:  # too late: its spec pipe is closed, the worker reads EOF and exits
            if pidfd is not None:
                os.close(pidfd)
            return
        if truncated:  # we were out of descriptors: without its pidfd, give it up like a late one
            pending.abandon()
            events.append(Failed(pending, "too many open files in the master (the worker's pidfd was lost)"))
            return
        worker = StartedWorker(pid, -1 if pidfd is None else pidfd, pending.stdin, self)
        pending.stdin = -1
        self.workers[pid] = worker
        events.append(Started(pending, worker))

    def _died(self, events: list) -> None:
        self.dead = True
        self.sock.close()
        for pending in self.pending.values():
            pending.abandon()
            events.append(Failed(pending, "the launcher died"))
        self.pending.clear()
        for worker in self.workers.values():
            if worker.status is None:
                # its end is the launcher's (PR_SET_PDEATHSIG), but never later than now: two
                # workers of one database must never count at once
                worker.signal(signal.SIGKILL)

    def reaped(self) -> bool:
        """Whether the launcher process has exited and been reaped (it is our child)."""
        return self.popen.poll() is not None

    def close(self) -> None:
        """No more requests: the launcher reads EOF and exits (its workers with it)."""
        for pending in self.pending.values():
            pending.abandon()
        self.pending.clear()
        if not self.dead:
            self.dead = True
            try:
                self.sock.send(pack({"bye": True}), socket.MSG_DONTWAIT)
            except OSError:  # full (stopped) or gone: it removes nothing while we live all the same
                pass
            self.sock.close()


class Launchers:
    """The master's launcher (started at the first worker's start, and again after it died),
    and those retired by a reload until their workers have ended."""

    def __init__(self, private_dir: str | None = None):
        self.private_dir = private_dir  # a private state dir: a launcher outliving a killed master removes it
        self.hidden: set[str] = set()  # every variable any config so far named as a password
        self.current: LauncherProcess | None = None
        self.others: list[LauncherProcess] = []  # retired or dead, until their workers have ended

    def all(self) -> list[LauncherProcess]:
        return [launcher for launcher in [self.current, *self.others] if launcher is not None]

    def hide(self, names: Iterable[str]) -> list[str]:
        """Remember `names` as password variables; those the current launcher holds in its
        environment (it must be replaced: `retire`)."""
        self.hidden.update(names)
        if self.current is None:
            return []
        return sorted(name for name in self.hidden if name in self.current.environment)

    def retire(self) -> None:
        """The next start starts a new launcher; the current one stays until its workers end."""
        if self.current is not None:
            self.others.append(self.current)
            self.current = None

    def start(self, owner: object) -> PendingStart:
        if self.current is not None and self.current.dead:
            self.retire()
        if self.current is None:
            self.current = LauncherProcess(self.hidden, self.private_dir)
        return self.current.start(owner, sum(len(launcher.pending) for launcher in self.others))

    def fds(self) -> list[int]:
        """What the master's loop polls: the live launchers' sockets, the pidfds of the workers
        not seen ending yet."""
        fds = []
        for launcher in self.all():
            if not launcher.dead:
                fds.append(launcher.sock.fileno())
            fds.extend(w.pidfd for w in launcher.workers.values() if w.pidfd >= 0 and w.ended_at is None)
        return fds

    def next_deadline(self) -> float | None:
        deadlines = []
        for launcher in self.all():
            deadlines.extend(pending.deadline for pending in launcher.pending.values())
            deadlines.extend(w.ended_at + STATUS_GRACE for w in launcher.workers.values()
                             if w.ended_at is not None and w.status is None)
            if launcher.dead and not launcher.workers:
                deadlines.append(time.monotonic() + 0.1)  # to reap it
        return min(deadlines) if deadlines else None

    def events(self, wait_for_status: bool = True) -> list:
        """What happened: workers started, starts failed, workers ended. `wait_for_status`
        False (stopping): an ended worker is handed back without waiting for its status."""
        events: list = []
        now = time.monotonic()
        if self.current is not None and self.current.dead:
            self.retire()
        for launcher in self.all():
            launcher.read(events)
            for pending in [p for p in launcher.pending.values() if p.deadline <= now]:
                del launcher.pending[pending.request]
                pending.abandon()
                events.append(Failed(pending, f"the launcher (pid {launcher.pid}) did not answer within "
                                              f"{START_TIMEOUT:g} s (stopped?)"))
            _mark_ended(launcher.workers.values(), now)
            for pid, worker in list(launcher.workers.items()):
                if worker.status is None:
                    if worker.ended_at is None and not (worker.pidfd < 0 and launcher.dead):
                        continue
                    if launcher.dead:
                        worker.lost = "the launcher that forked it died (a new one starts with the next worker)"
                    elif wait_for_status and now - worker.ended_at < STATUS_GRACE:
                        continue
                    else:
                        worker.lost = (f"ended, and its launcher (pid {launcher.pid}) did not report its exit "
                                       f"status within {STATUS_GRACE:g} s (stopped?)")
                del launcher.workers[pid]
                events.append(Ended(worker))
        self._drop_finished()
        return events

    def _drop_finished(self) -> None:
        for launcher in list(self.others):
            if launcher.workers or launcher.pending:
                continue
            launcher.close()
            if launcher.reaped():
                self.others.remove(launcher)

    def close(self) -> None:
        """At the master's end, after its workers: every launcher exits (one that does not
        within LAUNCHER_EXIT_WAIT, stopped, is killed)."""
        for launcher in self.all():
            launcher.close()
        deadline = time.monotonic() + LAUNCHER_EXIT_WAIT
        for launcher in self.all():
            try:
                launcher.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                launcher.popen.kill()
                launcher.popen.wait()
        self.current, self.others = None, []


def _check_room(pending: int) -> None:
    """OSError(EMFILE) when a worker's descriptors would eat into DESCRIPTORS_KEPT, counting the
    pidfds that the `pending` starts' answers will bring."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # not the listing's own
    except FileNotFoundError:  # no /proc: os.pipe will say
        return
    if used + pending + DESCRIPTORS_PER_WORKER + 1 + DESCRIPTORS_KEPT > soft:
        raise OSError(errno.EMFILE, f"too many open files ({used} of the limit of {soft} in use; "
                                    f"{DESCRIPTORS_KEPT} are kept for HTTP and the state directory)")


def _mark_ended(workers: Iterable[StartedWorker], now: float) -> None:
    watched = {w.pidfd: w for w in workers if w.pidfd >= 0 and w.ended_at is None}
    if not watched:
        return
    poller = select.poll()
    for fd in watched:
        poller.register(fd, select.POLLIN)
    for fd, _ in poller.poll(0):
        watched[fd].ended_at = now


def wait_for(fds: list[int], timeout: float | None) -> list[int]:
    """The fds of `fds` that are readable, waiting up to `timeout` for one (poll(2): no
    FD_SETSIZE limit with hundreds of workers)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(None if timeout is None else max(0.0, timeout) * 1000)]


def make_room_for(workers: int) -> str | None:
    """Raise the soft limit on open files (RLIMIT_NOFILE) to what `workers` workers need, up to
    the hard limit. None when they fit, else why not (the workers that cannot start are failed
    starts, retried with backoff)."""
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
