"""How the master starts workers: through pgne's own launcher process (pgne.launcher_process).

The launcher is fork+exec'd once by the master (`python -m pgne.launcher_process`) with a
whitelisted environment (ENVIRONMENT: what a worker needs, never a variable that any config so
far named as a password), imports the worker's module ahead, and forks a worker per request:
the workers share those pages with it, and nothing of the master's threads or locks is
inherited. /proc/PID/environ shows what a process was exec'd with, whatever it does to its
environment later: that is why the launcher is exec'd, with a clean environment, and why a
reload whose config names a new password variable that the launcher holds replaces it (its
workers are restarted by a new one; `Launchers.retire`).

Requests travel over an inherited socketpair (no path, no temporary directory). Nothing the
launcher does or fails to do blocks the master's loop:
- a start is asynchronous: a request (with the read end of the worker's spec pipe), answered
  with the worker's pid and a pidfd. The launcher is judged by progress (Launchers): one with
  starts pending that has sent nothing for STUCK_AFTER is retired, its starts go to a new
  one. A late answer is recognised by its request id: the master closed its end of that spec
  pipe, so the worker reads EOF and exits without counting;
- a worker's end is seen on its pidfd (poll: it works for the launcher's children, the
  master's grandchildren); its exit status comes from the launcher, which keeps it a zombie
  (its pid taken) until the master has handled its end and folded its pid's metrics files
  and releases it: so no pid is ever reused while the master still knows it. A worker whose
  status has not come within STATUS_GRACE (a stopped launcher) ends "lost";
- workers are known by request id, and signalled through their pidfd.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from pgne import protocol
from pgne.http import MAX_CONNECTIONS
from pgne.launcher_process import pack, receive

log = logging.getLogger(__name__)

STUCK_AFTER = 8.0  # a launcher with starts pending that has sent nothing for this long is retired
MAX_IN_FLIGHT = 4  # starts sent to the launcher and not answered yet, at most; the rest queue here
LAUNCHER_RETRY = 1.0  # a launcher that could not be started (EMFILE, EAGAIN) is tried again then
# Launchers that die this soon after their start, one after the other (they cannot import pgne:
# files changed under a running pgne, say), are started again with backoff: the first at once,
# then LAUNCHER_RETRY doubling up to LAUNCHER_RETRY_MAX, never in a loop that forks a Python
# every few milliseconds.
LAUNCHER_SHORT_LIFE, LAUNCHER_RETRY_MAX = 10.0, 30.0
STATUS_GRACE = 2.0  # an ended worker whose exit status the launcher has not reported by then is lost
LAUNCHER_EXIT_WAIT = 2.0  # at shutdown: then a launcher that has not exited (stopped) is killed
# The master's descriptors per running worker: its spec pipe's write end and its pidfd. Beside
# them: the state dir's files, HTTP connections, the launcher's socket, a start's pipe.
DESCRIPTORS_PER_WORKER, DESCRIPTORS_BESIDE = 2, 256
# Under a low limit, a start that would leave fewer free descriptors than DESCRIPTORS_KEPT plus
# the HTTP connections not open yet fails (and is retried): the workers that fit run, and keep
# fitting whatever HTTP clients do (they can open HTTP_DESCRIPTORS at most: pgne.http's cap,
# and one being accepted); scrapes and the state directory still get theirs.
DESCRIPTORS_KEPT = 16
HTTP_DESCRIPTORS = MAX_CONNECTIONS + 1

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

    request: int  # the id of the start request that made it: unique in the master, never reused
    pid: int
    pidfd: int  # -1 where pidfd_open is missing (not Linux 5.3+), or its pidfd was lost: it goes by pid
    stdin: int  # the write end of the worker's spec pipe (pgne.protocol), held only by the master
    launcher: "LauncherProcess"
    owner: object | None = None  # the master's, from the start; None: a start abandoned before the answer
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
            elif self.status is None and self.lost is None and not self.launcher.dead:
                # a zombie of its launcher until we release it: the pid is still its own. Once
                # the launcher is dead, init reaps it and the pid may be another process's.
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """After it has ended (or been abandoned): close what we hold of it. A worker that has
        not read its spec yet reads EOF and exits."""
        if self.stdin >= 0:
            os.close(self.stdin)  # unbuffered: nothing to flush into a dead pipe
            self.stdin = -1
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def release(self) -> None:
        """Its end is handled and its pid's metrics files folded: the launcher may reap it (until
        then it is a zombie, and its pid is nobody else's)."""
        self.launcher.release(self.request)


