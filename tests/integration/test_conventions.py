"""The exporter conventions (issue 17 item 4), against real `pgne run` processes over real HTTP:
--web.listen-address, --web.telemetry-path, --log.level, --log.format logfmt|json, POST /-/reload
behind --web.enable-lifecycle (and basic auth), /-/ready, HEAD on every GET endpoint, gzip."""
from __future__ import annotations

import base64
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import bcrypt
import pytest
import yaml
from support.databases import run_sql
from support.exporter import PgneProcess
from support.processes import free_port, pgne_env
from support.waiting import wait_until

TAG = "it"
MONITOR = {"table": "one", "enabled": True, "function": "notification_with_payload",
           "columns_to_label": [{"code": ["alpha", "beta"]}], "events": ["insert"]}
INVALID = dict(MONITOR, events=["insert", "upsert"])


@pytest.fixture
def table(pg_database):
    run_sql(pg_database, "CREATE TABLE one (id serial PRIMARY KEY, code text)")
    return pg_database


def up_labels(db) -> dict[str, str]:
    return {"host": db.host_label, "database": db.name, "tag": TAG}


def event_labels(db, code: str) -> dict[str, str]:
    return {"operation": "INSERT", "host": db.host_label, "database": db.name, "tag": TAG,
            "schema": "public", "table": "one", "code": code}


def display_name(db) -> str:  # pgne.model.Database.display_name of the config entry
    return f"{db.host}:{db.port}/{db.name}"


# -- --web.listen-address, --web.telemetry-path, --help --------------------------------------------

def test_web_listen_address_and_telemetry_path_serve_the_metrics_there_and_metrics_is_404(
        table, write_config, tmp_path, pgne_processes):
    config = write_config(table, [MONITOR], tag=TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne", "--web.telemetry-path", "/custom/path",
                       listen_flag="--web.listen-address", telemetry_path="/custom/path")
    pgne_processes.append(proc)
    proc.start()
    run_sql(table, "INSERT INTO one (code) VALUES ('alpha')")
    proc.wait_for_value("pgne_events_total", event_labels(table, "alpha"), 1)
    assert proc.get("/metrics")[0] == 404
    status, _, page = proc.get("/")
    assert status == 200 and b'<a href="/custom/path">Metrics</a>' in page
    assert f"serving http://127.0.0.1:{proc.port}/custom/path;" in proc.stderr_text()


def test_run_help_describes_every_convention_flag_and_endpoint():
    out = subprocess.run([sys.executable, "-m", "pgne", "run", "--help"], env=pgne_env(), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for text in ("--web.listen-address HOST:PORT, --listen-address HOST:PORT", "--web.telemetry-path PATH",
                 "--log-level", "--log.level", "--log.format {logfmt,json}", "--web.enable-lifecycle",
                 "/-/reload", "/-/ready", "/-/healthy", "HEAD", "gzip"):
        assert text in out, text


@pytest.mark.parametrize("flag, value, message", [
    ("--web.telemetry-path", "metrics", "is not a URL path"),
    ("--web.telemetry-path", "/-/ready", "is pgne's own endpoint"),
    ("--log.format", "xml", "invalid choice: 'xml'"),
])
def test_invalid_convention_flags_exit_2_with_a_message(tmp_path, flag, value, message):
    result = subprocess.run([sys.executable, "-m", "pgne", "run", "-c", str(tmp_path / "none.yml"), flag, value],
                            env=pgne_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr


# -- logs ----------------------------------------------------------------------------------------

def _logs_of_a_run(db, write_config, tmp_path, pgne_processes, *args: str, **options) -> tuple[PgneProcess, str]:
    """Run pgne (`args` after the standard ones) on a config whose password is a unique string,
    make it log what it logs (a counted insert, a reload, a worker killed and restarted), stop
    it; (the process, all it logged). The password is not in the log (the server trusts: any
    password connects)."""
    secret = f"pw-{uuid.uuid4().hex}"
    proc = PgneProcess(write_config(db, [MONITOR], tag=TAG, perform_setup=True, password=secret),
                       tmp_path / "pgne", *args, **options)
    pgne_processes.append(proc)
    proc.start()
    run_sql(db, "INSERT INTO one (code) VALUES ('beta')")
    proc.wait_for_value("pgne_events_total", event_labels(db, "beta"), 1)
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "loaded" in proc.stderr_text(), 30, "the reload to be logged", proc.describe)
    [worker] = proc.worker_pids()
    proc.send_signal(signal.SIGHUP)  # nothing changed: the same worker stays
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: proc.worker_pids() not in ([], [worker]), 30, "the worker to be restarted", proc.describe)
    proc.wait_for_value("pgne_database_up", up_labels(db), 1)
    assert proc.stop()[0] == 0
    text = proc.stderr_text()
    assert secret not in text
    return proc, text


