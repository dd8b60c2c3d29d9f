"""Secrets and least privilege, against a throwaway cluster with password (scram-sha-256) auth.

- A distinctive password, given through password_file or ${ENV}, must never show in pgne's
  stderr (DEBUG level, with failing connections), in the argv of the master and the workers,
  in the workers' environment (password_file), in error messages of check/apply/status/run, in
  /metrics, the landing page or the multiprocess files.
- Least privilege (the SQL is LEAST_PRIVILEGE_SQL below, the same as in the README draft): an
  admin role that is not the tables' owner runs `pgne apply`; `pgne run` with perform_setup:
  false runs as a role that was granted CONNECT and nothing else, and counts exactly.
"""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from psycopg2 import sql
from support.clusters import start_cluster
from support.configs import RELIABILITY_TAG as TAG
from support.configs import config_text, database_entry
from support.databases import Database, create_database, query, run_sql
from support.exporter import PgneProcess
from support.metrics import events, settle, up_labels, wait_value
from support.processes import children_of, free_port, pgne_env
from support.waiting import wait_until

HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""
# distinctive, and awkward for a libpq connection string: quote, backslash, space, =
SECRET = f"Rel-S3cret-{uuid.uuid4().hex[:12]}-'q\\b s=x"
ADMIN_SECRET = f"Adm-S3cret-{uuid.uuid4().hex[:12]}"
WRONG_SECRET = f"Wrong-S3cret-{uuid.uuid4().hex[:12]}"
APP_PASSWORD = "app-password"
SECRETS = (SECRET, ADMIN_SECRET, WRONG_SECRET)

# Run as a superuser (or the database owner) once. %(db)s: the database.
LEAST_PRIVILEGE_SQL = """
CREATE ROLE pgne_admin LOGIN PASSWORD %(admin_password)s;   -- runs `pgne apply`
CREATE ROLE pgne_reader LOGIN PASSWORD %(reader_password)s; -- runs `pgne run` (perform_setup: false)
GRANT CONNECT, CREATE ON DATABASE {db} TO pgne_admin;      -- CREATE: pgne's own schema `pgne`
GRANT CONNECT ON DATABASE {db} TO pgne_reader;              -- and nothing else
"""
# In the database: per schema and per monitored table.
LEAST_PRIVILEGE_TABLE_SQL = """
GRANT USAGE ON SCHEMA public TO pgne_admin;
GRANT TRIGGER ON public.one TO pgne_admin;
"""
MONITORS = [{"table": "one", "enabled": True, "function": "notification_with_payload",
             "columns_to_label": [{"code": ["alpha", "beta"]}], "events": ["insert", "update", "delete"]}]
CONFIGURED = {(op, "public.one", c) for op in ("INSERT", "UPDATE", "DELETE") for c in ("alpha", "beta", "other")}


