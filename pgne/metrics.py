"""pgne's Prometheus metrics, in prometheus_client's multiprocess mode.

prometheus_client picks its value class when it is first imported: PROMETHEUS_MULTIPROC_DIR
must be set before *any* import of it, in every process that counts, or that process counts
into memory nobody scrapes. So this module refuses to load without it, and the master imports
it only after preparing the directory (workers get the variable in their environment).

Every Gauge has an explicit multiprocess_mode:
- `livemax` for what a live process asserts: the master writes pgne_database_up 0 for every
  database, the worker 1 while listening; when a worker dies, the master's
  mark_process_dead() removes its file and the series reads 0, never absent.
- `max` for timestamps, `mostrecent` for readings taken by the worker.
- `livemostrecent` for pgne_setup_problem: a worker's findings die with it (a reload may have
  changed the config); its successor writes every series again at its first check.
Counters of dead workers stay in their files and keep adding to the total: counts survive
worker restarts.

The histograms of columns_to_observe (`pgne_observed_<unit>`, labels of pgne_events_total plus
`column`) are written as prometheus_client's Histogram writes them, `histogram_<pid>.db` with
one value per bucket (not cumulative: scrapes add them up, `_count` is the +Inf bucket) and
`_sum`, but through the value class directly: one statement's observations are added at once,
and the bounds may differ from column to column in one family. `_sum` is kept exactly (a
Decimal per series and process) and written as the float64 nearest to it.

With `pgne run --compat-metric`, every increment of pgne_events_total also goes to
pg_notify_exporter's series, `pg_notify_exporter{operation, host, tag, database, table="schema.table",
<label columns>}`: the same events, the same numbers, under the old name. It is written as a
`sum` gauge because prometheus_client would name a counter's sample `pg_notify_exporter_total`
(and Prometheus stores that name when it scrapes OpenMetrics), which old queries do not select;
a `sum` gauge adds every process's file, dead workers' included, exactly as a counter does.
"""
from __future__ import annotations

import os
from decimal import Decimal

from pgne.statedir import ENV_VARIABLE  # imports no prometheus_client

if not os.environ.get(ENV_VARIABLE):  # pragma: no cover - a programming error
    raise RuntimeError(f"pgne.metrics imported before {ENV_VARIABLE} was set")

from prometheus_client import Counter, Gauge  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402
from prometheus_client.values import ValueClass  # noqa: E402

from pgne.compaction import COMPAT_BUILTINS, COMPAT_METRIC  # noqa: E402
from pgne.model import BUILTIN_LABELS, ObservedColumn  # noqa: E402
from pgne.payload import EXACT, RESULTS, Observation, nearest_float  # noqa: E402

DATABASE_LABELS = ("host", "database")
COMPAT_LABELS = COMPAT_BUILTINS  # pg_notify_exporter's, in its order

# Label order of pgne_events_total: operation, host, database, tag, schema, table, then columns.
assert BUILTIN_LABELS == ("operation", "host", "database", "tag", "schema", "table")


def _counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
    # registry=None: /metrics is served from the multiprocess files, never a process registry.
    return Counter(name, documentation, labels, registry=None)


def _gauge(name: str, documentation: str, labels: tuple[str, ...], mode: str) -> Gauge:
    return Gauge(name, documentation, labels, registry=None, multiprocess_mode=mode)


def _database_up() -> Gauge:
    return _gauge("pgne_database_up", "1 while the worker is connected and listening, else 0.",
                  ("host", "database", "tag"), "livemax")


class _BothSeries:
    """A pgne_events_total child and its pg_notify_exporter twin, raised together."""

    __slots__ = ("counter", "compat")

    def __init__(self, counter, compat):
        self.counter, self.compat = counter, compat

    def inc(self, amount: float = 1) -> None:
        self.counter.inc(amount)
        self.compat.inc(amount)


OBSERVED_HELP = ("Values of a column (columns_to_observe) over the rows counted in pgne_events_total: NULL, "
                 "NaN and infinite values are not observed (pgne_observed_skipped_total).")
SKIPPED_REASONS = ("null", "not_finite")


