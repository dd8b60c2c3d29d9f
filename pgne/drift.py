"""Compares a live database with what the config says pgne should have installed there.

Used by `pgne apply` (compare first: an up-to-date database is left alone), by perform_setup
at every (re)connect, by `pgne status`, and by the worker's `pgne_trigger_installed` and
`pgne_setup_problem` gauges. Every query takes parameters, or is rendered from a template with
quoted literals (the queries that `apply` also runs: legacy triggers, objects the config does not
name, sql_templates/_extra_objects.sql.j2); nothing is formatted into SQL.

Setup problems are differences that `apply` cannot fix, so it applies nothing to that database:
a monitored table that does not exist, a label column that the table does not have, and notify
delivery on a server that allows prepared transactions (a transaction that sent a NOTIFY cannot
be prepared: every PREPARE TRANSACTION after a write to a monitored table would fail).
A pg_notify_exporter trigger on a monitored table (found by what it does: sql_templates/
_legacy_triggers.sql.j2) is one too, unless `apply --replace-legacy` drops it: beside pgne's
triggers, every row would be counted twice.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pgne.model import EVENTS, NOTIFY, OUTBOX, Database, Monitor
from pgne.render import SCHEMA, TRIGGER_SPECS, Renderer, function_name, trigger_name

OUTBOX_TABLES = ("event_log", "totals")
# Always in pgne.event_log (one layout, checked by the triggers by its number of columns); added to
# pgne.totals when a monitor of an outbox database observes a column (columns_to_observe): an
# install made before that lacks it, and is complete without it until a column is observed.
OBSERVED_COLUMN = "observed"
TRIGGER_NAMES = tuple(trigger_name(e) for e in EVENTS)

_TRIGGERS_SQL = """
SELECT n.nspname, c.relname, t.tgname, pn.nspname, p.proname,
       t.tgtype, t.tgenabled, t.tgqual IS NULL, t.tgnargs, t.tgnewtable, t.tgoldtable
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND t.tgname = ANY(%s)
"""

# One row if the table exists (any relation kind), with its column names, those of its columns
# that can be observed (columns_to_observe: the numeric types, or domains over them, to any
# depth), and its virtual generated columns (PostgreSQL 18: a trigger's transition table cannot
# read them, "unexpected virtual generated column reference"; attgenerated is '' or 's' before).
_COLUMNS_SQL = """
SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND (WITH RECURSIVE chain(typ) AS (
                      SELECT a.atttypid
                      UNION ALL
                      SELECT t.typbasetype FROM pg_catalog.pg_type t JOIN chain ON t.oid = chain.typ
                      WHERE t.typtype = 'd')
                    SELECT pg_catalog.bool_or(chain.typ IN (
                      'pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                      'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.numeric'::pg_catalog.regtype,
                      'pg_catalog.float4'::pg_catalog.regtype, 'pg_catalog.float8'::pg_catalog.regtype))
                    FROM chain)),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 'v')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

_FUNCTIONS_SQL = """
SELECT p.proname, pg_catalog.obj_description(p.oid, 'pg_proc')
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %s AND p.pronargs = 0 AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
"""


# Setup problems: the `problem` label of pgne_setup_problem, and the kind of their Difference.
MISSING_TABLE, MISSING_LABEL_COLUMN, NOTIFY_REFUSED = "missing_table", "missing_label_column", "notify_refused"
LEGACY_TRIGGER = "legacy_trigger"
# columns_to_observe: a column the table lacks, or one that is not of a numeric type
MISSING_OBSERVED_COLUMN, NOT_NUMERIC = "missing_observed_column", "observed_column_not_numeric"
# a label or observed column that is a virtual generated column (PostgreSQL 18)
VIRTUAL_COLUMN = "virtual_generated_column"
PROBLEMS = (MISSING_TABLE, MISSING_LABEL_COLUMN, NOTIFY_REFUSED, LEGACY_TRIGGER, MISSING_OBSERVED_COLUMN, NOT_NUMERIC,
            VIRTUAL_COLUMN)
