"""The command line, run as `python -m pgne` in a subprocess from an empty temporary directory.

Only commands that need no database: check, render-sql, and the usage/config errors of all.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.inline_configs import README_FIXTURE, RICH_FIXTURE, config

import pgne
from pgne.config import load_config
from pgne.render import Renderer

PACKAGE_PARENT = str(Path(pgne.__file__).resolve().parent.parent)  # the source checkout, or site-packages
README_SUMMARY = "valid: 1 host, 1 database (1 enabled), 2 monitors (2 enabled), 3 triggers"


def pgne_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PGNE_CONFIG"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))
    environment.update(env or {})
    result = subprocess.run([sys.executable, "-m", "pgne", *args], cwd=cwd, env=environment,
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture
def workdir(tmp_path):
    """An empty directory with the README fixture as readme.yml and the rich one as rich.yml."""
    shutil.copy(README_FIXTURE, tmp_path / "readme.yml")
    shutil.copy(RICH_FIXTURE, tmp_path / "rich.yml")
    return tmp_path


def rendered(path: Path, host: str | None = None, database: str | None = None) -> str:
    renderer = Renderer()
    return renderer.render_config(load_config(str(path), renderer).select(host, database))


# --------------------------------------------------------------------------- check


def test_check_readme_fixture(workdir):
    result = pgne_cli("check", "-c", "readme.yml", cwd=workdir)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"readme.yml: {README_SUMMARY}\n", "")


def test_check_rich_fixture(workdir):
    result = pgne_cli("check", "--config", "rich.yml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("rich.yml: valid: 2 hosts, 3 databases (2 enabled), 7 monitors (4 enabled), "
                             "8 triggers\n")


def test_config_from_environment_then_default(workdir):
    result = pgne_cli("check", cwd=workdir, env={"PGNE_CONFIG": "readme.yml"})
    assert (result.returncode, result.stdout) == (0, f"readme.yml: {README_SUMMARY}\n")
    # -c wins over $PGNE_CONFIG
    result = pgne_cli("check", "-c", "rich.yml", cwd=workdir, env={"PGNE_CONFIG": "readme.yml"})
    assert result.stdout.startswith("rich.yml: valid: ")
    # neither: config/events_config.yml in the working directory
    (workdir / "config").mkdir()
    shutil.copy(README_FIXTURE, workdir / "config" / "events_config.yml")
    result = pgne_cli("check", cwd=workdir)
    assert (result.returncode, result.stdout) == (0, f"config/events_config.yml: {README_SUMMARY}\n")


def test_check_says_when_a_password_comes_from_this_shells_environment(workdir):
    """`check` passes in the operator's shell; a service started without that variable would exit
    2. The summary on stdout is unchanged; one note per variable on stderr."""
    text = config({"password: secret": "password: ${PGNE_SHOP_PASSWORD}"})
    text += textwrap.dedent("""\
        - otherhost:
          - database: a
            tag: t
            perform_setup: false
            username: u
            password: ${PGNE_SHOP_PASSWORD}
            enabled: false
            monitors:
            - {table: x, enabled: yes, function: simple_event_notification, events: [insert]}
          - database: b
            tag: t
            perform_setup: false
            username: u
            password_file: pw
            enabled: true
            monitors:
            - {table: x, enabled: yes, function: simple_event_notification, events: [insert]}
        """)
    (workdir / "env.yml").write_text(text, encoding="utf-8")
    (workdir / "pw").write_text("from a file\n", encoding="utf-8")
    result = pgne_cli("check", "-c", "env.yml", cwd=workdir, env={"PGNE_SHOP_PASSWORD": "s3cret"})
    assert (result.returncode, result.stdout) == (
        0, "env.yml: valid: 2 hosts, 3 databases (2 enabled), 3 monitors (2 enabled), 2 triggers\n")
    assert result.stderr == (
        "env.yml: note: the password of localhost:5432/test, otherhost:5432/a comes from the environment variable "
        "PGNE_SHOP_PASSWORD of this shell; a service (systemd, supervisord, a container) has only the environment "
        "it is given: set PGNE_SHOP_PASSWORD there too (EnvironmentFile=, environment=, env:) or use password_file\n")
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize(("databases", "names"), [
    (3, "127.0.0.1:5432/d0, 127.0.0.1:5432/d1, 127.0.0.1:5432/d2"),
    (4, "127.0.0.1:5432/d0, 127.0.0.1:5432/d1, 127.0.0.1:5432/d2 and 1 more database"),
    (500, "127.0.0.1:5432/d0, 127.0.0.1:5432/d1, 127.0.0.1:5432/d2 and 497 more databases"),
])
def test_checks_note_on_an_environment_password_names_at_most_three_databases(workdir, databases, names):
    entries = "".join(f"""
          - database: d{i}
            tag: t
            perform_setup: false
            username: u
            password: ${{PGNE_SHOP_PASSWORD}}
            enabled: true
            monitors:
            - {{table: x, enabled: yes, function: simple_event_notification, events: [insert]}}
        """ for i in range(databases))
    (workdir / "many.yml").write_text(textwrap.dedent("        - 127.0.0.1:" + entries), encoding="utf-8")
    result = pgne_cli("check", "-c", "many.yml", cwd=workdir, env={"PGNE_SHOP_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"many.yml: note: the password of {names} comes from the environment variable "
        "PGNE_SHOP_PASSWORD of this shell; a service (systemd, supervisord, a container) has only the environment "
        "it is given: set PGNE_SHOP_PASSWORD there too (EnvironmentFile=, environment=, env:) or use password_file\n")


def test_invalid_config_reports_every_error(workdir):
    text = config({"events: [insert]": "events: [insert, upsert]",
                   "    enabled: true\n": "    enabled: true\n    port: x\n"})
    (workdir / "bad.yml").write_text(text, encoding="utf-8")
    for command in ("check", "render-sql", "apply", "status", "run"):
        result = pgne_cli(command, "-c", "bad.yml", cwd=workdir)
        assert result.returncode == 2, command
        assert result.stdout == ""
        assert result.stderr == (
            "bad.yml: localhost > test > monitors[0] > events[1]: "
            "'upsert' is not one of insert, update, delete, truncate (any case)\n"
            "bad.yml: localhost > test > port: 'x' is not of type 'integer'\n"
        ), command


def test_invalid_config_cross_checks(workdir, monkeypatch):
    monkeypatch.delenv("PGNE_UNSET_VARIABLE", raising=False)  # the child inherits os.environ
    text = config({"password: secret": "password: ${PGNE_UNSET_VARIABLE}",
                   "events: [insert]": "events: [insert, INSERT]"})
    (workdir / "bad.yml").write_text(text, encoding="utf-8")
    result = pgne_cli("check", "-c", "bad.yml", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "bad.yml: localhost > test > password: environment variable PGNE_UNSET_VARIABLE is not set",
        "bad.yml: localhost > test > monitors[0] > events[1]: duplicate event 'INSERT'",
    ]


def test_yaml_syntax_error(workdir):
    (workdir / "bad.yml").write_text("- localhost:\n  - database: [test\n    tag: x\n", encoding="utf-8")
    result = pgne_cli("check", "-c", "bad.yml", cwd=workdir)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "bad.yml: line 3, column 8: YAML syntax error: expected ',' or ']', but got ':'\n"


def test_missing_config_file(workdir):
    result = pgne_cli("check", "-c", "nowhere.yml", cwd=workdir)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "nowhere.yml: no such file (give one with -c/--config or $PGNE_CONFIG)\n"
    result = pgne_cli("render-sql", cwd=workdir)  # the default path does not exist here either
    assert result.returncode == 2
    assert result.stderr == ("config/events_config.yml: no such file (give one with -c/--config or "
                             "$PGNE_CONFIG)\n")


def test_missing_templates_folder(workdir):
    result = pgne_cli("check", "-c", "readme.yml", "--templates", "nope", cwd=workdir)
    assert (result.returncode, result.stderr) == (2, "--templates nope: not a directory\n")


# --------------------------------------------------------------------------- render-sql


def test_render_sql_equals_the_renderer(workdir):
    for name in ("readme.yml", "rich.yml"):
        result = pgne_cli("render-sql", "-c", name, cwd=workdir)
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout == rendered(workdir / name)


def test_render_sql_is_byte_identical_across_runs(workdir):
    first = pgne_cli("render-sql", "-c", "rich.yml", cwd=workdir).stdout
    assert pgne_cli("render-sql", "-c", "rich.yml", cwd=workdir).stdout == first


def test_render_sql_host_and_database_filters(workdir):
    cases = [
        (["--host", "localhost"], "localhost", None),
        (["--database", "reports"], None, "reports"),
        (["--host", "db1.example.com", "--database", "shop"], "db1.example.com", "shop"),
    ]
    for flags, host, database in cases:
        result = pgne_cli("render-sql", "-c", "rich.yml", *flags, cwd=workdir)
        assert (result.returncode, result.stderr) == (0, ""), flags
        assert result.stdout == rendered(workdir / "rich.yml", host, database)
    only_localhost = pgne_cli("render-sql", "-c", "rich.yml", "--host", "localhost", cwd=workdir).stdout
    assert only_localhost.count("BEGIN;\n") == 1
    assert '-- pgne ' in only_localhost and 'database "archive"' in only_localhost
    assert "db1.example.com" not in only_localhost


def test_render_sql_prune_prints_each_databases_prune_script_after_its_own(workdir):
    result = pgne_cli("render-sql", "--prune", "-c", "rich.yml", "--database", "reports", cwd=workdir)
    assert (result.returncode, result.stderr) == (0, "")
    renderer = Renderer()
    [reports] = load_config(str(workdir / "rich.yml"), renderer).select(database="reports")
    assert result.stdout == renderer.render_database(reports) + "\n" + renderer.render_prune(reports)
    assert "--prune" not in pgne_cli("render-sql", "-c", "rich.yml", cwd=workdir).stdout


def test_render_sql_filter_matching_nothing(workdir):
    result = pgne_cli("render-sql", "-c", "rich.yml", "--host", "nohost", cwd=workdir)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "rich.yml: no database matches --host 'nohost'\n"
    result = pgne_cli("render-sql", "-c", "rich.yml", "--host", "localhost", "--database", "shop", cwd=workdir)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "rich.yml: no database matches --host 'localhost' and --database 'shop'\n"


def test_render_sql_with_user_templates(workdir):
    folder = workdir / "templates"
    folder.mkdir()
    (folder / "simple_event_notification.sql.j2").write_text(
        "CREATE OR REPLACE FUNCTION {{ function_name }}() RETURNS trigger LANGUAGE plpgsql\n"
        "AS $$BEGIN RETURN NULL; END$$; -- user template\n", encoding="utf-8")
    result = pgne_cli("render-sql", "-c", "readme.yml", "--templates", "templates", cwd=workdir)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.count("-- user template\n") == 1
    assert result.stdout == Renderer([folder]).render_config(
        load_config(str(workdir / "readme.yml"), Renderer([folder])).databases)


def test_template_error_at_render_time(workdir):
    folder = workdir / "templates"
    folder.mkdir()
    (folder / "simple_event_notification.sql.j2").write_text("{{ nonsense }}\n", encoding="utf-8")
    for command in ("check", "render-sql"):
        result = pgne_cli(command, "-c", "readme.yml", "--templates", "templates", cwd=workdir)
        assert (result.returncode, result.stdout) == (2, ""), command
        assert result.stderr == ("template 'simple_event_notification': 'nonsense' is undefined "
                                 "(rendering localhost > test > monitors[1])\n"), command


# --------------------------------------------------------------------------- usage


def test_unknown_command(workdir):
    result = pgne_cli("frobnicate", cwd=workdir)
    assert (result.returncode, result.stdout) == (2, "")
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_no_command(workdir):
    result = pgne_cli(cwd=workdir)
    assert (result.returncode, result.stdout) == (2, "")
    assert "usage: pgne" in result.stderr


def test_unknown_option(workdir):
    result = pgne_cli("check", "-c", "readme.yml", "--colour", cwd=workdir)
    assert result.returncode == 2
    assert "unrecognized arguments: --colour" in result.stderr


def test_version(workdir):
    result = pgne_cli("--version", cwd=workdir)
    assert (result.returncode, result.stdout) == (0, f"pgne {pgne.__version__}\n")


# --------------------------------------------------------------------------- run's listen address


@pytest.mark.parametrize("command", ["run", "demo"])
@pytest.mark.parametrize("port", ["99999", "65536", "0"])
def test_a_listen_port_out_of_range_says_so(workdir, command, port):
    config = ["-c", "readme.yml"] if command == "run" else []
    result = pgne_cli(command, *config, "--listen-address", f"127.0.0.1:{port}", cwd=workdir)
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", f"--listen-address '127.0.0.1:{port}': port {int(port)} out of range (1 to 65535)\n")


@pytest.mark.parametrize("command", ["run", "demo"])
@pytest.mark.parametrize(("host", "reason"), [
    ("é..", "label empty or too long"),
    ("[é..]", "label empty or too long"),
    ("a" * 64 + "é", "label empty or too long"),
    ("ü" * 70 + ".example", "label empty or too long"),
    (os.fsdecode(b"\xff\xfe"), "Invalid character '\\udcff'"),  # argv bytes that are not UTF-8
])
def test_a_listen_host_that_cannot_be_a_host_name_is_a_bad_argument(workdir, command, host, reason):
    """Exit 2 and one line, not "internal error: TypeError: encoding of hostname failed": no
    resolver can be asked about such a name, now or later (a name that does not resolve is 3)."""
    config = ["-c", "readme.yml"] if command == "run" else []
    address = f"{host}:9292"
    shown = repr(host.strip("[]"))
    result = pgne_cli(command, *config, "--listen-address", address, cwd=workdir)
    assert (result.returncode, result.stdout, result.stderr.encode("utf-8", "backslashreplace")) == (
        2, "", f"--listen-address {address!r}: {shown} is not a host name ({reason})\n".encode("utf-8",
                                                                                           "backslashreplace"))


def test_run_exits_3_when_its_port_is_in_use(workdir):
    """Exit 3 (not 1, nor 2): the address may be free later; nothing was started (the config's
    database is never connected to: the port is taken before any worker starts)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = pgne_cli("run", "-c", "readme.yml", "--listen-address", f"127.0.0.1:{port}", cwd=workdir)
    assert (result.returncode, result.stdout, result.stderr) == (
        3, "", f"--listen-address 127.0.0.1:{port}: cannot listen: Address already in use\n")


def test_run_exits_3_for_a_listen_host_that_does_not_resolve(workdir):
    result = pgne_cli("run", "-c", "readme.yml", "--listen-address", "no-such-host.invalid:9292", cwd=workdir)
    assert (result.returncode, result.stdout) == (3, "")
    # the resolver's own words (offline: "Temporary failure in name resolution")
    assert result.stderr.startswith("--listen-address no-such-host.invalid:9292: cannot listen: ")
    assert result.stderr.count("\n") == 1


def test_demo_takes_no_config_options_and_its_help_says_so(workdir):
    """README: every command but demo takes -c/--config and --templates."""
    result = pgne_cli("demo", "--help", cwd=workdir)
    assert result.returncode == 0
    assert "--config" not in result.stdout and "--templates" not in result.stdout
    for command in ("check", "render-sql", "apply", "run", "status"):
        text = pgne_cli(command, "--help", cwd=workdir).stdout
        assert "--config" in text and "--templates" in text, command
    result = pgne_cli("demo", "-c", "readme.yml", cwd=workdir)
    assert (result.returncode, result.stdout) == (2, "")
    assert "unrecognized arguments: -c readme.yml" in result.stderr
