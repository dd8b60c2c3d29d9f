"""`delivery: outbox`: drain pgne.event_log into pgne.totals, and export the totals.

The triggers append rows to pgne.event_log in the application's own transaction, so a row
exists exactly when the application's write committed. Each drain statement deletes a chunk
of rows and adds them to pgne.totals in the same statement (one transaction): a row is moved
exactly once, even with several pgne instances draining one database (SKIP LOCKED).

What is exported comes from pgne.totals, the durable count, never from a sum kept in memory:
the worker raises pgne_events_total by the difference between the database's total and what
is already exported. "Already exported" is read back from the multiprocess files when the
worker starts, so a restarted worker does not add again what its predecessor exported, and
after a restart of pgne itself (files wiped) the series reappear at the database's total.
A series is only exported once its total is known: it never shows a 0 that would look like
a counter reset.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Iterator

from pgne.compaction import LOCK_FILE
from pgne.http import collect
from pgne.payload import Router

log = logging.getLogger("pgne.worker")

DRAIN_CHUNK = 50_000  # rows per statement: a large backlog is moved in several transactions

DRAIN_SQL = """
WITH batch AS (
  DELETE FROM pgne.event_log
  WHERE ctid = ANY (ARRAY(SELECT ctid FROM pgne.event_log LIMIT %s FOR UPDATE SKIP LOCKED))
  RETURNING table_name, operation, labels, n, created_at
), grouped AS (
  SELECT table_name, operation, labels, sum(n)::bigint AS n, max(created_at) AS last_event
  FROM batch GROUP BY table_name, operation, labels
), merged AS (
  INSERT INTO pgne.totals AS t (table_name, operation, labels, total, last_event)
  SELECT table_name, operation, labels, n, last_event FROM grouped
  ORDER BY table_name, operation, labels  -- one lock order for every drainer: no deadlock
  ON CONFLICT (table_name, operation, labels) DO UPDATE
    SET total = t.total + EXCLUDED.total, last_event = greatest(t.last_event, EXCLUDED.last_event)
  RETURNING 1
)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM merged)
"""
TOTALS_SQL = "SELECT table_name, operation, labels, total, extract(epoch FROM last_event) FROM pgne.totals"
BACKLOG_SQL = "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM pgne.event_log"


def exported_totals(state_dir: str, host: str, database: str, label_names: tuple[str, ...]) -> dict[tuple, float]:
    """pgne_events_total as currently served for one database, keyed like payload.Router keys."""
    totals: dict[tuple, float] = {}
    for family in collect(state_dir).collect():  # tolerates files of workers starting right now
        for sample in family.samples:
            labels = sample.labels
            if (sample.name != "pgne_events_total" or labels.get("host") != host
                    or labels.get("database") != database):
                continue
            key = (labels["operation"], labels["schema"], labels["table"],
                   *(labels.get(name, "") for name in label_names))
            totals[key] = sample.value
    return totals


@contextmanager
def readers_wait(state_dir: str) -> Iterator[None]:
    """Hold exclusively the lock that every reader of the state dir holds shared while it reads
    (pgne.compaction.reading): no scrape reads the files meanwhile."""
    fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _offsets_path(state_dir: str, host: str, port: int, database: str) -> str:
    digest = hashlib.sha256(f"{host}\x00{port}\x00{database}".encode()).hexdigest()[:16]
    return os.path.join(state_dir, f"outbox-offsets-{digest}.json")  # not *.db: prometheus_client ignores it


class OutboxExporter:
    """Exports pgne.totals (+ an offset per series after a switch from notify, see below).

    `switch_generation` counts the reloads that switched this database from notify to outbox in
    this pgne's lifetime. After such a switch the counter already holds what the notify worker
    counted, which pgne.totals knows nothing of: the first outbox worker of the generation
    records, per series, offset = exported - pgne.totals (read before its first drain) in a
    file beside the metric files, and every worker of that generation exports totals + offset.
    Generation 0 (no switch; the files were wiped when pgne started) exports the totals as they are.
    """

    def __init__(self, router: Router, metrics, state_dir: str, host: str, port: int, database: str,
                 switch_generation: int = 0):
        self.router = router
        self.metrics = metrics
        self.state_dir = state_dir
        self.exported = exported_totals(state_dir, host, database, router.label_names)
        self.first_export_done = False
        self._warned: set[tuple] = set()
        self._created: set[tuple] = set()  # keys whose children this process has created
        self.generation = switch_generation
        self.offsets_path = _offsets_path(state_dir, host, port, database)
        self.offsets: dict[tuple, float] | None = {} if switch_generation == 0 else self._load_offsets()

    def _load_offsets(self) -> dict[tuple, float] | None:
        try:
            with open(self.offsets_path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return None
        if saved.get("generation") != self.generation:
            return None  # an earlier switch's: this one needs its own
        return {tuple(key): offset for key, offset in saved["offsets"]}

    def _record_offsets(self, conn) -> None:
        totals = {key: total for key, (total, _) in self._read_totals(conn)[0].items()}
        self.offsets = {key: self.exported.get(key, 0) - totals.get(key, 0)
                        for key in set(totals) | set(self.exported)}
        temporary = self.offsets_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"generation": self.generation,
                       "offsets": [[list(key), offset] for key, offset in self.offsets.items()]}, f)
        os.replace(temporary, self.offsets_path)  # atomic: a restarted worker sees all or nothing
        log.info("switched from notify: the counters continue from what was exported so far")

    def drain(self, conn) -> int:
        """Move every committed event_log row into totals; returns the number of rows moved."""
        if self.offsets is None:
            self._record_offsets(conn)  # before the first drain of a switch generation
        moved = 0
        with conn.cursor() as cur:
            while True:
                cur.execute(DRAIN_SQL, (DRAIN_CHUNK,))  # autocommit: one statement, one transaction
                rows, _groups = cur.fetchone()
                moved += rows
                if rows < DRAIN_CHUNK:
                    return moved

    def _read_totals(self, conn) -> tuple[dict[tuple, list], tuple[int, float]]:
        """({series key: [total, last event]}, (backlog rows, oldest row's age))."""
        with conn.cursor() as cur:
            cur.execute(TOTALS_SQL)
            rows = cur.fetchall()
            cur.execute(BACKLOG_SQL)
            backlog, oldest_age = cur.fetchone()
        totals: dict[tuple, list] = {}
        for table_name, operation, labels, total, last_event in rows:
            key, _ = self.router.key_for(table_name, operation, labels)
            if type(key) is str:  # a table or event the config no longer monitors
                continue
            entry = totals.setdefault(key, [0, 0.0])
            entry[0] += total
            entry[1] = max(entry[1], float(last_event))
        return totals, (backlog, float(oldest_age))

    def export(self, conn) -> None:
        totals, (backlog, oldest_age) = self._read_totals(conn)
        self.metrics.outbox_backlog.set(backlog)
        self.metrics.outbox_oldest_age.set(oldest_age)
        offsets = self.offsets or {}
        # Creating a child writes it at 0 before counter.inc() raises it: for a series that no
        # file holds yet, a scrape in between would read 0, a counter reset. So readers wait
        # while such series are created and raised.
        appearing = any(key not in self._created and key not in self.exported for key in totals)
        with readers_wait(self.state_dir) if appearing else nullcontext():
            for key, (total, last_event) in totals.items():
                counter, last_event_gauge = self.metrics.series(key)
                self._created.add(key)
                target = total + offsets.get(key, 0)
                delta = target - self.exported.get(key, 0)
                if delta > 0:
                    counter.inc(delta)
                    self.exported[key] = target
                elif delta < 0 and key not in self._warned:
                    self._warned.add(key)
                    log.warning("pgne.totals for %s went down: %d exported, %d now (rows deleted by hand?); "
                                "the exported counter keeps its value", key, self.exported[key], target)
                last_event_gauge.set(last_event)
        if not self.first_export_done:
            self.first_export_done = True
            for key in self.router.configured_keys():  # the rest of the configured series, at 0
                if key not in totals and key not in self.exported:
                    self.metrics.series(key)