def test_log_format_json_is_one_object_per_line_with_the_database_field_and_never_the_password(
        table, write_config, tmp_path, pgne_processes):
    proc, text = _logs_of_a_run(table, write_config, tmp_path, pgne_processes, "--log.format", "json",
                                log_level="DEBUG")
    records = [json.loads(line) for line in text.splitlines()]  # every line one object
    assert all(isinstance(r, dict) and {"time", "level", "logger", "pid", "msg"} <= r.keys() for r in records)
    name = display_name(table)
    workers = [r for r in records if r["pid"] != proc.pid]
    assert len({r["pid"] for r in workers}) == 2  # the killed worker and its replacement
    assert all(r["database"] == name for r in workers)
    assert any(r["msg"].startswith(f"{name}: listening on channel") for r in workers)
    assert any(r["level"] == "debug" and r["msg"].startswith(f"{name}: notification") for r in workers)
    master = [r for r in records if r["pid"] == proc.pid]
    started = [r for r in master if "worker started" in r["msg"]]
    assert len(started) == 2 and all(r["database"] == name for r in started)
    assert any("killed by signal 9" in r["msg"] and r["database"] == name and r["level"] == "error" for r in master)
    assert any(r["msg"].startswith("reload: ") and "database" not in r for r in master)


LOGFMT_LINE = re.compile(r'time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(debug|info|warning|error) '
                         r'logger=[\w.]+ pid=(\d+)( database=(\S+))? msg=("(?:[^"\\]|\\.)*"|\S+)( error=".*")?')


def test_log_format_logfmt_and_log_level_spelled_with_a_dot(table, write_config, tmp_path, pgne_processes):
    proc, text = _logs_of_a_run(table, write_config, tmp_path, pgne_processes, "--log.format", "logfmt",
                                "--log.level", "debug")
    matches = [LOGFMT_LINE.fullmatch(line) for line in text.splitlines()]
    assert all(matches), [line for line, m in zip(text.splitlines(), matches) if not m]
    name = display_name(table)
    workers = [m for m in matches if int(m[2]) != proc.pid]
    assert workers and all(m[4] == name for m in workers)
    assert any(m[1] == "debug" for m in workers)  # --log.level debug (after --log-level INFO) won
    assert f'database={name} msg="{name}: listening on channel pg_notify_exporter"' in text


def test_without_log_format_the_lines_are_as_before(table, write_config, tmp_path, pgne_processes):
    config = write_config(table, [MONITOR], tag=TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne")
    pgne_processes.append(proc)
    proc.start()
    assert proc.stop()[0] == 0
    lines = proc.stderr_text().splitlines()
    plain = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) [\w.]+\[\d+\]: .+")
    assert lines and all(plain.fullmatch(line) for line in lines), lines
    assert any(line.endswith(f"{display_name(table)}: listening on channel pg_notify_exporter") for line in lines)


# -- POST /-/reload ------------------------------------------------------------------------------

def test_reload_without_enable_lifecycle_is_403_and_get_is_405(table, write_config, tmp_path, pgne_processes):
    config = write_config(table, [MONITOR], tag=TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne")
    pgne_processes.append(proc)
    proc.start()
    status, _, body = proc.request("POST", "/-/reload")
    assert (status, body) == (403, b"Lifecycle API is not enabled.\n")
    assert proc.request("PUT", "/-/reload")[0] == 403
    status, headers, _ = proc.request("GET", "/-/reload")
    assert status == 405 and headers["Allow"] == "POST, PUT"
    assert proc.request("POST", "/metrics")[0] == 405
    assert proc.request("PUT", "/metrics")[0] == 405
    assert proc.request("POST", "/no/such/page")[0] == 404
    assert "reloading" not in proc.stderr_text()


def test_reload_by_post_is_done_when_it_answers_200_and_an_invalid_config_answers_500_and_keeps_counting(
        table, pg_database_factory, write_config, tmp_path, pgne_processes):
    a, b = table, pg_database_factory()
    run_sql(b, "CREATE TABLE one (id serial PRIMARY KEY, code text)")
    config = write_config(a, [MONITOR], tag=TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne", "--web.enable-lifecycle")
    pgne_processes.append(proc)
    proc.start()
    [worker_a] = proc.worker_pids()

    write_config(a, [MONITOR], tag=TAG, perform_setup=True, also=[(b, [MONITOR], {"tag": TAG, "perform_setup": True})])
    status, _, body = proc.request("POST", "/-/reload")
    assert (status, body) == (200, b"OK\n")
    # done when it answered: b's series are there at once, and its worker started
    assert proc.value("pgne_database_up", up_labels(b)) in (0, 1)
    wait_until(lambda: len(proc.worker_pids()) == 2, 30, "b's worker", proc.describe)
    assert worker_a in proc.worker_pids()
    assert "POST /-/reload: reloading" in proc.stderr_text()
    proc.wait_for_value("pgne_database_up", up_labels(b), 1)

    write_config(a, [INVALID], tag=TAG, perform_setup=True)
    status, _, body = proc.request("POST", "/-/reload")
    assert status == 500 and body.startswith(b"failed to reload config: ") and b"upsert" in body
    assert proc.value("pgne_config_last_reload_successful", {}) == 0
    status, _, body = proc.request("PUT", "/-/reload")  # as Prometheus, PUT too
    assert status == 500 and body.startswith(b"failed to reload config: ") and b"upsert" in body
    run_sql(b, "INSERT INTO one (code) VALUES ('alpha')")
    proc.wait_for_value("pgne_events_total", event_labels(b, "alpha"), 1)  # the old config counts on
    assert worker_a in proc.worker_pids() and proc.process.poll() is None


def test_reload_and_every_endpoint_are_behind_basic_auth(table, write_config, tmp_path, pgne_processes):
    config = write_config(table, [MONITOR], tag=TAG, perform_setup=True)
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {
        "prometheus": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()}}))
    proc = PgneProcess(config, tmp_path / "pgne", "--web.config.file", str(web), "--web.enable-lifecycle")
    pgne_processes.append(proc)
    proc.spawn()
    auth = {"Authorization": "Basic " + base64.b64encode(b"prometheus:s3cret").decode()}
    wait_until(lambda: _answers(proc, "/-/healthy", auth), 60, "/-/healthy", proc.describe)
    for method, path in [("POST", "/-/reload"), ("GET", "/-/ready"), ("HEAD", "/-/ready"), ("GET", "/metrics"),
                         ("HEAD", "/metrics")]:
        status, headers, _ = proc.request(method, path)
        assert status == 401 and "WWW-Authenticate" in headers, (method, path)
    assert "reloading" not in proc.stderr_text()
    assert proc.request("POST", "/-/reload", auth)[:3:2] == (200, b"OK\n")