class Secured:
    """The cluster, its database `app` (tables owned by app_owner, written by app_user)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.port = cluster.port
        self.app = Database(name="app", host="127.0.0.1", port=cluster.port, user="app_user",
                            password=APP_PASSWORD)
        self.admin = Database(name="app", host="127.0.0.1", port=cluster.port, user="postgres")

    def as_role(self, user: str, password: str) -> Database:
        return Database(name="app", host="127.0.0.1", port=self.port, user=user, password=password)


@pytest.fixture(scope="module")
def secured():
    cluster = start_cluster(hba=HBA)
    try:
        create_database(cluster, name="app")
        su = cluster.connect()
        with su.cursor() as cur:
            cur.execute("REVOKE CONNECT, TEMPORARY ON DATABASE app FROM PUBLIC")  # CONNECT must be granted
            cur.execute(sql.SQL(LEAST_PRIVILEGE_SQL).format(db=sql.Identifier("app")),
                        {"admin_password": ADMIN_SECRET, "reader_password": SECRET})
            cur.execute("CREATE ROLE app_owner; CREATE ROLE app_user LOGIN PASSWORD %s", (APP_PASSWORD,))
            cur.execute("GRANT CONNECT ON DATABASE app TO app_user")
        su.close()
        state = Secured(cluster)
        run_sql(state.admin,
                # nobody gets anything by default, not even USAGE on schema public
                "REVOKE ALL ON SCHEMA public FROM PUBLIC",
                "GRANT USAGE, CREATE ON SCHEMA public TO app_owner",
                "GRANT USAGE ON SCHEMA public TO app_user",
                "SET ROLE app_owner; CREATE TABLE one (id serial PRIMARY KEY, code text); RESET ROLE",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON one TO app_user",
                "GRANT USAGE ON SEQUENCE one_id_seq TO app_user",
                LEAST_PRIVILEGE_TABLE_SQL)
        yield state
    finally:
        cluster.destroy()


def write(tmp_path: Path, name: str, *entries: dict) -> Path:
    path = tmp_path / name
    path.write_text(config_text(*entries))
    return path


def secret_file(tmp_path: Path, secret: str) -> Path:
    path = tmp_path / f"secret-{uuid.uuid4().hex[:6]}"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def pgne(*args, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgne", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=pgne_env(**(env or {})), stdin=subprocess.DEVNULL)


def assert_no_secret(where: str, data: str | bytes) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for secret in SECRETS:
        assert secret not in text, f"a password appears in {where}"
        assert secret[:20] not in text, f"part of a password appears in {where}"


def proc_file(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def inspect_processes(proc: PgneProcess, environ_too: bool) -> int:
    """Check argv (and the workers' environment) of the master and every worker; their number."""
    workers = proc.worker_pids()
    everyone = [proc.pid, *launcher_of(proc), *workers]
    for pid in everyone:
        assert_no_secret(f"/proc/{pid}/cmdline", proc_file(pid, "cmdline"))
        assert_no_secret(f"/proc/{pid}/comm", proc_file(pid, "comm"))
    if environ_too:
        for pid in everyone:
            assert_no_secret(f"/proc/{pid}/environ", proc_file(pid, "environ"))
    return len(workers)


def launcher_of(proc: PgneProcess) -> list[int]:
    """The master's own child: the launcher that forks the workers."""
    pids = children_of(proc.pid)
    assert len(pids) == 1, pids
    return pids


def inspect_outputs(proc: PgneProcess) -> None:
    assert_no_secret("pgne's stderr", proc.stderr_text())
    assert_no_secret("/metrics", proc.metrics_text())
    assert_no_secret("the landing page", proc.get("/")[2])
    for path in proc.state_dir.iterdir():
        assert_no_secret(f"the state file {path.name}", path.read_bytes())


# -- least privilege -------------------------------------------------------------------------------

def test_least_privilege_admin_applies_and_a_connect_only_role_runs_pgne_counting_exactly(secured, tmp_path):
    reader = secured.as_role("pgne_reader", SECRET)
    # the reader really holds nothing but CONNECT
    assert query(secured.admin, """
        SELECT rolsuper, rolcreatedb, rolcreaterole, rolinherit AND EXISTS (SELECT FROM pg_auth_members
               WHERE member = r.oid), has_schema_privilege(r.oid, 'public', 'USAGE'),
               has_table_privilege(r.oid, 'public.one', 'SELECT'), has_database_privilege(r.oid, 'app', 'CONNECT'),
               has_database_privilege(r.oid, 'app', 'CREATE'), has_database_privilege(r.oid, 'app', 'TEMPORARY')
        FROM pg_roles r WHERE rolname = 'pgne_reader'""") == [(False, False, False, False, False, False, True,
                                                             False, False)]
    assert query(secured.admin, "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.one'::regclass") \
        == [("app_owner",)]

    admin_config = write(tmp_path, "admin.yml", database_entry(
        secured.as_role("pgne_admin", ""), MONITORS, perform_setup=False, password=None,
        password_file=str(secret_file(tmp_path, ADMIN_SECRET)), tag=TAG))
    applied = pgne("apply", "-c", admin_config)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "applied" in applied.stdout
    again = pgne("apply", "-c", admin_config)
    assert (again.returncode, again.stdout.strip()) == (0, f"127.0.0.1:{secured.port}/app: up to date")

    run_config = write(tmp_path, "run.yml", database_entry(
        reader, MONITORS, perform_setup=False, password=None, password_file=str(secret_file(tmp_path, SECRET)),
        tag=TAG))
    status = pgne("status", "-c", run_config)  # the reader can compare too: catalogs only
    assert status.returncode == 0, status.stdout + status.stderr
    proc = PgneProcess(run_config, tmp_path / "pgne")
    try:
        proc.start(timeout=60)
        for event in ("INSERT", "UPDATE", "DELETE"):
            wait_value(proc, "pgne_trigger_installed", {"host": secured.app.host_label, "database": "app",
                                                        "schema": "public", "table": "one", "event": event},
                       lambda v: v == 1, 30, f"pgne_trigger_installed{{event={event}}} 1")
        app = secured.app
        run_sql(app, "INSERT INTO one (code) SELECT unnest(ARRAY['alpha', 'alpha', 'beta', 'zeta', NULL])",
                "UPDATE one SET code = 'beta' WHERE code = 'alpha'",
                "DELETE FROM one WHERE code IS NULL OR code = 'zeta'")
        settle(proc, app)
        want = dict.fromkeys(CONFIGURED, 0.0)
        want.update({("INSERT", "public.one", "alpha"): 2, ("INSERT", "public.one", "beta"): 1,
                     ("INSERT", "public.one", "other"): 2, ("UPDATE", "public.one", "beta"): 2,
                     ("DELETE", "public.one", "other"): 2})
        assert events(proc, reader) == want
        assert not [line for line in proc.stderr_text().splitlines() if "WARNING" in line or "ERROR" in line]
        inspect_outputs(proc)
    finally:
        proc.kill_leftovers()


# -- secrets ----------------------------------------------------------------------------------------

def test_password_file_secret_never_in_logs_argv_environ_errors_or_metrics(secured, tmp_path):
    reader = secured.as_role("pgne_reader", "")
    good, wrong = secret_file(tmp_path, SECRET), secret_file(tmp_path, WRONG_SECRET)
    refused_port = free_port()
    path = write(
        tmp_path, "events_config.yml",
        database_entry(reader, MONITORS, perform_setup=False, password=None, password_file=str(good), tag=TAG),
        # nothing listens there: connection refused, retried
        database_entry(Database("app", "127.0.0.1", refused_port, "pgne_reader"), MONITORS, perform_setup=False,
                       password=None, password_file=str(good), connect_timeout=2, tag=TAG),
        # the server says: password authentication failed
        database_entry(Database("postgres", "127.0.0.1", secured.port, "pgne_reader"), MONITORS,
                       perform_setup=True, password=None, password_file=str(wrong), tag=TAG))
    proc = PgneProcess(path, tmp_path / "pgne", log_level="DEBUG")
    try:
        proc.start(expect_up=False, timeout=60)
        wait_value(proc, "pgne_database_up", up_labels(reader), lambda v: v == 1, 30, "app listening")
        run_sql(secured.app, "INSERT INTO one (code) VALUES ('alpha')")
        proc.wait_for_value("pgne_events_total", {"operation": "INSERT", "host": secured.app.host_label,
                                                  "database": "app", "tag": TAG, "schema": "public", "table": "one",
                                                  "code": "alpha"},
                            1, timeout=30)
        wait_until(lambda: "password authentication failed" in proc.stderr_text()
                   and "Connection refused" in proc.stderr_text()
                   and "notification" in proc.stderr_text(), 30,
                   "the failed connections and a DEBUG notification line in the log", proc.describe)
        assert inspect_processes(proc, environ_too=True) == 3
        inspect_outputs(proc)
    finally:
        proc.kill_leftovers()

    # error messages of the one-shot commands, with the wrong password and an unreachable server
    for command in ("apply", "status"):
        result = pgne(command, "-c", path)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        output = result.stdout + result.stderr
        assert "password authentication failed" in output and "Connection refused" in output, output
        assert_no_secret(f"`pgne {command}` output", output)


def test_env_var_secret_never_in_logs_argv_errors_or_metrics(secured, tmp_path, monkeypatch):
    reader = secured.as_role("pgne_reader", "")
    monkeypatch.setenv("PGNE_REL_SECRET", SECRET)
    monkeypatch.setenv("PGNE_REL_WRONG", WRONG_SECRET)
    path = write(tmp_path, "events_config.yml",
                 database_entry(reader, MONITORS, perform_setup=False, password="${PGNE_REL_SECRET}", tag=TAG),
                 database_entry(Database("postgres", "127.0.0.1", secured.port, "pgne_reader"), MONITORS,
                                perform_setup=False, password="${PGNE_REL_WRONG}", tag=TAG))
    assert SECRET not in path.read_text()
    proc = PgneProcess(path, tmp_path / "pgne", log_level="DEBUG")
    try:
        proc.start(expect_up=False, timeout=60)  # spawned with this process's environment
        wait_value(proc, "pgne_database_up", up_labels(reader), lambda v: v == 1, 30, "app listening")
        wait_until(lambda: "password authentication failed" in proc.stderr_text(), 30,
                   "the failed connection in the log", proc.describe)
        # the master's environment holds the variable (the user put it there); the workers' and the
        # launcher's do not: the workers get the password on their spec pipe
        assert inspect_processes(proc, environ_too=False) == 2
        for pid in [*launcher_of(proc), *proc.worker_pids()]:
            assert_no_secret(f"/proc/{pid}/environ", proc_file(pid, "environ"))
            assert WRONG_SECRET.encode() not in proc_file(pid, "environ")
        inspect_outputs(proc)
    finally:
        proc.kill_leftovers()
    result = pgne("status", "-c", path, env={"PGNE_REL_SECRET": SECRET, "PGNE_REL_WRONG": WRONG_SECRET})
    assert result.returncode == 1 and "password authentication failed" in result.stdout, result.stdout + result.stderr
    assert_no_secret("`pgne status` output", result.stdout + result.stderr)


BAD_CONFIGS = {
    # a mapping where a list of databases belongs: the validator used to print the whole mapping
    "database as a mapping": f"- localhost:\n    database: d\n    tag: t\n    password: \"{SECRET}\"\n",
    "password of the wrong type": "- localhost:\n  - database: d\n    tag: t\n    perform_setup: false\n"
                                  "    username: u\n    password: [\"" + SECRET + "\"]\n    enabled: true\n"
                                  "    monitors: []\n",
    "a numeric password": "- localhost:\n  - database: d\n    tag: t\n    perform_setup: false\n"
                          "    username: u\n    password: 4242" + "".join(c for c in SECRET if c.isdigit()) +
                          "\n    enabled: true\n    monitors: []\n",
    "password and password_file": f"- localhost:\n  - database: d\n    tag: t\n    perform_setup: false\n"
                                  f"    username: u\n    password: \"{SECRET}\"\n    password_file: /nonexistent\n"
                                  f"    enabled: true\n    monitors: [{{table: x, enabled: true,"
                                  f" function: nosuch, events: [upsert]}}]\n",
    "the whole file is one mapping": f"localhost: {{database: d, password: \"{SECRET}\"}}\n",
}


def test_invalid_configs_holding_a_password_never_print_it(tmp_path):
    digits = "4242" + "".join(c for c in SECRET if c.isdigit())
    for what, text in BAD_CONFIGS.items():
        path = tmp_path / "events_config.yml"
        path.write_text(text)
        for args in (["check"], ["run", "--listen-address", f"127.0.0.1:{free_port()}",
                                 "--state-dir", str(tmp_path / "state")]):
            result = pgne(*args, "-c", path)
            assert result.returncode == 2, (what, args, result.stderr)
            assert result.stderr.strip() and "Traceback" not in result.stderr, result.stderr
            assert_no_secret(f"`pgne {args[0]}` on a config with {what}", result.stdout + result.stderr)
            assert digits not in result.stderr, (what, result.stderr)

