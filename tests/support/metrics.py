"""Reading pgne's /metrics: the text parsed into samples, and the series of one database.

- `parse_metrics()`, `http_get()`, `labels_key()`: a scrape as {(name, frozenset(labels)): value};
  `http_request()` for HEAD and POST.
- `up_labels()`, `db_labels()`, `result_labels()`: the label sets of one database's series.
- `events()`, `notifications()`: pgne_events_total / pgne_notifications_total of one database.
- `settle()`: return once pgne has processed every notification committed before the call.
- `wait_value()`: poll one sample until a predicate holds.
- `MonotonicWatch`: fails as soon as a pgne_events_total series goes down across scrapes.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import TYPE_CHECKING, Mapping

from prometheus_client.parser import text_string_to_metric_families

from support.configs import RELIABILITY_TAG
from support.databases import host_label, run_sql
from support.waiting import wait_until

if TYPE_CHECKING:
    from support.exporter import PgneProcess

CHANNEL = "pg_notify_exporter"
Samples = dict[tuple[str, frozenset], float]


def parse_metrics(text: str) -> Samples:
    """{(sample name, frozenset(label items)): value} of a Prometheus text exposition."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    return http_request("GET", url, headers, timeout)


def http_request(method: str, url: str, headers: Mapping[str, str] | None = None,
                 timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; an error status is returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def labels_key(name: str, labels: Mapping[str, str]) -> tuple[str, frozenset]:
    return (name, frozenset(labels.items()))


def up_labels(db, tag: str = RELIABILITY_TAG) -> dict[str, str]:
    return {"host": host_label(db.host, db.port), "database": db.name, "tag": tag}


def db_labels(db) -> dict[str, str]:
    return {"host": host_label(db.host, db.port), "database": db.name}


def result_labels(db, result: str) -> dict[str, str]:
    return {"host": host_label(db.host, db.port), "database": db.name, "result": result}


def events(proc: PgneProcess, db, label: str | None = "code") -> dict[tuple, float]:
    """pgne_events_total of one database: {(operation, schema.table[, label value]): value}."""
    found = {}
    for labels, value in proc.series("pgne_events_total", database=db.name, host=host_label(db.host, db.port)).items():
        d = dict(labels)
        key = (d["operation"], f"{d['schema']}.{d['table']}")
        if label is not None:
            key += (d.get(label, ""),)
        found[key] = value
    return found


def notifications(proc: PgneProcess, db) -> dict[str, float]:
    """pgne_notifications_total of one database: {result: value}."""
    return {dict(labels)["result"]: value
            for labels, value in proc.series("pgne_notifications_total", **db_labels(db)).items()}


def settle(proc: PgneProcess, db, timeout: float = 60, channel: str = CHANNEL) -> None:
    """Return once every notification committed before this call has been processed.

    Sends a payload for a table that is not configured and waits for
    pgne_notifications_total{result="unknown_table"} to count it: one channel's notifications
    arrive in commit order, and the worker counts a whole batch before it is scraped.
    """
    labels = result_labels(db, "unknown_table")
    before = proc.value("pgne_notifications_total", labels)
    assert before is not None, proc.describe()
    run_sql(db, ("SELECT pg_notify(%s, %s)",
                 (channel, json.dumps({"table": "settle_marker", "action": "INSERT", "seq": uuid.uuid4().hex}))))
    proc.wait_for_value("pgne_notifications_total", labels, before + 1, timeout=timeout)


def wait_value(proc: PgneProcess, name: str, labels: dict, predicate, timeout: float, what: str):
    """Poll one sample until predicate(value) holds; return the value. A failed scrape (the
    master is busy, say) counts as 'not yet'."""
    seen = [None]

    def check():
        try:
            seen[0] = proc.value(name, labels)
        except (OSError, AssertionError):
            return False
        return seen[0] is not None and predicate(seen[0])

    wait_until(check, timeout, what, lambda: f"last value: {seen[0]}\n{proc.describe()}")
    return seen[0]


class MonotonicWatch:
    """Every pgne_events_total value ever scraped, per series (labels minus nothing): fails at
    once if a series reads less than it did before, whichever pgne process served it."""

    def __init__(self) -> None:
        self.last: dict[frozenset, float] = {}
        self.first_seen: dict[frozenset, float] = {}
        self.scrapes = 0

    def observe(self, samples) -> None:
        self.scrapes += 1
        for (name, labels), value in samples.items():
            if name != "pgne_events_total":
                continue
            previous = self.last.get(labels)
            assert previous is None or value >= previous, (
                f"pgne_events_total{dict(labels)} went backwards: {previous} -> {value}")
            self.last[labels] = value

    def scrape_quietly(self, proc: PgneProcess) -> dict | None:
        """Scrape and observe; None when /metrics does not answer (pgne starting or killed)."""
        try:
            samples = proc.scrape()
        except (OSError, AssertionError):
            return None
        self.observe(samples)
        return samples