def _answers(proc: PgneProcess, path: str, headers=None) -> bool:
    try:
        return proc.request("GET", path, headers)[0] == 200
    except OSError:
        return False


# -- /-/ready ------------------------------------------------------------------------------------

def test_ready_is_503_until_every_workers_first_start_then_200_even_for_an_unreachable_database(
        table, write_config, tmp_path, pgne_processes):
    unreachable = {"host": "127.0.0.1", "port": free_port(), "connect_timeout": 2}
    config = write_config(table, [MONITOR], tag=TAG, perform_setup=True,
                          also=[("nowhere", [MONITOR], {"tag": TAG, **unreachable})])
    proc = PgneProcess(config, tmp_path / "pgne")
    pgne_processes.append(proc)
    proc.spawn()
    answers: list[tuple[float, int, bytes]] = []

    def ready() -> bool:
        try:
            status, _, body = proc.get("/-/ready")
        except OSError:
            return False
        answers.append((time.monotonic(), status, body))
        return status == 200

    wait_until(ready, 60, "/-/ready to answer 200", proc.describe)
    # the server answers before the workers are spawned, and a worker counts after 1 s alive
    status, body = answers[0][1:]
    assert status == 503 and re.fullmatch(rb"Not ready: [12] of 2 workers have not started yet\.\n", body)
    assert answers[-1][2] == b"OK\n"
    assert len(proc.worker_pids()) == 2
    assert proc.get("/-/healthy")[0] == 200


# -- HEAD and gzip -------------------------------------------------------------------------------

@pytest.fixture
def exporter(table, write_config, tmp_path):
    with PgneProcess(write_config(table, [MONITOR], tag=TAG, perform_setup=True), tmp_path / "pgne").running() as p:
        wait_until(lambda: p.get("/-/ready")[0] == 200, 30, "/-/ready", p.describe)
        yield p


def _same_headers(a: dict, b: dict) -> dict:
    return {k: v for k, v in a.items() if k != "Date"} == {k: v for k, v in b.items() if k != "Date"}


@pytest.mark.parametrize("path", ["/", "/metrics", "/-/healthy", "/-/ready", "/no/such/page"])
def test_head_answers_like_get_without_a_body(exporter, path):
    get_status, get_headers, get_body = exporter.get(path)
    head_status, head_headers, head_body = exporter.request("HEAD", path)
    assert head_status == get_status and head_body == b""
    assert _same_headers(head_headers, get_headers), (head_headers, get_headers)
    assert int(head_headers["Content-Length"]) == len(get_body)


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_gzip_when_asked_is_the_gzip_of_exactly_the_plain_body(exporter, accept):
    plain_headers = {"Accept": accept} if accept else {}
    _, headers_before, before = exporter.get("/metrics", plain_headers)
    status, headers, zipped = exporter.get("/metrics", {**plain_headers, "Accept-Encoding": "gzip"})
    _, _, after = exporter.get("/metrics", plain_headers)
    assert before == after  # nothing changed in between (no worker writes)
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == headers_before["Content-Type"]
    assert int(headers["Content-Length"]) == len(zipped)
    assert gzip.decompress(zipped) == before
    assert "Content-Encoding" not in headers_before
    assert headers_before["Vary"] == headers["Vary"] == "Accept-Encoding"
    _, refused, body = exporter.get("/metrics", {**plain_headers, "Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused and body == before
    status, head_headers, empty = exporter.request("HEAD", "/metrics", {**plain_headers, "Accept-Encoding": "gzip"})
    assert empty == b"" and head_headers["Content-Encoding"] == "gzip"
    assert head_headers["Content-Length"] == headers["Content-Length"]
