"""Operations against real processes: SIGHUP reload, drift (`status`, `apply --prune`,
pgne_trigger_installed), and `--web.config.file` (TLS with a generated certificate, bcrypt
basic auth, a client that never finishes its handshake)."""
from __future__ import annotations

import base64
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml
from support.configs import config_text, database_entry
from support.databases import query, run_sql, throwaway_database
from support.exporter import PgneProcess
from support.processes import run_pgne
from support.waiting import wait_until

ORDERS = {"table": "orders", "enabled": True, "function": "notification_with_payload",
          "columns_to_label": [{"supplier": ["acme", "globex"]}], "events": ["insert"]}


def events_labels(db, supplier: str, table: str = "orders", operation: str = "INSERT") -> dict:
    return {"operation": operation, "host": db.host_label, "database": db.name, "tag": "it",
            "schema": "public", "table": table, "supplier": supplier}


def pgne_cli(*args: str) -> subprocess.CompletedProcess:
    return run_pgne(*args, timeout=120)


@pytest.fixture
def two_databases(pg_dsn):
    with throwaway_database(pg_dsn) as a, throwaway_database(pg_dsn) as b:
        for db in (a, b):
            run_sql(db.dsn, "CREATE TABLE orders (id serial, supplier text)",
                    "CREATE TABLE invoices (id serial, supplier text)")
        yield a, b


# --------------------------------------------------------------------------- reload


def start_pgne(tmp_path: Path, pgne_processes: list, db, *args: str) -> tuple[Path, PgneProcess]:
    """events_config.yml with `db` watching ORDERS, and a `pgne run` on it, started."""
    config = tmp_path / "events_config.yml"
    config.write_text(config_text(database_entry(db, [ORDERS])))
    pgne = PgneProcess(config, tmp_path / "run", *args)
    pgne_processes.append(pgne)
    return config, pgne.start()