class ObservedSeries:
    """One histogram series of an observed column: its bucket values (per bucket, the last one
    +Inf), its `_sum`, and its skipped counters; `add` writes an Observation."""

    __slots__ = ("buckets", "sum", "exact_sum", "skipped")

    def __init__(self, column: ObservedColumn, names: tuple[str, ...], values: tuple[str, ...], skipped):
        family = column.family
        bucket_names = names + ("le",)
        bounds = [floatToGoString(b) for b in column.buckets] + ["+Inf"]
        self.buckets = [ValueClass("histogram", family, family + "_bucket", bucket_names, values + (bound,),
                                   OBSERVED_HELP) for bound in bounds]
        self.sum = ValueClass("histogram", family, family + "_sum", names, values, OBSERVED_HELP)
        self.exact_sum = Decimal(0)  # what this process added to `_sum`, exactly
        self.skipped = skipped

    def raise_to(self, observation: Observation, exported: dict) -> None:
        """Raise the buckets and skipped counters to `observation`'s totals, given what is
        `exported` ({"buckets": {le: cumulative}, "skipped": {reason: n}}, updated here);
        never lowers one. The caller writes `_sum`.

        /metrics adds every process's per-bucket values and cumulates them over the union of
        their bounds, so what is exported at one of our bounds is what `exported` holds at its
        greatest bound not above it (earlier processes may have written other bounds: the
        config's buckets changed). Each of our buckets gains what brings the cumulative value
        at its bound to the total, less what the buckets below it gained."""
        les = [floatToGoString(b) for b in observation.column.buckets] + ["+Inf"]
        wanted = (*observation.buckets, observation.count)
        shown = exported["buckets"]
        shown_bounds = sorted((float(le), value) for le, value in shown.items())
        gains = []
        written = 0.0  # what our buckets up to the current bound gain together
        for le, cumulative in zip(les, wanted):
            bound = float(le)
            before = next((value for b, value in reversed(shown_bounds) if b <= bound), 0.0)
            gain = max(0.0, cumulative - before - written)
            gains.append((bound, gain))
            written += gain
        for value, (_, gain) in zip(self.buckets, gains):
            if gain > 0:
                value.inc(gain)
        for le in set(shown) | set(les):  # every exported bound after the gains
            bound = float(le)
            before = next((value for b, value in reversed(shown_bounds) if b <= bound), 0.0)
            shown[le] = before + sum(gain for b, gain in gains if b <= bound)
        for counter, reason, total in zip(self.skipped, SKIPPED_REASONS, (observation.null, observation.not_finite)):
            gain = total - exported["skipped"].get(reason, 0.0)
            if gain > 0:
                counter.inc(gain)
                exported["skipped"][reason] = total

    def add(self, observation: Observation) -> None:
        previous = 0
        for value, cumulative in zip(self.buckets, observation.buckets):
            if cumulative > previous:
                value.inc(cumulative - previous)
            previous = cumulative
        if observation.count > previous:
            self.buckets[-1].inc(observation.count - previous)
        if observation.sum:
            self.exact_sum = EXACT.add(self.exact_sum, observation.sum)
            self.sum.set(nearest_float(self.exact_sum))
        null, not_finite = self.skipped
        if observation.null:
            null.inc(observation.null)
        if observation.not_finite:
            not_finite.inc(observation.not_finite)


