"""The deploy kit: deploy/pgne.service, deploy/prometheus/, deploy/grafana/.

Each file is checked by the real tool where there is one (systemd-analyze, promtool), and the
metric names, label names and selectors that the alert rules and the dashboard query are
checked against the /metrics of a real `pgne run` on a throwaway database.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.processes import free_port, pgne_env

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "pgne.service"
ALERTS = REPO / "deploy" / "prometheus" / "pgne-alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "pgne-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "pgne-dashboard.json"

DEADLINE = 30.0

# `name{matchers}` in PromQL; metric names alone; one matcher.
SELECTOR_RE = re.compile(r"\b(pgne_[a-z_]+)\s*\{([^}]*)\}")
METRIC_RE = re.compile(r"\bpgne_[a-z_]+")
MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING_RE = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
# Grafana variables and what they stand for in the checks: every value of host, database and
# table; the label column of the test config for the `label` variable, its histogram for `histogram`.
GRAFANA_VARIABLES = {"${label:csv}": "supplier", "$__rate_interval": "1m", "$host": ".*", "$database": ".*",
                     "$table": ".*", "${histogram}": "pgne_observed_euros", "$column": ".*"}


DEBIAN_PACKAGES = {"promtool": "prometheus", "systemd-analyze": "systemd"}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: install Debian's {DEBIAN_PACKAGES[tool]} package "
                    f"(`python3 dev.py test` does, as root)", pytrace=False)
    return path


# --------------------------------------------------------------------------- systemd unit


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}: systemd allows a key more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_pgne_as_its_own_user_with_the_state_dir_under_run():
    service = unit_settings(UNIT.read_text())["Service"]
    single = {key: values[-1] for key, values in service.items()}
    assert single["ExecStart"] == "/opt/pgne/bin/pgne run -c /etc/pgne/events_config.yml --state-dir /run/pgne"
    assert single["RuntimeDirectory"] == "pgne"
    assert (single["User"], single["Group"]) == ("pgne", "pgne")
    assert "DynamicUser" not in service
    assert single["Restart"] == "on-failure"
    assert single["RestartPreventExitStatus"] == "2"  # an invalid config is not retried in a loop
    assert single["KillMode"] == "mixed"
    assert single["TimeoutStopSec"] == "15"
    assert single["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
                       "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
                       "CapabilityBoundingSet": ""}.items():
        assert single.get(key) == value, f"{key}={single.get(key)!r}, expected {value!r}"
    assert "ReadWritePaths" not in service  # ProtectSystem=strict: only /run/pgne is writable


def test_systemd_unit_exec_start_is_a_valid_pgne_run_command_line():
    from pgne.cli import build_parser

    service = unit_settings(UNIT.read_text())["Service"]
    argv = shlex.split(service["ExecStart"][-1])
    assert Path(argv[0]).name == "pgne"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config, args.state_dir) == ("run", "/etc/pgne/events_config.yml",
                                                           "/run/" + service["RuntimeDirectory"][-1])


SHIPPED_PGNE = "/opt/pgne/bin/pgne"  # the README's install


def _unit_with_existing_binary(tmp_path: Path) -> Path:
    """The unit after the one edit it documents for a pgne installed elsewhere than /opt/pgne:
    ExecStart's path, here an executable that exists (verify checks that it does)."""
    fake = tmp_path / "bin" / "pgne"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "pgne.service"
    text = UNIT.read_text()
    assert text.count(f"ExecStart={SHIPPED_PGNE} ") == 1
    unit.write_text(text.replace(f"ExecStart={SHIPPED_PGNE} ", f"ExecStart={fake} "))
    return unit


def test_systemd_analyze_verify_of_the_unit_as_shipped_objects_only_to_a_missing_pgne(tmp_path):
    """As shipped, the unit passes once pgne is installed as the README says; on a machine
    without /opt/pgne the only complaint is that path."""
    tool = need("systemd-analyze")
    unit = tmp_path / "pgne.service"
    shutil.copy(UNIT, unit)
    result = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    if Path(SHIPPED_PGNE).exists():
        assert (result.returncode, result.stderr.strip()) == (0, "")
    else:
        assert result.stderr.strip() == (f"pgne.service: Command {SHIPPED_PGNE} is not executable: "
                                          f"No such file or directory"), result.stderr


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path):
    tool = need("systemd-analyze")
    unit = _unit_with_existing_binary(tmp_path)
    result = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip(), result.stdout.strip()) == (0, "", "")


