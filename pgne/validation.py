"""Validates the data of events_config.yml and builds the Config (pgne.model) from it.

Two stages, and every error at once, one line each, naming the file and the place in it:

1. structure, by the JSON Schema in `schema/` (jsonschema `iter_errors`, sorted by path);
2. cross-references, on data that passed stage 1: duplicates, templates that do not exist or
   ignore `columns_to_label`, label names, passwords from the environment or a file.
"""
from __future__ import annotations

import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

if TYPE_CHECKING:  # imported where configs are validated: workers never need it (~6 MB, ~0.1 s)
    import jsonschema

from pgne.errors import UserError
from pgne.model import (
    APPLIED_CHANNEL,
    BUILTIN_LABELS,
    DEFAULT_CHANNEL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_INTERVAL,
    DEFAULT_PORT,
    EVENTS,
    LABEL_NAME_RE,
    NOTIFY,
    OBSERVED_LABELS,
    OTHER,
    OUTBOX,
    Config,
    Database,
    LabelColumn,
    Monitor,
    ObservedColumn,
    value_as_text,
)
from pgne.notify_size import CHECKED_TEMPLATE, payload_problem
from pgne.resources import config_schema_path
from pgne.yamlfile import SURROGATE_RE, read_bounded, shown_path

ENV_REF_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
MAX_PASSWORD_FILE_BYTES = 64 * 1024


class TemplateCatalog(Protocol):
    """What validation needs to know about templates: does one exist, does it read labels.

    pgne.render.Renderer is one; a protocol so that validation does not import Jinja.
    """

    def problem(self, name: str, delivery: str = NOTIFY) -> str | None: ...

    def uses_labels(self, name: str, delivery: str = NOTIFY) -> bool: ...

    def uses_observed(self, name: str, delivery: str = NOTIFY) -> bool: ...


def validate(path: str, data: Any, templates: TemplateCatalog, base_dir: Path) -> Config:
    """The Config of `data` (read from `path`); UserError listing every problem."""
    try:
        errors, places = _schema_errors(path, data)
    except RecursionError:  # jsonschema recurses: a few hundred levels of nesting
        raise UserError(f"{path}: nested too deeply to be a pgne config") from None
    # Stage 2 checks every value that passed stage 1, so that all errors show at once.
    databases, cross_errors = _build(path, data, templates, base_dir, _Validity(places))
    if errors or cross_errors:
        raise UserError(errors + cross_errors)
    return Config(path=path, databases=tuple(databases))


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


MAX_SHOWN_VALUE = 100  # characters of a wrong value repeated in a message


def _shorten(error: jsonschema.ValidationError, message: str) -> str:
    """A wrong value is shown in its message, cut short: it may be a megabyte long."""
    shown = repr(error.instance)
    if len(shown) <= MAX_SHOWN_VALUE:
        return message
    return message.replace(shown, f"{shown[:MAX_SHOWN_VALUE]}... ("
                                  f"{len(shown):,} characters)")


def _schema_errors(path: str, data: Any) -> tuple[list[str], set[tuple]]:
    """(error lines, the paths in the data of the values they are about)."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    lines, places = [], set()
    for error in errors:
        message = _shorten(error, _hide_password(error, _schema_message(error)))
        lines.append(f"{path}: {_describe(data, list(error.absolute_path))}: {message}")
        places.add(tuple(error.absolute_path))
    return lines, places


class _Validity:
    """Which values passed stage 1: a value is usable when no schema error is about it or about
    anything inside it. Errors about its container (an unknown or a missing sibling key) do
    not make it unusable, so that stage 2 checks everything that can be checked."""

    def __init__(self, places: set[tuple]):
        self.prefixes = {place[:n] for place in places for n in range(len(place) + 1)}
        self.complete = not places

    def usable(self, place: tuple) -> bool:
        return place not in self.prefixes



def split_table(name: str) -> tuple[str, str]:
    """`schema.table` or `table` (schema public)."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", name)


