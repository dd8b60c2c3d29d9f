"""`delivery: outbox`: drain pgne.event_log into pgne.totals, and export the totals.

The triggers append rows to pgne.event_log in the application's own transaction, so a row
exists exactly when the application's write committed. Each drain transaction deletes a chunk
of rows and adds them to pgne.totals: a row is moved exactly once, even with several pgne
instances draining one database (SKIP LOCKED).

A pgne.totals row is one series: its labels are the series' label values, decided once, when
the row is drained, by the config of that moment (the whitelists are applied again, so rows
an outdated trigger wrote count as the config says). Past rows are never re-labelled: after a
whitelist or label column change, every series exported so far keeps its value, the rows
drained afterwards count under the new labels, and the sum over series stays the number of
rows, also after a restart of pgne with the changed config. Series whose label column the
config no longer has keep being exported at their total, with that column as a label.

What is exported comes from pgne.totals, the durable count, never from a sum kept in memory:
the worker raises pgne_events_total by the difference between the database's total and what
is already exported. "Already exported" is read back from the multiprocess files when the
worker starts, so a restarted worker does not add again what its predecessor exported, and
after a restart of pgne itself (files wiped) the series reappear at the database's total.
A series is only exported once its total is known: it never shows a 0 that would look like
a counter reset.
"""
from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Callable

from pgne.compaction import SERIES_BUILTINS
from pgne.model import LABEL_NAME_RE, OBSERVED_PREFIX, value_as_text
from pgne.payload import EXACT, Observation, Router, parse_observation
from pgne.statedir import collect, exclusive

log = logging.getLogger(__name__)

DRAIN_CHUNK = 50_000  # rows per transaction: a large backlog is moved in several transactions

TAKE_SQL = """
WITH batch AS (
  DELETE FROM pgne.event_log
  WHERE ctid = ANY (ARRAY(SELECT ctid FROM pgne.event_log LIMIT %s FOR UPDATE SKIP LOCKED))
  RETURNING table_name, operation, labels, n, created_at
)
SELECT table_name, operation, labels, sum(n)::bigint, max(created_at), count(*), NULL FROM batch
GROUP BY table_name, operation, labels
"""
# With columns_to_observe (pgne.event_log has the column `observed`): each group's histograms
# too, merged in Python (sums exactly, as Decimal).
TAKE_OBSERVED_SQL = """
WITH batch AS (
  DELETE FROM pgne.event_log
  WHERE ctid = ANY (ARRAY(SELECT ctid FROM pgne.event_log LIMIT %s FOR UPDATE SKIP LOCKED))
  RETURNING table_name, operation, labels, n, created_at, observed
)
SELECT table_name, operation, labels, sum(n)::bigint, max(created_at), count(*),
       array_agg(observed) FILTER (WHERE observed IS NOT NULL) FROM batch
GROUP BY table_name, operation, labels
"""
# The histograms of the totals rows a drain just raised (and locked): read, merged, written back.
READ_OBSERVED_SQL = """
SELECT t.table_name, t.operation, t.labels, t.observed FROM pgne.totals AS t
JOIN unnest(%s::text[], %s::text[], %s::text[]::jsonb[]) AS u (table_name, operation, labels)
  ON (t.table_name, t.operation, t.labels) = (u.table_name, u.operation, u.labels)
"""
WRITE_OBSERVED_SQL = """
UPDATE pgne.totals AS t SET observed = u.observed
FROM unnest(%s::text[], %s::text[], %s::text[]::jsonb[], %s::text[]::jsonb[])
  AS u (table_name, operation, labels, observed)
WHERE (t.table_name, t.operation, t.labels) = (u.table_name, u.operation, u.labels)
"""
ADD_SQL = """
INSERT INTO pgne.totals AS t (table_name, operation, labels, total, last_event)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]::jsonb[], %s::bigint[], %s::timestamptz[])
ORDER BY 1, 2, 3  -- one lock order for every drainer: no deadlock
ON CONFLICT (table_name, operation, labels) DO UPDATE
  SET total = t.total + EXCLUDED.total, last_event = greatest(t.last_event, EXCLUDED.last_event)
"""
TOTALS_SQL = "SELECT table_name, operation, labels, total, extract(epoch FROM last_event), NULL FROM pgne.totals"
TOTALS_OBSERVED_SQL = ("SELECT table_name, operation, labels, total, extract(epoch FROM last_event), observed "
                       "FROM pgne.totals")
