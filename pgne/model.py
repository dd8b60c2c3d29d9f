"""The config's model: frozen dataclasses and the constants they use.

What pgne.config returns, and what every other module (render, apply, the worker) reads:
nothing downstream sees the raw YAML. Imported by workers, so it imports neither YAML nor
jsonschema nor prometheus_client.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pgne.errors import UserError

DEFAULT_PORT = 5432
DEFAULT_CHANNEL = "pg_notify_exporter"  # the channel pg_notify_exporter listened on
# `pgne apply` NOTIFYs it after it changed a database; the workers connected to that database
# LISTEN on it and check their triggers and setup problems again at once. No config may use it.
APPLIED_CHANNEL = "pgne_applied"
DEFAULT_CONNECT_TIMEOUT = 10

EVENTS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
BUILTIN_LABELS = ("operation", "host", "database", "tag", "schema", "table")
OTHER = "other"  # the label value of anything outside a whitelist
NOTIFY, OUTBOX = "notify", "outbox"  # delivery modes
DEFAULT_DRAIN_INTERVAL = 1.0
# \Z, not $: Python's $ also matches before a trailing newline ("code\n" is no label name).
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")
# A histogram's unit ends its family name (pgne_observed_<unit>): lower case words joined by _.
UNIT_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*\Z")
OBSERVED_PREFIX = "pgne_observed_"
UNITLESS = "values"  # the family of a column observed without a unit: pgne_observed_values
# Labels the histograms add to those of pgne_events_total: no label column may be named so in
# a config that observes a column.
OBSERVED_LABELS = ("column", "le")


@dataclass(frozen=True)
class LabelColumn:
    """A column whose values become a label; values outside `values` count as `other`."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class ObservedColumn:
    """A numeric column whose values pgne observes in a histogram (columns_to_observe)."""

    name: str
    buckets: tuple[float, ...] = ()  # upper bounds (le), sorted, finite; +Inf is implicit
    unit: str | None = None

    @property
    def family(self) -> str:
        """The histogram's name: pgne_observed_<unit>, or pgne_observed_values without one."""
        return OBSERVED_PREFIX + (self.unit or UNITLESS)

    @property
    def bounds(self) -> tuple[str, ...]:
        """Each bucket's bound as the SQL constant and payload key pgne writes for it: an integer
        where the bound is one (so that an integer column is compared as integers, not converted
        to numeric for every row and bound), else the float's shortest decimal (a numeric constant)."""
        return tuple(str(int(b)) if b.is_integer() and abs(b) < 2**63 else repr(b) for b in self.buckets)


@dataclass(frozen=True)
class Monitor:
    schema: str
    table: str
    enabled: bool
    function: str  # template name
    events: tuple[str, ...]  # upper case, in config order
    label_columns: tuple[LabelColumn, ...] = ()
    observed_columns: tuple[ObservedColumn, ...] = ()
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
    # delivery: notify where the server allows prepared transactions: refused unless this is set
    notify_with_prepared_transactions: bool = False
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
    def observes(self) -> bool:
        return any(m.observed_columns for d in self.databases for m in d.monitors)

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