# Problems of the whole database: nothing is applied to it. Every other problem is one monitor's
# (one table's): that monitor is not set up, the others are (see blocked_tables).
DATABASE_PROBLEMS = (NOTIFY_REFUSED,)
NUMERIC_TYPES = "smallint, integer, bigint, numeric, real, double precision"
# The apply option that drops legacy triggers in the transaction that installs pgne's.
REPLACE_LEGACY_OPTION = "--replace-legacy"
# The config key with which a database entry accepts notify delivery where 2PC is allowed.
NOTIFY_2PC_OPT_IN = "notify_with_prepared_transactions"

ProblemKey = tuple[str, str, str, str]  # (problem, schema, table, column); "" where it does not apply


@dataclass(frozen=True)
class Difference:
    kind: str  # missing, outdated, unwanted, extra, or one of PROBLEMS
    what: str  # e.g. 'trigger pgne_insert on public.one'
    object_id: tuple = ()  # for a setup problem, its ProblemKey

    @property
    def is_problem(self) -> bool:
        return self.kind in PROBLEMS

    def __str__(self) -> str:
        return f"{self.kind.replace('_', ' ')}: {self.what}"


def problem_text(problem: str, schema: str = "", table: str = "", column: str = "",
                 max_prepared_transactions: int | None = None) -> str:
    """What a setup problem means and how to fix it, from its key (the landing page has no more
    than the labels of pgne_setup_problem). `pgne apply` and `status` add what they read."""
    if problem == MISSING_TABLE:
        return f"table {schema}.{table} does not exist"
    if problem == MISSING_LABEL_COLUMN:
        return f"label column {column} does not exist in table {schema}.{table}"
    if problem == MISSING_OBSERVED_COLUMN:
        return f"observed column {column} does not exist in table {schema}.{table}"
    if problem == NOT_NUMERIC:
        return (f"observed column {column} of table {schema}.{table} is not of a numeric type "
                f"({NUMERIC_TYPES}, or a domain over one)")
    if problem == VIRTUAL_COLUMN:
        return (f"column {column} of table {schema}.{table} is a virtual generated column, which a trigger "
                f"cannot read (make it STORED, or do not label or observe it)")
    if problem == NOTIFY_REFUSED:
        setting = "> 0" if max_prepared_transactions is None else f"= {max_prepared_transactions}"
        return ("delivery: notify refused: this server allows prepared transactions "
                f"(max_prepared_transactions {setting}), and a transaction that sent a NOTIFY cannot be prepared; "
                f"use delivery: outbox (or set {NOTIFY_2PC_OPT_IN}: true to accept that risk)")
    if problem == LEGACY_TRIGGER:
        return (f"a pg_notify_exporter trigger on {schema}.{table} notifies on pgne's channel: "
                f"beside pgne's triggers every row would count twice "
                f"(pgne apply {REPLACE_LEGACY_OPTION} replaces it in one transaction)")
    raise ValueError(problem)


def possible_problems(database: Database) -> list[ProblemKey]:
    """Every setup problem the config allows for, in config order: the series of
    pgne_setup_problem, which exist (at 0) from the first check on. notify_refused is there in
    both delivery modes (always 0 with outbox), so that both export the same series."""
    keys: list[ProblemKey] = []
    if database.enabled_monitors:
        keys.append((NOTIFY_REFUSED, "", "", ""))
    for monitor in database.enabled_monitors:
        keys.append((MISSING_TABLE, monitor.schema, monitor.table, ""))
        keys += [(MISSING_LABEL_COLUMN, monitor.schema, monitor.table, column) for column in monitor.label_names]
        for column in monitor.observed_columns:
            keys += [(MISSING_OBSERVED_COLUMN, monitor.schema, monitor.table, column.name),
                     (NOT_NUMERIC, monitor.schema, monitor.table, column.name)]
        keys += [(VIRTUAL_COLUMN, monitor.schema, monitor.table, column)
                 for column in (*monitor.label_names, *(c.name for c in monitor.observed_columns))]
    for schema, table in dict.fromkeys((m.schema, m.table) for m in database.enabled_monitors):
        keys.append((LEGACY_TRIGGER, schema, table, ""))
    return keys


