"""`pgne run`: the master process.

It prepares the multiprocess metrics directory, serves HTTP, and keeps one worker per enabled
database alive (plus a one-off teardown worker for a disabled database with perform_setup).

Workers are started with fork+exec (`python -m pgne.worker`), so no lock held by the HTTP
thread or prometheus_client is ever inherited. Signal handlers only set flags and wake the
main loop through signal.set_wakeup_fd; the loop reaps with waitpid(-1, WNOHANG), calls
mark_process_dead(pid) for every reaped worker, and restarts workers with backoff.

A worker may die at any moment (an OOM killer, an operator's kill -9, a crash loop): before it
has read its spec, while it creates a metrics file, while it is being reaped. Nothing about a
worker's death may end the master: the spec is written without blocking and without a buffer
(a dead reader is a failed start, not a BrokenPipeError later), compaction never raises and
never waits long for the state dir's lock, and a worker that could not even be forked is
retried with the same backoff as one that died.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from pgne import __version__
from pgne.config import load_config
from pgne.errors import EXIT_OK, UserError
from pgne.model import NOTIFY, OUTBOX, Config, Database
from pgne.render import Renderer
from pgne.statedir import prepare_state_dir

log = logging.getLogger("pgne.master")

STOP_GRACE = 5.0  # SIGTERM to workers, then SIGKILL: the master exits well within 10 s
RESTART_BACKOFF_FIRST, RESTART_BACKOFF_MAX = 1.0, 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts with the first delay again
LOOP_TICK = 0.5
SPEC_WRITE_TIMEOUT = 2.0  # a worker that has not read its spec by then (SIGSTOPped?) is killed
COMPACTION_LOCK_WAIT = 1.0  # a reader that holds the state dir longer: compact at a later tick
# How a worker is started; tests replace it with stand-ins that exit as they are told.
WORKER_COMMAND = [sys.executable, "-m", "pgne.worker"]


@dataclass
class WorkerSlot:
    """One database's worker, across its restarts."""

    database: Database
    mode: str
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = 0.0  # when to (re)start; None: do not
    failures: int = 0
    restarts_counted: bool = field(default=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Master:
    def __init__(self, config: Config, renderer: Renderer, args: argparse.Namespace,
                 listen: tuple[str, int], state_dir: str, web=None):
        from pgne.http import MetricsServer
        from pgne.metrics import MasterMetrics

        self.config = config
        self.renderer = renderer
        self.args = args
        self.state_dir = state_dir
        self.metrics = MasterMetrics(__version__)
        self.server = MetricsServer(listen, state_dir, web)
        self.slots: dict[tuple, WorkerSlot] = {}
        # Workers of slots replaced by a reload, kept until we reap them: a Popen dropped while its
        # child runs is reaped by subprocess's own cleanup at the next Popen(), and then never by
        # _reap, so mark_process_dead() would not run and its pgne_database_up 1 would stay.
        self.retiring: dict[int, tuple[subprocess.Popen, tuple]] = {}  # pid -> (process, database key)
        # The label columns each running worker writes pgne_events_total with (pid -> names).
        self.worker_labels: dict[int, tuple[str, ...]] = {}
        # Reloads that switched a database from notify to outbox (see pgne.outbox.OutboxExporter).
        self.outbox_switches: dict[tuple, int] = {}
        self.flags: set[int] = set()
        # reaped workers whose files are not folded yet, with the label columns they wrote
        self.uncompacted: list[tuple[int, tuple[str, ...]]] = []
        self.stopping = False
        self.wakeup_r, self.wakeup_w = os.pipe()
        for fd in (self.wakeup_r, self.wakeup_w):
            os.set_blocking(fd, False)

    # -- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self.flags.add(signum)  # only a flag: the main loop acts on it

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # -- workers ---------------------------------------------------------------------------

    def _slots_for(self, config: Config) -> dict[tuple, WorkerSlot]:
        from pgne.worker import LISTEN, TEARDOWN

        slots = {}
        for db in config.databases:
            if db.enabled:
                slots[db.key] = WorkerSlot(db, LISTEN)
            elif db.perform_setup:
                slots[db.key] = WorkerSlot(db, TEARDOWN)
        return slots

    def _spawn(self, slot: WorkerSlot) -> None:
        from pgne.worker import WorkerSpec, encode_spec

        spec = WorkerSpec(
            database=slot.database,
            label_names=self.config.label_names,
            mode=slot.mode,
            template_dirs=tuple(self.renderer.search_path[:-1]),
            lock_timeout=self.renderer.lock_timeout,
            log_level=self.args.log_level,
            trigger_check_interval=self.args.trigger_check_interval,
            outbox_switch_generation=self.outbox_switches.get(slot.database.key, 0),
            compat_metric=getattr(self.args, "compat_metric", False),
            master_pid=os.getpid(),
        )
        # The worker gets its password on stdin: variables that hold one stay with the master.
        secrets = {db.password_variable for db in self.config.databases if db.password_variable}
        env = {name: value for name, value in os.environ.items() if name not in secrets}
        env["PROMETHEUS_MULTIPROC_DIR"] = self.state_dir
        name = slot.database.display_name
        try:
            # bufsize=0: nothing is ever left in a buffer for close() to flush into a dead pipe
            process = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, env=env, close_fds=True, bufsize=0)
        except OSError as exc:  # no fork (EAGAIN, ENOMEM): as if it had died at once
            slot.started_at = time.monotonic()
            delay = self._schedule_restart(slot)
            log.error("%s: cannot start a worker: %s; retrying in %.0f s", name, exc.strerror or exc, delay)
            return
        # process.stdin stays open: its EOF tells the worker that we are gone.
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None
        self.worker_labels[process.pid] = spec.label_names
        log.info("%s: %s worker started (pid %d)", name, slot.mode, process.pid)
        if not _send_spec(process, encode_spec(spec)):
            # Not reading (stopped?): kill it so that the reaper restarts it. Blocking here
            # would stop the whole master. (A reader already gone is dying: the reaper sees it.)
            log.warning("%s: worker (pid %d) did not read its spec within %g s; killing it", name,
                        process.pid, SPEC_WRITE_TIMEOUT)
            _kill(process)

    def _schedule_restart(self, slot: WorkerSlot) -> float:
        """Backoff for the next start of `slot`: 1 s doubling to 30 s; 1 s again after a worker
        that ran STABLE_AFTER seconds. Returns the delay."""
        ran = time.monotonic() - slot.started_at
        slot.failures = 1 if ran >= STABLE_AFTER else slot.failures + 1
        delay = min(RESTART_BACKOFF_FIRST * 2 ** (slot.failures - 1), RESTART_BACKOFF_MAX)
        slot.restart_at = time.monotonic() + delay
        return delay

    def _stop_slot(self, slot: WorkerSlot) -> None:
        if slot.process and slot.process.returncode is None:
            _terminate(slot.process)
            self.retiring[slot.process.pid] = (slot.process, slot.database.key)

    def _reap(self) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        from pgne.worker import EXIT_TEARDOWN_FAILED, TEARDOWN

        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):  # only reported under a tracer
                continue
            try:
                mark_process_dead(pid, self.state_dir)
            except OSError as exc:  # its live gauges keep their last value until the next start
                log.warning("cannot remove the live gauges of process %d: %s", pid, exc)
            # with the label columns it wrote pgne_events_total with (see _compact)
            self.uncompacted.append((pid, self.worker_labels.pop(pid, self.config.label_names)))
            code = os.waitstatus_to_exitcode(status)
            slot = next((s for s in self.slots.values() if s.pid == pid), None)
            if slot is None:  # a worker of a slot we already replaced (reload)
                retired, _ = self.retiring.pop(pid, (None, None))
                if retired is not None:
                    retired.returncode = code
                    _close_pipe(retired)
                continue
            slot.process.returncode = code
            _close_pipe(slot.process)
            name = slot.database.display_name
            if self.stopping:
                continue
            if slot.mode == TEARDOWN and code in (0, EXIT_TEARDOWN_FAILED):
                log.info("%s: teardown %s", name, "done" if code == 0 else "failed (see above); not retried")
                slot.restart_at = None
                continue
            delay = self._schedule_restart(slot)
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            log.error("%s: worker (pid %d) %s; restarting in %.0f s", name, pid, how, delay)

    def _compact(self) -> None:
        """Fold reaped workers' files into *_merged.db (scrape time stays flat across restarts);
        a pid whose turn did not come (readers held the dir) is tried again at the next tick."""
        from pgne.compaction import compact, relabel_series

        waiting = []
        relabel = False
        for pid, label_names in self.uncompacted:
            if compact(self.state_dir, pid, timeout=COMPACTION_LOCK_WAIT) is None:
                waiting.append((pid, label_names))
            else:
                relabel |= label_names != self.config.label_names
        self.uncompacted = waiting
        if relabel:
            # A worker of an earlier config wrote pgne_events_total with other label columns:
            # bring its series to the current ones, so that no series is served twice
            # (to Prometheus, `note=""` is no label: {table="t"} and {table="t",note=""} are one).
            relabel_series(self.state_dir, self.config.label_names)

    def _start_due(self) -> None:
        now = time.monotonic()
        # A replacement waits until its predecessor is reaped: two workers of one database
        # must never count at once (an outbox worker reads what the other has exported so far).
        retiring = {key for _, key in self.retiring.values()}
        for key, slot in self.slots.items():
            if slot.restart_at is not None and slot.restart_at <= now and key not in retiring:
                if slot.process is not None:  # not the first start
                    db = slot.database
                    self.metrics.worker_restarts.labels(db.host_label, db.name).inc()
                self._spawn(slot)

    def _init_series(self) -> None:
        self.server.serve_databases(frozenset((db.host_label, db.name) for db in self.config.enabled_databases))
        for slot in self.slots.values():
            db = slot.database
            if slot.mode == "listen":
                self.metrics.database_up.labels(db.host_label, db.name, db.tag).set(0)
                self.metrics.worker_restarts.labels(db.host_label, db.name).inc(0)

    # -- reload (SIGHUP) -----------------------------------------------------------------------

    def reload(self) -> None:
        path = self.config.path
        try:
            config = load_config(path, self.renderer)
            self.renderer.check(config)
        except UserError as exc:
            for line in exc.lines:
                log.error("reload: %s", line)
            log.error("reload: the config above is invalid; the running config stays")
            self.metrics.reload_ok.set(0)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a file can do to the loader, the master lives on
            log.error("reload: %s: cannot be loaded (%s: %s); the running config stays", path,
                      type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.metrics.reload_ok.set(0)
            return
        old_labels = self.config.label_names
        self.config = config
        wanted = self._slots_for(config)
        restart_all = config.label_names != old_labels  # pgne_events_total changes its label names
        if restart_all:
            from pgne.compaction import relabel_series

            relabel_series(self.state_dir, config.label_names)  # what dead workers left; see _reap
        for key, slot in list(self.slots.items()):
            new = wanted.get(key)
            if new is not None and new.database == slot.database and new.mode == slot.mode and not restart_all:
                continue
            self._stop_slot(slot)
            del self.slots[key]
            if new is not None and slot.database.delivery == NOTIFY and new.database.delivery == OUTBOX:
                self.outbox_switches[key] = self.outbox_switches.get(key, 0) + 1
            log.info("%s: %s in the new config", slot.database.display_name,
                     "changed" if new else "removed")
            if new is None and slot.database.perform_setup and slot.mode == "listen":
                wanted[key] = WorkerSlot(dataclasses.replace(slot.database, enabled=False), "teardown")
        for key, slot in wanted.items():
            self.slots.setdefault(key, slot)
        self._init_series()
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())
        log.info("reload: %s loaded", path)

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> int:
        self.slots = self._slots_for(self.config)
        self._init_series()
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())
        self.install_signal_handlers()
        self.server.start()
        log.info("pgne %s serving %s://%s:%d/metrics; %d worker(s); state dir %s", __version__,
                 self.server.scheme, self.args.listen_address.rpartition(":")[0], self.server.port, len(self.slots), self.state_dir)
        try:
            while True:
                self._start_due()
                select.select([self.wakeup_r], [], [], LOOP_TICK)
                try:
                    os.read(self.wakeup_r, 512)
                except BlockingIOError:
                    pass
                self._reap()
                self._compact()
                if self.flags & {signal.SIGTERM, signal.SIGINT}:
                    log.info("stopping")
                    break
                if signal.SIGHUP in self.flags:
                    self.flags.discard(signal.SIGHUP)
                    log.info("SIGHUP: reloading %s", self.config.path)
                    self.reload()
        finally:
            self.shutdown()
        return EXIT_OK

    def shutdown(self) -> None:
        self.stopping = True
        running = [s for s in self.slots.values() if s.process and s.process.returncode is None]
        for slot in running:
            _terminate(slot.process)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and (self.retiring or any(s.process.returncode is None for s in running)):
            self._reap()
            time.sleep(0.05)
        for slot in running:
            if slot.process.returncode is None:
                log.warning("%s: worker (pid %d) ignored SIGTERM; killing it",
                            slot.database.display_name, slot.pid)
                _kill(slot.process)
        for slot in running:
            if slot.process.returncode is None:
                slot.process.wait()
                _close_pipe(slot.process)
        for process, _ in self.retiring.values():  # already sent SIGTERM by a reload
            _kill(process)
            process.wait()
        self.server.stop()


