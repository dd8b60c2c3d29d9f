"""One worker process per database: connect, (set up,) LISTEN, count.

Forked by the master's launcher (pgne.launcher_process), which imported this module ahead (so
every import is at the top: the workers share it), it reads its WorkerSpec on a pipe of its own
(pgne.protocol: the spec, its encoding, the modes and exit codes). The pipe then stays open:
its write end is held only by the master, so EOF means the master is gone. PR_SET_PDEATHSIG
covers the moments the worker is blocked in libpq (which retries on EINTR and cannot be
interrupted).

SIGTERM keeps its default action: the worker dies at once, even inside a blocking libpq call.
Counts are written to the multiprocess files at every increment, so nothing is lost.

Nothing the server says ends the worker: a hot standby (or a primary demoted by a failover)
cannot LISTEN nor take the outbox drain's writes, so the worker says so once, shows the
database down, and checks again with backoff until the name points at a primary; any other
SQL error is one logged line and a retry, never a traceback.
"""
from __future__ import annotations

import logging
import os
import random
import select
import signal
import socket
import threading
import time

import jinja2
import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from pgne import logs
from pgne.apply import apply_on_connection
from pgne.drift import installed_triggers, possible_problems, read_inventory, setup_problems
from pgne.errors import UserError, first_line
from pgne.metrics import WorkerMetrics  # PROMETHEUS_MULTIPROC_DIR is in our environment
from pgne.model import APPLIED_CHANNEL, OUTBOX
from pgne.outbox import OutboxExporter
from pgne.payload import COUNTED, Router
from pgne.protocol import EXIT_TEARDOWN_FAILED, TEARDOWN, WorkerSpec, die_with_parent, read_spec
from pgne.render import Renderer, read_templates
from pgne.resources import builtin_templates_dir
from pgne.statedir import ENV_VARIABLE

# Run as `python -m pgne.worker`, this module's __name__ is "__main__": its spec names it.
log = logging.getLogger(__spec__.name)

BATCH_WINDOW = 0.005  # seconds a worker waits after a small batch before it reads again
# A backend with a backlog sends full 8 kB buffers; one woken per commit sends a notification
# or two. Less than half a buffer of payload means the latter.
SMALL_BATCH_BYTES = 4096
HEARTBEAT_INTERVAL = 10.0  # seconds; also reads pg_notification_queue_usage()
# Anyone who may connect can NOTIFY pgne_applied: checks it asks for are at least this far apart.
APPLIED_CHECK_SPACING = 1.0  # seconds
APPLIED_LOG_SPACING = 60.0  # seconds: at most one INFO line a minute says a check was asked for
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
# A silently dropped network is noticed by keepalives while idle, and by tcp_user_timeout
# while the heartbeat waits for its answer: at most HEARTBEAT_INTERVAL + 15 s. A path that
# keeps the TCP peer alive but forwards nothing (a proxy, pooler or NAT that hangs, a frozen
# server host) defeats both: QUERY_TIMEOUT drops a connection whose queries get no answer.
QUERY_TIMEOUT = 15.0
# perform_setup's apply gets a longer deadline (each of its locks waits at most lock_timeout).
# An outbox drain of a large backlog is many transactions (pgne.outbox.DRAIN_CHUNK rows each,
# well under a second apiece): the deadline applies to each, so a partition is noticed within
# QUERY_TIMEOUT of the drain's next statement however long the backlog.
SETUP_TIMEOUT = 120.0
READ_ONLY_SQLSTATE = "25006"  # "cannot execute LISTEN during recovery", "... in a read-only transaction"
KEEPALIVE_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}


def _read_builtin_templates() -> tuple[dict[str, str] | None, UserError | None]:
    try:
        return read_templates([builtin_templates_dir()]), None
    except UserError as exc:
        return None, exc


# The built-in templates, read once when the launcher imports this module (as pgne starts, with
# the code it runs): a worker never reads them from disk, so a `pip install` of another version
# under a running pgne changes no worker, not even one started after it, until pgne restarts.
BUILTIN_TEMPLATES, BUILTIN_TEMPLATES_ERROR = _read_builtin_templates()


class MasterGone(Exception):
    """The spec pipe reached EOF: the master exited."""


class NotPrimary(Exception):
    """The server cannot be LISTENed on or written to: a hot standby, or read-only."""


def _not_primary(exc: psycopg2.Error) -> NotPrimary | None:
    if exc.pgcode == READ_ONLY_SQLSTATE:
        return NotPrimary(f"the server refuses it: {first_line(exc)}")
    return None


