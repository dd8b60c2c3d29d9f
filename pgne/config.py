"""Loads and validates events_config.yml; returns frozen dataclasses.

The file is pg_notify_exporter's format, unchanged. Validation has two stages and reports
every error at once, one line each, naming the file and the place in it:

1. structure, by the JSON Schema in `schema/` (jsonschema `iter_errors`, sorted by path);
2. cross-references, on data that passed stage 1: duplicates, templates that do not exist or
   ignore `columns_to_label`, label names, passwords from the environment or a file.

Nothing downstream touches the raw YAML: it gets a `Config`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import yaml

if TYPE_CHECKING:  # imported where configs are validated: workers never need it (~6 MB, ~0.1 s)
    import jsonschema

from pgne.errors import UserError
from pgne.resources import config_schema_path

DEFAULT_CONFIG_PATH = "config/events_config.yml"
DEFAULT_PORT = 5432
DEFAULT_CHANNEL = "pg_notify_exporter"  # the channel pg_notify_exporter listened on
DEFAULT_CONNECT_TIMEOUT = 10

EVENTS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
BUILTIN_LABELS = ("operation", "host", "database", "tag", "schema", "table")
OTHER = "other"  # the label value of anything outside a whitelist
NOTIFY, OUTBOX = "notify", "outbox"  # delivery modes
DEFAULT_DRAIN_INTERVAL = 1.0
# \Z, not $: Python's $ also matches before a trailing newline ("code\n" is no label name).
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")
ENV_REF_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


@dataclass(frozen=True)
class LabelColumn:
    """A column whose values become a label; values outside `values` count as `other`."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Monitor:
    schema: str
    table: str
    enabled: bool
    function: str  # template name
    events: tuple[str, ...]  # upper case, in config order
    label_columns: tuple[LabelColumn, ...] = ()
    location: str = field(default="", compare=False)  # "localhost > test > monitors[0]", for messages

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.label_columns)


@dataclass(frozen=True)
class Database:
    host: str
    name: str
    tag: str
    perform_setup: bool
    username: str
    password: str | None = field(repr=False)
    enabled: bool
    monitors: tuple[Monitor, ...]
    port: int = DEFAULT_PORT
    channel: str = DEFAULT_CHANNEL
    sslmode: str | None = None
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    delivery: str = NOTIFY
    drain_interval: float = DEFAULT_DRAIN_INTERVAL
    location: str = field(default="", compare=False)
    # `password: ${NAME}`: the variable's name; the master keeps it out of the workers' environment
    password_variable: str | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.host, self.port, self.name)

    @property
    def display_name(self) -> str:
        return f"{self.host}:{self.port}/{self.name}"

    @property
    def host_label(self) -> str:
        """The `host` label of this database's series: the host, and `:port` when the port is
        not 5432, so that two clusters on one host never share a series (while series of the
        common single-cluster setup keep the plain host name)."""
        if self.port == DEFAULT_PORT:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{host}:{self.port}"

    @property
    def enabled_monitors(self) -> tuple[Monitor, ...]:
        return tuple(m for m in self.monitors if m.enabled) if self.enabled else ()

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for psycopg2.connect (never logged: they hold the password)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.name,
            "user": self.username,
            "connect_timeout": self.connect_timeout,
            "application_name": "pgne",
        }
        if self.password is not None:
            kwargs["password"] = self.password
        if self.sslmode is not None:
            kwargs["sslmode"] = self.sslmode
        return kwargs


@dataclass(frozen=True)
class Config:
    path: str
    databases: tuple[Database, ...]

    @property
    def label_names(self) -> tuple[str, ...]:
        """Union of the label columns over the whole config, in order of first appearance."""
        names: dict[str, None] = {}
        for database in self.databases:
            for monitor in database.monitors:
                for name in monitor.label_names:
                    names.setdefault(name)
        return tuple(names)

    @property
    def enabled_databases(self) -> tuple[Database, ...]:
        return tuple(d for d in self.databases if d.enabled)

    def select(self, host: str | None = None, database: str | None = None) -> tuple[Database, ...]:
        """The databases matching the --host/--database filters; an error if none does."""
        chosen = tuple(
            d for d in self.databases
            if (host is None or d.host == host) and (database is None or d.name == database)
        )
        if not chosen:
            wanted = " and ".join(
                f"{flag} {value!r}" for flag, value in (("--host", host), ("--database", database)) if value
            )
            raise UserError(f"{self.path}: no database matches {wanted}")
        return chosen