BACKLOG_SQL = "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM pgne.event_log"

_BUILTINS = frozenset(SERIES_BUILTINS)


def series_key(base: tuple, labels: dict, label_names: tuple[str, ...]) -> tuple:
    """The key of a series (as payload.Router makes them, pgne.metrics.WorkerMetrics.series takes
    them) from (operation, schema, table) and its label values: the config's label columns in
    order ("" where absent), then, if any, ((name, value), ...) of the non-empty ones it lacks."""
    values = tuple(labels.get(name) or "" for name in label_names)
    extras = tuple(sorted((name, value) for name, value in labels.items()
                          if value and name not in label_names and name not in _BUILTINS
                          and LABEL_NAME_RE.match(name)))
    return base + values + ((extras,) if extras else ())


def exported_totals(state_dir: str, host: str, database: str, label_names: tuple[str, ...]
                    ) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """pgne_events_total and pgne_last_event_timestamp_seconds as currently served for one
    database (`host` is its host label), keyed by series_key."""
    totals: dict[tuple, float] = {}
    last: dict[tuple, float] = {}
    for family in collect(state_dir).collect():  # tolerates files of workers starting right now
        for sample in family.samples:
            labels = sample.labels
            if (sample.name not in ("pgne_events_total", "pgne_last_event_timestamp_seconds")
                    or labels.get("host") != host or labels.get("database") != database):
                continue
            key = series_key((labels["operation"], labels["schema"], labels["table"]), labels, label_names)
            if sample.name == "pgne_events_total":
                totals[key] = totals.get(key, 0) + sample.value  # "" and no label: one series
            else:
                last[key] = max(last.get(key, 0.0), sample.value)
    return totals, last


def merge_observed(into: dict, raw: object) -> None:
    """Add the histograms `raw` (a pgne.event_log or pgne.totals `observed` value:
    {column: {"count", "sum" (decimal text), "buckets": {bound: n}, "null", "not_finite"}}) into
    `into`, in place: counts added, sums added exactly, buckets merged as cumulative histograms
    (merge_buckets). Values that are not of that shape are skipped."""
    if type(raw) is not dict:
        return
    for column, histogram in raw.items():
        if type(histogram) is not dict:
            continue
        target = into.setdefault(column, {"count": 0, "sum": "0", "null": 0, "not_finite": 0})
        for name in ("count", "null", "not_finite"):
            if type(histogram.get(name)) is int:
                target[name] += histogram[name]
        try:
            target["sum"] = str(EXACT.add(Decimal(target["sum"]), Decimal(str(histogram.get("sum", "0")))))
        except InvalidOperation:
            pass
        buckets = histogram.get("buckets")
        if type(buckets) is dict:
            target["buckets"] = merge_buckets(target.get("buckets", {}), buckets)


def _bounds(buckets: dict) -> list[tuple[Decimal, str, int]]:
    """(bound, its text, cumulative count) of a histogram's buckets, by bound; keys that are not
    finite numbers, and counts that are not integers, skipped."""
    out = []
    for text, n in buckets.items():
        try:
            bound = Decimal(text)
        except (InvalidOperation, TypeError):
            continue
        if bound.is_finite() and type(n) is int:
            out.append((bound, text, n))
    out.sort(key=lambda item: item[0])
    return out


def merge_buckets(a: dict, b: dict) -> dict:
    """The cumulative buckets of two histograms added, over the union of their bounds: at each
    bound, what each side holds at its greatest bound not above it. A bound only one side has
    (the config's buckets changed between them) so counts the other side's values certainly
    below it, exactly as /metrics adds the per-bucket values of processes that wrote different
    bounds: the result stays cumulative, and a later merge only ever raises it."""
    sides = [_bounds(a), _bounds(b)]
    union: dict[Decimal, str] = {}
    for side in sides:
        for bound, text, _ in side:
            union.setdefault(bound, text)
    merged = {}
    positions, held = [0, 0], [0, 0]
    for bound in sorted(union):
        for i, side in enumerate(sides):
            while positions[i] < len(side) and side[positions[i]][0] <= bound:
                held[i] = side[positions[i]][2]
                positions[i] += 1
        merged[union[bound]] = held[0] + held[1]
    return merged