def test_sighup_restarts_only_changed_databases_and_tears_down_removed_ones(tmp_path, two_databases,
                                                                            pgne_processes):
    a, b = two_databases
    config, pgne = start_pgne(tmp_path, pgne_processes, a)
    (worker_a,) = pgne.worker_pids()
    run_sql(a.dsn, "INSERT INTO orders (supplier) SELECT 'acme' FROM generate_series(1, 7)")
    pgne.wait_for_value("pgne_events_total", events_labels(a, "acme"), 7)

    # b is added: a's worker and counts must not be touched.
    config.write_text(config_text(database_entry(a, [ORDERS]), database_entry(b, [ORDERS])))
    pgne.send_signal(signal.SIGHUP)
    pgne.wait_for_value("pgne_database_up", {"host": b.host_label, "database": b.name, "tag": "it"}, 1)
    assert pgne.value("pgne_config_last_reload_successful", {}) == 1
    assert worker_a in pgne.worker_pids()
    run_sql(b.dsn, "INSERT INTO orders (supplier) VALUES ('globex'), ('initech')")
    run_sql(a.dsn, "INSERT INTO orders (supplier) VALUES ('acme')")
    pgne.wait_for_value("pgne_events_total", events_labels(b, "globex"), 1)
    pgne.wait_for_value("pgne_events_total", events_labels(b, "other"), 1)
    pgne.wait_for_value("pgne_events_total", events_labels(a, "acme"), 8)
    (worker_b,) = [p for p in pgne.worker_pids() if p != worker_a]

    # b changes (a new monitor), a stays: only b's worker restarts; b's counts continue.
    invoices = dict(ORDERS, table="invoices")
    config.write_text(config_text(database_entry(a, [ORDERS]),
                              database_entry(b, [ORDERS, invoices])))
    pgne.send_signal(signal.SIGHUP)
    # Replaced, and reaped by the master: until then the old worker's `up` file still says 1.
    wait_until(lambda: len(pgne.worker_pids()) == 2 and worker_b not in pgne.worker_pids()
               and not (pgne.state_dir / f"gauge_livemax_{worker_b}.db").exists(), 30,
               "b's worker to be replaced", pgne.describe)
    assert worker_a in pgne.worker_pids()
    pgne.wait_all_up()
    run_sql(b.dsn, "INSERT INTO invoices (supplier) VALUES ('acme')", "INSERT INTO orders (supplier) VALUES ('globex')")
    pgne.wait_for_value("pgne_events_total", events_labels(b, "acme", table="invoices"), 1)
    pgne.wait_for_value("pgne_events_total", events_labels(b, "globex"), 2)
    assert pgne.value("pgne_events_total", events_labels(a, "acme")) == 8

    # b is removed (perform_setup: true): its worker stops and its pgne objects are removed.
    config.write_text(config_text(database_entry(a, [ORDERS])))
    pgne.send_signal(signal.SIGHUP)
    wait_until(lambda: query(b.dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgne'") == [(0,)],
               30, "b's schema pgne to be torn down", pgne.describe)
    wait_until(lambda: pgne.worker_pids() == [worker_a], 30, "only a's worker left", pgne.describe)
    assert [key for key in pgne.scrape() if ("database", b.name) in key[1]] == []  # b is gone from /metrics
    assert pgne.value("pgne_events_total", events_labels(a, "acme")) == 8
    assert pgne.value("pgne_worker_restarts_total", {"host": a.host_label, "database": a.name}) == 0


def test_sighup_with_an_invalid_config_keeps_the_running_one(tmp_path, two_databases, pgne_processes):
    a, _ = two_databases
    config, pgne = start_pgne(tmp_path, pgne_processes, a)
    workers = pgne.worker_pids()
    first_reload = pgne.value("pgne_config_last_reload_success_timestamp_seconds", {})

    config.write_text(config.read_text().replace("- insert", "- upsert"))
    pgne.send_signal(signal.SIGHUP)
    pgne.wait_for_value("pgne_config_last_reload_successful", {}, 0)
    assert "'upsert' is not one of insert, update, delete, truncate" in pgne.stderr_text()
    assert pgne.value("pgne_config_last_reload_success_timestamp_seconds", {}) == first_reload
    assert pgne.worker_pids() == workers
    run_sql(a.dsn, "INSERT INTO orders (supplier) VALUES ('acme'), ('acme')")
    pgne.wait_for_value("pgne_events_total", events_labels(a, "acme"), 2)

    config.write_text(config.read_text().replace("- upsert", "- insert"))
    pgne.send_signal(signal.SIGHUP)
    pgne.wait_for_value("pgne_config_last_reload_successful", {}, 1)
    assert pgne.value("pgne_config_last_reload_success_timestamp_seconds", {}) > first_reload
    assert pgne.worker_pids() == workers  # the database entry did not change


# --------------------------------------------------------------------------- drift


def test_status_reports_drift_and_apply_prune_removes_objects_the_config_no_longer_names(tmp_path, two_databases):
    a, _ = two_databases
    both = dict(ORDERS, events=["insert", "delete"])
    config = tmp_path / "events_config.yml"
    config.write_text(config_text(database_entry(a, [both, dict(ORDERS, table="invoices")])))
    assert pgne_cli("apply", "-c", str(config)).returncode == 0

    result = pgne_cli("status", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[1].split() == [f"{a.host}:{a.port}/{a.name}", "in", "sync"]

    run_sql(a.dsn, "DROP TRIGGER pgne_delete ON orders")
    result = pgne_cli("status", "-c", str(config))
    assert result.returncode == 1
    assert f"{a.host}:{a.port}/{a.name}  missing  trigger pgne_delete on public.orders" in result.stdout

    # invoices leaves the config entirely: its trigger and function become `extra`.
    config.write_text(config_text(database_entry(a, [both])))
    result = pgne_cli("status", "-c", str(config))
    assert result.returncode == 1
    extra = [line for line in result.stdout.splitlines() if " extra " in line]
    assert len(extra) == 2
    assert "trigger pgne_insert on public.invoices (not named by the config)" in extra[1]

    result = pgne_cli("apply", "-c", str(config))  # without --prune: extras stay
    assert result.returncode == 0
    assert pgne_cli("status", "-c", str(config)).returncode == 1
    result = pgne_cli("apply", "--prune", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied: 2 changes: extra:" in result.stdout
    assert pgne_cli("status", "-c", str(config)).returncode == 0
    assert query(a.dsn, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'invoices'::regclass") == []
    assert query(a.dsn, "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = 'pgne'") == [(1,)]


def test_trigger_installed_gauge_drops_to_zero_after_drop_trigger(tmp_path, two_databases, pgne_processes):
    a, _ = two_databases
    config, pgne = start_pgne(tmp_path, pgne_processes, a, "--trigger-check-interval", "1")
    labels = {"host": a.host_label, "database": a.name, "schema": "public", "table": "orders", "event": "INSERT"}
    assert pgne.value("pgne_trigger_installed", labels) == 1
    run_sql(a.dsn, "DROP TRIGGER pgne_insert ON orders")
    pgne.wait_for_value("pgne_trigger_installed", labels, 0, timeout=15)
    assert "trigger pgne_insert on public.orders is missing" in pgne.stderr_text()


# --------------------------------------------------------------------------- web security


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")],
                   check=True, capture_output=True)
    return directory


def https_get(port: int, cafile: Path, user: str | None = None, password: str | None = None,
              path: str = "/metrics") -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_web_config_serves_tls_with_basic_auth_and_refuses_plain_http(tmp_path, certificate, two_databases,
                                                                      pgne_processes):
    a, _ = two_databases
    config = tmp_path / "events_config.yml"
    config.write_text(config_text(database_entry(a, [ORDERS])))
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(certificate / "tls.crt"), "key_file": str(certificate / "tls.key")},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()},
    }))
    pgne = PgneProcess(config, tmp_path / "run", "--web.config.file", str(web))
    pgne_processes.append(pgne)
    pgne.spawn()
    cafile = certificate / "tls.crt"

    def answers() -> bool:
        try:
            return https_get(pgne.port, cafile, "prometheus", "s3cret", "/-/healthy") == 200
        except OSError:
            return False

    wait_until(answers, 30, "the TLS server to answer", pgne.describe)
    assert https_get(pgne.port, cafile, "prometheus", "s3cret") == 200
    assert https_get(pgne.port, cafile, "prometheus", "wrong") == 401
    assert https_get(pgne.port, cafile, "nobody", "s3cret") == 401
    assert https_get(pgne.port, cafile) == 401
    assert https_get(pgne.port, cafile, path="/") == 401

    with pytest.raises((OSError, urllib.error.URLError)):  # plain HTTP gets no HTTP answer
        urllib.request.urlopen(f"http://127.0.0.1:{pgne.port}/metrics", timeout=10).read()

    # A client that connects and never starts its TLS handshake holds only its own thread.
    stalled = [socket.create_connection(("127.0.0.1", pgne.port)) for _ in range(3)]
    try:
        for _ in range(3):
            assert https_get(pgne.port, cafile, "prometheus", "s3cret") == 200
    finally:
        for sock in stalled:
            sock.close()
    code, _ = pgne.stop()
    assert code == 0


@pytest.mark.parametrize("web_config, message", [
    ({"basic_auth_users": {"prometheus": "plaintext"}}, "basic_auth_users > prometheus: not a bcrypt hash"),
    ({"tls_server_config": {"cert_file": "/nonexistent.crt", "key_file": "/nonexistent.key"}},
     "tls_server_config: No such file or directory"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b", "client_auth_type": "RequireAnyClientCert"}},
     "client_auth_type: 'RequireAnyClientCert' is not one of NoClientCert, VerifyClientCertIfGiven, "
     "RequireAndVerifyClientCert"),
    ({"http_server_config": {"http2": True}}, "unknown key 'http_server_config'"),
])
def test_invalid_web_config_exits_2_with_a_message(tmp_path, web_config, message):
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump(web_config))
    result = pgne_cli("run", "-c", str(Path(__file__).resolve().parents[2] / "config" / "events_config.yml"),
                      "--listen-address", "127.0.0.1:9", "--web.config.file", str(web))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