@dataclass(eq=False)
class PendingStart:
    """A start the launcher has not answered yet: queued in the master (request 0), or sent."""

    owner: object  # the master's, handed back with the answer
    request: int = 0
    stdin: int = -1  # the write end of the spec pipe: the master keeps it, the launcher got the read end
    launcher: "LauncherProcess | None" = None

    def abandon(self) -> None:
        """Close our end: a worker forked for it later reads EOF and exits, counting nothing."""
        if self.stdin >= 0:
            os.close(self.stdin)
            self.stdin = -1
        self.request, self.launcher = 0, None


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
    worker: StartedWorker  # its owner None: a worker of an abandoned start (it read EOF)


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
        self.workers: dict[int, StartedWorker] = {}  # by request id: started and not handed back as Ended
        self.unreleased: set[int] = set()  # handed back as Ended, not released yet: zombies of ours
        self.unsent: list[bytes] = []  # releases the socket had no room for (a stopped launcher)
        self.dead = False  # its socket reached EOF: it has exited
        self.retired = False  # takes no more starts; killed once its workers have ended and been released
        self.last_heard = time.monotonic()  # when it last sent something (or was first asked something)
        self.started_at = self.last_heard
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

    def start(self, pending: PendingStart, reserve: int, pending_elsewhere: int = 0) -> None:
        """Send `pending`'s request; OSError when it cannot even be made (EMFILE; BlockingIOError:
        a full socket). `pending_elsewhere`: other launchers' unanswered starts; `reserve`: the
        descriptors a start must leave free."""
        _check_room(len(self.pending) + pending_elsewhere, reserve)
        read_end, write_end = os.pipe()
        request = next(_REQUEST_IDS)
        try:
            socket.send_fds(self.sock, [pack({"start": request})], [read_end], socket.MSG_DONTWAIT)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)  # the launcher has its own copy now
        if not self.pending:  # its silence counts from now
            self.last_heard = time.monotonic()
        pending.request, pending.stdin, pending.launcher = request, write_end, self
        self.pending[request] = pending

    def release(self, request: int) -> None:
        if request not in self.unreleased:
            return
        self.unreleased.discard(request)
        if not self.dead:
            self.unsent.append(pack({"release": request}))
            self._flush()

    def _flush(self) -> None:
        while self.unsent and not self.dead:
            try:
                self.sock.send(self.unsent[0], socket.MSG_DONTWAIT)
            except BlockingIOError:  # stopped: at its next answer
                return
            except OSError:  # gone: the EOF comes
                self.unsent.clear()
                return
            del self.unsent[0]

    def read(self, events: list) -> None:
        """Every message waiting on the socket, as events; at EOF, `dead`."""
        while not self.dead:
            try:
                message, fd, truncated = receive(self.sock)
            except BlockingIOError:
                self._flush()
                return
            except OSError:  # ECONNRESET and the like: it is gone
                message, fd, truncated = None, None, False
            if message is None:
                self._died(events)
                return
            self.last_heard = time.monotonic()
            if "started" in message:
                self._started(message["started"], message["pid"], fd, truncated, events)
            elif "failed" in message:
                pending = self.pending.pop(message["failed"], None)
                if pending is not None:
                    pending.abandon()
                    events.append(Failed(pending, str(message.get("reason"))))
            elif "exited" in message:
                self._exited(message["exited"], message.get("pid"), message["status"], events)
            if fd is not None and "started" not in message:  # _started took the pidfd
                os.close(fd)

    def _started(self, request: int, pid: int, pidfd: int | None, truncated: bool, events: list) -> None:
        pending = self.pending.pop(request, None)
        if pidfd is None:
            pidfd = -1
        if pending is None or truncated:
            # Too late (its spec pipe is closed: the worker reads EOF and exits), or we were out
            # of descriptors (its pidfd lost). Either way it is ours to see end and release.
            self.workers[request] = StartedWorker(request, pid, pidfd, -1, self)
            if pending is not None:
                pending.abandon()
                events.append(Failed(pending, "too many open files in the master (the worker's pidfd was lost)"))
            return
        worker = StartedWorker(request, pid, pidfd, pending.stdin, self, pending.owner)
        pending.stdin = -1
        self.workers[request] = worker
        events.append(Started(pending, worker))

    def _exited(self, request: int, pid: int | None, status: int, events: list) -> None:
        worker = self.workers.get(request)
        if worker is not None:
            if worker.status is None:
                worker.status = status
        elif request not in self.unreleased and pid is not None:
            # a start we never heard of (its answer was lost): its end, to handle and release
            self.unreleased.add(request)
            events.append(Ended(StartedWorker(request, pid, -1, -1, self, status=status)))

    def _died(self, events: list) -> None:
        self.dead = True
        self.sock.close()
        self.unsent.clear()
        self.unreleased.clear()  # its zombies are init's now
        for pending in self.pending.values():
            events.append(Failed(pending, "the launcher died"))
            pending.abandon()
        self.pending.clear()
        for worker in self.workers.values():
            if worker.status is None:
                # its end is the launcher's (PR_SET_PDEATHSIG), but never later than now: two
                # workers of one database must never count at once
                worker.signal(signal.SIGKILL)

    def stuck(self, now: float) -> bool:
        """Starts pending, and not a word from it for STUCK_AFTER seconds (stopped, wedged)."""
        return bool(self.pending) and not self.dead and now - self.last_heard >= STUCK_AFTER

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
    """The master's launcher (started with the master, and again at once when it dies or is
    retired), and those retired (a reload; no progress) until their workers have ended.

    Starts queue here and at most MAX_IN_FLIGHT go to the launcher at a time, so a big fleet
    waits in the master, not in the socket. The launcher is judged by progress, not each start
    by a deadline: one that has starts pending and has sent nothing for STUCK_AFTER seconds is
    retired, and its pending starts go to a new one (their spec pipes closed: a late fork reads
    EOF and exits). A retired launcher is not killed while a worker of its runs (they would die
    with it); once none is left, it is SIGKILLed (it may be stopped) and collected."""

    def __init__(self, private_dir: str | None = None, http_connections: Callable[[], int] = lambda: 0):
        self.private_dir = private_dir  # a private state dir: a launcher outliving a killed master removes it
        self.http_connections = http_connections  # the HTTP connections open now (pgne.http's cap counts)
        self.hidden: set[str] = set()  # every variable any config so far named as a password
        self.current: LauncherProcess | None = None
        self.others: list[LauncherProcess] = []  # retired or dead, until their workers have ended
        self.queue: deque[PendingStart] = deque()  # starts not sent yet
        self.failed: list = []  # starts that failed before a launcher saw them (events to hand back)
        self.next_launcher_at = 0.0  # a launcher that cannot start is tried again then
        self.short_lives = 0  # launchers in a row that died within LAUNCHER_SHORT_LIFE of their start

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
        """A new launcher takes the starts (those pending included); the current one stays until
        its workers end."""
        launcher = self.current
        if launcher is None:
            return
        launcher.retired = True
        self.others.append(launcher)
        self.current = None
        requeue = sorted(launcher.pending.values(), key=lambda pending: pending.request)
        launcher.pending.clear()
        for pending in requeue:
            pending.abandon()
        self.queue.extendleft(reversed(requeue))

    def ensure(self) -> None:
        """A live current launcher, unless one could not start a moment ago."""
        if self.current is not None and self.current.dead:
            died = self.current
            self.retire()
            lived = time.monotonic() - died.started_at
            if lived < LAUNCHER_SHORT_LIFE:
                # the first at once (a launcher killed once: its successor must be there to clean
                # up after a master killed next), then 1 s doubling
                self.short_lives += 1
                delay = min(LAUNCHER_RETRY * 2 ** (self.short_lives - 2), LAUNCHER_RETRY_MAX) \
                    if self.short_lives > 1 else 0.0
                self.next_launcher_at = time.monotonic() + delay
                log.error("the launcher (pid %d) exited %.1f s after its start (see its error above); "
                          "starting another in %g s", died.pid, lived, delay)
            else:
                self.short_lives = 0
        if self.current is not None or time.monotonic() < self.next_launcher_at:
            return
        try:
            self.current = LauncherProcess(self.hidden, self.private_dir)
        except OSError as exc:  # EMFILE, EAGAIN: its starts wait in the queue
            self.next_launcher_at = time.monotonic() + LAUNCHER_RETRY
            log.error("cannot start the launcher: %s; retrying in %g s", exc.strerror or exc, LAUNCHER_RETRY)

    def start(self, owner: object) -> PendingStart:
        """Ask for a worker: the answer comes as an event (Started or Failed)."""
        pending = PendingStart(owner)
        self.queue.append(pending)
        self._send_queued()
        return pending

    def _send_queued(self) -> None:
        launcher = self.current
        if launcher is None or launcher.dead:
            return
        reserve = DESCRIPTORS_KEPT + HTTP_DESCRIPTORS - min(self.http_connections(), HTTP_DESCRIPTORS)
        while self.queue and len(launcher.pending) < MAX_IN_FLIGHT:
            pending = self.queue.popleft()
            try:
                launcher.start(pending, reserve, sum(len(other.pending) for other in self.others))
            except BlockingIOError:  # its socket is full: it is not reading (stuck: see events)
                self.queue.appendleft(pending)
                return
            except OSError as exc:  # EMFILE (os.pipe, or the reserve): a failed start, retried with backoff
                self.failed.append(Failed(pending, exc.strerror or str(exc)))

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
        now = time.monotonic()
        deadlines = []
        if self.failed:
            deadlines.append(now)
        if self.current is None:
            deadlines.append(self.next_launcher_at)
        elif self.current.pending:
            deadlines.append(self.current.last_heard + STUCK_AFTER)
        for launcher in self.all():
            deadlines.extend(w.ended_at + STATUS_GRACE for w in launcher.workers.values()
                             if w.ended_at is not None and w.status is None)
            if launcher in self.others and not launcher.workers and not launcher.unreleased:
                deadlines.append(now + 0.1)  # to kill and collect it
        return min(deadlines) if deadlines else None

    def events(self, wait_for_status: bool = True) -> list:
        """What happened: workers started, starts failed, workers ended. `wait_for_status`
        False (stopping): an ended worker is handed back without waiting for its status, and
        no launcher is started."""
        events: list = self.failed
        self.failed = []
        now = time.monotonic()
        for launcher in self.all():
            launcher.read(events)
        current = self.current
        if current is not None and current.stuck(now):
            log.warning("the launcher (pid %d) has sent nothing for %g s with %d start(s) pending (stopped?): "
                        "retiring it; a new launcher takes the starts, its running workers stay",
                        current.pid, STUCK_AFTER, len(current.pending))
            self.retire()
        if wait_for_status:
            self.ensure()
            self._send_queued()
            events.extend(self.failed)
            self.failed = []
        for launcher in self.all():
            _mark_ended(launcher.workers.values(), now)
            for request, worker in list(launcher.workers.items()):
                if worker.status is None:
                    if worker.ended_at is None and not (worker.pidfd < 0 and launcher.dead):
                        continue
                    if launcher.dead:
                        worker.lost = "the launcher that forked it died (a new one has started)"
                    elif wait_for_status and now - worker.ended_at < STATUS_GRACE:
                        continue
                    else:
                        worker.lost = (f"ended, and its launcher (pid {launcher.pid}) did not report its exit "
                                       f"status within {STATUS_GRACE:g} s (stopped?)")
                del launcher.workers[request]
                if not launcher.dead:
                    launcher.unreleased.add(request)
                events.append(Ended(worker))
        self._drop_finished()
        return events

    def _drop_finished(self) -> None:
        for launcher in list(self.others):
            if launcher.workers or launcher.unreleased:
                continue
            if not launcher.dead:
                launcher.close()
            if launcher.popen.returncode is None:
                launcher.popen.kill()  # it may be stopped: no bye is read then
            if launcher.reaped():
                self.others.remove(launcher)

    def close(self) -> None:
        """At the master's end, after its workers: every launcher exits (one that does not
        within LAUNCHER_EXIT_WAIT, stopped, is killed)."""
        for pending in self.queue:
            pending.abandon()
        self.queue.clear()
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


def _check_room(pending: int, reserve: int = DESCRIPTORS_KEPT) -> None:
    """OSError(EMFILE) when a worker's descriptors would eat into `reserve` (DESCRIPTORS_KEPT and
    the HTTP connections not open yet), counting the pidfds that the `pending` starts' answers
    will bring."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # not the listing's own
    except FileNotFoundError:  # no /proc: os.pipe will say
        return
    if used + pending + DESCRIPTORS_PER_WORKER + 1 + reserve > soft:
        raise OSError(errno.EMFILE, f"too many open files ({used} of the limit of {soft} in use; "
                                    f"{reserve} are kept for HTTP connections and the state directory)")


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
    need = workers * DESCRIPTORS_PER_WORKER + max(DESCRIPTORS_BESIDE, DESCRIPTORS_KEPT + HTTP_DESCRIPTORS + 1)
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