def _resolve_password(entry: dict, where: str, base_dir: Path, errors: list[str],
                      usable: Callable[[str], bool] = lambda key: True) -> str | None:
    has_password, has_file = "password" in entry, "password_file" in entry
    if has_password and has_file:
        errors.append(f"{where}: give either password or password_file, not both")
        return None
    if not has_password and not has_file:
        errors.append(f"{where}: password or password_file is required")
        return None
    if not usable("password" if has_password else "password_file"):  # a schema error says why
        return None
    if has_password:
        match = ENV_REF_RE.match(entry["password"])
        if not match:
            return entry["password"]
        variable = match.group(1)
        if variable not in os.environ:
            errors.append(f"{where} > password: environment variable {variable} is not set")
            return None
        value = os.environ[variable]
        if SURROGATE_RE.search(value):  # bytes that are not UTF-8, kept by Python as surrogates
            errors.append(f"{where} > password: environment variable {variable} is not valid UTF-8")
            return None
        return value
    file_path = Path(os.path.expanduser(entry["password_file"]))
    if not file_path.is_absolute():
        file_path = base_dir / file_path
    try:
        text = read_bounded(file_path, MAX_PASSWORD_FILE_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        errors.append(f"{where} > password_file: cannot read {shown_path(file_path)}: {reason}")
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


def _build_monitor(raw: dict, where: str, templates: TemplateCatalog, errors: list[str],
                   delivery: str | None = NOTIFY, usable: Callable[[tuple], bool] = lambda place: True,
                   ) -> Monitor | None:
    """Cross-check a monitor's usable values (see _Validity); the Monitor if they all are.

    `usable` takes a place relative to the monitor; `delivery` is None when it is not usable
    (which templates exist depends on it)."""
    schema = table = None
    if "table" in raw and usable(("table",)):
        schema, table = split_table(raw["table"])
        _check_name_bytes("schema", schema, f"{where} > table", errors)
        _check_name_bytes("table", table, f"{where} > table", errors)

    events: list[str] = []
    raw_events = raw.get("events")
    for i, event in enumerate(raw_events if isinstance(raw_events, list) else []):
        if not usable(("events", i)):
            continue
        upper = event.upper()
        if upper not in EVENTS:  # "insert\n" passes the schema's pattern (Python's $)
            errors.append(f"{where} > events[{i}]: {event!r} is not one of insert, update, delete, "
                          f"truncate (any case)")
        elif upper in events:
            errors.append(f"{where} > events[{i}]: duplicate event {event!r}")
        else:
            events.append(upper)

    label_columns: list[LabelColumn] = []
    raw_columns = raw.get("columns_to_label")
    for i, item in enumerate(raw_columns if isinstance(raw_columns, list) else []):
        if not isinstance(item, dict) or len(item) != 1 or not isinstance(next(iter(item)), str):
            continue  # a schema error says what is wrong with it
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
        for j, value in enumerate(values if isinstance(values, list) else []):
            if not usable(("columns_to_label", i, column, j)):
                continue
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

    observed_columns = _build_observed(raw, where, label_columns, errors, usable)

    function = raw.get("function")
    if "function" in raw and usable(("function",)):
        # an unusable delivery: a template that exists in neither mode is still an error
        problems = [templates.problem(function, mode) for mode in ((delivery,) if delivery else (NOTIFY, OUTBOX))]
        problem = problems[0] if all(problems) else None
        if problem:
            errors.append(f"{where} > function: {problem}")
        elif label_columns and delivery and not templates.uses_labels(function, delivery):
            errors.append(f"{where} > columns_to_label: template {function!r} ignores columns_to_label "
                          f"(use notification_with_payload, or a template that reads columns_to_label)")
        if observed_columns and delivery and not templates.uses_observed(function, delivery):
            errors.append(f"{where} > columns_to_observe: template {function!r} ignores columns_to_observe "
                          f"(use notification_with_payload, or a template that reads columns_to_observe)")

    if schema is None:
        return None
    monitor = Monitor(
        schema=schema,
        table=table,
        enabled=raw.get("enabled"),
        function=function,
        events=tuple(events),
        label_columns=tuple(label_columns),
        observed_columns=tuple(observed_columns),
        location=where,
    )
    if delivery == NOTIFY and function == CHECKED_TEMPLATE:  # no statement's rows lost to NOTIFY's limit
        problem = payload_problem(monitor)
        if problem:
            errors.append(f"{where}: {problem}")
    return monitor


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond float's range
        return False


def _build_observed(raw: dict, where: str, label_columns: list[LabelColumn], errors: list[str],
                    usable: Callable[[tuple], bool]) -> list[ObservedColumn]:
    """The monitor's columns_to_observe: names unique and not label columns, buckets sorted,
    unique and finite. Whether a column is numeric only the database knows (pgne.drift)."""
    observed: list[ObservedColumn] = []
    raw_observed = raw.get("columns_to_observe")
    for i, item in enumerate(raw_observed if isinstance(raw_observed, list) else []):
        if not isinstance(item, dict) or not usable(("columns_to_observe", i)):
            continue  # a schema error says what is wrong with it
        place = f"{where} > columns_to_observe[{i}]"
        name, buckets = item["name"], item.get("buckets", [])
        _check_name_bytes("column", name, place, errors)
        if name in (c.name for c in observed):
            errors.append(f"{place}: duplicate observed column {name!r}")
        if name in (c.name for c in label_columns):
            errors.append(f"{place}: column {name!r} is also a label column: a column is either a label "
                          f"(columns_to_label) or observed (columns_to_observe), not both")
        bucket_errors = len(errors)
        for j, bound in enumerate(buckets):
            if not _finite(bound):
                errors.append(f"{place} > buckets[{j}]: {bound!r} is not a finite number (the +Inf bucket "
                              f"is always there)")
            elif j and _finite(buckets[j - 1]) and bound <= buckets[j - 1]:
                errors.append(f"{place} > buckets[{j}]: {bound!r} is not greater than {buckets[j - 1]!r}: "
                              f"buckets are sorted and unique")
        if len(errors) == bucket_errors:
            observed.append(ObservedColumn(name, tuple(float(b) for b in buckets), item.get("unit")))
    return observed


def _raw_monitors(data: Any):
    """Every monitor mapping of the raw data, whatever else is wrong around it."""
    for host_entry in data if isinstance(data, list) else []:
        for entries in host_entry.values() if isinstance(host_entry, dict) else []:
            for entry in entries if isinstance(entries, list) else []:
                monitors = entry.get("monitors") if isinstance(entry, dict) else None
                yield from (m for m in (monitors if isinstance(monitors, list) else []) if isinstance(m, dict))


def _observed_label_collisions(path: str, data: Any, monitors: list[Monitor]) -> list[str]:
    """The histograms add the labels `column` and `le` to those of pgne_events_total, whose label
    names are the config's label columns: in a config that observes a column (columns_to_observe
    given anywhere, valid or not), no label column may be named so (a config that observes
    nothing keeps them)."""
    if not any(m.get("columns_to_observe") for m in _raw_monitors(data)):
        return []
    return [f"{path}: {m.location} > columns_to_label[{i}]: label column {c.name!r} collides with the "
            f"label {c.name!r} of the histograms of columns_to_observe (they add: {', '.join(OBSERVED_LABELS)})"
            for m in monitors for i, c in enumerate(m.label_columns) if c.name in OBSERVED_LABELS]


def _build(path: str, data: Any, templates: TemplateCatalog, base_dir: Path,
           validity: _Validity) -> tuple[list[Database], list[str]]:
    """Stage 2 over every usable value, also in entries that have schema errors (so that every
    error shows at once); the Databases are complete only when stage 1 found nothing."""
    errors: list[str] = []
    databases: list[Database] = []
    seen_databases: dict[tuple[str, int, str], int] = {}  # -> entry number, for messages
    number = 0
    monitors: list[Monitor] = []
    for i, host_entry in enumerate(data if isinstance(data, list) else []):
        if not isinstance(host_entry, dict):
            continue
        for host, entries in host_entry.items():
            if not isinstance(host, str) or not isinstance(entries, list):
                continue
            for j, entry in enumerate(entries):
                number += 1
                if not isinstance(entry, dict):
                    continue
                database = _build_database(path, data, (i, host, j), entry, number, templates, base_dir,
                                           validity, seen_databases, errors, monitors)
                if database is not None:
                    databases.append(database)
    return databases, errors + _observed_label_collisions(path, data, monitors)


def _build_database(path: str, data: Any, at: tuple, entry: dict, number: int, templates: TemplateCatalog,
                    base_dir: Path, validity: _Validity, seen_databases: dict, errors: list[str],
                    all_monitors: list[Monitor]) -> Database | None:
    host = at[1]
    where = _describe(data, list(at))

    def usable(key: str) -> bool:
        return key in entry and validity.usable((*at, key))

    password = _resolve_password(entry, f"{path}: {where}", base_dir, errors, usable)
    port = int(entry.get("port", DEFAULT_PORT)) if usable("port") or "port" not in entry else None
    if port is not None and usable("database"):  # JSON Schema's integer accepts 5432.0: int() above
        key = (host, port, entry["database"])
        if key in seen_databases:
            errors.append(f"{path}: {where}: duplicate database {host}:{port}/{entry['database']} "
                          f"(database entries #{seen_databases[key]} and #{number} of the file)")
        seen_databases.setdefault(key, number)
    channel = entry.get("channel", DEFAULT_CHANNEL)
    delivery = entry.get("delivery", NOTIFY) if usable("delivery") or "delivery" not in entry else None
    if "drain_interval" in entry and delivery is not None and delivery != OUTBOX:
        errors.append(f"{path}: {where} > drain_interval: only used with delivery: outbox")
    if "notify_with_prepared_transactions" in entry and delivery is not None and delivery != NOTIFY:
        errors.append(f"{path}: {where} > notify_with_prepared_transactions: only used with delivery: notify")
    if usable("drain_interval") and math.isnan(entry["drain_interval"]):  # NaN passes every bound
        errors.append(f"{path}: {where} > drain_interval: .nan is not a number of seconds")
    if usable("channel"):
        _check_name_bytes("channel", channel, f"{path}: {where} > channel", errors)
        if channel == APPLIED_CHANNEL:
            errors.append(f"{path}: {where} > channel: {APPLIED_CHANNEL} is pgne's own channel (pgne apply "
                          "tells the running workers on it); choose another")
    for key in ("database", "username", "tag"):
        if usable(key):
            _check_no_nul(key, entry[key], f"{path}: {where} > {key}", errors)
    _check_no_nul("host", host, f"{path}: {where}", errors)
    if password is not None:
        _check_no_nul("password", password, f"{path}: {where} > password", errors, show=False)

    monitors: list[Monitor] = []
    seen_tables: dict[tuple[str, str], str] = {}
    raw_monitors = entry.get("monitors")
    for k, raw_monitor in enumerate(raw_monitors if isinstance(raw_monitors, list) else []):
        if not isinstance(raw_monitor, dict):
            continue
        place = (*at, "monitors", k)
        mwhere = _describe(data, list(place))
        monitor_errors: list[str] = []
        monitor = _build_monitor(raw_monitor, mwhere, templates, monitor_errors, delivery,
                                 lambda relative, place=place: validity.usable((*place, *relative)))
        errors.extend(f"{path}: {line}" for line in monitor_errors)
        if monitor is None:
            continue
        table_key = (monitor.schema, monitor.table)
        if table_key in seen_tables:
            errors.append(f"{path}: {mwhere} > table: duplicate table {monitor.qualified_name!r} "
                          f"(also at {seen_tables[table_key]})")
        seen_tables.setdefault(table_key, mwhere)
        monitors.append(monitor)
    all_monitors.extend(monitors)

    if not validity.complete:
        return None
    return Database(
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
        notify_with_prepared_transactions=entry.get("notify_with_prepared_transactions", False),
        location=where,
    )
