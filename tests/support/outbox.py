"""`delivery: outbox` read back: pgne.totals, pgne.event_log and pgne_events_total of one database.

- `outbox_entry()` / `outbox_config()`: a config entry (configs.database_entry) in outbox mode.
- `db_totals()`: pgne.totals as {(operation, table, code): total}, the key `exported()` uses.
- `exported()`: pgne_events_total of one database as served by a running `pgne run`.
- `wait_drained()`: poll until pgne.event_log is empty and the exported totals equal what the
  caller expects (and pgne.totals), then return the scrape.
- `whitelisted()`: the label value the triggers record for a column value.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from support.configs import DatabaseEntry, config_text, database_entry
from support.databases import host_label, query
from support.exporter import PgneProcess
from support.metrics import MonotonicWatch
from support.waiting import wait_until

WHITELIST = ("alpha", "beta", "gamma")
OTHER = "other"

Key = tuple[str, str, str]  # (operation, table, code); code "" where a monitor has no label


def whitelisted(value: object) -> str:
    """What the trigger stores for a label column value: itself if whitelisted, else `other`
    (NULL included)."""
    return value if value in WHITELIST else OTHER


_UNSET: Any = object()


def outbox_entry(database, monitors: Sequence[Mapping[str, Any]], *, delivery: str | None = "outbox",
                 drain_interval: float | None = _UNSET, perform_setup: bool = False, **options: Any) -> DatabaseEntry:
    """configs.database_entry with `delivery` and `drain_interval` (None leaves a key out; by
    default 0.1 s with delivery outbox, absent otherwise), perform_setup false by default."""
    if drain_interval is _UNSET:
        drain_interval = 0.1 if delivery == "outbox" else None
    return database_entry(database, monitors, perform_setup=perform_setup, delivery=delivery,
                          drain_interval=drain_interval, **options)


def outbox_config(database, monitors: Sequence[Mapping[str, Any]], **options: Any) -> str:
    return config_text(outbox_entry(database, monitors, **options))


def db_totals(dsn: str, label: str = "code") -> dict[Key, int]:
    """pgne.totals: {(operation, table without `public.`, label value or ""): total}."""
    totals: dict[Key, int] = {}
    for table_name, operation, code, total in query(
            dsn, "SELECT table_name, operation, labels->>%s, total FROM pgne.totals", (label,)):
        table = table_name.split(".", 1)[1] if table_name.startswith("public.") else table_name
        totals[(operation, table, code or "")] = int(total)
    return totals


def backlog_rows(dsn: str) -> int:
    return query(dsn, "SELECT count(*) FROM pgne.event_log")[0][0]


def exported(proc: PgneProcess, database, samples=None) -> dict[Key, float]:
    """pgne_events_total of `database` as served by `proc`: {(operation, table, code): value}."""
    if samples is None:
        samples = proc.scrape()
    found: dict[Key, float] = {}
    for (name, labels), value in samples.items():
        d = dict(labels)
        if (name != "pgne_events_total" or d.get("database") != database.name
                or d.get("host") != host_label(database.host, database.port)):
            continue
        found[(d["operation"], d["table"], d.get("code", ""))] = value
    return found


def nonzero(values: Mapping[Key, float]) -> dict[Key, float]:
    return {k: v for k, v in values.items() if v}


def wait_drained(proc: PgneProcess, database, expected: Mapping[Key, float], timeout: float = 30.0,
                 watch: MonotonicWatch | None = None) -> dict[Key, float]:
    """Poll until pgne.event_log is empty, pgne.totals equals `expected` and so do the non-zero
    exported series of `database` (zero series may exist or not). Returns the exported values."""
    expected = {k: float(v) for k, v in expected.items() if v}
    seen: dict[str, Any] = {}

    def done() -> dict[Key, float] | None:
        samples = proc.scrape()
        if watch is not None:
            watch.observe(samples)
        seen["exported"] = values = exported(proc, database, samples)
        seen["totals"] = totals = db_totals(database.dsn)
        seen["backlog"] = backlog = backlog_rows(database.dsn)
        if backlog == 0 and nonzero(values) == expected and totals == expected:
            return values
        return None

    def describe() -> str:
        got = seen.get("exported", {})
        wrong = {k: (got.get(k), seen.get("totals", {}).get(k), v)
                 for k, v in sorted(set(expected.items()) | set(nonzero(got).items()))
                 if got.get(k) != expected.get(k) or seen.get("totals", {}).get(k) != expected.get(k)}
        return (f"backlog {seen.get('backlog')}; (exported, pgne.totals, expected) where they differ: "
                f"{wrong}\n" + proc.describe())

    return wait_until(done, timeout, f"exported totals of {database.name} to reach the expected values",
                      describe, interval=0.05)
