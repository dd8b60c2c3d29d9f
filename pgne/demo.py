"""`pgne demo [--dsn DSN]`: pgne working on a database of the user's, or on an embedded
PostgreSQL server of its own (pgne.commands.demo starts it), in one command.

It creates schema `pgne_demo` with a table `orders`, writes a config for it (perform_setup,
so the exporter installs its own triggers), runs `pgne run` on that config as a child
process, and writes a trickle of sample rows until Ctrl-C or SIGTERM. Then it stops the
exporter and removes what it created: pgne's triggers and functions (the teardown that
`enabled: false` runs) and schema `pgne_demo`.

Signal handlers only set a flag and wake the writer's select() through signal.set_wakeup_fd.
"""
from __future__ import annotations

import dataclasses
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import psycopg2.extensions
import yaml
from psycopg2 import sql

from pgne.address import parse_listen_address, url_host
from pgne.apply import apply_database
from pgne.config import load_config
from pgne.errors import EXIT_OK, EXIT_RUNTIME, UserError, first_line
from pgne.model import Config
from pgne.protocol import die_with_parent
from pgne.render import SCHEMA, Renderer, function_name
from pgne.statedir import ENV_VARIABLE

DEMO_SCHEMA = "pgne_demo"
DEMO_TABLE = "orders"
DEMO_CHANNEL = "pgne_demo"  # not pg_notify_exporter's: another pgne on this database hears nothing
DEMO_MARK = "pgne demo: created by `pgne demo`, dropped when it stops"  # COMMENT ON SCHEMA
SUPPLIERS = ("acme", "globex", "initech")  # the whitelist of the label column `supplier`
AMOUNT_BUCKETS = (10, 50, 100, 250, 500)  # the histogram of `amount` (columns_to_observe): 5 to 500 euros
UNLISTED_SUPPLIER = "umbrella"  # not whitelisted: counted as `other`
DEFAULT_RATE = 5.0
READY_TIMEOUT = 60.0  # connect, set up, LISTEN
STOP_TIMEOUT = 15.0  # pgne run exits within 10 s of SIGTERM
# DSN keywords that the config can carry; others are reported as ignored.
CONFIG_KEYWORDS = {"host", "hostaddr", "port", "dbname", "user", "password", "sslmode", "connect_timeout",
                   "application_name"}