@dataclass(frozen=True)
class LegacyTrigger:
    """A pg_notify_exporter trigger (or one like it) on a monitored table."""

    trigger: str
    schema: str
    table: str
    function_schema: str
    function: str
    enabled: str  # pg_trigger.tgenabled: O, D (disabled), R, A

    def __str__(self) -> str:
        disabled = " (disabled)" if self.enabled == "D" else ""
        return (f"trigger {self.trigger}{disabled} on {self.schema}.{self.table} "
                f"calls {self.function_schema}.{self.function}()")


@dataclass(frozen=True)
class ExtraObject:
    """A pgne trigger or function that the config does not name (a row of the extra objects query)."""

    kind: str  # "trigger" or "function"
    table_schema: str | None  # of a trigger
    table_name: str | None
    name: str


@dataclass(frozen=True)
class Inventory:
    """pgne's objects as found in one database."""

    schema_exists: bool
    functions: dict[str, str | None]  # name in schema pgne -> comment
    triggers: dict[tuple[str, str, str], tuple]  # (schema, table, trigger) -> pg_trigger facts
    existing_tables: frozenset[tuple[str, str]]
    schema_tables: frozenset[str] = frozenset()  # tables in schema pgne (outbox delivery)
    columns: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)  # of each existing monitored table
    numeric_columns: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)  # ... of numeric types
    max_prepared_transactions: int = 0
    legacy: tuple[LegacyTrigger, ...] = ()  # pg_notify_exporter's triggers on the monitored tables
    extras: tuple[ExtraObject, ...] = ()  # what `apply --prune` drops
    observed_tables: frozenset[str] = frozenset()  # tables in schema pgne with a column `observed`
    virtual_columns: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)  # PG 18's virtual
    event_log_damage: str | None = None  # what differs in pgne.event_log from pgne's layout (outbox)


@functools.lru_cache(maxsize=1)
def _builtin_renderer() -> Renderer:
    return Renderer()


def read_legacy_triggers(conn, database: Database, renderer: Renderer | None = None) -> tuple[LegacyTrigger, ...]:
    """pg_notify_exporter's triggers on `database`'s monitored tables, by the query that
    `apply --replace-legacy` drops them with."""
    query = (renderer or _builtin_renderer()).render_legacy_query(database)
    if query is None:
        return ()
    with conn.cursor() as cur:
        cur.execute(query)  # rendered from a template: literals quoted, no parameters
        return tuple(LegacyTrigger(*row) for row in cur.fetchall())


def read_extra_objects(conn, database: Database, renderer: Renderer | None = None) -> tuple[ExtraObject, ...]:
    """pgne's triggers and functions in `database` that its config does not name, by the query
    that the script of `apply --prune` drops them with."""
    with conn.cursor() as cur:
        cur.execute((renderer or _builtin_renderer()).render_extra_query(database))  # literals quoted
        return tuple(ExtraObject(*row) for row in cur.fetchall())