# --------------------------------------------------------------------------- YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one).

    Only the keys written in the mapping itself count: a key that overrides one merged in
    with `<<: *anchor` is not a duplicate.
    """


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable: construct_mapping below reports it as a YAML error
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)  # flattens `<<` merges itself


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: str, text: str) -> Any:
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]  # one line per error
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML refuses: no mark, a position
            where = f"character {exc.position + 1}: "
        raise UserError(f"{path}: {where}YAML syntax error: {problem}") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise these for values such as `!!int` (empty), `!!bool x`, or an
        # unquoted 2001-13-45 (read as a timestamp)
        raise UserError(f"{path}: YAML error: a value cannot be read ({type(exc).__name__}: {exc})") from None
    if not documents:
        raise UserError(f"{path}: the file holds no configuration (every YAML document is empty)")
    if len(documents) > 1:
        raise UserError(f"{path}: {len(documents)} non-empty YAML documents; expected one")
    return documents[0]


# --------------------------------------------------------------------------- locations


def _describe(data: Any, path: Sequence[Any]) -> str:
    """Render a path in the raw data as `localhost > test > monitors[1] > events[0]`."""
    parts: list[str] = []
    node = data
    for depth, step in enumerate(path):
        parent = node
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            node = None
        if depth == 0:  # index in the top-level list of hosts
            if not isinstance(node, dict) or len(node) != 1:
                parts.append(f"[{step}]")
            continue
        if depth == 1:  # host name
            parts.append(str(step))
            continue
        if depth == 2 and isinstance(node, dict) and isinstance(node.get("database"), str):
            parts.append(node["database"])  # a database entry is named by its database
            continue
        if isinstance(step, int):
            if parts and isinstance(parent, list):
                parts[-1] += f"[{step}]"
            else:
                parts.append(f"[{step}]")
        else:
            parts.append(str(step))
    return " > ".join(parts) if parts else "(top level)"


# --------------------------------------------------------------------------- stage 1: schema


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    import jsonschema

    schema = json.loads(config_schema_path().read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _schema_message(error: jsonschema.ValidationError) -> str:
    friendly = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if error.validator == "pattern" and friendly:
        return f"{error.instance!r} {friendly}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        unknown = sorted((k for k in error.instance if k not in allowed), key=repr)  # keys of any type
        if allowed and unknown:
            return (f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                    f" (allowed: {', '.join(allowed)})")
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    if error.validator in ("minProperties", "maxProperties") and isinstance(error.instance, dict):
        return f"expected a mapping with exactly one key, got {len(error.instance)}"
    return error.message


def _hide_password(error: jsonschema.ValidationError, message: str) -> str:
    """jsonschema prints the offending value: never when it is, or holds, a password."""
    path = list(error.absolute_path)
    holds = bool(path) and path[-1] == "password"
    stack, seen = [error.instance], set()
    while stack and not holds:  # iterative, and alias-safe: YAML anchors can make cycles
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            holds = "password" in value
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    if not holds:
        return message
    return message.replace(repr(error.instance), "(a value that holds a password, not shown)")


def _schema_errors(path: str, data: Any) -> tuple[list[str], set[tuple]]:
    """(error lines, the paths (host index, host, entry index) of database entries they hit).

    An error above the level of a database entry puts `()` in the set: nothing can be cross-checked.
    """
    errors = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    lines, broken = [], set()
    for error in errors:
        message = _hide_password(error, _schema_message(error))
        lines.append(f"{path}: {_describe(data, list(error.absolute_path))}: {message}")
        location = tuple(error.absolute_path)
        broken.add(location[:3] if len(location) >= 3 else ())
    return lines, broken


# --------------------------------------------------------------------------- stage 2: cross-checks


def value_as_text(value: Any) -> str | None:
    """A YAML or JSON scalar as PostgreSQL prints it with ::text (None for NULL)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def split_table(name: str) -> tuple[str, str]:
    """`schema.table` or `table` (schema public)."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", name)


def _resolve_password(entry: dict, where: str, base_dir: Path, errors: list[str]) -> str | None:
    has_password, has_file = "password" in entry, "password_file" in entry
    if has_password and has_file:
        errors.append(f"{where}: give either password or password_file, not both")
        return None
    if not has_password and not has_file:
        errors.append(f"{where}: password or password_file is required")
        return None
    if has_password:
        match = ENV_REF_RE.match(entry["password"])
        if not match:
            return entry["password"]
        variable = match.group(1)
        if variable not in os.environ:
            errors.append(f"{where} > password: environment variable {variable} is not set")
            return None
        return os.environ[variable]
    file_path = Path(os.path.expanduser(entry["password_file"]))
    if not file_path.is_absolute():
        file_path = base_dir / file_path
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        errors.append(f"{where} > password_file: cannot read {file_path}: {reason}")
        return None
    return text[:-1] if text.endswith("\n") else text


def _password_variable(entry: dict) -> str | None:
    match = ENV_REF_RE.match(entry.get("password", ""))
    return match.group(1) if match else None


def _check_name_bytes(kind: str, name: str, where: str, errors: list[str]) -> None:
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        errors.append(f"{where}: {kind} {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes")
    _check_no_nul(kind, name, where, errors)


def _check_no_nul(kind: str, value: str, where: str, errors: list[str], show: bool = True) -> None:
    """PostgreSQL text (identifiers, literals, connection parameters) cannot hold NUL."""
    if "\x00" in value:
        shown = f" {value!r}" if show else ""
        errors.append(f"{where}: {kind}{shown} contains a NUL character, which PostgreSQL cannot store")


def _build_monitor(raw: dict, where: str, templates: "TemplateCatalog", errors: list[str],
                   delivery: str = NOTIFY) -> Monitor:
    schema, table = split_table(raw["table"])
    _check_name_bytes("schema", schema, f"{where} > table", errors)
    _check_name_bytes("table", table, f"{where} > table", errors)

    events: list[str] = []
    for i, event in enumerate(raw["events"]):
        upper = event.upper()
        if upper not in EVENTS:  # "insert\n" passes the schema's pattern (Python's $)
            errors.append(f"{where} > events[{i}]: {event!r} is not one of insert, update, delete, "
                          f"truncate (any case)")
        elif upper in events:
            errors.append(f"{where} > events[{i}]: duplicate event {event!r}")
        else:
            events.append(upper)

    label_columns: list[LabelColumn] = []
    for i, item in enumerate(raw.get("columns_to_label", [])):
        (column, values), = item.items()
        place = f"{where} > columns_to_label[{i}]"
        if not LABEL_NAME_RE.match(column) or column.startswith("__"):
            errors.append(f"{place}: {column!r} is not a valid Prometheus label name "
                          f"(letters, digits and _, not starting with a digit or __)")
        elif column in BUILTIN_LABELS:
            errors.append(f"{place}: label column {column!r} collides with the built-in label "
                          f"{column!r} (built-in: {', '.join(BUILTIN_LABELS)})")
        if column in (c.name for c in label_columns):
            errors.append(f"{place}: duplicate label column {column!r}")
        _check_name_bytes("column", column, place, errors)
        texts: list[str] = []
        for j, value in enumerate(values):
            text = value_as_text(value)
            _check_no_nul("value", text, f"{place} > {column}[{j}]", errors)
            if text == OTHER:
                errors.append(f"{place} > {column}[{j}]: {OTHER!r} is reserved for values outside "
                              f"the whitelist")
            elif text in texts:
                errors.append(f"{place} > {column}[{j}]: duplicate value {text!r}")
            else:
                texts.append(text)
        label_columns.append(LabelColumn(column, tuple(texts)))

    function = raw["function"]
    problem = templates.problem(function, delivery)
    if problem:
        errors.append(f"{where} > function: {problem}")
    elif label_columns and not templates.uses_labels(function, delivery):
        errors.append(f"{where} > columns_to_label: template {function!r} ignores columns_to_label "
                      f"(use notification_with_payload, or a template that reads columns_to_label)")

    return Monitor(
        schema=schema,
        table=table,
        enabled=raw["enabled"],
        function=function,
        events=tuple(events),
        label_columns=tuple(label_columns),
        location=where,
    )


def _build(path: str, data: list, templates: "TemplateCatalog", base_dir: Path,
           skip: set[tuple] = frozenset()) -> tuple[list[Database], list[str]]:
    errors: list[str] = []
    databases: list[Database] = []
    seen_databases: dict[tuple[str, int, str], int] = {}  # -> entry number, for messages
    number = 0
    for i, host_entry in enumerate(data):
        (host, entries), = host_entry.items()
        for j, entry in enumerate(entries):
            number += 1
            if (i, host, j) in skip:
                continue
            where = _describe(data, [i, host, j])
            password = _resolve_password(entry, f"{path}: {where}", base_dir, errors)
            port = int(entry.get("port", DEFAULT_PORT))  # JSON Schema's integer accepts 5432.0
            key = (host, port, entry["database"])
            if key in seen_databases:
                errors.append(f"{path}: {where}: duplicate database {host}:{port}/{entry['database']} "
                              f"(database entries #{seen_databases[key]} and #{number} of the file)")
            seen_databases.setdefault(key, number)
            channel = entry.get("channel", DEFAULT_CHANNEL)
            delivery = entry.get("delivery", NOTIFY)
            if "drain_interval" in entry and delivery != OUTBOX:
                errors.append(f"{path}: {where} > drain_interval: only used with delivery: outbox")
            _check_name_bytes("channel", channel, f"{path}: {where} > channel", errors)
            for key in ("database", "username", "tag"):
                _check_no_nul(key, entry[key], f"{path}: {where} > {key}", errors)
            _check_no_nul("host", host, f"{path}: {where}", errors)
            if password is not None:
                _check_no_nul("password", password, f"{path}: {where} > password", errors, show=False)

            monitors: list[Monitor] = []
            seen_tables: dict[tuple[str, str], str] = {}
            for k, raw_monitor in enumerate(entry["monitors"]):
                mwhere = _describe(data, [i, host, j, "monitors", k])
                monitor_errors: list[str] = []
                monitor = _build_monitor(raw_monitor, mwhere, templates, monitor_errors, delivery)
                errors.extend(f"{path}: {line}" for line in monitor_errors)
                table_key = (monitor.schema, monitor.table)
                if table_key in seen_tables:
                    errors.append(f"{path}: {mwhere} > table: duplicate table {monitor.qualified_name!r} "
                                  f"(also at {seen_tables[table_key]})")
                seen_tables.setdefault(table_key, mwhere)
                monitors.append(monitor)

            databases.append(Database(
                host=host,
                name=entry["database"],
                tag=entry["tag"],
                perform_setup=entry["perform_setup"],
                username=entry["username"],
                password=password,
                enabled=entry["enabled"],
                monitors=tuple(monitors),
                port=port,
                channel=channel,
                sslmode=entry.get("sslmode"),
                connect_timeout=int(entry.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
                delivery=delivery,
                password_variable=_password_variable(entry),
                drain_interval=float(entry.get("drain_interval", DEFAULT_DRAIN_INTERVAL)),
                location=where,
            ))
    return databases, errors


class TemplateCatalog:
    """What the config needs to know about templates: does one exist, does it read labels.

    Implemented by pgne.render.Renderer; a protocol here so config does not import Jinja.
    """

    def problem(self, name: str, delivery: str = NOTIFY) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def uses_labels(self, name: str, delivery: str = NOTIFY) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


def parse_config(path: str, text: str, templates: TemplateCatalog, base_dir: Path | None = None) -> Config:
    """Validate `text` (the content of `path`); raise UserError listing every problem."""
    try:
        data = _read_yaml(path, text)
        errors, broken = _schema_errors(path, data)
    except RecursionError:  # PyYAML and jsonschema recurse: a few hundred levels of nesting
        raise UserError(f"{path}: nested too deeply to be a pgne config") from None
    if () in broken:  # the file's shape is wrong: cross-checks would only guess
        raise UserError(errors)
    # Cross-check every database entry whose structure is valid, so that all errors show at once.
    databases, cross_errors = _build(path, data, templates, base_dir or Path(path).resolve().parent, skip=broken)
    if errors or cross_errors:
        raise UserError(errors + cross_errors)
    return Config(path=path, databases=tuple(databases))


def config_path(cli_value: str | None) -> str:
    """-c/--config, else $PGNE_CONFIG, else config/events_config.yml."""
    return cli_value or os.environ.get("PGNE_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(path: str, templates: TemplateCatalog) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (give one with -c/--config or $PGNE_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_config(path, text, templates)


def iter_monitors(config: Config) -> Iterable[tuple[Database, Monitor]]:
    for database in config.databases:
        for monitor in database.monitors:
            yield database, monitor