def test_the_units_environment_file_example_uncommented_passes_systemd_analyze_verify(tmp_path):
    """The unit's way to give `password: ${NAME}` its variable (a service has none of the shell's):
    the EnvironmentFile= line uncommented, and the file it names."""
    tool = need("systemd-analyze")
    unit = _unit_with_existing_binary(tmp_path)
    text = unit.read_text()
    assert text.count("\n#EnvironmentFile=/etc/pgne/pgne.env\n") == 1
    env_file = tmp_path / "pgne.env"
    env_file.write_text("PGNE_SHOP_PASSWORD=change-me\n")
    unit.write_text(text.replace("\n#EnvironmentFile=/etc/pgne/pgne.env\n", f"\nEnvironmentFile={env_file}\n"))
    assert unit_settings(unit.read_text())["Service"]["EnvironmentFile"] == [str(env_file)]
    result = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip(), result.stdout.strip()) == (0, "", "")


def test_the_unit_names_no_documentation_url_that_does_not_exist():
    """Documentation= takes URIs only; pgne has no web site nor man page: the unit points at
    `pgne --help` in a comment instead of a placeholder URL."""
    text = UNIT.read_text()
    assert "Documentation" not in unit_settings(text)["Unit"]
    assert "`pgne --help`" in text
    assert "http://" not in text and "https://" not in text


