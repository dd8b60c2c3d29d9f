"""The one events_config.yml builder of the suite.

`database_entry(db, monitors, **options)` is one database of a config for a `Database` (or
anything with .name, .host, .port, .user, .password); `config_text(*entries)` is the file,
entries grouped under their host. Monitors are YAML text (used as it is, dedented) or a list
of dicts. Every scalar is written as a YAML double-quoted (or JSON) scalar, so any text survives.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import yaml

from support.databases import host_label  # noqa: F401 - the label of a config entry's host

TAG = "it"  # the tag of the config entries of tests/integration
RELIABILITY_TAG = "rel"  # ... and of tests/reliability


def _scalar(value: Any) -> str:
    """A one-line YAML scalar: strings double-quoted (with YAML's own escapes, so line breaks
    and characters YAML may not carry raw survive), anything else as JSON (true, 5432, 0.1)."""
    if isinstance(value, str):
        return yaml.safe_dump(value, default_style='"', allow_unicode=True, width=float("inf")).rstrip("\n")
    return json.dumps(value)


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line if line.strip() else line
                   for line in textwrap.dedent(text).strip("\n").splitlines(keepends=True)) + "\n"


def monitors_text(monitors: str | Sequence[Mapping[str, Any]]) -> str:
    """Monitors as YAML text: given text is used as it is (dedented), a list of dicts is dumped."""
    if isinstance(monitors, str):
        return textwrap.dedent(monitors).strip("\n") + "\n"
    return yaml.safe_dump(list(monitors), sort_keys=False, allow_unicode=True, default_flow_style=False)


@dataclass(frozen=True)
class DatabaseEntry:
    """One database of an events_config.yml: its host (the mapping key above it) and its text."""

    host: str
    text: str


def database_entry(db: Any, monitors: str | Sequence[Mapping[str, Any]], *, tag: str = TAG,
                   perform_setup: bool = True, enabled: bool = True, **options: Any) -> DatabaseEntry:
    """Database `db` of a config. `options` override the keys taken from `db` (database,
    username, password: the handle's, else ""; port) and add others (channel, delivery,
    password_file, ...); a value of None leaves a key out (`password=None` with password_file).
    `host` is the host key the entry sits under (db.host by default)."""
    host = options.pop("host", db.host)
    keys: dict[str, Any] = {"database": db.name, "tag": tag, "perform_setup": perform_setup,
                            "username": db.user, "password": getattr(db, "password", None) or "",
                            "enabled": enabled, "port": int(db.port)}
    keys.update(options)
    lines = [f"- {key}: {_scalar(value)}" if i == 0 else f"  {key}: {_scalar(value)}"
             for i, (key, value) in enumerate((k, v) for k, v in keys.items() if v is not None)]
    lines.append("  monitors:")
    return DatabaseEntry(host, "\n".join(lines) + "\n" + _indent(monitors_text(monitors), "  "))


def config_text(*entries: DatabaseEntry) -> str:
    """events_config.yml text: entries grouped under their host, in order of first appearance."""
    hosts: dict[str, list[str]] = {}
    for entry in entries:
        hosts.setdefault(entry.host, []).append(entry.text)
    out = []
    for host, texts in hosts.items():
        out.append(f"- {_scalar(host)}:\n")
        out.extend(_indent(text, "  ") for text in texts)
    return "".join(out)
