"""`pgne run`: the master process.

It serves HTTP and keeps one worker per enabled database alive (plus a one-off teardown worker
for a disabled database with perform_setup); with --shard/--total-shards, only for the databases
of its shard (pgne.shard), and only those are served. pgne.commands.run prepares the multiprocess
metrics directory and sets PROMETHEUS_MULTIPROC_DIR before it imports this module: everything
here may import prometheus_client.

Workers are forked by pgne's launcher (pgne.launcher), so no lock held by the HTTP thread or
prometheus_client is ever inherited, and they share the code it imported. As in gunicorn's
arbiter, the running workers are kept (`workers`, by start request id: a pid may be reused),
signal handlers only set flags and
wake the main loop through signal.set_wakeup_fd, and the loop also wakes when a worker ends (its
pidfd: a worker's death is handled at once, whatever state the launcher is in), when the
launcher answers, and at each deadline of theirs; it calls mark_process_dead(pid) for every
ended worker, folds its files (compaction) and only then releases it: until then the launcher
keeps it a zombie, so its pid is nobody else's. It restarts workers with backoff. Starts are asynchronous (a request, then the
launcher's answer): nothing the launcher does or fails to do blocks the loop.
POST /-/reload (--web.enable-lifecycle) is done by that loop too: the HTTP thread queues it in
the server's Lifecycle and writes to the wakeup fd (`_wake`); the loop reloads as for SIGHUP and
answers. The loop also keeps /-/ready's counts (`_update_readiness`).

A worker may die at any moment (an OOM killer, an operator's kill -9, a crash loop): before it
has read its spec, while it creates a metrics file, while it is being reaped. Nothing about a
worker's death may end the master: the spec is written without blocking and without a buffer
(a dead reader is a failed start, not a BrokenPipeError later), compaction never raises and
never waits long for the state dir's lock, and a worker that could not even be forked is
retried with the same backoff as one that died (and counted in pgne_worker_start_failures_total).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import time
from dataclasses import dataclass

from prometheus_client.multiprocess import mark_process_dead

from pgne import __version__, launcher
from pgne.address import url_host
from pgne.compaction import compact, relabel_series
from pgne.config import load_config
from pgne.errors import EXIT_OK, UserError
from pgne.http import Lifecycle, MetricsServer
from pgne.logs import for_database
from pgne.metrics import MasterMetrics
from pgne.model import Config, Database
from pgne.protocol import EXIT_TEARDOWN_FAILED, LISTEN, TEARDOWN, WorkerSpec, encode_spec
from pgne.render import Renderer
from pgne.shard import Shard
from pgne.webconfig import WebConfig

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # SIGTERM to workers, then SIGKILL: the master exits well within 10 s
RESTART_BACKOFF_FIRST, RESTART_BACKOFF_MAX = 1.0, 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts with the first delay again
WORKER_STARTED = 1.0  # a worker alive this long has started (for /-/ready)
LOOP_TICK = 0.5  # the longest the main loop sleeps: compactions that wait for readers are retried
SPEC_WRITE_TIMEOUT = 2.0  # a worker that has not read its spec by then (SIGSTOPped?) is killed
COMPACTION_LOCK_WAIT = 1.0  # a reader that holds the state dir longer: compact at a later tick


@dataclass(eq=False)
class WorkerSlot:
    """One database's worker, across its restarts."""

    database: Database
    mode: str  # protocol.LISTEN or protocol.TEARDOWN
    pid: int | None = None  # of the last worker started; None: never started
    worker: launcher.StartedWorker | None = None  # the last worker started, until it has ended
    pending: launcher.PendingStart | None = None  # a start the launcher has not answered yet
    status: int | None = None  # its exit status once ended (-N: killed by signal N)
    label_names: tuple[str, ...] = ()  # the label columns it writes pgne_events_total with
    started_at: float = 0.0
    restart_at: float | None = 0.0  # when to (re)start; None: do not
    failures: int = 0
    kill_at: float | None = None  # replaced (a reload) and SIGTERMed: SIGKILL then if still running

    @property
    def running(self) -> bool:
        """Started and not ended yet."""
        return self.worker is not None

    @property
    def busy(self) -> bool:
        """Running, or being started: no other start for its database now."""
        return self.worker is not None or self.pending is not None