def read_inventory(conn, database: Database, renderer: Renderer | None = None) -> Inventory:
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %s)", (SCHEMA,))
        schema_exists = cur.fetchone()[0]
        cur.execute(_FUNCTIONS_SQL, (SCHEMA,))
        functions = dict(cur.fetchall())
        cur.execute(_TRIGGERS_SQL, (list(TRIGGER_NAMES),))
        triggers = {(row[0], row[1], row[2]): row[3:] for row in cur.fetchall()}
        cur.execute("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'", (SCHEMA,))
        schema_tables = frozenset(row[0] for row in cur.fetchall())
        cur.execute("SELECT c.relname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                    "AND a.attname = %s AND NOT a.attisdropped", (SCHEMA, OBSERVED_COLUMN))
        observed_tables = frozenset(row[0] for row in cur.fetchall())
        existing = set()
        columns, numeric, virtual = {}, {}, {}
        for monitor in database.monitors:
            # the catalogs, not to_regclass(): that needs USAGE on the schema, which a role that may
            # only CONNECT (pgne run with perform_setup: false) does not have
            cur.execute(_COLUMNS_SQL, (monitor.schema, monitor.table))
            row = cur.fetchone()
            if row is not None:  # the table exists
                existing.add((monitor.schema, monitor.table))
                columns[(monitor.schema, monitor.table)] = frozenset(row[0])
                numeric[(monitor.schema, monitor.table)] = frozenset(row[1])
                virtual[(monitor.schema, monitor.table)] = frozenset(row[2])
        damage = None
        if database.enabled and database.delivery == OUTBOX and "event_log" in schema_tables:
            cur.execute((renderer or _builtin_renderer()).render_event_log_check())
            damage = cur.fetchone()[0]
        # PGC_POSTMASTER, readable by every role
        cur.execute("SELECT pg_catalog.current_setting('max_prepared_transactions')::int")
        max_prepared = cur.fetchone()[0]
    legacy = read_legacy_triggers(conn, database, renderer) if database.enabled else ()
    return Inventory(schema_exists, functions, triggers, frozenset(existing), schema_tables, columns, numeric,
                     max_prepared, legacy, read_extra_objects(conn, database, renderer), observed_tables,
                     virtual, damage)


def setup_problems(inventory: Inventory, database: Database) -> list[Difference]:
    """The setup problems of `database` as found in `inventory`, in config order."""
    problems: list[Difference] = []
    for key in possible_problems(database):
        problem, schema, table, column = key
        if problem == NOTIFY_REFUSED:
            if (database.delivery != NOTIFY or database.notify_with_prepared_transactions
                    or inventory.max_prepared_transactions <= 0):
                continue
            what = problem_text(*key, max_prepared_transactions=inventory.max_prepared_transactions)
            installed = sum(1 for m in database.enabled_monitors for e in m.events
                            if (m.schema, m.table, trigger_name(e)) in inventory.triggers)
            if installed:  # pgne does not drop them by itself: see README, "Two-phase commit"
                what += (f"; pgne triggers already installed are left in place ({installed}): "
                         f"PREPARE TRANSACTION fails after a write to their tables")
        elif problem == LEGACY_TRIGGER:
            found = [t for t in inventory.legacy if (t.schema, t.table) == (schema, table)]
            if not found:
                continue
            what = (f"{'; '.join(map(str, found))}, which notifies on channel {database.channel}: "
                    f"beside pgne's triggers every row would count twice "
                    f"(pgne apply {REPLACE_LEGACY_OPTION} replaces {'it' if len(found) == 1 else 'them'} "
                    f"in one transaction)")
        elif problem == MISSING_TABLE:
            if (schema, table) in inventory.existing_tables:
                continue
            what = problem_text(*key)
        elif problem == VIRTUAL_COLUMN:
            if column not in inventory.virtual_columns.get((schema, table), ()):
                continue
            what = problem_text(*key)
        elif problem == NOT_NUMERIC:
            existing = inventory.columns.get((schema, table))
            if existing is None or column not in existing or column in inventory.numeric_columns[(schema, table)]:
                continue  # a missing table or column is a problem of its own
            what = problem_text(*key)
        else:
            existing = inventory.columns.get((schema, table))
            if existing is None or column in existing:  # a missing table is its own problem
                continue
            what = problem_text(*key)
            near = sorted(c for c in existing if c.lower() == column.lower())
            if near:
                what += f" (it has {', '.join(near)}: column names are case-sensitive)"
        problems.append(Difference(problem, what, key))
    return problems


def blocked_tables(problems: list[Difference], replace_legacy: bool = False) -> frozenset[tuple[str, str]]:
    """The (schema, table) of each monitor that a setup problem of its own keeps from being set up
    (a legacy trigger does not with `apply --replace-legacy`: the script replaces it)."""
    return frozenset(d.object_id[1:3] for d in problems if d.is_problem and d.kind not in DATABASE_PROBLEMS
                     and not (replace_legacy and d.kind == LEGACY_TRIGGER))


def trigger_matches(monitor: Monitor, event: str, facts: tuple | None) -> bool:
    """Does the pg_trigger row `facts` hold exactly the trigger pgne creates for `event`?"""
    if facts is None:
        return False
    fn_schema, fn_name, tgtype, tgenabled, no_qual, nargs, new_table, old_table = facts
    spec = TRIGGER_SPECS[event]
    return (fn_schema == SCHEMA and fn_name == function_name(monitor) and tgtype == spec.tgtype
            and tgenabled == "O" and no_qual and nargs == 0
            and new_table == spec.new_table and old_table == spec.old_table)


def find_differences(inventory: Inventory, database: Database, renderer: Renderer,
                     replace_legacy: bool = False) -> list[Difference]:
    """What `apply` would change, setup problems first. Objects the config does not name at all
    are `extra`. A monitor with a setup problem of its own is left as it is (its problem is the
    difference): `apply` sets up the others."""
    diffs: list[Difference] = setup_problems(inventory, database)
    blocked = blocked_tables(diffs, replace_legacy)
    enabled = set(database.enabled_monitors)
    if database.enabled and not inventory.schema_exists:
        diffs.append(Difference("missing", f"schema {SCHEMA}"))
    if database.enabled and database.delivery == OUTBOX:
        diffs += [Difference("missing", f"table {SCHEMA}.{table}") for table in OUTBOX_TABLES
                  if table not in inventory.schema_tables]
        if inventory.event_log_damage is not None:  # apply rebuilds it (sql_templates/_event_log.sql.j2)
            diffs.append(Difference("outdated", f"table {SCHEMA}.event_log ({inventory.event_log_damage})"))
        # pgne.totals' column `observed` (pgne.event_log's is part of its layout: event_log_damage)
        if any(m.observed_columns for m in database.enabled_monitors) and "totals" in inventory.schema_tables \
                and "totals" not in inventory.observed_tables:
            diffs.append(Difference("missing", f"column {SCHEMA}.totals.{OBSERVED_COLUMN}"))
    for monitor in database.monitors:
        if monitor in enabled and (monitor.schema, monitor.table) in blocked:
            continue
        fn = function_name(monitor)
        table = monitor.qualified_name
        if monitor in enabled:
            if (monitor.schema, monitor.table) not in inventory.existing_tables:
                continue  # a setup problem, listed above
            if fn not in inventory.functions:
                diffs.append(Difference("missing", f"function {SCHEMA}.{fn} for {table}"))
            elif inventory.functions[fn] != renderer.render_monitor(database, monitor).comment:
                diffs.append(Difference("outdated", f"function {SCHEMA}.{fn} for {table}"))
        elif fn in inventory.functions:
            diffs.append(Difference("unwanted", f"function {SCHEMA}.{fn} for disabled {table}"))
        for event in EVENTS:
            facts = inventory.triggers.get((monitor.schema, monitor.table, trigger_name(event)))
            wanted = monitor in enabled and event in monitor.events
            where = f"trigger {trigger_name(event)} on {table}"
            if wanted and facts is None:
                diffs.append(Difference("missing", where))
            elif wanted and not trigger_matches(monitor, event, facts):
                diffs.append(Difference("outdated", where))
            elif not wanted and facts is not None:
                diffs.append(Difference("unwanted", where))
    if not database.enabled and inventory.schema_exists:
        diffs.append(Difference("unwanted", f"schema {SCHEMA} in a disabled database"))
    for fn in sorted(x.name for x in inventory.extras if x.kind == "function"):
        diffs.append(Difference("extra", f"function {SCHEMA}.{fn} (not named by the config)"))
    for schema, table, trigger in sorted((x.table_schema, x.table_name, x.name)
                                         for x in inventory.extras if x.kind == "trigger"):
        diffs.append(Difference("extra", f"trigger {trigger} on {schema}.{table} (not named by the config)"))
    return diffs


def installed_triggers(inventory: Inventory, database: Database) -> dict[tuple[str, str, str], bool]:
    """(schema, table, event) -> is pgne's trigger there and as rendered; for the gauge."""
    return {
        (monitor.schema, monitor.table, event): trigger_matches(
            monitor, event, inventory.triggers.get((monitor.schema, monitor.table, trigger_name(event))))
        for monitor in database.enabled_monitors
        for event in monitor.events
    }
