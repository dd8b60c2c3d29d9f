"""One plain function per subcommand; pgne/cli.py is the thin argparse layer on top."""
from __future__ import annotations

import sys
from typing import TextIO

import psycopg2

from pgne.apply import apply_database, pg_error_text
from pgne.drift import find_differences, read_inventory
from pgne.errors import EXIT_OK, EXIT_RUNTIME
from pgne.model import Config
from pgne.render import Renderer


def check(config: Config, renderer: Renderer, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    renderer.check(config)
    hosts = {d.host for d in config.databases}
    monitors = [m for d in config.databases for m in d.monitors]
    enabled_monitors = [m for d in config.databases for m in d.enabled_monitors]
    triggers = sum(len(m.events) for m in enabled_monitors)
    print(f"{config.path}: valid: {len(hosts)} host{'s' * (len(hosts) != 1)}, "
          f"{len(config.databases)} database{'s' * (len(config.databases) != 1)} "
          f"({len(config.enabled_databases)} enabled), {len(monitors)} monitor{'s' * (len(monitors) != 1)} "
          f"({len(enabled_monitors)} enabled), {triggers} trigger{'s' * (triggers != 1)}", file=out)
    return EXIT_OK


def render_sql(config: Config, renderer: Renderer, host: str | None = None, database: str | None = None,
               out: TextIO | None = None, replace_legacy: bool = False, prune: bool = False) -> int:
    out = out or sys.stdout
    out.write(renderer.render_config(config.select(host, database), replace_legacy=replace_legacy, prune=prune))
    return EXIT_OK


def apply(config: Config, renderer: Renderer, host: str | None = None, database: str | None = None,
          dry_run: bool = False, prune: bool = False, out: TextIO | None = None,
          replace_legacy: bool = False) -> int:
    out = out or sys.stdout
    failed = False
    for db in config.select(host, database):
        result = apply_database(db, renderer, dry_run=dry_run, prune=prune, replace_legacy=replace_legacy)
        failed |= not result.ok
        print(result.line(), file=out, flush=True)
    return EXIT_RUNTIME if failed else EXIT_OK


def status(config: Config, renderer: Renderer, host: str | None = None, database: str | None = None,
           out: TextIO | None = None) -> int:
    """Compare each enabled database with the config: exit 0 in sync, 1 drift (or unreachable)."""
    out = out or sys.stdout
    drift = False
    rows: list[tuple[str, str, str]] = []
    for db in config.select(host, database):
        if not db.enabled:
            continue
        try:
            conn = psycopg2.connect(**db.connect_kwargs())
        except psycopg2.Error as exc:
            rows.append((db.display_name, "unreachable", pg_error_text(exc)))
            drift = True
            continue
        try:
            conn.autocommit = True
            diffs = find_differences(read_inventory(conn, db, renderer), db, renderer)
        finally:
            conn.close()
        if not diffs:
            rows.append((db.display_name, "in sync", ""))
        for diff in diffs:
            rows.append((db.display_name, diff.kind.replace("_", " "), diff.what))
        drift |= bool(diffs)
    widths = [max(len(r[i]) for r in rows + [("DATABASE", "STATE", "")]) for i in range(2)]
    print(f"{'DATABASE':<{widths[0]}}  {'STATE':<{widths[1]}}  OBJECT", file=out)
    for name, state, what in rows:
        print(f"{name:<{widths[0]}}  {state:<{widths[1]}}  {what}".rstrip(), file=out)
    return EXIT_RUNTIME if drift else EXIT_OK
