"""deploy/supervisord.conf under a real supervisord, installed as an operator installs it:
copied into the include directory (conf.d/) of a main config, with only the edit the file
documents (its `command=` line's paths) — RUNNING, exact counts, a clean stop — and copied in
with no edit at all: supervisord loads it and runs its other programs.

Every process of this test carries a marker in its environment, so that other pgne processes
on a shared machine are never mistaken for ours.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterable

import psycopg2
import pytest
from support.metrics import http_get, parse_metrics
from support.processes import REPO, free_port, kill_session, pgne_env
from support.waiting import wait_until

SHIPPED = REPO / "deploy" / "supervisord.conf"
# The command line as shipped: it matches the README's install (/opt/pgne, /etc/pgne).
SHIPPED_COMMAND = ("command=/opt/pgne/bin/pgne run -c /etc/pgne/events_config.yml --state-dir /var/lib/pgne "
                   "--listen-address 0.0.0.0:9292")
MONITOR = {"table": "one", "enabled": True, "function": "notification_with_payload",
           "columns_to_label": [{"code": ["alpha", "beta"]}], "events": ["insert"]}


def _runs_pgne(argv: list[str]) -> bool:
    """`pgne ...`, `python -m pgne ...` (the master), its launcher and the workers forked from
    it (`python -m pgne.launcher_process FD PID`)."""
    return any(arg == "pgne" or arg.endswith("/pgne") or arg == "pgne.launcher_process" for arg in argv)


def marked_processes(marker: str, exclude: set[int], masters: Iterable[int] = ()) -> dict[int, str]:
    """{pid: cmdline} of live processes running pgne whose environment carries `marker`, and
    the launchers and workers of those (or of `masters`): their environment is a whitelist that
    leaves the marker out, and their argv ends with their master's pid."""
    found, launched = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state in ("Z", "X") or not _runs_pgne(argv):
            continue
        if marker.encode() in environ:
            found[int(entry.name)] = " ".join(argv)
        elif "pgne.launcher_process" in argv and [arg for arg in argv if arg][-1].isdigit():
            launched[int(entry.name)] = (int([arg for arg in argv if arg][-1]), " ".join(argv))
    masters = set(masters) | set(found)
    found.update({pid: line for pid, (master, line) in launched.items() if master in masters})
    return found


def operator_edit(text: str, pgne: str, config: str, state_dir: str, listen: str) -> str:
    """The one edit the shipped file documents: the paths of its `command=` line."""
    assert text.count(SHIPPED_COMMAND + "\n") == 1, "the shipped command= line changed: update the README too"
    edited = (SHIPPED_COMMAND.replace("/opt/pgne/bin/pgne", pgne).replace("/etc/pgne/events_config.yml", config)
              .replace("/var/lib/pgne", state_dir).replace("0.0.0.0:9292", listen))
    return text.replace(SHIPPED_COMMAND + "\n", edited + "\n")


class Supervisor:
    def __init__(self, workdir: str, env: dict[str, str], program_file: str, extra: str = ""):
        """A main config whose [include] takes conf.d/*.conf, with `program_file`'s text copied
        there as conf.d/pgne.conf (as `cp deploy/supervisord.conf /etc/supervisor/conf.d/pgne.conf`)."""
        self.workdir = workdir
        # every process of this run carries it (kill_leftovers): supervisord puts its programs in
        # process groups of their own, out of reach of a kill of supervisord's session
        self.run_marker = uuid.uuid4().hex
        env = dict(env, PGNE_SUPERVISOR_RUN=self.run_marker)
        conf_d = Path(workdir, "conf.d")
        conf_d.mkdir()
        (conf_d / "pgne.conf").write_text(program_file)
        self.env = env
        self.conf = os.path.join(workdir, "supervisord.conf")
        self.log = os.path.join(workdir, "supervisord.log")
        sock = os.path.join(workdir, "s.sock")  # a unix socket path must stay short
        Path(self.conf).write_text(f"""\
[unix_http_server]
file={sock}

[supervisord]
nodaemon=true
logfile={self.log}
pidfile={workdir}/supervisord.pid
childlogdir={workdir}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

{extra}
[include]
files = {conf_d}/*.conf
""")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(os.path.join(self.workdir, "supervisord.stderr"), "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", self.conf],
                env=self.env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", self.conf, *args],
                              env=self.env, capture_output=True, text=True, timeout=60)

    def status(self, program: str = "pgne") -> str:
        return self.ctl("status", program).stdout

    def program_log(self) -> str:
        """pgne's stderr (redirect_stderr=true) as supervisord logged it (childlogdir)."""
        return "".join(p.read_text(errors="replace") for p in Path(self.workdir).glob("pgne-stdout*.log"))

    def describe(self) -> str:
        parts = []
        for name in sorted(os.listdir(self.workdir)):
            if name.endswith((".log", ".stderr")):
                text = Path(self.workdir, name).read_text(errors="replace").splitlines()[-30:]
                parts.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def kill_leftovers(self) -> None:
        """supervisord's session, then whatever else this run started (a test that failed half-way
        leaves pgne running under a supervisord that is gone)."""
        kill_session(self.process)
        needle = f"PGNE_SUPERVISOR_RUN={self.run_marker}".encode()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and needle in (entry / "environ").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="svtest-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pgne_command() -> str:
    """The pgne command for `command=`: the `pgne` console script next to this Python (an installed pgne, as an operator
    runs it), else `python -m pgne` (a bare checkout). Either imports the pgne of pgne_env()."""
    script = Path(sys.executable).with_name("pgne")
    return str(script) if os.access(script, os.X_OK) else f"{sys.executable} -m pgne"