def drain_chunk(conn, labels_for: Callable[[str, str, object], object], observed: bool = False) -> int:
    """One transaction (on an autocommit connection): take up to DRAIN_CHUNK rows from
    pgne.event_log and add them to pgne.totals, each group under the labels
    `labels_for(table_name, operation, labels)`; with `observed` (columns_to_observe), their
    histograms too. Returns the number of rows taken. On any error it rolls back: the rows stay
    in pgne.event_log."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            cur.execute(TAKE_OBSERVED_SQL if observed else TAKE_SQL, (DRAIN_CHUNK,))
            merged: dict[tuple, list] = {}
            rows = 0
            for table_name, operation, labels, n, last_event, count, histograms in cur.fetchall():
                rows += count
                key = (table_name, operation, json.dumps(labels_for(table_name, operation, labels), sort_keys=True))
                entry = merged.get(key)
                if entry is None:
                    entry = merged[key] = [n, last_event, {}]
                else:  # groups whose labels the config now folds into one (a value no longer whitelisted)
                    entry[0] += n
                    entry[1] = max(entry[1], last_event)
                for raw in histograms or ():
                    merge_observed(entry[2], raw)
            if merged:
                keys = sorted(merged)
                columns = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
                cur.execute(ADD_SQL, (*columns, [merged[k][0] for k in keys], [merged[k][1] for k in keys]))
                _add_observed(cur, {k: merged[k][2] for k in keys if merged[k][2]})
            cur.execute("COMMIT")
        except BaseException:
            if not conn.closed:
                try:
                    cur.execute("ROLLBACK")
                except Exception:  # the connection is gone: the server rolled the transaction back
                    pass
            raise
    return rows


def _add_observed(cur, histograms: dict[tuple, dict]) -> None:
    """Add a drain's histograms to the pgne.totals rows ADD_SQL just raised (and locked, in this
    transaction: no other drainer can interleave)."""
    if not histograms:
        return
    keys = sorted(histograms)
    cur.execute(READ_OBSERVED_SQL, ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]))
    for table_name, operation, labels, current in cur.fetchall():
        key = (table_name, operation, json.dumps(labels, sort_keys=True))
        if key in histograms:
            merge_observed(histograms[key], current)
    cur.execute(WRITE_OBSERVED_SQL, ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                                     [json.dumps(histograms[k], sort_keys=True) for k in keys]))


def exported_histograms(state_dir: str, host: str, database: str, label_names: tuple[str, ...]) -> dict[tuple, dict]:
    """The histograms of columns_to_observe as currently served for one database, keyed by
    (series_key, column name): {"buckets": {le: cumulative}, "sum": float, "skipped": {reason: n}}."""
    out: dict[tuple, dict] = {}
    for family in collect(state_dir).collect():
        if not family.name.startswith(OBSERVED_PREFIX):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("host") != host or labels.get("database") != database or "column" not in labels:
                continue
            base = {k: v for k, v in labels.items() if k not in ("column", "le", "reason")}
            key = (series_key((labels["operation"], labels["schema"], labels["table"]), base, label_names),
                   labels["column"])
            entry = out.setdefault(key, {"buckets": {}, "sum": 0.0, "skipped": {}})
            if sample.name.endswith("_bucket"):
                entry["buckets"][labels["le"]] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
            elif sample.name == "pgne_observed_skipped_total":
                entry["skipped"][labels["reason"]] = sample.value
    return out


class OutboxExporter:
    """Exports pgne.totals.

    The exported counters are the record the scraper has seen, and may hold more than
    pgne.totals: the counts of a notify worker before a SIGHUP switch to outbox (pgne.totals
    knows nothing of them), or a pgne.totals that was torn down (the database removed from the
    config, or disabled, then added back), dropped or edited meanwhile. So before its first
    drain, and again whenever a series' total is found below what is exported, the worker raises
    every pgne.totals series to at least what is exported (in one transaction): the counters
    continue from there, exact and monotonic, also across restarts and crashes of pgne.
    Raising "to at least" (never adding) makes it idempotent: a restarted worker, or a second
    pgne instance doing the same, adds nothing more.
    """

    def __init__(self, router: Router, metrics, state_dir: str, host: str, database: str):
        self.router = router
        self.metrics = metrics
        self.state_dir = state_dir
        self.exported, self._exported_last = exported_totals(state_dir, host, database, router.label_names)
        self.first_export_done = False
        self._created: set[tuple] = set()  # keys whose children this process has created
        self.fold_pending = bool(self.exported)  # files wiped (a fresh pgne): nothing to raise to
        self.observing = router.observes  # columns_to_observe: pgne.event_log/totals have `observed`
        self.exported_observed = exported_histograms(state_dir, host, database, router.label_names) \
            if self.observing else {}
        # what other processes' files hold of each _sum: this process writes the rest (see _export_observed)
        self._others_sum = {key: entry["sum"] for key, entry in self.exported_observed.items()}

    def _fold_notify_counts(self, conn) -> None:
        """Raise pgne.totals to what is exported, series by series (see the class). Under a lock
        that drains and other folds wait for: what is read is what is raised."""
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                cur.execute("LOCK TABLE pgne.totals IN SHARE ROW EXCLUSIVE MODE")
                rows = self._missing_totals(conn)
                if rows:
                    cur.execute(ADD_SQL, [list(column) for column in zip(*rows)])
                if self.observing:  # the histograms too, on the rows raised (or there) just now
                    _add_observed(cur, self._missing_histograms(conn))
                cur.execute("COMMIT")
            except BaseException:
                if not conn.closed:
                    try:
                        cur.execute("ROLLBACK")
                    except Exception:  # the connection is gone: the server rolled back
                        pass
                raise
        if rows:
            log.info("pgne.totals held less than was exported (a switch from notify, or pgne.totals "
                     "recreated): %d series raised to their exported values, the counters continue from there",
                     len(rows))
        self.fold_pending = False

    def _missing_totals(self, conn) -> list[tuple]:
        """pgne.totals rows to add so that each exported series' total reaches what is exported."""
        totals = {key: entry[0] for key, entry in self._read_totals(conn)[0].items()}
        rows = []
        for key, value in self.exported.items():
            missing = int(value) - totals.get(key, 0)
            operation, schema, table, *labels = key
            if missing <= 0 or type(self.router.key_for(f"{schema}.{table}", operation, None)[0]) is str:
                continue
            last_event = datetime.fromtimestamp(self._exported_last.get(key, 0.0), timezone.utc)
            rows.append((*self._row_key(key), missing, last_event))
        return rows

    def _row_key(self, key: tuple) -> tuple[str, str, str]:
        """(table_name, operation, labels as JSON) of the pgne.totals row of a series key."""
        operation, schema, table, *labels = key
        extras = labels.pop() if len(labels) > len(self.router.label_names) else ()
        row_labels = {name: v for name, v in zip(self.router.label_names, labels) if v}
        row_labels.update(extras)
        return f"{schema}.{table}", operation, json.dumps(row_labels, sort_keys=True)

    def _missing_histograms(self, conn) -> dict[tuple, dict]:
        """What to add to pgne.totals' histograms ({row key: {column: histogram}}) so that each
        exported histogram's totals reach what is exported (a series whose `_count` the totals
        already reach is left as it is: raising to, never adding twice)."""
        totals = self._read_totals(conn)[0]
        missing: dict[tuple, dict] = {}
        for (key, name), shown in self.exported_observed.items():
            column = next((c for c in self.router.observed_columns(key) if c.name == name), None)
            if column is None:
                continue
            have = parse_observation(column, totals.get(key, (0, 0.0, {}))[2].get(name), lenient=True) \
                or Observation(column, 0, Decimal(0), (0,) * len(column.buckets))
            count = int(shown["buckets"].get("+Inf", 0.0))
            if count <= have.count:
                continue
            # what is exported at each bound (the greatest exported bound not above it: see
            # metrics.ObservedSeries.raise_to) less what the totals hold; kept cumulative
            shown_bounds = sorted((float(le), value) for le, value in shown["buckets"].items())
            buckets, below = {}, 0
            for b, bound, n in zip(column.buckets, column.bounds, have.buckets):
                at = next((int(value) for s, value in reversed(shown_bounds) if s <= b), 0)
                below = buckets[bound] = min(count - have.count, max(below, at - n))
            missing.setdefault(self._row_key(key), {})[name] = {
                "count": count - have.count, "sum": str(EXACT.subtract(Decimal(repr(shown["sum"])), have.sum)),
                "buckets": buckets, "null": max(0, int(shown["skipped"].get("null", 0.0)) - have.null),
                "not_finite": max(0, int(shown["skipped"].get("not_finite", 0.0)) - have.not_finite)}
        return missing

    def drain(self, conn, progress: Callable[[], None] = lambda: None) -> int:
        """Move every committed event_log row into totals; returns the number of rows moved.
        `progress()` is called after each transaction (the worker renews its deadline)."""
        if self.fold_pending:
            self._fold_notify_counts(conn)  # before the first drain: the totals of the switch moment
            progress()
        moved = 0
        while True:
            rows = drain_chunk(conn, self._drained_labels, self.observing)
            progress()
            moved += rows
            if rows < DRAIN_CHUNK:
                return moved

    def _drained_labels(self, table_name: str, operation: str, labels: object) -> object:
        """The labels a drained group is counted under: the current config's whitelists applied
        to what the trigger recorded (an outdated trigger may have recorded other values or
        columns). Groups of a table or event the config does not monitor stay as recorded."""
        key, _ = self.router.key_for(table_name, operation, labels)
        if type(key) is str:
            return labels
        return {name: value for name, value in zip(self.router.label_names, key[3:]) if value}

    def _read_totals(self, conn) -> tuple[dict[tuple, list], tuple[int, float]]:
        """({series key: [total, last event, histograms]}, (backlog rows, oldest row's age))."""
        with conn.cursor() as cur:
            cur.execute(TOTALS_OBSERVED_SQL if self.observing else TOTALS_SQL)
            rows = cur.fetchall()
            cur.execute(BACKLOG_SQL)
            backlog, oldest_age = cur.fetchone()
        totals: dict[tuple, list] = {}
        names = self.router.label_names
        for table_name, operation, labels, total, last_event, observed in rows:
            route, _ = self.router.key_for(table_name, operation, None)
            if type(route) is str or type(labels) is not dict:  # a table or event the config no longer monitors
                continue
            labels = {name: value_as_text(value) for name, value in labels.items()}
            key = series_key(route[:3], labels, names)
            entry = totals.setdefault(key, [0, 0.0, {}])
            entry[0] += total
            entry[1] = max(entry[1], float(last_event))
            merge_observed(entry[2], observed)
        return totals, (backlog, float(oldest_age))

    def export(self, conn) -> None:
        totals, (backlog, oldest_age) = self._read_totals(conn)
        self.metrics.outbox_backlog.set(backlog)
        self.metrics.outbox_oldest_age.set(oldest_age)
        # Creating a child writes it at 0 before counter.inc() raises it: for a series that no
        # file holds yet, a scrape in between would read 0, a counter reset. So readers wait
        # (the readers' lock held exclusively) while such series are created and raised.
        appearing = any(key not in self._created and key not in self.exported for key in totals)
        with exclusive(self.state_dir) if appearing else nullcontext():
            for key, (total, last_event, histograms) in totals.items():
                counter, last_event_gauge = self.metrics.series(key)
                self._created.add(key)
                delta = total - self.exported.get(key, 0)
                if delta > 0:
                    counter.inc(delta)
                    self.exported[key] = total
                elif delta < 0:  # pgne.totals recreated or edited meanwhile: raised again at the next drain
                    self.fold_pending = True
                last_event_gauge.set(last_event)
                if self.observing:
                    self._export_observed(key, histograms)
        if not self.first_export_done:
            self.first_export_done = True
            for key in self.router.configured_keys():  # the rest of the configured series, at 0
                if key not in totals and key not in self.exported:
                    self.metrics.series(key)
                    for column in self.router.observed_columns(key):
                        self.metrics.observed(key, column)

    def _export_observed(self, key: tuple, histograms: dict) -> None:
        """Raise the histograms of one series to pgne.totals' (never lower: a bucket, _count and
        the skipped counters rise by what the totals gained over what is exported). _sum is
        written as this process's share: the exact total less what other processes' files
        hold, so that /metrics shows the float64 nearest to the exact total (while one process
        wrote it; after worker restarts, up to the rounding of their float64 addition)."""
        for column in self.router.observed_columns(key):
            series = self.metrics.observed(key, column)
            raw = histograms.get(column.name)
            if raw is None:
                continue
            observation = parse_observation(column, raw, lenient=True)
            if observation is None:
                continue
            exported = self.exported_observed.setdefault((key, column.name), {"buckets": {}, "sum": 0.0, "skipped": {}})
            series.raise_to(observation, exported)
            others = Decimal(repr(self._others_sum.get((key, column.name), 0.0)))
            series.sum.set(float(EXACT.subtract(observation.sum, others)))