def test_systemd_analyze_security_rates_the_unit_exposure_at_most_2_of_10(tmp_path):
    tool = need("systemd-analyze")
    unit = _unit_with_existing_binary(tmp_path)
    # --threshold is out of 100: 20 is "2.0", systemd's "OK" band.
    result = subprocess.run([tool, "security", "--offline=true", "--threshold=20", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert not ("--offline" in result.stderr and "unrecognized" in result.stderr), \
        "systemd-analyze security --offline needs systemd 250 or later (Debian 12 has 252)"
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert result.returncode == 0, f"{overall or result.stdout[-2000:]}\n{result.stderr}"
    # the deployment docs give the figure the unit gets
    figure = re.search(r"Overall exposure level for pgne\.service: (\d+\.\d) (\w+)", result.stdout)
    docs = (REPO / "docs" / "deployment.md").read_text()
    assert f"`systemd-analyze security pgne` rates it {figure[1]} (\"{figure[2]}\")" in docs, figure[0]


# --------------------------------------------------------------------------- alert rules


def test_promtool_check_rules_accepts_the_alert_rules():
    result = subprocess.run([need("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alert_rules_pass():
    result = subprocess.run([need("promtool"), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not():
    alerts = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
              if "alert" in rule}
    fired, quiet = set(), set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert {"PgneDatabaseDown", "PgneTriggerMissing", "PgneNoEventsForSupplier", "PgneNotifyQueueFilling",
            "PgneWorkerRestarting", "PgneExporterDown"} <= alerts
    assert (alerts - fired, alerts - quiet) == (set(), set())


def test_the_supplier_template_says_90_minutes_everywhere():
    rules = {rule["alert"]: rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]}
    timestamp, count = rules["PgneNoEventsForSupplier"]["expr"], rules["PgneNoEventsForSupplierByCount"]["expr"]
    assert "time() - 5400" in timestamp and timestamp.count("[90m]") == 1 and "offset 90m" in timestamp
    assert count.count("[90m]") == 1 and "offset 90m" in count


# --------------------------------------------------------------------------- dashboard


def dashboard_panels() -> list[dict]:
    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_is_grafana_json_with_a_datasource_variable_and_host_database_table_filters():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("host", "database", "table"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    # Every query of every panel uses the variable's data source, and filters on the variables.
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]


def test_every_dashboard_panel_has_a_unique_id_a_place_and_queries():
    panels = dashboard_panels()
    ids = Counter(panel["id"] for panel in panels)
    assert [i for i, n in ids.items() if n > 1] == []
    titles = Counter(panel["title"] for panel in panels if panel["type"] != "row")
    assert [t for t, n in titles.items() if n > 1] == []
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() and t["refId"] for t in panel["targets"]), panel["title"]
    expected = {"Events per second by table and operation", "Events per second by label", "Time since the last event",
                "Databases up", "Notify queue usage", "Reconnects", "Worker restarts", "Notifications by result"}
    assert expected <= set(titles)


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Grafana variables replaced by sample values (also an empty label list); promtool parses
    each expression as a recording rule."""
    rules = []
    for labels in ("supplier", "supplier,region", ""):
        for query in dashboard_queries():
            if query.startswith(("label_values(", "label_names(")):
                continue  # Grafana functions, not PromQL
            expr = query.replace("${label:csv}", labels)
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unreplaced Grafana variable in {query!r}"
            rules.append({"record": f"dashboard:query_{len(rules)}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([need("promtool"), "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "FAILED" not in result.stdout + result.stderr, result.stdout + result.stderr


# --------------------------------------------------------------------------- against a real pgne


def _scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


CONFIG = """\
- {host}:
  - database: {name}
    tag: shop
    perform_setup: true
    username: {user}
    password: "{password}"
    port: {port}
    enabled: true
    monitors:
    - table: orders
      enabled: true
      function: notification_with_payload
      columns_to_label:
      - supplier: [acme, globex]
      columns_to_observe:
      - name: amount
        buckets: [10, 100]
        unit: euros
      events: [insert, update, delete]
"""


@pytest.fixture
def pgne_exposition(pg_database, tmp_path):
    """The samples of a real `pgne run` on a throwaway database with a table `orders`
    (label column `supplier`), once its worker listens, has checked its triggers and has read
    the notification queue's usage."""
    pg_database.execute("CREATE TABLE public.orders (id bigserial PRIMARY KEY, supplier text, amount int)")
    config = tmp_path / "events_config.yml"
    config.write_text(CONFIG.format(host=pg_database.host, name=pg_database.name, user=pg_database.user,
                                    password=pg_database.password or "", port=pg_database.port))
    port = free_port()
    stderr = (tmp_path / "pgne.stderr").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "pgne", "run", "-c", str(config), "--listen-address", f"127.0.0.1:{port}",
         "--state-dir", str(tmp_path / "state")],
        env=pgne_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline, samples, error = time.monotonic() + DEADLINE, [], None
        while True:
            if process.poll() is not None:
                stderr.seek(0)
                pytest.fail(f"pgne run exited {process.returncode}:\n{stderr.read()[-3000:]}")
            try:
                samples = _scrape(url)
                error = None
            except OSError as exc:
                error = exc
            names = {name for name, _, _ in samples}
            up = [v for name, labels, v in samples
                  if name == "pgne_database_up" and labels["database"] == pg_database.name]
            # the trigger check runs before LISTEN, the first heartbeat (queue usage) right after
            if up == [1.0] and {"pgne_trigger_installed", "pgne_notify_queue_usage_ratio"} <= names:
                break
            if time.monotonic() > deadline:
                stderr.seek(0)
                pytest.fail(f"pgne not listening after {DEADLINE:.0f} s (last error {error}); samples {sorted(names)}; "
                            f"stderr:\n{stderr.read()[-3000:]}")
            time.sleep(0.1)
        yield samples
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr.close()


def _promql_sources() -> dict[str, list[str]]:
    alerts = [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    dashboard = []
    for query in dashboard_queries():
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        dashboard.append(query)
    return {str(ALERTS.relative_to(REPO)): alerts, str(DASHBOARD.relative_to(REPO)): dashboard}


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for name, op, value in matchers:
        actual = labels.get(name, "")
        if op == "=" and actual != value or op == "!=" and actual == value:
            return False
        if op == "=~" and not re.fullmatch(value, actual) or op == "!~" and re.fullmatch(value, actual):
            return False
    return True


def test_every_metric_label_and_selector_of_the_alerts_and_dashboard_exists_in_pgnes_exposition(pgne_exposition):
    """Metric names, the label names they filter or group by, and each selector as a whole
    (the supplier template's {table="orders", supplier="acme", operation="INSERT"} included)
    must find series in what pgne really serves."""
    labels_of: dict[str, set[str]] = {}
    for name, labels, _ in pgne_exposition:
        labels_of.setdefault(name, set()).update(labels)
    problems = []
    for source, expressions in _promql_sources().items():
        for expr in expressions:
            metrics = set(METRIC_RE.findall(expr))
            for metric in sorted(metrics - set(labels_of)):
                problems.append(f"{source}: {metric} is not in pgne's exposition (in {expr!r})")
            known_labels = set().union(*(labels_of.get(m, set()) for m in metrics)) | {"instance", "job"}
            for grouping in GROUPING_RE.findall(expr):
                for label in filter(None, (part.strip() for part in grouping.split(","))):
                    if label not in known_labels:
                        problems.append(f"{source}: no pgne metric of {sorted(metrics)} has a label {label!r} "
                                        f"(in {expr!r})")
            for metric, body in SELECTOR_RE.findall(expr):
                matchers = MATCHER_RE.findall(body)
                if not any(name == metric and _matches(labels, matchers) for name, labels, _ in pgne_exposition):
                    problems.append(f"{source}: {metric}{{{body}}} selects no series of pgne's exposition")
    assert problems == []