class WorkerMetrics:
    """The metrics one worker writes, with children for its database bound once."""

    def __init__(self, host: str, database: str, tag: str, label_names: tuple[str, ...], outbox: bool = False,
                 compat: bool = False):
        """`host` is the database's `host` label (config.Database.host_label), not its host name."""
        self.host, self.database, self.tag = host, database, tag
        self.label_names = label_names
        self._families: dict[tuple[str, ...], tuple] = {}
        self.events, self.last_event = self._series_families(())
        # pg_notify_exporter's series (pgne run --compat-metric), or None
        self.compat = _gauge(COMPAT_METRIC, "Events counter: pg_notify_exporter's series, as pgne_events_total counts "
                             "them (pgne run --compat-metric).", COMPAT_LABELS + label_names,
                             "sum") if compat else None
        self.up = _database_up().labels(host, database, tag)
        notifications = _counter("pgne_notifications_total", "Notifications received, by result.",
                                 DATABASE_LABELS + ("result",))
        self.notifications = {r: notifications.labels(host, database, r) for r in RESULTS}
        self.reconnects = _counter("pgne_reconnects_total", "Connection attempts after the first one.",
                                   DATABASE_LABELS).labels(host, database)
        self.queue_usage = _gauge("pgne_notify_queue_usage_ratio", "pg_notification_queue_usage() at the last "
                                  "heartbeat.", DATABASE_LABELS, "mostrecent").labels(host, database)
        self.trigger_installed = _gauge("pgne_trigger_installed",
                                        "1 if pgne's trigger is installed as configured, else 0.",
                                        DATABASE_LABELS + ("schema", "table", "event"), "mostrecent")
        # one series per problem the config allows for (pgne.drift.possible_problems): 1 while it exists
        self.setup_problem = _gauge("pgne_setup_problem", "1 while pgne cannot set the database up as configured "
                                    "(problem: missing_table, missing_label_column, notify_refused, legacy_trigger, "
                                    "missing_observed_column, observed_column_not_numeric, "
                                    "virtual_generated_column), else 0.",
                                    DATABASE_LABELS + ("schema", "table", "column", "problem"), "livemostrecent")
        if outbox:  # only databases with delivery: outbox have these series
            self.outbox_backlog = _gauge("pgne_outbox_backlog_rows", "Rows in pgne.event_log not yet drained.",
                                         DATABASE_LABELS, "mostrecent").labels(host, database)
            self.outbox_oldest_age = _gauge("pgne_outbox_oldest_event_age_seconds",
                                            "Age of the oldest row in pgne.event_log (0 when empty).",
                                            DATABASE_LABELS, "mostrecent").labels(host, database)
        self._children: dict[tuple, tuple] = {}
        self._observed: dict[tuple, ObservedSeries] = {}
        self._skipped = None  # pgne_observed_skipped_total, created with the first histogram
        self._observed_invalid = None

    @property
    def observed_invalid(self) -> Counter:
        """pgne_observed_invalid_values_total of this database (only where a column is observed)."""
        if self._observed_invalid is None:
            self._observed_invalid = _counter(
                "pgne_observed_invalid_values", "Payloads whose rows were counted but whose values "
                "(columns_to_observe) were malformed, out of bounds, or too long for a notification, "
                "and skipped.", DATABASE_LABELS).labels(self.host, self.database)
        return self._observed_invalid

    def observed(self, key: tuple, column: ObservedColumn) -> ObservedSeries:
        """The histogram series of `column` for a series key of payload.Router; cached."""
        series = self._observed.get((key, column))
        if series is None:
            operation, schema, table, *labels = key
            names = BUILTIN_LABELS + self.label_names + ("column",)
            values = (operation, self.host, self.database, self.tag, schema, table, *labels, column.name)
            if self._skipped is None:
                self._skipped = _counter("pgne_observed_skipped", "Rows whose value of an observed column was not "
                                         "observed, by reason: null, not_finite (NaN, Infinity, -Infinity).",
                                         names + ("reason",))
            skipped = self._skipped
            series = self._observed[(key, column)] = ObservedSeries(
                column, names, values, tuple(skipped.labels(*values, reason) for reason in SKIPPED_REASONS))
            for counter in series.skipped:
                counter.inc(0)
        return series

    def set_setup_problem(self, problem: str, schema: str, table: str, column: str, value: int) -> None:
        self.setup_problem.labels(self.host, self.database, schema, table, column, problem).set(value)

    def _series_families(self, extra_names: tuple[str, ...]) -> tuple:
        """pgne_events_total and its timestamp with the config's label names plus `extra_names`."""
        families = self._families.get(extra_names)
        if families is None:
            names = BUILTIN_LABELS + self.label_names + extra_names
            families = self._families[extra_names] = (
                _counter("pgne_events_total", "Rows counted, by table, operation and label values.", names),
                _gauge("pgne_last_event_timestamp_seconds",
                       "Unix time of the last counted event of the series (0: none yet).", names, "max"))
        return families

    def series(self, key: tuple) -> tuple:
        """(counter child, timestamp child) for a key from payload.Router; cached.

        An outbox series may carry one more element: ((name, value), ...) of label columns the
        config no longer has (pgne.outbox keeps exporting such series at their totals)."""
        children = self._children.get(key)
        if children is None:
            operation, schema, table, *labels = key
            extras: tuple = ()
            if len(labels) > len(self.label_names):
                extras = labels.pop()
            events, last_event = self._series_families(tuple(name for name, _ in extras))
            values = (operation, self.host, self.database, self.tag, schema, table, *labels,
                      *(value for _, value in extras))
            counter = events.labels(*values)
            # An outbox series under label columns the config no longer has has no twin: the
            # compat series has the config's label names only.
            if self.compat is not None and not extras:
                compat = self.compat.labels(operation, self.host, self.tag, self.database, f"{schema}.{table}", *labels)
                counter = _BothSeries(counter, compat)
            children = (counter, last_event.labels(*values))
            self._children[key] = children
        return children


class MasterMetrics:
    """What the master itself writes."""

    def __init__(self, version: str):
        self.database_up = _database_up()
        self.worker_restarts = _counter("pgne_worker_restarts_total", "Workers restarted by the master.",
                                        DATABASE_LABELS)
        self.worker_start_failures = _counter(
            "pgne_worker_start_failures_total",
            "Worker starts that failed before the worker ran (out of file descriptors or processes, no answer "
            "from the launcher); each is retried with backoff.", DATABASE_LABELS)
        _gauge("pgne_build_info", "Always 1; the version is a label.", ("version",), "livemax").labels(version).set(1)
        self.reload_ok = _gauge("pgne_config_last_reload_successful",
                                "1 if the last config (re)load succeeded, else 0.", (), "livemax")
        self.reload_time = _gauge("pgne_config_last_reload_success_timestamp_seconds",
                                  "Unix time of the last successful config (re)load.", (), "livemax")