class Master:
    def __init__(self, config: Config, renderer: Renderer, listen: tuple[str, int], state_dir: str,
                 web: WebConfig | None = None, *, log_level: str = "INFO", trigger_check_interval: float = 60.0,
                 compat_metric: bool = False, log_format: str | None = None, telemetry_path: str = "/metrics",
                 enable_lifecycle: bool = False, shard: Shard | None = None, private_dir: str | None = None):
        self.config = config
        self.shard = shard  # None: every database of the config
        self.renderer = renderer
        self.listen = listen
        self.state_dir = state_dir
        self.log_level = log_level
        self.log_format = log_format
        self.telemetry_path = telemetry_path
        self.trigger_check_interval = trigger_check_interval
        self.compat_metric = compat_metric
        self.metrics = MasterMetrics(__version__)
        # POST /-/reload and /-/ready: the HTTP threads queue reloads and wake the loop (_wake)
        self.lifecycle = Lifecycle(self._wake, enabled=enable_lifecycle)
        self.server = MetricsServer(listen, state_dir, web, telemetry_path, self.lifecycle)
        self.started_once: set[tuple] = set()  # keys of the databases whose worker has started (/-/ready)
        self.slots: dict[tuple, WorkerSlot] = {}  # database key -> the slot the config wants
        # start request id -> slot of every worker not ended yet (gunicorn's WORKERS), the workers
        # of slots that a reload replaced included: they are reaped (mark_process_dead) like any
        # other. Not by pid: a pid ends and is reused; a request id is never reused.
        self.workers: dict[int, WorkerSlot] = {}
        self.flags: set[int] = set()
        # ended workers whose files are not folded yet, with the label columns they wrote; each
        # is released (the launcher reaps it: its pid is free) once folded
        self.uncompacted: list[tuple[launcher.StartedWorker, tuple[str, ...]]] = []
        self.stopping = False
        self.launchers = launcher.Launchers(private_dir, self.server.connections)
        self.wakeup_r, self.wakeup_w = os.pipe()
        for fd in (self.wakeup_r, self.wakeup_w):
            os.set_blocking(fd, False)

    # -- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self.flags.add(signum)  # only a flag: the main loop acts on it

    def _wake(self) -> None:
        """Wake the main loop from another thread (an HTTP thread's POST /-/reload)."""
        try:
            os.write(self.wakeup_w, b"\0")
        except BlockingIOError:  # full: the loop is woken already
            pass

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # -- workers ---------------------------------------------------------------------------

    def _databases_of_shard(self, config: Config) -> tuple[Database, ...]:
        """The config's databases that this replica runs: all, or those of its --shard. (self.config
        stays whole: pgne_events_total's label columns are the whole config's in every replica.)"""
        if self.shard is None:
            return config.databases
        return tuple(db for db in config.databases if self.shard.owns(db))

    def _log_shard(self, config: Config) -> None:
        if self.shard is None:
            return
        mine, total = len(self._databases_of_shard(config)), len(config.databases)
        if mine:
            log.info("%s: this replica runs %d of the config's %d database(s)", self.shard, mine, total)
        else:
            log.info("%s: none of the config's %d database(s) falls in this shard; serving pgne's own "
                     "metrics only", self.shard, total)

    def _slots_for(self, config: Config) -> dict[tuple, WorkerSlot]:
        slots = {}
        for db in self._databases_of_shard(config):
            if db.enabled:
                slots[db.key] = WorkerSlot(db, LISTEN)
            elif db.perform_setup:
                slots[db.key] = WorkerSlot(db, TEARDOWN)
        return slots

    def _spawn(self, slot: WorkerSlot) -> None:
        spec = WorkerSpec(
            database=slot.database,
            label_names=self.config.label_names,
            mode=slot.mode,
            template_dirs=tuple(self.renderer.search_path[:-1]),
            lock_timeout=self.renderer.lock_timeout,
            log_level=self.log_level,
            trigger_check_interval=self.trigger_check_interval,
            compat_metric=self.compat_metric,
            log_format=self.log_format,
        )
        slot.restart_at = None
        # failures (EMFILE in os.pipe, no fork, ...) come back as events: as if it had died at once
        slot.pending = self.launchers.start((slot, spec))

    def _start_failed(self, slot: WorkerSlot, reason: str) -> None:
        slot.pending = None
        slot.started_at = time.monotonic()
        db = slot.database
        self.metrics.worker_start_failures.labels(db.host_label, db.name).inc()
        if self.stopping or self.slots.get(db.key) is not slot:
            return
        delay = self._schedule_restart(slot)
        log.error("%s: cannot start a worker: %s; retrying in %.0f s", db.display_name, reason, delay,
                  extra=for_database(db.display_name))

    def _started(self, slot: WorkerSlot, spec: WorkerSpec, worker: launcher.StartedWorker) -> None:
        """The launcher forked the slot's worker: give it its spec. Its pipe stays open: its EOF
        tells the worker that we are gone."""
        slot.pending = None
        name = slot.database.display_name
        pid = worker.pid
        slot.pid, slot.worker, slot.status = pid, worker, None
        slot.label_names, slot.started_at = spec.label_names, time.monotonic()
        self.workers[worker.request] = slot
        log.info("%s: %s worker started (pid %d)", name, slot.mode, pid, extra=for_database(name))
        if self.stopping or self.slots.get(slot.database.key) is not slot:  # retired while it was starting
            self._retire_worker(slot)
            return
        if not _send_spec(worker.stdin, encode_spec(spec)):
            # Not reading (stopped?): kill it so that the reaper restarts it. Blocking here
            # would stop the whole master. (A reader already gone is dying: the reaper sees it.)
            log.warning("%s: worker (pid %d) did not read its spec within %g s; killing it", name,
                        pid, SPEC_WRITE_TIMEOUT, extra=for_database(name))
            _signal(slot, signal.SIGKILL)

    def _schedule_restart(self, slot: WorkerSlot) -> float:
        """Backoff for the next start of `slot`: 1 s doubling to 30 s; 1 s again after a worker
        that ran STABLE_AFTER seconds. Returns the delay."""
        ran = time.monotonic() - slot.started_at
        slot.failures = 1 if ran >= STABLE_AFTER else slot.failures + 1
        delay = min(RESTART_BACKOFF_FIRST * 2 ** (slot.failures - 1), RESTART_BACKOFF_MAX)
        slot.restart_at = time.monotonic() + delay
        return delay

    def _wait(self, timeout: float) -> None:
        """Until a signal (or POST /-/reload) wakes us, a worker ends, the launcher answers, one
        of its deadlines passes, or `timeout` seconds."""
        deadline = self.launchers.next_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        launcher.wait_for([self.wakeup_r, *self.launchers.fds()], timeout)
        try:
            os.read(self.wakeup_r, 512)
        except BlockingIOError:
            pass

    def _handle_launcher(self) -> None:
        """What the launcher answered, and the workers that have ended."""
        for event in self.launchers.events(wait_for_status=not self.stopping):
            if isinstance(event, launcher.Started):
                self._started(*event.pending.owner, event.worker)
            elif isinstance(event, launcher.Failed):
                self._start_failed(event.pending.owner[0], event.reason)
            elif isinstance(event, launcher.Ended):
                self._reaped(event.worker)

    def _reaped(self, worker: launcher.StartedWorker) -> None:
        """A worker has ended: it is a zombie until `_compact` releases it (its pid is its own)."""
        pid, code = worker.pid, worker.exitcode()
        try:
            mark_process_dead(pid, self.state_dir)
        except OSError as exc:  # its live gauges keep their last value until the next start
            log.warning("cannot remove the live gauges of process %d: %s", pid, exc)
        worker.close()
        slot = self.workers.pop(worker.request, None)
        # with the label columns it wrote pgne_events_total with (see _compact)
        self.uncompacted.append((worker, slot.label_names if slot else self.config.label_names))
        if slot is None:  # a worker of an abandoned start: it read EOF and exited, counting nothing
            return
        slot.status = code
        slot.worker = None
        slot.kill_at = None
        if self.stopping or self.slots.get(slot.database.key) is not slot:  # stopping, or retired by a reload
            return
        name = slot.database.display_name
        if slot.mode == TEARDOWN and code is not None and code in (0, EXIT_TEARDOWN_FAILED):
            log.info("%s: teardown %s", name, "done" if code == 0 else "failed (see above); not retried",
                     extra=for_database(name))
            slot.restart_at = None
            return
        delay = self._schedule_restart(slot)
        if worker.lost:
            how = f"was lost: {worker.lost}"
        elif code is None:
            how = "ended"
        else:
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        log.error("%s: worker (pid %d) %s; restarting in %.0f s", name, pid, how, delay, extra=for_database(name))

    def _compact(self) -> None:
        """Fold reaped workers' files into *_merged.db (scrape time stays flat across restarts);
        a pid whose turn did not come (readers held the dir) is tried again at the next tick."""
        waiting = []
        relabel = False
        for worker, label_names in self.uncompacted:
            if compact(self.state_dir, worker.pid, timeout=COMPACTION_LOCK_WAIT) is None:
                waiting.append((worker, label_names))
            else:
                relabel |= label_names != self.config.label_names
                worker.release()  # the launcher reaps it: from now on its pid may be another's
        self.uncompacted = waiting
        if relabel:
            # A worker of an earlier config wrote pgne_events_total with other label columns:
            # bring its series to the current ones, so that no series is served twice
            # (to Prometheus, `note=""` is no label: {table="t"} and {table="t",note=""} are one).
            relabel_series(self.state_dir, self.config.label_names)

    def _retire_worker(self, slot: WorkerSlot) -> None:
        """SIGTERM a worker whose slot a reload replaced; SIGKILL after STOP_GRACE (stopped, or
        ignoring SIGTERM): its replacement waits for its end."""
        _signal(slot, signal.SIGTERM)
        if slot.worker is not None:
            slot.kill_at = time.monotonic() + STOP_GRACE

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for slot in self.workers.values():
            if slot.kill_at is not None and slot.kill_at <= now:
                slot.kill_at = None
                name = slot.database.display_name
                log.warning("%s: replaced worker (pid %d) still runs %g s after SIGTERM; killing it", name,
                            slot.pid, STOP_GRACE, extra=for_database(name))
                _signal(slot, signal.SIGKILL)

    def _start_due(self) -> None:
        now = time.monotonic()
        # A replacement waits until its predecessor is reaped: two workers of one database
        # must never count at once (an outbox worker reads what the other has exported so far).
        running = {slot.database.key for slot in self.workers.values()}
        for key, slot in self.slots.items():
            if slot.restart_at is not None and slot.restart_at <= now and key not in running and not slot.busy:
                if slot.pid is not None:  # not the first start
                    db = slot.database
                    self.metrics.worker_restarts.labels(db.host_label, db.name).inc()
                self._spawn(slot)

    def _sleep_time(self) -> float:
        """Until the next due restart, at most LOOP_TICK. A worker's end wakes the loop at once
        (_wait), also the predecessor's that a replacement waits for (not counted here)."""
        now = time.monotonic()
        running = {slot.database.key for slot in self.workers.values()}
        due = [slot.restart_at - now for key, slot in self.slots.items()
               if slot.restart_at is not None and key not in running and not slot.busy]
        due += [slot.kill_at - now for slot in self.workers.values() if slot.kill_at is not None]
        return max(0.0, min(due + [LOOP_TICK]))

    def _make_room(self) -> None:
        """Open files for every worker the config wants, and those a reload is replacing."""
        problem = launcher.make_room_for(len(self.slots) + len(self.workers))
        if problem:
            log.warning("%s", problem)

    def _init_series(self) -> None:
        self.server.serve_databases(frozenset((db.host_label, db.name) for db in self._databases_of_shard(self.config)
                                              if db.enabled))
        for slot in self.slots.values():
            db = slot.database
            if slot.mode == LISTEN:
                self.metrics.database_up.labels(db.host_label, db.name, db.tag).set(0)
                self.metrics.worker_restarts.labels(db.host_label, db.name).inc(0)
                self.metrics.worker_start_failures.labels(db.host_label, db.name).inc(0)

    # -- reload (SIGHUP, POST /-/reload) --------------------------------------------------------

    def reload(self) -> str | None:
        """Load the config file again and apply it; None when done, else why it was refused
        (logged; the running config stays)."""
        path = self.config.path
        try:
            config = load_config(path, self.renderer)
            self.renderer.check(config)
        except UserError as exc:
            for line in exc.lines:
                log.error("reload: %s", line)
            log.error("reload: the config above is invalid; the running config stays")
            self.metrics.reload_ok.set(0)
            return "\n".join(exc.lines)
        except Exception as exc:  # noqa: BLE001 - whatever a file can do to the loader, the master lives on
            reason = f"{path}: cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            log.error("reload: %s; the running config stays", reason)
            self.metrics.reload_ok.set(0)
            return reason
        old_labels = self.config.label_names
        self.config = config
        wanted = self._slots_for(config)
        relabel = config.label_names != old_labels  # pgne_events_total changes its label names
        if relabel:
            relabel_series(self.state_dir, config.label_names)  # what dead workers left; see _reap
        restart_all = relabel or self._hide_passwords(config)
        for key, slot in list(self.slots.items()):
            new = wanted.get(key)
            if new is not None and new.database == slot.database and new.mode == slot.mode and not restart_all:
                continue
            self._retire_worker(slot)  # reaped like any worker; its replacement waits for that
            del self.slots[key]
            log.info("%s: %s in the new config", slot.database.display_name,
                     "changed" if new else "removed", extra=for_database(slot.database.display_name))
            if new is None and slot.database.perform_setup and slot.mode == LISTEN:
                wanted[key] = WorkerSlot(dataclasses.replace(slot.database, enabled=False), TEARDOWN)
        for key, slot in wanted.items():
            self.slots.setdefault(key, slot)
        self._make_room()
        self._init_series()
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())
        log.info("reload: %s loaded", path)
        self._log_shard(config)
        return None

    def _hide_passwords(self, config: Config) -> bool:
        """Keep the config's password variables out of every launcher started from now on;
        True when the running launcher holds one in its environment (/proc/PID/environ, its
        workers' too): then it is retired, and every worker restarts from a new one."""
        held = self.launchers.hide(db.password_variable for db in config.databases if db.password_variable)
        if not held:
            return False
        log.warning("reload: the launcher's environment holds %s, now a password variable: starting a new "
                    "launcher; every worker restarts", ", ".join(held))
        self.launchers.retire()
        return True

    def _update_readiness(self) -> None:
        """/-/ready: a database's worker has started once when it ran for WORKER_STARTED
        seconds (not reaped by then); ready when every enabled database's has."""
        now = time.monotonic()
        listen = [slot for slot in self.slots.values() if slot.mode == LISTEN]
        for slot in listen:
            if slot.running and now - slot.started_at >= WORKER_STARTED:
                self.started_once.add(slot.database.key)
        self.lifecycle.workers = (sum(1 for slot in listen if slot.database.key in self.started_once), len(listen))

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> int:
        self._log_shard(self.config)
        self._hide_passwords(self.config)  # no launcher yet: nothing to retire
        self.slots = self._slots_for(self.config)
        self._make_room()
        self._init_series()
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())
        self._update_readiness()  # not ready before the server answers its first request
        self.install_signal_handlers()
        self.server.start()
        # at once, even without a worker to start: a launcher outliving a killed master is what
        # removes a private state directory
        self.launchers.ensure()
        log.info("pgne %s serving %s://%s:%d%s; %d worker(s); state dir %s", __version__, self.server.scheme,
                 url_host(self.listen[0]), self.server.port, self.telemetry_path, len(self.slots), self.state_dir)
        try:
            while True:
                self._start_due()
                self._wait(self._sleep_time())
                self._handle_launcher()
                self._compact()
                self._kill_overdue()
                if self.flags & {signal.SIGTERM, signal.SIGINT}:
                    log.info("stopping")
                    break
                if signal.SIGHUP in self.flags:
                    self.flags.discard(signal.SIGHUP)
                    log.info("SIGHUP: reloading %s", self.config.path)
                    self.reload()
                requests = self.lifecycle.take_reload_requests()
                if requests:
                    log.info("POST /-/reload: reloading %s", self.config.path)
                    self.lifecycle.answer(requests, self.reload())
                self._update_readiness()
        finally:
            self.lifecycle.answer(self.lifecycle.take_reload_requests(), "pgne is stopping")
            self.shutdown()
        return EXIT_OK

    def shutdown(self) -> None:
        """Workers SIGTERMed, then SIGKILLed after STOP_GRACE; then the launchers end. Every
        wait is bounded: a stopped launcher (whose answers never come) does not hold us."""
        self.stopping = True
        for slot in self.workers.values():  # those of slots a reload replaced have had it already
            _signal(slot, signal.SIGTERM)
        self._wait_for_workers(time.monotonic() + STOP_GRACE)
        for slot in list(self.workers.values()):
            if self.slots.get(slot.database.key) is slot:
                log.warning("%s: worker (pid %d) ignored SIGTERM; killing it", slot.database.display_name, slot.pid,
                            extra=for_database(slot.database.display_name))
            _signal(slot, signal.SIGKILL)
        self._wait_for_workers(time.monotonic() + 1.0)
        self.launchers.close()  # workers that are left (none we know of) die with their launcher
        self.server.stop()

    def _wait_for_workers(self, deadline: float) -> None:
        while self.workers and time.monotonic() < deadline:
            launcher.wait_for(self.launchers.fds(), min(0.1, max(0.0, deadline - time.monotonic())))
            self._handle_launcher()


def _send_spec(fd: int, data: bytes) -> bool:
    """Write the spec into the worker's pipe; False if it did not read it within
    SPEC_WRITE_TIMEOUT (a spec larger than the pipe's buffer waits for the worker to read).
    True also when the worker is gone (EPIPE): it is exiting, and the reaper will see it."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    deadline = time.monotonic() + SPEC_WRITE_TIMEOUT
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller = select.poll()  # not select(): with hundreds of workers, fds pass FD_SETSIZE
            poller.register(fd, select.POLLOUT)
            poller.poll(remaining * 1000)
        except OSError:  # BrokenPipeError: it is dead already
            return True
    return True


def _signal(slot: WorkerSlot, signum: int) -> None:
    """Signal the slot's worker if it has not ended."""
    if slot.worker is not None:
        slot.worker.signal(signum)