def _database_up(metrics: str, database: str) -> bool:
    """Whether the /metrics text `metrics` says pgne_database_up 1 for `database`."""
    # Imported here: the demo's own process counts nothing, but at the top this module would
    # bring prometheus_client into every pgne command, `run` too, before its state dir is set.
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return any(sample.value == 1 and sample.labels.get("database") == database
                   for family in text_string_to_metric_families(metrics) if family.name == "pgne_database_up"
                   for sample in family.samples)
    except ValueError:  # not /metrics (yet)
        return False


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop and clean up."""


class Demo:
    def __init__(self, dsn: str, listen_address: str, rate: float = DEFAULT_RATE, log_level: str = "INFO",
                 out=None, log_format: str | None = None):
        self.dsn = dsn
        self.listen_address = listen_address
        self.rate = rate
        self.log_level = log_level
        self.log_format = log_format  # --log.format, passed on to its pgne run
        self.out = out or sys.stdout
        self.stop_signal: int | None = None
        self.wakeup_r, self.wakeup_w = os.pipe()
        for fd in (self.wakeup_r, self.wakeup_w):
            os.set_blocking(fd, False)
        self.workdir = tempfile.mkdtemp(prefix="pgne-demo-")
        self.conn = None
        self.config: Config | None = None
        self.exporter: subprocess.Popen | None = None
        self.created = False  # schema pgne_demo exists and is ours to drop
        self.drop_pgne_schema = False  # schema pgne holds nothing but the demo's objects: drop it at the end

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_signal = signum  # only a flag: the loops act on it

    def wait(self, seconds: float) -> None:
        """Sleep, but raise Stopped at once when a stop signal arrives."""
        deadline = time.monotonic() + seconds
        while self.stop_signal is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            select.select([self.wakeup_r], [], [], remaining)
            try:
                os.read(self.wakeup_r, 512)
            except BlockingIOError:
                pass
        raise Stopped()

    # -- setup ---------------------------------------------------------------------------

    def connect(self):
        try:
            conn = psycopg2.connect(self.dsn)
        except psycopg2.Error as exc:
            raise UserError(f"pgne demo: cannot connect with --dsn: {first_line(exc)}",
                            exit_code=EXIT_RUNTIME) from None
        conn.autocommit = True
        return conn

    def create_tables(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
                        (DEMO_SCHEMA,))
            row = cur.fetchone()
            if row is not None and row[0] != DEMO_MARK:
                raise UserError(f"pgne demo: schema {DEMO_SCHEMA} already exists and was not created by "
                                f"pgne demo; nothing was changed")
            if row is not None:  # left over by a demo that was killed: start afresh
                cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(DEMO_SCHEMA)))
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(DEMO_SCHEMA)))
            self.created = True
            cur.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(DEMO_SCHEMA),
                                                                     sql.Literal(DEMO_MARK)))
            cur.execute(sql.SQL("CREATE TABLE {}.{} (id bigserial PRIMARY KEY, supplier text NOT NULL, "
                                "amount numeric(10, 2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
                        .format(sql.Identifier(DEMO_SCHEMA), sql.Identifier(DEMO_TABLE)))

    def pgne_schema_is_ours(self, demo_function: str) -> bool:
        """True unless schema pgne holds something besides the demo's trigger function: then
        pgne is really in use here, and only the demo's own triggers and function are removed."""
        with self.conn.cursor() as cur:
            cur.execute("""
                SELECT (SELECT count(*) FROM pg_catalog.pg_proc
                        WHERE pronamespace = n.oid AND proname <> %(function)s)
                     + (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = n.oid)
                     + (SELECT count(*) FROM pg_catalog.pg_type
                        WHERE typnamespace = n.oid AND typrelid = 0 AND typelem = 0)
                FROM pg_catalog.pg_namespace n WHERE n.nspname = %(schema)s
                """, {"function": demo_function, "schema": SCHEMA})
            row = cur.fetchone()
        return row is None or row[0] == 0

    def write_config(self) -> Path:
        """The demo's events_config.yml; the password goes to a file beside it, not in it."""
        info = self.conn.info
        options = psycopg2.extensions.parse_dsn(self.dsn)
        ignored = sorted(set(options) - CONFIG_KEYWORDS)
        if ignored:
            self.say(f"pgne demo: the exporter ignores these --dsn options: {', '.join(ignored)}")
        password_file = Path(self.workdir, "password")
        password_file.touch(mode=0o600)
        password_file.write_text(info.password or "", encoding="utf-8")
        entry = {
            "database": info.dbname,
            "tag": "demo",
            "perform_setup": True,
            "username": info.user,
            "password_file": str(password_file),
            "enabled": True,
            "port": int(info.port),
            "channel": DEMO_CHANNEL,
            "monitors": [{
                "table": f"{DEMO_SCHEMA}.{DEMO_TABLE}",
                "enabled": True,
                "function": "notification_with_payload",
                "columns_to_label": [{"supplier": list(SUPPLIERS)}],
                "columns_to_observe": [{"name": "amount", "buckets": list(AMOUNT_BUCKETS), "unit": "euros"}],
                "events": ["insert", "update", "delete"],
            }],
        }
        for keyword in ("sslmode", "connect_timeout"):
            if keyword in options:
                entry[keyword] = int(options[keyword]) if keyword == "connect_timeout" else options[keyword]
        path = Path(self.workdir, "events_config.yml")
        path.write_text(yaml.safe_dump([{info.host: [entry]}], sort_keys=False), encoding="utf-8")
        return path

    # -- the exporter ------------------------------------------------------------------------

    def start_exporter(self, config_path: Path) -> None:
        def die_with_us() -> None:  # runs in the child: SIGTERM it if the demo dies, even by SIGKILL
            die_with_parent(signal.SIGTERM)

        command = [sys.executable, "-m", "pgne", "run", "-c", str(config_path), "--listen-address",
                   self.listen_address, "--state-dir", str(Path(self.workdir, "state")), "--log-level", self.log_level]
        if self.log_format:
            command += ["--log.format", self.log_format]
        env = {k: v for k, v in os.environ.items() if k not in ("PGNE_CONFIG", ENV_VARIABLE)}
        # Ctrl-C reaches the exporter too (same process group): it stops by itself, as it should.
        self.exporter = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                         preexec_fn=die_with_us if sys.platform.startswith("linux") else None)

    def exporter_url(self, path: str = "/", shown: bool = True) -> str:
        """The exporter's URL for the user to open (`shown`: localhost for any local address), or
        for the demo itself to fetch (a wildcard address stands for the loopback one)."""
        host, port = parse_listen_address(self.listen_address)
        if shown:
            host = {"0.0.0.0": "localhost", "::": "localhost", "127.0.0.1": "localhost"}.get(host, host)
        else:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{url_host(host)}:{port}{path}"

    def wait_until_listening(self) -> None:
        """Poll /metrics until the demo database's pgne_database_up is 1."""
        url = self.exporter_url("/metrics", shown=False)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self.check_exporter()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    text = response.read().decode("utf-8", "replace")
            except (OSError, urllib.error.URLError):
                text = ""
            if _database_up(text, self.conn.info.dbname):
                return
            if time.monotonic() > deadline:
                raise UserError(f"pgne demo: the exporter is not listening on the demo database after "
                                f"{READY_TIMEOUT:.0f} s (its log is above)", exit_code=EXIT_RUNTIME)
            self.wait(0.2)

    def check_exporter(self) -> None:
        """Raise Stopped if we are stopping (Ctrl-C also stops the exporter), UserError if the
        exporter exited by itself."""
        if self.stop_signal is not None:
            raise Stopped()
        if self.exporter.poll() is not None:
            raise UserError(f"pgne demo: the exporter exited with status {self.exporter.returncode} "
                            f"(its log is above)", exit_code=EXIT_RUNTIME)

    def stop_exporter(self) -> None:
        if self.exporter is None:
            return
        if self.exporter.poll() is None:
            self.exporter.terminate()
        try:
            self.exporter.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.say("pgne demo: the exporter did not stop; killing it")
            self.exporter.kill()
            self.exporter.wait()

    # -- the writer ------------------------------------------------------------------------

    def write_rows(self) -> None:
        """One statement every 1/rate seconds, until stopped: mostly INSERTs, every 4th an
        UPDATE and every 10th a DELETE (of the oldest row, so the table stays small).
        Suppliers come round in shuffled rounds that include the unlisted one."""
        table = sql.SQL("{}.{}").format(sql.Identifier(DEMO_SCHEMA), sql.Identifier(DEMO_TABLE))
        insert = sql.SQL("INSERT INTO {} (supplier, amount) VALUES (%s, %s)").format(table)
        update = sql.SQL("UPDATE {0} SET amount = amount + 1 WHERE id = (SELECT max(id) FROM {0})").format(table)
        delete = sql.SQL("DELETE FROM {0} WHERE id = (SELECT min(id) FROM {0})").format(table)
        interval, round_, n = 1.0 / self.rate, [], 0
        next_at = time.monotonic()
        while True:
            self.check_exporter()
            n += 1
            try:
                with self.conn.cursor() as cur:
                    if n % 10 == 0:
                        cur.execute(delete)
                    elif n % 4 == 0:
                        cur.execute(update)
                    else:
                        if not round_:
                            round_ = random.sample(SUPPLIERS + (UNLISTED_SUPPLIER,), len(SUPPLIERS) + 1)
                        cur.execute(insert, (round_.pop(), round(random.uniform(5, 500), 2)))
            except psycopg2.Error as exc:
                raise UserError(f"pgne demo: writing sample rows failed: {first_line(exc)}",
                                exit_code=EXIT_RUNTIME) from None
            next_at = max(next_at + interval, time.monotonic())
            self.wait(next_at - time.monotonic())

    # -- teardown ------------------------------------------------------------------------

    def teardown(self) -> bool:
        """Remove pgne's objects and schema pgne_demo; True when all is gone."""
        ok = True
        if self.config is not None:
            database = self.config.databases[0]
            if self.drop_pgne_schema:  # as `enabled: false` on the database: drops schema pgne
                gone = dataclasses.replace(database, enabled=False)
            else:  # pgne is in use here: remove only the demo's monitor
                gone = dataclasses.replace(database, monitors=tuple(dataclasses.replace(m, enabled=False)
                                                                     for m in database.monitors))
            result = apply_database(gone, Renderer())
            if not result.ok:
                self.say(f"pgne demo: could not remove pgne's triggers and functions: {result.detail}")
                ok = False
        if self.created:
            try:
                conn = self.connect()  # a new one: the writer's may have been broken
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(DEMO_SCHEMA)))
                finally:
                    conn.close()
            except (psycopg2.Error, UserError) as exc:
                self.say(f"pgne demo: could not drop schema {DEMO_SCHEMA}: {exc}")
                ok = False
        if not ok:
            self.say(f"pgne demo: remove the rest by hand: DROP SCHEMA {DEMO_SCHEMA} CASCADE;"
                     + (f" DROP SCHEMA {SCHEMA} CASCADE;" if self.drop_pgne_schema else ""))
        return ok

    # -- the whole tour -----------------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        previous_wakeup = signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        code = EXIT_OK
        try:
            self.conn = self.connect()
            self.create_tables()
            config_path = self.write_config()
            renderer = Renderer()
            config = load_config(str(config_path), renderer)
            renderer.check(config)
            self.drop_pgne_schema = self.pgne_schema_is_ours(function_name(config.databases[0].monitors[0]))
            self.config = config  # from here on, teardown removes pgne's objects
            self.wait(0)
            self.start_exporter(config_path)
            self.wait_until_listening()
            self.say(
                f"pgne demo: pgne is counting the rows written to {DEMO_SCHEMA}.{DEMO_TABLE} in database "
                f"{self.conn.info.dbname!r}: about {self.rate:g} statements a second, by operation and supplier "
                f"({', '.join(SUPPLIERS)}; {UNLISTED_SUPPLIER} is not in the whitelist and counts as \"other\").\n"
                f"  status page: {self.exporter_url('/')}\n"
                f"  metrics:     {self.exporter_url('/metrics')}"
                f"   look for pgne_events_total{{table=\"{DEMO_TABLE}\"}}"
                f" and the histogram of amount, pgne_observed_euros\n"
                f"Ctrl-C stops the demo and removes what it created.")
            self.write_rows()
        except Stopped:
            pass
        except UserError as exc:
            for line in exc.lines:
                print(line, file=sys.stderr, flush=True)
            code = exc.exit_code
        finally:
            self.stop_exporter()
            try:
                if not self.teardown():
                    code = code or EXIT_RUNTIME
            finally:
                if self.conn is not None:
                    self.conn.close()
                shutil.rmtree(self.workdir, ignore_errors=True)
                signal.set_wakeup_fd(previous_wakeup)
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
                os.close(self.wakeup_r)
                os.close(self.wakeup_w)
        if code == EXIT_OK:
            self.say(f"pgne demo: stopped; schema {DEMO_SCHEMA} and pgne's triggers and functions are removed.")
        return code