def test_the_shipped_supervisord_program_runs_counts_exactly_and_stops_every_process(pg_database, write_config,
                                                                                     workdir):
    db = pg_database
    conn = psycopg2.connect(db.dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE one (id serial PRIMARY KEY, code text)")
    finally:
        conn.close()
    config = write_config(db, [MONITOR], tag="sv", perform_setup=True)
    port = free_port()
    marker = f"PGNE_TEST_MARKER={uuid.uuid4().hex}"
    env = pgne_env(PGNE_TEST_MARKER=marker.split("=", 1)[1])
    program = operator_edit(SHIPPED.read_text(), pgne_command(), str(config), os.path.join(workdir, "state"),
                            f"127.0.0.1:{port}")
    sv = Supervisor(workdir, env, program)
    sv.start()
    try:
        wait_until(lambda: "RUNNING" in sv.status(), 30, "supervisorctl status pgne: RUNNING", sv.describe)
        labels = {"host": db.host_label, "database": db.name}

        def scrape() -> dict:
            try:
                status, _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except OSError:
                return {}
            return parse_metrics(body.decode()) if status == 200 else {}

        up = ("pgne_database_up", frozenset(dict(labels, tag="sv").items()))
        wait_until(lambda: scrape().get(up) == 1, 30, "pgne_database_up 1", sv.describe)

        conn = psycopg2.connect(db.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO one (code) SELECT CASE WHEN i % 3 = 0 THEN 'alpha' ELSE 'x' END "
                            "FROM generate_series(1, 999) AS i")  # 333 alpha, 666 other
        finally:
            conn.close()

        def count(code: str) -> tuple:
            return ("pgne_events_total", frozenset(dict(labels, operation="INSERT", tag="sv", schema="public",
                                                        table="one", code=code).items()))

        want = {count("alpha"): 333, count("beta"): 0, count("other"): 666}
        wait_until(lambda: {k: scrape().get(k) for k in want} == want, 30, f"counts {want}", sv.describe)

        ours = marked_processes(marker, exclude={sv.process.pid})
        master = int(sv.ctl("pid", "pgne").stdout.strip())
        assert master in ours, (master, ours)
        assert len(ours) == 3, ours  # the master, its launcher, the one worker

        # `supervisorctl signal HUP pgne` (the reload the shipped file documents) reaches the
        # master only: the config is unchanged, so the worker keeps running
        assert "pgne: signalled" in sv.ctl("signal", "HUP", "pgne").stdout
        wait_until(lambda: "reload: " in sv.program_log() and " loaded" in sv.program_log(), 10,
                   "the reload in pgne's log", sv.describe)
        assert marked_processes(marker, exclude={sv.process.pid}) == ours
        assert {k: scrape().get(k) for k in want} == want
        assert scrape().get(("pgne_config_last_reload_successful", frozenset())) == 1

        stopped = sv.ctl("stop", "pgne")
        assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        wait_until(lambda: not marked_processes(marker, exclude={sv.process.pid}, masters={master}), 5,
                   "no pgne process left", lambda: str(marked_processes(marker, {sv.process.pid}, {master})))
        # it stopped on SIGTERM by itself, not killed by supervisord after stopwaitsecs
        wait_until(lambda: "stopped: pgne (exit status 0)" in Path(sv.log).read_text(), 10,
                   "'stopped: pgne (exit status 0)' in supervisord's log", sv.describe)
        assert "STOPPED" in sv.status()

        sv.ctl("shutdown")
        sv.process.wait(30)
    finally:
        sv.kill_leftovers()


def test_the_shipped_file_copied_in_unedited_loads_and_leaves_supervisord_and_its_other_programs_running(workdir):
    """Without pgne installed at /opt/pgne nor a config in /etc/pgne (as on this machine), the
    program fails to start and goes to FATAL; supervisord stays up and runs the others."""
    text = SHIPPED.read_text()
    assert "%(" not in text  # nothing expanded from supervisord's environment: nothing can be unset
    other = (f"[program:other]\ncommand={sys.executable} -c \"import time; time.sleep(3600)\"\n"
             "startsecs=1\nstopasgroup=true\nkillasgroup=true\n")
    sv = Supervisor(workdir, pgne_env(), text, extra=other)
    sv.start()
    try:
        wait_until(lambda: "RUNNING" in sv.status("other"), 30, "supervisorctl status other: RUNNING", sv.describe)
        assert sv.process.poll() is None
        if not (Path("/opt/pgne/bin/pgne").exists() and Path("/etc/pgne/events_config.yml").exists()):
            wait_until(lambda: "FATAL" in sv.status(), 60, "supervisorctl status pgne: FATAL", sv.describe)
            assert re.search(r"other\s+RUNNING", sv.ctl("status").stdout), sv.ctl("status").stdout
        assert sv.process.poll() is None
        sv.ctl("shutdown")
        sv.process.wait(30)
    finally:
        sv.kill_leftovers()


# Password authentication for every role but the superuser (the cluster of the next test)
SCRAM_HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""
SHIPPED_ENVIRONMENT = '; environment=PGNE_SHOP_PASSWORD="change-me"\n'


def environment_line(password: str) -> str:
    """The environment= line as deploy/supervisord.conf says to write it: each % doubled, the
    value in "..." or, when it holds a ", in '...'."""
    shipped = SHIPPED.read_text()
    assert "write each % of the\n;     password as %%" in shipped and "when it holds a \", with '...'" in shipped
    quote = "'" if '"' in password else '"'
    return f"environment=PGNE_SHOP_PASSWORD={quote}{password.replace('%', '%%')}{quote}\n"


@pytest.mark.parametrize("way", ["password_file", "environment", "environment-percent-and-quote"])
def test_the_shipped_program_gets_its_password_the_two_ways_the_file_shows(way, workdir):
    """A server that checks passwords (scram-sha-256): under supervisord, which gives pgne none of
    the operator's shell environment, the program runs and the database is up with the password
    from a password_file, or from `${PGNE_SHOP_PASSWORD}` with the file's `environment=` line
    uncommented: the two ways deploy/supervisord.conf documents."""
    from support.clusters import start_cluster
    from support.configs import config_text, database_entry
    from support.databases import create_database, run_sql

    secret = f"Sv-{uuid.uuid4().hex[:12]}"
    if way == "environment-percent-and-quote":  # supervisord's own syntax: % expands, " quotes
        secret = f'Sv-100%-{uuid.uuid4().hex[:6]}%(ENV_HOME)s, "quoted" \\ $x'
    text = SHIPPED.read_text()
    assert text.count(SHIPPED_ENVIRONMENT) == 1, "the shipped environment= example changed: update the README too"
    with start_cluster(hba=SCRAM_HBA) as cluster:
        db = create_database(cluster)
        run_sql(db, "CREATE TABLE one (id serial PRIMARY KEY, code text)")
        run_sql(db, (f"CREATE ROLE pgne_sv LOGIN PASSWORD %s; GRANT CONNECT ON DATABASE {db.name} TO pgne_sv",
                     (secret,)))
        config = Path(workdir, "events_config.yml")
        if way == "password_file":
            Path(workdir, "shop.password").write_text(secret + "\n")
            Path(workdir, "shop.password").chmod(0o600)
            password = {"password": None, "password_file": "shop.password"}
        else:
            password = {"password": "${PGNE_SHOP_PASSWORD}"}
            # the documented edit: the line uncommented, with the real password
            text = text.replace(SHIPPED_ENVIRONMENT, environment_line(secret))
        config.write_text(config_text(database_entry(db, [MONITOR], tag="sv", perform_setup=False, username="pgne_sv",
                                                     **password)))
        # apply as the superuser: pgne_sv may only CONNECT
        admin = Path(workdir, "admin.yml")
        admin.write_text(config_text(database_entry(db, [MONITOR], tag="sv", perform_setup=False)))
        applied = subprocess.run([sys.executable, "-m", "pgne", "apply", "-c", str(admin)], env=pgne_env(),
                                 capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        port = free_port()
        env = pgne_env()
        env.pop("PGNE_SHOP_PASSWORD", None)  # supervisord's own environment does not have it
        program = operator_edit(text, pgne_command(), str(config), os.path.join(workdir, "state"),
                                f"127.0.0.1:{port}")
        sv = Supervisor(workdir, env, program)
        sv.start()
        try:
            wait_until(lambda: "RUNNING" in sv.status(), 30, "supervisorctl status pgne: RUNNING", sv.describe)
            up = ("pgne_database_up", frozenset({"host": db.host_label, "database": db.name, "tag": "sv"}.items()))

            def scrape() -> dict:
                try:
                    status, _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                except OSError:
                    return {}
                return parse_metrics(body.decode()) if status == 200 else {}

            wait_until(lambda: scrape().get(up) == 1, 30, "pgne_database_up 1", sv.describe)
            run_sql(db, "INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 3)")
            alpha = ("pgne_events_total", frozenset({"host": db.host_label, "database": db.name, "tag": "sv",
                                                     "operation": "INSERT", "schema": "public", "table": "one",
                                                     "code": "alpha"}.items()))
            wait_until(lambda: scrape().get(alpha) == 3, 30, "3 alpha rows counted", sv.describe)
            assert "password authentication failed" not in sv.program_log()
            assert secret not in sv.program_log()
            sv.ctl("shutdown")
            sv.process.wait(30)
        finally:
            sv.kill_leftovers()
