"""Runs the rendered SQL on a database: `pgne apply`, and perform_setup in the worker.

Compare first: a database that already matches the config is not touched (no DDL, no lock
on application tables), nor is one with a setup problem (pgne.drift). Otherwise the script
that `pgne render-sql` prints for that database runs as it is, in its own BEGIN ... COMMIT,
under an advisory lock and a lock_timeout; with --prune, when there are objects the config does
not name, then the --prune script that `pgne render-sql --prune` prints after it. Once that
has committed, a NOTIFY on APPLIED_CHANNEL tells the workers of `pgne run` connected to the
database to check its triggers and setup problems at once. `pgne apply` (not --dry-run) sends it
whatever the outcome, once connected: a DBA who fixed a setup problem by hand and found the
database up to date expects the exporter to see it too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg2

from pgne.drift import DATABASE_PROBLEMS, LEGACY_TRIGGER, Difference, blocked_tables, find_differences, read_inventory
from pgne.errors import first_line
from pgne.model import APPLIED_CHANNEL, Database
from pgne.render import Renderer

log = logging.getLogger(__name__)
# pgne's own channel, a constant lower-case identifier (no config value in it): no quoting needed
NOTIFY_APPLIED = f"NOTIFY {APPLIED_CHANNEL}"

UP_TO_DATE, APPLIED, WOULD_APPLY, FAILED = "up to date", "applied", "would apply", "FAILED"


@dataclass(frozen=True)
class ApplyResult:
    database: Database
    outcome: str
    detail: str = ""
    changes: tuple[Difference, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.outcome != FAILED

    def line(self) -> str:
        text = f"{self.database.display_name}: {self.outcome}"
        return f"{text}: {self.detail}" if self.detail else text




def apply_on_connection(conn, database: Database, renderer: Renderer, dry_run: bool = False,
                        prune: bool = False, replace_legacy: bool = False, tell_always: bool = False) -> ApplyResult:
    """Apply on an open connection (autocommit is switched on for the duration).

    With `prune`, pgne objects that the config does not name at all are dropped as well. A
    pg_notify_exporter trigger on a monitored table is a setup problem (nothing is applied: its
    rows would count twice) unless `replace_legacy`: then the script drops it in the transaction
    that installs pgne's triggers. Running workers are told (NOTIFY APPLIED_CHANNEL) when the
    database changed, and with `tell_always` (`pgne apply`) whatever the outcome, but never
    on a dry run.
    """
    previous_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        result, changed = _compare_and_apply(conn, database, renderer, dry_run, prune, replace_legacy)
        if not conn.closed and (changed or (tell_always and not dry_run)):
            _tell_running_workers(conn, database)
        return result
    finally:
        if not conn.closed:
            conn.autocommit = previous_autocommit


def _compare_and_apply(conn, database: Database, renderer: Renderer, dry_run: bool, prune: bool,
                       replace_legacy: bool) -> tuple[ApplyResult, bool]:
    """apply_on_connection's work: its result, and whether the database changed."""
    differences = find_differences(read_inventory(conn, database, renderer), database, renderer, replace_legacy)
    extras = [d for d in differences if d.kind == "extra"] if prune else []
    changes = [d for d in differences if d.kind != "extra"] + extras
    problems = [d for d in changes if d.is_problem and not (replace_legacy and d.kind == LEGACY_TRIGGER)]
    if any(d.kind in DATABASE_PROBLEMS for d in problems):  # notify refused for 2PC: nothing can be set up
        return ApplyResult(database, FAILED, "; ".join(d.what for d in problems) + " (nothing applied)",
                           tuple(changes)), False
    # A monitor with a problem of its own (a missing table or column, ...) is not set up; the
    # others are, and the outcome still fails (exit 1) with its problems.
    blocked = blocked_tables(problems)
    if problems and all((m.schema, m.table) in blocked for m in database.enabled_monitors):
        return ApplyResult(database, FAILED, "; ".join(d.what for d in problems) + " (nothing applied)",
                           tuple(changes)), False  # no monitor to set up: not even schema pgne
    not_set_up = ", ".join(sorted(f"{schema}.{table}" for schema, table in blocked))
    fixes = [d for d in changes if not d.is_problem]
    if not fixes:
        if problems:
            return ApplyResult(database, FAILED, "; ".join(d.what for d in problems)
                               + f" (not set up: {not_set_up}; nothing else to apply)", tuple(changes)), False
        return ApplyResult(database, UP_TO_DATE), False
    summary = f"{len(fixes)} change{'s' if len(fixes) != 1 else ''}: " + "; ".join(map(str, fixes))
    if problems:
        summary = "; ".join(d.what for d in problems) + f" (not set up: {not_set_up}); " + summary
    if dry_run:
        return ApplyResult(database, FAILED if problems else WOULD_APPLY, summary, tuple(changes)), False
    try:
        with conn.cursor() as cur:
            if any(d.kind != "extra" for d in fixes):
                # no parameters: sent as it is
                cur.execute(renderer.render_database(database, replace_legacy=replace_legacy, blocked=blocked))
            if extras:  # the script that `render-sql --prune` prints after the database's
                cur.execute(renderer.render_prune(database))
    except psycopg2.Error as exc:
        if not conn.closed:
            with conn.cursor() as cur:  # the script's BEGIN left an aborted transaction
                cur.execute("ROLLBACK")
        return ApplyResult(database, FAILED, first_line(exc) + " (nothing applied)", tuple(changes)), False
    return ApplyResult(database, FAILED if problems else APPLIED, summary, tuple(changes)), True


def _tell_running_workers(conn, database: Database) -> None:
    """The workers of `pgne run` connected to this database check it again now rather than at
    their next --trigger-check-interval. Best effort: a failure here changes nothing that was
    applied (they find it at their next check)."""
    try:
        with conn.cursor() as cur:
            cur.execute(NOTIFY_APPLIED)
    except psycopg2.Error as exc:
        log.warning("%s: could not tell running pgne workers (NOTIFY %s): %s",
                    database.display_name, APPLIED_CHANNEL, first_line(exc))


def apply_database(database: Database, renderer: Renderer, dry_run: bool = False,
                   prune: bool = False, replace_legacy: bool = False) -> ApplyResult:
    """Connect, apply, disconnect. Connection errors become a FAILED result."""
    try:
        conn = psycopg2.connect(**database.connect_kwargs())
    except psycopg2.Error as exc:
        return ApplyResult(database, FAILED, f"cannot connect: {first_line(exc)}")
    try:
        return apply_on_connection(conn, database, renderer, dry_run, prune, replace_legacy, tell_always=True)
    except psycopg2.Error as exc:
        return ApplyResult(database, FAILED, first_line(exc))
    finally:
        conn.close()