class Backoff:
    """1 s doubling to 30 s, with jitter (+-20%), so that many workers do not retry in step."""

    def __init__(self, first: float = BACKOFF_FIRST, maximum: float = BACKOFF_MAX):
        self.first, self.maximum, self.current = first, maximum, first

    def next(self) -> float:
        delay = self.current * random.uniform(0.8, 1.2)
        self.current = min(self.current * 2, self.maximum)
        return min(delay, self.maximum)

    def reset(self) -> None:
        self.current = self.first


class Worker:
    def __init__(self, spec: WorkerSpec, master_fd: int):
        self.spec = spec
        self.db = spec.database
        self.name = self.db.display_name
        self.master_fd = master_fd
        self.templates_broken = False  # see templates_unusable()
        self.renderer = self._renderer()
        self.router = Router(self.db, spec.label_names)
        self.classify = self.router.classifier()  # memoized: most payloads are not JSON-parsed again
        self.outbox = None
        if self.db.delivery == OUTBOX:
            # Reads what earlier workers exported *before* this one writes anything.
            self.outbox = OutboxExporter(self.router, None, os.environ[ENV_VARIABLE],
                                         self.db.host_label, self.db.name)
        self.metrics = WorkerMetrics(self.db.host_label, self.db.name, self.db.tag, spec.label_names,
                                     outbox=self.outbox is not None, compat=spec.compat_metric)
        if self.outbox is not None:
            self.outbox.metrics = self.metrics
        self.counted = self.metrics.notifications[COUNTED]
        self.backoff = Backoff()
        self.problems: dict[tuple, str] = {}  # setup problems found by the last check -> their text
        self.applied = False  # a NOTIFY on APPLIED_CHANNEL (`pgne apply` sends one): check the database now
        self._last_trigger_check = float("-inf")  # time.monotonic() of the last check_triggers()
        self.event_log_damage: str | None = None  # what the last check found wrong with pgne.event_log
        self._applied_logged = float("-inf")  # time.monotonic() of the last INFO line about pgne_applied
        self._failing_check = ""  # the error of the check/setup path logged last (said once while it repeats)

    def _renderer(self) -> Renderer | None:
        """Every template in memory, read now (--templates) or when pgne started (the built-in
        ones): setup and the trigger check never read a file again."""
        try:
            if BUILTIN_TEMPLATES_ERROR is not None:
                raise BUILTIN_TEMPLATES_ERROR
            return Renderer(self.spec.template_dirs, lock_timeout=self.spec.lock_timeout,
                            builtin_sources=BUILTIN_TEMPLATES)
        except UserError as exc:
            self.templates_unusable(exc)
            return None

    # -- waiting -------------------------------------------------------------------------

    def _check_master(self) -> None:
        try:
            data = os.read(self.master_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            raise MasterGone()

    def sleep(self, seconds: float) -> None:
        """Wait, but return at once (raising MasterGone) if the master exits."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            readable, _, _ = select.select([self.master_fd], [], [], remaining)
            if readable:
                self._check_master()

    # -- the connection --------------------------------------------------------------------

    def connect(self):
        conn = psycopg2.connect(**self.db.connect_kwargs(), **KEEPALIVE_OPTIONS)
        conn.autocommit = True
        return conn

    def connect_with_retry(self):
        first = True
        while True:
            if not first:
                self.metrics.reconnects.inc()
            first = False
            try:
                return self.connect()
            except psycopg2.Error as exc:
                delay = self.backoff.next()
                log.warning("%s: cannot connect: %s; retrying in %.1f s", self.name, first_line(exc), delay)
                self.sleep(delay)

    def templates_unusable(self, exc: jinja2.TemplateError | UserError) -> None:
        """The templates cannot be read (as this worker starts) or rendered: pgne's files changed
        since the config was checked (a --templates folder edited, pgne's own files replaced before
        pgne had read them). Said once; counting goes on (it needs no template); setup and the
        trigger check wait for a restart, which loads the files consistently."""
        if not self.templates_broken:
            # pgne.render wraps a template's error in a UserError that names the template and monitor
            what = f"{exc.name!r} is gone" if isinstance(exc, jinja2.TemplateNotFound) else str(exc)
            log.error("%s: cannot load pgne's SQL templates (%s): pgne's files changed under the running "
                      "pgne (a pip install of another version?); counting goes on, setup and the trigger "
                      "check do not: restart pgne", self.name, what)
        self.templates_broken = True

    def check_failed(self, what: str, exc: Exception) -> None:
        """An unexpected error of setup or the trigger check (not the server's, not the connection's):
        one logged line (once while it repeats), never the worker's death; counting goes on."""
        text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        if text != self._failing_check:
            log.error("%s: %s failed: %s; counting goes on (trying again at the next check)", self.name, what, text)
        self._failing_check = text

    def setup(self, conn) -> bool:
        if self.renderer is None or self.templates_broken:
            return False
        del conn.notices[:]
        try:
            with _Deadline(conn, self.name, "the setup", SETUP_TIMEOUT):
                result = apply_on_connection(conn, self.db, self.renderer)
        except (jinja2.TemplateError, UserError) as exc:  # the config was checked at start: files changed
            self.templates_unusable(exc)
            return False
        except (psycopg2.Error, MasterGone):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen error: never the worker's death
            self.check_failed("setup", exc)
            return False
        for notice in conn.notices:  # what the script says it did beyond the plan (a rebuilt pgne.event_log)
            if notice.startswith("WARNING:  pgne:"):
                log.warning("%s: setup: %s", self.name, notice.split("pgne: ", 1)[1].strip())
        del conn.notices[:]
        if result.ok:
            log.info("%s: setup: %s", self.name, result.line().split(": ", 1)[1])
        else:
            log.error("%s: setup failed: %s", self.name, result.detail)
        return result.ok

    # -- modes -----------------------------------------------------------------------------

    def teardown(self) -> int:
        conn = self.connect_with_retry()
        try:
            return 0 if self.setup(conn) else EXIT_TEARDOWN_FAILED
        finally:
            conn.close()

    def listen_forever(self) -> int:
        self.metrics.up.set(0)
        if self.outbox is None:  # outbox: a series appears once its durable total is known
            for key in self.router.configured_keys():  # every configured series exists from the start
                self.metrics.series(key)
                for column in self.router.observed_columns(key):
                    self.metrics.observed(key, column)
                    self.metrics.observed_invalid.inc(0)
        for counter in self.metrics.notifications.values():
            counter.inc(0)
        self.metrics.reconnects.inc(0)
        reconnecting = False
        not_primary = ""  # what was logged while the server was not a primary (said once)
        failing = ""  # the SQL error logged last (said once while it repeats)
        while True:
            if reconnecting:
                self.metrics.reconnects.inc()
            conn = self.connect_with_retry()
            lost = None
            try:
                self.check_primary(conn)
                if not_primary:
                    log.info("%s: the server is a primary again", self.name)
                    not_primary = ""
                if self.db.perform_setup:
                    self.setup(conn)  # a failure is logged; we listen all the same
                self.listen_for_applies(conn)
                if self.outbox is not None:
                    self.drain_forever(conn)
                try:
                    with _Deadline(conn, self.name, "LISTEN"), conn.cursor() as cur:
                        cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.db.channel)))
                except psycopg2.Error as exc:
                    refused = _not_primary(exc)
                    if refused is None:
                        raise
                    raise refused from None
                self.check_triggers(conn)
                self.metrics.up.set(1)
                self.backoff.reset()
                failing = ""
                log.info("%s: listening on channel %s", self.name, self.db.channel)
                self.listen(conn)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                lost = f"connection lost: {first_line(exc)}"
            except NotPrimary as exc:
                if not not_primary:
                    log.error("%s: %s; not counting until it is a primary (checking again with backoff)",
                              self.name, exc)
                not_primary = str(exc)
            except psycopg2.Error as exc:  # anything else the server says: logged, retried
                text = first_line(exc)
                if text != failing:
                    log.error("%s: %s (SQLSTATE %s); retrying with backoff", self.name, text, exc.pgcode)
                failing = text
            finally:
                self.metrics.up.set(0)
                conn.close()
            delay = self.backoff.next()
            if lost:
                log.warning("%s: %s; reconnecting in %.1f s", self.name, lost, delay)
            else:
                log.debug("%s: retrying in %.1f s", self.name, delay)
            self.sleep(delay)
            reconnecting = True

    def listen_for_applies(self, conn) -> None:
        """LISTEN on APPLIED_CHANNEL: `pgne apply` NOTIFYs it once it has changed this database, and
        the next check of triggers and setup problems runs at once (drain() sees it)."""
        try:
            with _Deadline(conn, self.name, "LISTEN"), conn.cursor() as cur:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(APPLIED_CHANNEL)))
        except psycopg2.Error as exc:
            refused = _not_primary(exc)
            if refused is None:
                raise
            raise refused from None

    def check_primary(self, conn) -> None:
        """Raise NotPrimary on a hot standby: it cannot LISTEN, nor take perform_setup's DDL or
        the outbox drain's writes (each would fail anyway, less clearly). In outbox mode also on
        a read-only database (default_transaction_read_only): the drain must write."""
        with _Deadline(conn, self.name, "the recovery check"), conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.pg_is_in_recovery(), "
                        "pg_catalog.current_setting('transaction_read_only')::boolean")
            in_recovery, read_only = cur.fetchone()
        self.drain(conn)
        if in_recovery:
            raise NotPrimary("the server is a hot standby (in recovery): it cannot LISTEN or take writes")
        if read_only and self.outbox is not None:
            raise NotPrimary("the database is read-only (transaction_read_only is on): pgne cannot drain "
                             "pgne.event_log")

    def drain_forever(self, conn) -> None:
        """delivery: outbox. Drain and export now, then every drain_interval; the heartbeat runs
        in between (a long drain_interval must not hide a dead connection)."""
        self.check_triggers(conn)
        self.backoff.reset()
        log.info("%s: draining pgne.event_log every %g s", self.name, self.db.drain_interval)
        self._schedule_checks()
        failing = False
        next_drain = time.monotonic()
        while True:
            if time.monotonic() >= next_drain:
                next_drain = time.monotonic() + self.db.drain_interval
                try:
                    with _Deadline(conn, self.name, "the drain") as deadline:
                        self.outbox.drain(conn, progress=deadline.renew)
                        self.outbox.export(conn)
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    raise
                except psycopg2.Error as exc:  # e.g. pgne.event_log missing: retry, loudly
                    self.metrics.up.set(0)
                    refused = _not_primary(exc)
                    if refused is not None:
                        raise refused from None
                    if not failing:
                        log.error("%s: cannot drain pgne.event_log: %s (run pgne apply?)", self.name, first_line(exc))
                    failing = True
                else:
                    if failing:
                        log.info("%s: draining again", self.name)
                    failing = False
                    self.metrics.up.set(1)
            # psycopg2 keeps a NOTIFY that came with an answer to the drain's statements in
            # conn.notifies: the socket will not wake the wait for it (FIELD-NOTES: drain after execute)
            self.drain(conn)
            self._run_due_checks(conn)
            self.wait_for_applies(conn, max(0.0, min(next_drain, self._next_heartbeat, self._next_check())
                                            - time.monotonic()))

    def wait_for_applies(self, conn, seconds: float) -> None:
        """delivery: outbox: sleep, but wake for a NOTIFY of `pgne apply` (the only channel this
        connection listens on) and return at once (raising MasterGone) if the master exits. One
        already read (in conn.notifies, with an answer to a statement) ends the wait at once."""
        if conn.notifies:
            self.drain(conn)
            return
        readable, _, _ = select.select([conn, self.master_fd], [], [], seconds)
        if self.master_fd in readable:
            self._check_master()
        if conn in readable:
            conn.poll()
            self.drain(conn)

    def listen(self, conn) -> None:
        master_fd = self.master_fd
        self._schedule_checks()
        while True:
            self._run_due_checks(conn)
            timeout = max(0.0, min(self._next_heartbeat, self._next_check()) - time.monotonic())
            readable, _, _ = select.select([conn, master_fd], [], [], timeout)
            if readable:
                if master_fd in readable:
                    self._check_master()
                conn.poll()
                if _woken_per_commit(self.drain(conn), conn):
                    # Let the next notifications pile up for a moment and take them in one batch
                    # (one wakeup, one increment per series).
                    self.sleep(BATCH_WINDOW)

    def _schedule_checks(self) -> None:
        """A heartbeat now; the next trigger check one interval from now (one just ran)."""
        now = time.monotonic()
        self._next_heartbeat, self._next_trigger_check = now, now + self.spec.trigger_check_interval

    def _run_due_checks(self, conn) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self.heartbeat(conn)
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
        if now >= self._next_check():
            if self.applied and now < self._next_trigger_check:
                # anyone who may connect can send it: INFO once a minute, DEBUG in between
                quiet = now - self._applied_logged < APPLIED_LOG_SPACING
                if not quiet:
                    self._applied_logged = now
                log.log(logging.DEBUG if quiet else logging.INFO, "%s: a NOTIFY on %s (pgne apply sends one): "
                        "checking the database now", self.name, APPLIED_CHANNEL)
            self.applied = False  # one that arrives during the check asks for another
            self.check_triggers(conn)
            self._next_trigger_check = now + self.spec.trigger_check_interval

    def _next_check(self) -> float:
        """When the next trigger check is due: at its interval, or sooner after an apply."""
        if self.applied:
            return min(self._next_trigger_check, self._last_trigger_check + APPLIED_CHECK_SPACING)
        return self._next_trigger_check

    def heartbeat(self, conn) -> None:
        with _Deadline(conn, self.name, "the heartbeat"), conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.pg_notification_queue_usage()")
            self.metrics.queue_usage.set(cur.fetchone()[0])
        self.drain(conn)  # notifications that arrived during the query

    def check_triggers(self, conn, repair: bool = True) -> None:
        """pgne_setup_problem and pgne_trigger_installed, from one read of the catalogs: after
        every (re)connect (and its perform_setup), then every --trigger-check-interval, and after
        `pgne apply` said it changed the database. A damaged pgne.event_log (outbox) shows its
        triggers as not installed; with perform_setup (and `repair`) the setup rebuilds it at once."""
        self._last_trigger_check = time.monotonic()
        if self.renderer is None or self.templates_broken:
            self.drain(conn)
            return
        try:
            with _Deadline(conn, self.name, "the trigger check"):
                inventory = read_inventory(conn, self.db, self.renderer)
        except (jinja2.TemplateError, UserError) as exc:
            self.templates_unusable(exc)
            return
        except psycopg2.DatabaseError as exc:
            if isinstance(exc, psycopg2.OperationalError):
                raise
            log.warning("%s: cannot check triggers: %s", self.name, first_line(exc))
            return
        except (psycopg2.Error, MasterGone):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen error: never the worker's death
            self.check_failed("the trigger check", exc)
            return
        finally:
            self.drain(conn)
        damage = inventory.event_log_damage
        if damage != self.event_log_damage:
            if damage is not None:
                log.error("%s: pgne.event_log %s: the triggers count nothing until it is rebuilt (%s)", self.name,
                          damage, "now" if self.db.perform_setup and repair else "pgne apply")
            else:
                log.info("%s: pgne.event_log is as pgne makes it again", self.name)
            self.event_log_damage = damage
        if damage is not None and self.db.perform_setup and repair:
            self.setup(conn)  # rebuilds it, its rows kept
            self.check_triggers(conn, repair=False)
            return
        try:
            self._report(inventory, damage)
        except Exception as exc:  # noqa: BLE001 - as above
            self.check_failed("the trigger check", exc)
            return
        self._failing_check = ""

    def _report(self, inventory, damage: str | None) -> None:
        self.report_problems(inventory)
        installed = installed_triggers(inventory, self.db)
        gauge = self.metrics.trigger_installed
        for (schema, table, event), present in installed.items():
            present = present and damage is None  # a trigger that cannot write its rows counts nothing
            gauge.labels(self.metrics.host, self.db.name, schema, table, event).set(1 if present else 0)
            if not present:
                log.warning("%s: trigger pgne_%s on %s.%s is missing or differs from the config",
                            self.name, event.lower(), schema, table)

    def report_problems(self, inventory) -> None:
        """Every possible setup problem of the config gets its series (1 while it exists); each
        one is logged when it appears and when it is gone."""
        found = {d.object_id: d.what for d in setup_problems(inventory, self.db)}
        for key in possible_problems(self.db):
            problem, schema, table, column = key
            self.metrics.set_setup_problem(problem, schema, table, column, 1 if key in found else 0)
            if key in found and key not in self.problems:
                log.error("%s: setup problem: %s", self.name, found[key])
            elif key in self.problems and key not in found:
                log.info("%s: setup problem solved: %s", self.name, self.problems[key])
        self.problems = found

    # -- the hot path ------------------------------------------------------------------------

    def drain(self, conn) -> list:
        """Count every pending notification: one increment per series per batch. Returns the batch."""
        batch = conn.notifies
        if not batch:
            return batch
        conn.notifies = []  # take the whole list at once; pop(0) would be O(n)
        classify = self.classify
        applies = 0
        pending: dict[tuple, int] = {}
        rejected: dict[str, int] = {}
        observed: dict[tuple, object] = {}  # (series key, column name) -> payload.Observation
        for note in batch:
            if note.channel == APPLIED_CHANNEL:  # not an event: a check asked for (`pgne apply` sends it)
                applies += 1
                continue
            result = classify(note.payload)
            key, count = result[0], result[1]
            if count:
                pending[key] = pending.get(key, 0) + count
                if len(result) > 2:  # a payload with values (columns_to_observe)
                    self._collect_observations(key, result[2], observed)
            else:  # `key` is the result name
                rejected[key] = rejected.get(key, 0) + 1
        if log.isEnabledFor(logging.DEBUG):
            for note in batch:
                log.debug("%s: notification %r", self.name, note.payload)
        if pending:
            now = time.time()
            for key, n in pending.items():
                counter, last_event = self.metrics.series(key)
                counter.inc(n)
                last_event.set(now)
            self.counted.inc(len(batch) - applies - sum(rejected.values()))
            for (key, _), observation in observed.items():
                self.metrics.observed(key, observation.column).add(observation)
        for result, n in rejected.items():
            self.metrics.notifications[result].inc(n)
        if applies:
            self.applied = True
        return batch

    def _collect_observations(self, key: tuple, observations, observed: dict) -> None:
        """Add a payload's observations (None: malformed values) to the batch's, per series."""
        if observations is None:
            self.metrics.observed_invalid.inc()
            return
        for observation in observations:
            at = (key, observation.column.name)
            earlier = observed.get(at)
            observed[at] = observation if earlier is None else earlier.plus(observation)

