"""Renders the SQL that `pgne apply` runs, from Jinja templates in `sql_templates/`.

One renderer serves `check`, `render-sql`, `apply`, `status` and perform_setup, so what a DBA
reviews is what runs. Every identifier and literal taken from the config goes through the
`ident` / `literal` filters; nothing is built by string formatting from config values.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import jinja2
import jinja2.meta

from pgne import __version__
from pgne.errors import UserError
from pgne.model import EVENTS, NOTIFY, OTHER, OUTBOX, Config, Database, Monitor
from pgne.resources import builtin_templates_dir

TEMPLATE_SUFFIX = ".sql.j2"
DATABASE_TEMPLATE = "_database.sql.j2"  # the per-database skeleton; `_` names are internal
LEGACY_TEMPLATE = "_legacy_triggers.sql.j2"  # finds pg_notify_exporter's triggers (status, --replace-legacy)
PRUNE_TEMPLATE = "_prune.sql.j2"  # what `apply --prune` runs after the database's script
EVENT_LOG_TEMPLATE = "_event_log.sql.j2"
EXTRA_TEMPLATE = "_extra_objects.sql.j2"  # finds what the config does not name (status, --prune)
SCHEMA = "pgne"
NEW_TABLE = "pgne_new"  # transition table names the triggers declare (REFERENCING ... AS)
OLD_TABLE = "pgne_old"
ADVISORY_LOCK_KEY = 0x70676E65  # "pgne": serialises concurrent applies on one database
DEFAULT_LOCK_TIMEOUT = 5.0
COMMENT_PREFIX = "pgne sha256:"


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always double-quoted (so case and punctuation survive)."""
    if "\x00" in name:
        raise ValueError("identifiers cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: object) -> str:
    """A PostgreSQL string literal; E'' form when backslashes are present, like psycopg2."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("literals cannot contain NUL")
    text = text.replace("'", "''")
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\") + "'"
    return "'" + text + "'"


def json_string(value: object) -> str:
    """A JSON string, escaped as PostgreSQL's JSON functions escape it (non-ASCII kept as is),
    for payload text that templates assemble themselves; pass it through `literal` for SQL."""
    return json.dumps(str(value), ensure_ascii=False)


def dollar_quote(body: str) -> str:
    """Wrap a function body in a dollar-quote tag that does not occur in it.

    Nor may the body end with the tag less its last `$`: "...$pgne" + "$pgne$" would close early.
    """
    tag, n = "$pgne$", 0
    while tag in body or body.endswith(tag[:-1]):
        n += 1
        tag = f"$pgne{n}$"
    return f"{tag}{body}{tag}"


def template_file(name: str, delivery: str = NOTIFY) -> str:
    """`notification_with_payload.sql.j2`; with delivery outbox `notification_with_payload.outbox.sql.j2`."""
    return f"{name}.outbox{TEMPLATE_SUFFIX}" if delivery == OUTBOX else name + TEMPLATE_SUFFIX


def sql_comment(value: object) -> str:
    """A config value inside a `--` comment: JSON-escaped, so a newline cannot end the comment."""
    return json.dumps(str(value), ensure_ascii=False)


@dataclass(frozen=True)
class TriggerSpec:
    """What pg_trigger holds for an AFTER ... FOR EACH STATEMENT trigger on one event."""

    tgtype: int  # TRIGGER_TYPE_* bits: INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32; no ROW/BEFORE bit
    new_table: str | None
    old_table: str | None


TRIGGER_SPECS = {
    "INSERT": TriggerSpec(4, NEW_TABLE, None),
    "UPDATE": TriggerSpec(16, NEW_TABLE, None),
    "DELETE": TriggerSpec(8, None, OLD_TABLE),
    "TRUNCATE": TriggerSpec(32, None, None),  # no transition tables on TRUNCATE
}


def function_name(monitor: Monitor) -> str:
    """Deterministic, at most 63 bytes: a readable part plus a hash of the exact table name."""
    digest = hashlib.sha256(f"{monitor.schema}\x00{monitor.table}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9_]+", "_", f"{monitor.schema}_{monitor.table}".lower()).strip("_")
    return f"{readable[:40]}_{digest}"


def qualified_function(monitor: Monitor) -> str:
    return f"{quote_ident(SCHEMA)}.{quote_ident(function_name(monitor))}"


def qualified_table(monitor: Monitor) -> str:
    return f"{quote_ident(monitor.schema)}.{quote_ident(monitor.table)}"


def trigger_name(event: str) -> str:
    return f"pgne_{event.lower()}"


def body_comment(create_function_sql: str) -> str:
    """The COMMENT stored on each function: lets `status` see an out-of-date body."""
    return COMMENT_PREFIX + hashlib.sha256(create_function_sql.encode()).hexdigest()


@dataclass(frozen=True)
class RenderedMonitor:
    monitor: Monitor
    function_name: str  # unquoted, in schema pgne
    create_function: str  # CREATE OR REPLACE FUNCTION ... ; as rendered from the template
    comment: str  # what COMMENT ON FUNCTION stores


def read_templates(directories: Sequence[str | Path]) -> dict[str, str]:
    """Every template (`*.j2`, at any depth) of `directories`, by the name Jinja loads it by; the
    first folder that has a name wins, as when FileSystemLoader searches them. A file that cannot
    be read or decoded is a UserError that names it."""
    sources: dict[str, str] = {}
    for directory in reversed([Path(d) for d in directories]):
        for path in sorted(directory.rglob("*.j2")):
            try:
                sources[path.relative_to(directory).as_posix()] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read template {path}: {exc}") from None
    return sources


class Renderer:
    """Jinja environment over the user's template folders, then the built-in ones (and the
    pgne.validation.TemplateCatalog that config validation asks)."""

    def __init__(self, template_dirs: Sequence[str | Path] = (), lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 builtin_sources: Mapping[str, str] | None = None):
        """With `builtin_sources` (read_templates() of the built-in folder, read earlier), every
        template is held in memory: those of `template_dirs` are read now, and no file is read
        again (a running worker: files replaced under it by a pip install change nothing until
        pgne restarts). Without, templates are read from their folders when used (the commands)."""
        for directory in template_dirs:
            if not Path(directory).is_dir():
                raise UserError(f"--templates {directory}: not a directory")
        self.search_path = [str(d) for d in template_dirs] + [str(builtin_templates_dir())]
        self.lock_timeout = lock_timeout
        if builtin_sources is None:
            loader: jinja2.BaseLoader = jinja2.FileSystemLoader(self.search_path)
        else:
            loader = jinja2.DictLoader({**builtin_sources, **read_templates(template_dirs)})
        self.env = jinja2.Environment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(ident=quote_ident, literal=quote_literal, dollar_quote=dollar_quote,
                                comment=sql_comment, json=json_string)
        self._variables: dict[str, frozenset[str]] = {}

    @property
    def lock_timeout_setting(self) -> str:
        """The lock_timeout value for SET LOCAL: whole milliseconds, at least 1 (PostgreSQL
        reads '0ms' as no timeout at all, so a sub-millisecond --lock-timeout must not round to 0)."""
        return f"{max(1, int(self.lock_timeout * 1000))}ms"

    # -- TemplateCatalog: what config validation asks ------------------------------------

    def _source(self, name: str, delivery: str) -> str:
        source, _, _ = self.env.loader.get_source(self.env, template_file(name, delivery))
        return source

    def problem(self, name: str, delivery: str = NOTIFY) -> str | None:
        if name.startswith("_"):
            return f"{name!r} is an internal template, not a trigger function"
        try:
            source = self._source(name, delivery)
        except jinja2.TemplateNotFound:
            return (f"no template {template_file(name, delivery)!r} (searched {', '.join(self.search_path)})")
        try:
            self.env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            return f"template {name!r} line {exc.lineno}: {exc.message}"
        return None

    def _undeclared(self, name: str, delivery: str) -> frozenset[str]:
        file = template_file(name, delivery)
        if file not in self._variables:
            ast = self.env.parse(self._source(name, delivery))
            self._variables[file] = frozenset(jinja2.meta.find_undeclared_variables(ast))
        return self._variables[file]

    def uses_labels(self, name: str, delivery: str = NOTIFY) -> bool:
        return "columns_to_label" in self._undeclared(name, delivery)

    def uses_observed(self, name: str, delivery: str = NOTIFY) -> bool:
        return "columns_to_observe" in self._undeclared(name, delivery)

    # -- rendering -----------------------------------------------------------------------

    def render_monitor(self, database: Database, monitor: Monitor) -> RenderedMonitor:
        """CREATE OR REPLACE FUNCTION for one monitor, from its template."""
        name = function_name(monitor)
        context = {
            "function_name": f"{quote_ident(SCHEMA)}.{quote_ident(name)}",
            "table_name": monitor.qualified_name,
            "schema_name": monitor.schema,
            "relation_name": monitor.table,
            "events": list(monitor.events),
            "columns_to_label": list(monitor.label_columns),
            "columns_to_observe": list(monitor.observed_columns),
            "other": OTHER,
            "channel": database.channel,
            "new_table": NEW_TABLE,
            "old_table": OLD_TABLE,
            "database": {"host": database.host, "port": database.port,
                         "name": database.name, "tag": database.tag},
        }
        template_name = template_file(monitor.function, database.delivery)
        try:
            sql = self.env.get_template(template_name).render(context)
        except jinja2.TemplateError as exc:
            lineno = getattr(exc, "lineno", None)
            where = f" line {lineno}" if lineno else ""
            raise UserError(f"template {monitor.function!r}{where}: {exc} "
                            f"(rendering {monitor.location or monitor.qualified_name})") from None
        except ValueError as exc:  # a NUL from the quoting filters
            raise UserError(f"{monitor.location}: {exc}") from None
        sql = sql.strip() + "\n"
        return RenderedMonitor(monitor, name, sql, body_comment(sql))

    def legacy_tables(self, database: Database) -> list[tuple[str, str]]:
        """The tables on which pg_notify_exporter's triggers are looked for: the enabled monitors'."""
        return list(dict.fromkeys((m.schema, m.table) for m in database.enabled_monitors))

    def render_legacy_query(self, database: Database) -> str | None:
        """The SELECT that lists pg_notify_exporter's triggers on `database`'s monitored tables
        (None without any: there is nothing to look at)."""
        tables = self.legacy_tables(database)
        if not tables:
            return None
        macro = self.env.get_template(LEGACY_TEMPLATE).module.legacy_triggers
        return str(macro(tables, database.channel, SCHEMA)).strip() + "\n"

    def _named_objects(self, database: Database) -> dict[str, list]:
        """What the config names in `database`, for the query that finds pgne's other objects."""
        return {
            "functions": list(dict.fromkeys(function_name(m) for m in database.monitors)),
            "tables": list(dict.fromkeys((m.schema, m.table) for m in database.monitors)),
            "trigger_names": [trigger_name(e) for e in EVENTS],
        }

    def render_extra_query(self, database: Database) -> str:
        """The SELECT that lists pgne's triggers and functions in `database` that its config does
        not name: what `status` reports as extra and the --prune script drops."""
        macro = self.env.get_template(EXTRA_TEMPLATE).module.extra_objects
        return str(macro(SCHEMA, **self._named_objects(database))).strip() + "\n"

    def render_event_log_check(self) -> str:
        """The query that says what differs in pgne.event_log from the layout pgne makes (NULL:
        nothing), which `apply` repairs: everything that makes the outbox triggers skip their
        INSERT, and more. By name in the catalogs: a role without USAGE on schema pgne can run it."""
        macro = self.env.get_template(EVENT_LOG_TEMPLATE).module.event_log_damage
        return str(macro(by_name=True)).strip() + "\n"

    def render_prune(self, database: Database) -> str:
        """The script that `apply --prune` runs after the database's own (when `status` finds extra
        objects): one transaction that drops what render_extra_query finds when it runs."""
        return self.env.get_template(PRUNE_TEMPLATE).render(
            version=__version__,
            database=database,
            schema=SCHEMA,
            lock_key=ADVISORY_LOCK_KEY,
            lock_timeout=self.lock_timeout_setting,
            **self._named_objects(database),
        )

    def render_database(self, database: Database, replace_legacy: bool = False,
                        blocked: frozenset[tuple[str, str]] = frozenset()) -> str:
        """The whole script for one database: header comment, then BEGIN ... COMMIT. With
        `replace_legacy`, pg_notify_exporter's triggers on the monitored tables are dropped in the
        same transaction, before pgne's own are created. The monitors of `blocked` tables (a setup
        problem of their own, pgne.drift) are left out: neither set up nor their legacy triggers dropped."""
        enabled = [self.render_monitor(database, m) for m in database.enabled_monitors
                   if (m.schema, m.table) not in blocked]
        dropped = [m for m in database.monitors if m not in database.enabled_monitors]
        template = self.env.get_template(DATABASE_TEMPLATE)
        return template.render(
            version=__version__,
            database=database,
            schema=SCHEMA,
            enabled=enabled,
            dropped=dropped,
            all_events=EVENTS,
            trigger_specs=TRIGGER_SPECS,
            lock_key=ADVISORY_LOCK_KEY,
            lock_timeout=self.lock_timeout_setting,
            new_table=NEW_TABLE,
            old_table=OLD_TABLE,
            qualified_table=qualified_table,
            qualified_function=qualified_function,
            trigger_name=trigger_name,
            replace_legacy=replace_legacy and bool(enabled),
            legacy_tables=[t for t in self.legacy_tables(database) if t not in blocked],
        )

    def render_config(self, databases: Iterable[Database], replace_legacy: bool = False, prune: bool = False) -> str:
        """What `render-sql` prints: each database's script, with `prune` followed by its --prune
        script; `apply` runs these same texts."""
        scripts = []
        for database in databases:
            scripts.append(self.render_database(database, replace_legacy))
            if prune:
                scripts.append(self.render_prune(database))
        return "\n".join(scripts)

    def check(self, config: Config) -> None:
        """Render everything once, so that `check` catches template errors too."""
        self.render_config(config.databases)
