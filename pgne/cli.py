"""The `pgne` command line: a thin argparse layer over pgne.commands.

User errors (UserError) are caught here, once: message lines on stderr and the exit status
they carry (pgne.errors: 2 for an invalid config or usage, 1 for a runtime failure, 3 when `run`
cannot listen). No traceback unless --debug.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

from pgne import __version__, commands, logs
from pgne.config import config_path, load_config
from pgne.errors import EXIT_RUNTIME, UserError
from pgne.render import DEFAULT_LOCK_TIMEOUT, Renderer
from pgne.shard import shard_from_flags


def _number_up_to(maximum: float, unit: str = "") -> Callable[[str], float]:
    """An argparse type: a number in (0, maximum]."""
    suffix = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number{' of ' + unit if unit else ''}") from None
        if not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and {maximum:g}{suffix}")
        return value

    return parse


_positive_seconds = _number_up_to(3600, "seconds")
_demo_rate = _number_up_to(1000)

RESERVED_PATHS = ("/", "/-/healthy", "/-/ready", "/-/reload")
RUN_ENDPOINTS = """HTTP endpoints (behind --web.config.file's TLS and basic auth, all of them):
  GET /metrics       the metrics (the path of --web.telemetry-path); gzip when the
                     request's Accept-Encoding asks for it, else the plain bytes
  GET /              a landing page: the databases and their state
  GET /-/healthy     200 while the master runs
  GET /-/ready       503 until every enabled database's worker has started once
                     (ran for 1 s, connected or not), then 200
  POST /-/reload     with --web.enable-lifecycle: reloads the config as SIGHUP does (PUT too);
                     200 once done, 500 with the reason if the new config is invalid
                     (the running config stays); without the flag 403; GET on it 405
  HEAD               on every GET endpoint: the GET's status and headers, no body
Processes: the master, its launcher (python -m pgne.launcher_process), which forks one
worker per database (the workers share its imported code); no temporary file is needed.
Signals: SIGHUP reloads the config; SIGTERM or SIGINT stops (exit 0)."""


def _telemetry_path(text: str) -> str:
    """An argparse type: --web.telemetry-path, an absolute URL path of its own."""
    if not text.startswith("/") or any(c in text for c in "?#") or not text.isprintable() or " " in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL path such as /metrics")
    if text in RESERVED_PATHS:
        raise argparse.ArgumentTypeError(f"{text!r} is pgne's own endpoint")
    return text


def _whole_number_from(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is less than {minimum}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    logging_options = argparse.ArgumentParser(add_help=False)  # every command's, demo's too
    logging_options.add_argument("--log-level", "--log.level", dest="log_level", default="INFO", type=str.upper,
                                 choices=["DEBUG", "INFO", "WARNING", "ERROR"], metavar="LEVEL",
                                 help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    logging_options.add_argument("--log.format", dest="log_format", choices=logs.FORMATS,
                                 help="logfmt: key=value pairs, json: one JSON object per line, each with "
                                      "the database in a field of its own (default: pgne's plain lines)")
    logging_options.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")

    common = argparse.ArgumentParser(add_help=False, parents=[logging_options])
    common.add_argument("-c", "--config", help="config file (default: $PGNE_CONFIG, else config/events_config.yml)")
    common.add_argument("--templates", action="append", default=[], metavar="DIR",
                        help="a folder of SQL templates searched before the built-in ones (repeatable)")

    select = argparse.ArgumentParser(add_help=False)
    select.add_argument("--host", help="only the databases of this host")
    select.add_argument("--database", help="only databases of this name")

    lock = argparse.ArgumentParser(add_help=False)
    lock.add_argument("--lock-timeout", type=_positive_seconds, default=DEFAULT_LOCK_TIMEOUT, metavar="SECONDS",
                      help=f"lock_timeout for DDL on application tables (default {DEFAULT_LOCK_TIMEOUT:g})")

    parser = argparse.ArgumentParser(prog="pgne", description="PostgreSQL LISTEN/NOTIFY exporter for Prometheus.")
    parser.add_argument("--version", action="version", version=f"pgne {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("check", parents=[common], help="validate the config and its templates")
    legacy = argparse.ArgumentParser(add_help=False)
    legacy.add_argument("--replace-legacy", action="store_true",
                        help="drop pg_notify_exporter's triggers on the monitored tables in the transaction "
                             "that installs pgne's (without it, apply refuses to install beside them)")
    p_render = sub.add_parser("render-sql", parents=[common, select, lock, legacy],
                              help="print the SQL that apply would run, without connecting")
    p_render.add_argument("--prune", action="store_true",
                          help="also print the script that apply --prune runs after each database's: it drops "
                               "the pgne triggers and functions that the config does not name, found when it runs")
    p_apply = sub.add_parser("apply", parents=[common, select, lock, legacy],
                             help="install/update/remove pgne's triggers and functions")
    p_apply.add_argument("--dry-run", action="store_true", help="change nothing; say what would run")
    p_apply.add_argument("--prune", action="store_true",
                         help="also drop pgne triggers and functions that the config no longer names")
    p_run = sub.add_parser("run", parents=[common, lock], help="run the exporter", epilog=RUN_ENDPOINTS,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    # the exporter conventions (Prometheus exporter-toolkit's names; --listen-address kept)
    p_run.add_argument("--web.listen-address", "--listen-address", dest="listen_address", default="0.0.0.0:9292",
                       metavar="HOST:PORT", help="where the HTTP server listens (default 0.0.0.0:9292)")
    p_run.add_argument("--web.telemetry-path", dest="telemetry_path", type=_telemetry_path, default="/metrics",
                       metavar="PATH", help="the path of the metrics (default /metrics); HEAD too, and gzip when "
                                            "the scraper accepts it")
    p_run.add_argument("--web.enable-lifecycle", dest="enable_lifecycle", action="store_true",
                       help="allow POST /-/reload (see below); without this flag it answers 403")
    p_run.add_argument("--state-dir", metavar="DIR",
                       help="multiprocess metrics directory (default: $PROMETHEUS_MULTIPROC_DIR, "
                            "else a private temporary directory)")
    p_run.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                       help="TLS and basic auth for the HTTP server (Prometheus exporter-toolkit format)")
    p_run.add_argument("--compat-metric", action="store_true",
                       help="also export pg_notify_exporter's series `pg_notify_exporter` (labels operation, host, "
                            "tag, database, table=schema.table and the label columns), counted from the same "
                            "events as pgne_events_total")
    p_run.add_argument("--trigger-check-interval", type=_positive_seconds, default=60.0, metavar="SECONDS",
                       help="how often workers check that pgne's triggers exist (default 60)")
    # Sharding across replicas (pgne.shard): kube-state-metrics' flags, both or neither.
    p_run.add_argument("--shard", type=_whole_number_from(0), metavar="N",
                       help="run only the databases of shard N (0 to M-1) of --total-shards M: a stable hash of "
                            "each database's host, port and name, modulo M, picks its shard, so M replicas "
                            "started from one config (--shard 0 .. M-1) run every database exactly once, and "
                            "adding a database moves no other (changing M moves most); the others are not "
                            "served (no series, no landing-page row)")
    p_run.add_argument("--total-shards", type=_whole_number_from(1), metavar="M",
                       help="how many replicas share the config (with --shard)")
    sub.add_parser("status", parents=[common, select], help="compare the databases with the config")
    p_demo = sub.add_parser("demo", parents=[logging_options],
                            help="try pgne: a demo table, its triggers, the exporter and sample writes "
                                 "(no config needed); Ctrl-C removes it all")
    p_demo.add_argument("--dsn", help="the database to play in, e.g. 'host=127.0.0.1 dbname=postgres "
                                      "user=postgres' or a URI; without it, an embedded PostgreSQL server of "
                                      "the demo's own (pip install '.[embedded]' in the pgne checkout)")
    p_demo.add_argument("--listen-address", default="127.0.0.1:9292", metavar="HOST:PORT",
                        help="where the exporter serves /metrics (default 127.0.0.1:9292)")
    p_demo.add_argument("--rate", type=_demo_rate, default=5.0, metavar="N",
                        help="sample statements per second (default 5)")
    return parser


# Options that name files or folders, as (attribute, flag). Python refuses a NUL in a path with a
# ValueError deep inside a command; argv cannot carry one, but callers of main() can.
PATH_OPTIONS = (("config", "-c/--config"), ("templates", "--templates"), ("state_dir", "--state-dir"),
                ("web_config_file", "--web.config.file"))


def _check_paths(args: argparse.Namespace) -> None:
    errors = []
    for attribute, flag in PATH_OPTIONS:
        values = getattr(args, attribute, None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and "\x00" in value:
                errors.append(f"{flag} {value!r}: a path cannot contain a NUL character")
    if errors:
        raise UserError(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        _check_paths(args)
        shard = shard_from_flags(args.shard, args.total_shards) if args.command == "run" else None
        if args.command == "demo":  # needs no config file
            return commands.demo(args.dsn, args.listen_address, rate=args.rate, log_level=args.log_level,
                                 log_format=args.log_format)
        renderer = Renderer(args.templates, lock_timeout=getattr(args, "lock_timeout", DEFAULT_LOCK_TIMEOUT))
        path = config_path(args.config)
        config = load_config(path, renderer)
        if args.command == "check":
            return commands.check(config, renderer)
        if args.command == "render-sql":
            return commands.render_sql(config, renderer, args.host, args.database,
                                       replace_legacy=args.replace_legacy, prune=args.prune)
        if args.command == "apply":
            return commands.apply(config, renderer, args.host, args.database, dry_run=args.dry_run, prune=args.prune,
                                  replace_legacy=args.replace_legacy)
        if args.command == "status":
            return commands.status(config, renderer, args.host, args.database)
        if args.command == "run":
            return commands.run(config, renderer, args.listen_address, state_dir=args.state_dir,
                                web_config_file=args.web_config_file, log_level=args.log_level,
                                trigger_check_interval=args.trigger_check_interval,
                                compat_metric=args.compat_metric, log_format=args.log_format,
                                telemetry_path=args.telemetry_path, enable_lifecycle=args.enable_lifecycle,
                                shard=shard)
        raise AssertionError(args.command)
    except UserError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pgne render-sql | head`
        return EXIT_RUNTIME
    except Exception as exc:  # a bug: say so plainly
        if args.debug:
            traceback.print_exc()
        print(f"pgne: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_RUNTIME