def _woken_per_commit(batch: list, conn) -> bool:
    """A batch of a notification or two, with nothing more waiting: the worker was woken by a
    single commit. A backlog comes in full 8 kB buffers, or is already waiting on the socket."""
    if not batch:
        return False
    size = 0
    for note in batch:  # stops within the first few dozen of a big batch
        size += len(note.payload)
        if size >= SMALL_BATCH_BYTES:
            return False
    return not select.select([conn], [], [], 0)[0]


class _Deadline:
    """Drop the connection if the statements inside get no answer within QUERY_TIMEOUT.

    libpq waits for an answer for ever, and retries on EINTR (no signal interrupts it). A timer
    thread shuts the socket down instead: libpq's wait returns, and the statement raises
    OperationalError, which reconnects like any lost connection.
    """

    def __init__(self, conn, name: str, what: str, seconds: float | None = None):
        self.fd, self.name, self.what = conn.fileno(), name, what
        self.seconds = QUERY_TIMEOUT if seconds is None else seconds
        self.lock = threading.Lock()
        self.finished = False
        self.timer = self._timer()

    def _timer(self) -> threading.Timer:
        timer = threading.Timer(self.seconds, self._expire, args=(object(),))
        timer.daemon = True
        self.generation = timer.args[0]
        return timer

    def __enter__(self) -> "_Deadline":
        self.timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        with self.lock:  # after this, _expire never touches the socket (its fd may be reused)
            self.finished = True
        self.timer.cancel()

    def renew(self) -> None:
        """An answer came: the next statement gets the whole deadline again."""
        with self.lock:
            if self.finished:
                return
            self.timer.cancel()
            self.timer = self._timer()  # a timer that fires anyway sees a newer generation: no-op
            self.timer.start()

    def _expire(self, generation: object) -> None:
        with self.lock:
            if self.finished or generation is not self.generation:
                return
            log.warning("%s: no answer to %s within %g s; dropping the connection", self.name, self.what,
                        self.seconds)
            try:
                sock = socket.socket(fileno=os.dup(self.fd))
            except OSError:
                return
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.close()


def main(master_fd: int) -> int:
    """Run the worker whose spec the master writes on `master_fd` (pgne.launcher calls this)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the master decides
    # When our parent, the launcher, exits (it does when the master does). The launcher set it
    # already, before it checked that it was still our parent; this is for stand-alone use.
    die_with_parent(signal.SIGKILL)
    try:
        spec = read_spec(master_fd)
    except EOFError:  # the master is gone already
        return 0
    os.set_blocking(master_fd, False)
    logs.configure(spec.log_level, spec.log_format, database=spec.database.display_name)
    worker = Worker(spec, master_fd)
    try:
        return worker.teardown() if spec.mode == TEARDOWN else worker.listen_forever()
    except MasterGone:
        log.info("%s: the master is gone; exiting", worker.name)
        return 0