def _send_spec(process: subprocess.Popen, data: bytes) -> bool:
    """Write the spec into the worker's stdin; False if it did not read it within
    SPEC_WRITE_TIMEOUT (a spec larger than the pipe's buffer waits for the worker to read).
    True also when the worker is gone (EPIPE): it is exiting, and the reaper will see it."""
    fd = process.stdin.fileno()
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
            select.select([], [fd], [], remaining)
        except OSError:  # BrokenPipeError: it is dead already
            return True
    return True


def _close_pipe(process: subprocess.Popen) -> None:
    try:
        process.stdin.close()  # unbuffered: never flushes into a dead pipe
    except OSError:
        pass


# Never Popen.poll(), .terminate() or .kill() a worker: each of them may reap it (waitpid on its
# pid), and then _reap's waitpid(-1) never sees it: no mark_process_dead, no restart. A worker
# whose returncode is None has not been reaped by us, so its pid cannot have been reused.

def _signal(process: subprocess.Popen, signum: int) -> None:
    if process.returncode is None:
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            pass


def _terminate(process: subprocess.Popen) -> None:
    _signal(process, signal.SIGTERM)


def _kill(process: subprocess.Popen) -> None:
    _signal(process, signal.SIGKILL)


def run(config: Config, renderer: Renderer, args: argparse.Namespace, listen: tuple[str, int]) -> int:
    if "prometheus_client" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("prometheus_client was imported before the multiprocess directory was set")
    from pgne.webconfig import load_web_config

    web = load_web_config(args.web_config_file) if args.web_config_file else None
    state = prepare_state_dir(args.state_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = state.path  # before anything imports prometheus_client
    try:
        try:
            master = Master(config, renderer, args, listen, state.path, web)
        except OSError as exc:
            raise UserError(f"--listen-address {args.listen_address}: {exc.strerror or exc}", exit_code=1) from None
        return master.run()
    finally:
        if state.remove_at_exit:
            shutil.rmtree(state.path, ignore_errors=True)
        state.close()
