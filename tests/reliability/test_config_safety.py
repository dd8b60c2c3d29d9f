"""Hostile config and command-line input, as real `pgne` processes: alias bombs and other files
refused cheaply by `check` and by a SIGHUP reload (the master lives on, the old config keeps
counting), Unicode from JSON escapes, and every bad input an exit 2 with a message, never a
traceback, an "internal error" or a passphrase prompt on the terminal."""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import resource
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from support.configs import config_text, database_entry
from support.databases import run_sql
from support.exporter import PgneProcess
from support.faults import Stopwatch, record
from support.processes import pgne_env
from support.waiting import wait_until

from pgne.cli import main as pgne_main
from pgne.config import MAX_CONFIG_BYTES
from pgne.yamlfile import MAX_ALIAS_NODES

LIMIT_AS = 512 * 1024 * 1024  # address space of a `check` subprocess: an expanded bomb cannot fit


def bomb(levels: int = 9, width: int = 10) -> str:
    """A "billion laughs" file: width**levels list elements in about 1 KB of YAML."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 9, width: int = 10) -> str:
    """The same through merge keys: each level merges its predecessor `width` times."""
    lines = ["- &m0 {" + ", ".join(f"k{i}: {i}" for i in range(width)) + "}"]
    for level in range(1, levels):
        lines.append(f"- &m{level} {{<<: [" + ", ".join([f"*m{level - 1}"] * width) + "]}")
    return "\n".join(lines) + "\n"


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


@pytest.mark.parametrize("what, text, message", [
    ("a billion laughs (10^9 elements in 1 KB)", bomb(),
     f"line 5, column 45: aliases expand to more than {MAX_ALIAS_NODES:,} nodes (at *a3; a pgne config "
     f"needs far fewer)"),
    ("a merge-key bomb", merge_bomb(),
     f"line 5, column 28: aliases expand to more than {MAX_ALIAS_NODES:,} nodes (at *m3; a pgne config "
     f"needs far fewer)"),
    ("a recursive alias", "- &a [1, *a]\n",
     "line 1, column 10: alias *a refers to a node that contains it (a recursive alias)"),
])
def test_check_refuses_an_alias_bomb_with_exit_2_in_bounded_memory(tmp_path, what, text, message):
    path = tmp_path / "bomb.yml"
    path.write_text(text)
    assert len(text) < 1100
    code, stderr, seconds, peak_kib = check_process_measured(path)
    assert (code, stderr) == (2, f"{path}: {message}\n"), what
    record(f"check refuses {what}: seconds", seconds)
    record(f"check refuses {what}: peak RSS MiB", peak_kib / 1024)


def check_process_measured(path: Path) -> tuple[int, str, float, int]:
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pgne", "check", "-c", str(path)], env=pgne_env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=limit_memory)
    # os.wait4 gives this child's own peak RSS; a 120 s guard stands in for a timeout
    deadline = time.monotonic() + 120
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("pgne check still running after 120 s")
        time.sleep(0.02)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    return process.returncode, stderr, seconds, usage.ru_maxrss


# ================================================================================================
# SIGHUP with an invalid config
# ================================================================================================

MONITOR = [{"table": "t", "enabled": True, "function": "notification_with_payload", "events": ["insert"]}]


def _replace(path: Path) -> None:
    """Make room at `path` for something else than a regular file."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()


def _symlink_loop(path: Path) -> None:
    _replace(path)
    path.symlink_to(path.with_name("loop.yml"))
    path.with_name("loop.yml").unlink(missing_ok=True)
    path.with_name("loop.yml").symlink_to(path)


def _directory(path: Path) -> None:
    _replace(path)
    path.mkdir()


def _fifo(path: Path) -> None:
    _replace(path)
    os.mkfifo(path)


def _restore(path: Path, text: str) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    _replace(path)
    path.with_name("loop.yml").unlink(missing_ok=True)
    path.write_text(text)


def test_sighup_with_any_invalid_config_is_logged_and_ignored_and_the_old_config_keeps_counting(
        pg_database, tmp_path):
    db = pg_database
    run_sql(db, "CREATE TABLE t (code text)")
    path = tmp_path / "events_config.yml"

    def entry(**options) -> str:
        return config_text(database_entry(db, MONITOR, **options))

    valid = entry(password=db.password or "")
    (tmp_path / "nul-password").write_text("pa\0ss\n")
    cases = {
        "an alias bomb": (lambda: path.write_text(bomb()),
                          f"{path}: line 5, column 45: aliases expand to more than {MAX_ALIAS_NODES:,} nodes"),
        "a NUL in password_file": (lambda: path.write_text(entry(password=None, password_file="sec\0ret")),
                                   "password_file: cannot read"),
        "a NUL in the password file's content": (
            lambda: path.write_text(entry(password=None, password_file="nul-password")),
            "password contains a NUL character"),
        "an unreadable file (a symlink loop)": (lambda: _symlink_loop(path),
                                                f"{path}: cannot read: Too many levels of symbolic links"),
        "invalid UTF-8": (lambda: path.write_bytes(valid.encode() + b"# \xff\xfe\n"),
                          f"{path}: cannot read: 'utf-8' codec can't decode byte 0xff"),
        "a directory": (lambda: _directory(path), f"{path}: cannot read: Is a directory"),
        "a FIFO": (lambda: _fifo(path), f"{path}: cannot read: not a regular file"),
        "a huge file": (lambda: path.write_text(valid + "#" * MAX_CONFIG_BYTES + "\n"),
                        f"{path}: cannot read: {len(valid) + MAX_CONFIG_BYTES + 1:,} bytes; "
                        f"at most {MAX_CONFIG_BYTES:,} are read"),
        "a deleted file": (lambda: path.unlink(), f"{path}: no such file"),
        "a lone surrogate": (lambda: path.write_text(valid.replace('tag: "it"', 'tag: "\\udead"')),
                             f"{path}: line 3, column 10: '\\udead' is a lone UTF-16 surrogate"),
    }
    path.write_text(valid)
    pgne = PgneProcess(path, tmp_path / "run")
    up = {"host": db.host_label, "database": db.name, "tag": "it"}
    counted = {"operation": "INSERT", "host": db.host_label, "database": db.name, "tag": "it", "schema": "public",
               "table": "t"}
    try:
        pgne.start()
        pgne.wait_for_value("pgne_database_up", up, 1)
        workers = pgne.worker_pids()
        rows = 0
        for what, (make_invalid, message) in cases.items():
            log_before = len(pgne.stderr_text().splitlines())
            reloaded_at = pgne.value("pgne_config_last_reload_success_timestamp_seconds", {})
            make_invalid()
            clock = Stopwatch()
            pgne.send_signal(signal.SIGHUP)
            pgne.wait_for_value("pgne_config_last_reload_successful", {}, 0, timeout=30)
            seconds = clock.elapsed()

            def new_errors(log_before: int = log_before) -> list[str]:
                return [line for line in pgne.stderr_text().splitlines()[log_before:] if " ERROR " in line]

            wait_until(lambda: len(new_errors()) >= 2, 10, f"the reload error for {what}", pgne.describe)
            errors = new_errors()
            assert len(errors) == 2 and message in errors[0], (what, errors)
            assert errors[1].endswith("reload: the config above is invalid; the running config stays"), what
            assert "Traceback" not in pgne.stderr_text()
            assert pgne.process.poll() is None, what
            assert pgne.worker_pids() == workers, what
            assert pgne.value("pgne_config_last_reload_success_timestamp_seconds", {}) == reloaded_at

            run_sql(db, "INSERT INTO t VALUES ('x')")
            rows += 1
            pgne.wait_for_value("pgne_events_total", counted, rows, timeout=30)

            _restore(path, valid)
            pgne.send_signal(signal.SIGHUP)
            pgne.wait_for_value("pgne_config_last_reload_successful", {}, 1, timeout=30)
            assert pgne.value("pgne_config_last_reload_success_timestamp_seconds", {}) > reloaded_at
            assert pgne.worker_pids() == workers, what  # the same config: no worker restarts
            record(f"SIGHUP with {what}: refused after (s)", seconds)
        assert pgne.value("pgne_events_total", counted) == len(cases)
        code, _ = pgne.stop()
        assert code == 0
    finally:
        pgne.kill_leftovers()


# ================================================================================================
# Unicode: a config written as JSON
# ================================================================================================

def json_config(db, tag: str, values: list[str]) -> str:
    """The config as JSON (YAML is a superset), with every non-ASCII character as \\u escapes:
    a character beyond the BMP becomes a surrogate pair, as JSON encoders write it."""
    return json.dumps([{db.host: [{
        "database": db.name, "tag": tag, "perform_setup": True, "username": db.user,
        "password": db.password or "", "enabled": True, "port": db.port,
        "monitors": [{"table": "t", "enabled": True, "function": "notification_with_payload",
                      "columns_to_label": [{"code": values}], "events": ["insert"]}],
    }]}], ensure_ascii=True)


def test_json_config_with_surrogate_pairs_counts_the_real_characters_in_the_worker_and_on_scrapes(
        pg_database, tmp_path):
    db = pg_database
    run_sql(db, "CREATE TABLE t (code text)")
    tag = '\U0001F600 "quoted" back\\slash\nnew line'  # a tag's value is free text: /metrics escapes it
    path = tmp_path / "events_config.yml"
    path.write_text(json_config(db, tag, ["\U0001F600", "plain"]))
    assert "\\ud83d\\ude00" in path.read_text()
    check = subprocess.run([sys.executable, "-m", "pgne", "check", "-c", str(path)], env=pgne_env(),
                           capture_output=True, text=True, timeout=60)
    assert (check.returncode, check.stderr) == (0, "")
    pgne = PgneProcess(path, tmp_path / "run")
    try:
        pgne.start()
        run_sql(db, "INSERT INTO t VALUES ('\U0001F600'), ('\U0001F600'), ('plain'), ('\U0001F601')")
        base = {"operation": "INSERT", "host": db.host_label, "database": db.name, "tag": tag, "schema": "public",
                "table": "t"}
        pgne.wait_for_value("pgne_events_total", {**base, "code": "\U0001F600"}, 2)
        pgne.wait_for_value("pgne_events_total", {**base, "code": "other"}, 1)
        assert pgne.value("pgne_events_total", {**base, "code": "plain"}) == 1
        assert pgne.value("pgne_database_up", {"host": db.host_label, "database": db.name, "tag": tag}) == 1
        status, _, page = pgne.get("/")
        assert status == 200 and "\U0001F600 &quot;quoted&quot;" in page.decode("utf-8")
        assert pgne.value("pgne_worker_restarts_total", {"host": db.host_label, "database": db.name}) == 0
        assert "Traceback" not in pgne.stderr_text()
    finally:
        pgne.kill_leftovers()


# ================================================================================================
# Every bad input is exit 2 with a message naming the place
# ================================================================================================

def run_in_process(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = pgne_main(list(args))
    return code, err.getvalue()


VALID_CONFIG = """\
- localhost:
  - database: test
    tag: t
    perform_setup: false
    username: postgres
    password: x
    enabled: true
    monitors:
    - {table: one, enabled: true, function: notification_with_payload, events: [insert]}
"""


@pytest.mark.parametrize("args, message", [
    (["check", "-c", "conf\0ig.yml"], "-c/--config 'conf\\x00ig.yml': a path cannot contain a NUL character"),
    (["check", "-c", "{config}", "--templates", "tem\0plates"],
     "--templates 'tem\\x00plates': a path cannot contain a NUL character"),
    (["run", "-c", "{config}", "--state-dir", "st\0ate"], "--state-dir 'st\\x00ate': a path cannot contain a NUL "
                                                          "character"),
    (["run", "-c", "{config}", "--web.config.file", "we\0b.yml"],
     "--web.config.file 'we\\x00b.yml': a path cannot contain a NUL character"),
    (["run", "-c", "{config}", "--listen-address", "127.0.0.1:\u00b2"], "--listen-address '127.0.0.1:\u00b2': "
                                                                        "expected HOST:PORT"),
])
def test_a_nul_in_a_path_option_is_exit_2_with_a_message(tmp_path, args, message):
    config = tmp_path / "events_config.yml"
    config.write_text(VALID_CONFIG)
    code, stderr = run_in_process(*(a.replace("{config}", str(config)) for a in args))
    assert (code, stderr) == (2, message + "\n")


def run_web_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    config = tmp_path / "events_config.yml"
    config.write_text(VALID_CONFIG)
    web = tmp_path / "web.yml"
    web.write_text(text)
    # stdin closed and a new session (no terminal): nothing may wait for an answer
    return subprocess.run([sys.executable, "-m", "pgne", "run", "-c", str(config), "--listen-address",
                           "127.0.0.1:9", "--web.config.file", str(web)], env=pgne_env(), cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          start_new_session=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    common = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "2", "-subj", "/CN=localhost"]
    subprocess.run(common + ["-nodes", "-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")],
                   check=True, capture_output=True)
    subprocess.run(common + ["-passout", "pass:secret", "-keyout", str(directory / "encrypted.key"),
                             "-out", str(directory / "encrypted.crt")], check=True, capture_output=True)
    return directory


TLS = "tls_server_config:\n  cert_file: {keys}/tls.crt\n  key_file: {keys}/tls.key\n"
HASH = "$2b$10$JdUG3H46k3uyivBeIEEsb.2w2VkWIR9TKZE1z8K1rfNovtD7wiY9G"


@pytest.mark.parametrize("text, messages", [
    ("tls_server_config: {cert_file: 123, key_file: '{keys}/tls.key'}",
     ["tls_server_config > cert_file: expected a file name, got 123"]),
    ("tls_server_config: {cert_file: '{keys}/tls.crt', key_file: [a]}",
     ["tls_server_config > key_file: expected a file name, got ['a']"]),
    (TLS + "  client_auth_type: [x]\n",
     ["tls_server_config > client_auth_type: ['x'] is not one of NoClientCert, VerifyClientCertIfGiven, "
      "RequireAndVerifyClientCert"]),
    (TLS + "  min_version: {a: 1}\n", ["tls_server_config > min_version: {'a': 1} is not one of TLS12, TLS13"]),
    (TLS + '  client_ca_file: "ca\\0.crt"\n',
     ["tls_server_config > client_ca_file: 'ca\\x00.crt' contains a NUL character"]),
    (f"basic_auth_users: {{alice: '{HASH[:-1]}\u00e9'}}\n",
     ["basic_auth_users > alice: not a bcrypt hash ($2a$, $2b$ or $2y$, cost, then 53 characters of ./A-Za-z0-9)"]),
    (f"basic_auth_users: {{alice: '{HASH}', [x]: '{HASH}'}}\n",
     ["line 1, column 91: YAML syntax error: found unhashable key"]),
    ("basic_auth_users: [alice]\n", ["basic_auth_users: expected a mapping of user -> bcrypt hash"]),
    ("- tls_server_config\n", ["expected a mapping"]),
    (bomb(), [f"line 5, column 45: aliases expand to more than {MAX_ALIAS_NODES:,} nodes (at *a3; a pgne "
              f"config needs far fewer)"]),
    ('basic_auth_users: {"\\ud83d": x}\n', ["line 1, column 20: '\\ud83d' is a lone UTF-16 surrogate, not a "
                                            "character (a \\uD800-\\uDFFF escape must be half of a pair)"]),
    ("tls_server_config:\n  cert_file: {keys}/encrypted.crt\n  key_file: {keys}/encrypted.key\n",
     ["tls_server_config > key_file: {keys}/encrypted.key is encrypted (protected by a passphrase); pgne needs "
      "an unencrypted key"]),
])
def test_invalid_web_config_is_exit_2_with_a_message_naming_the_key(tmp_path, keys, text, messages):
    result = run_web_config(tmp_path, text.replace("{keys}", str(keys)))
    where = f"--web.config.file {tmp_path / 'web.yml'}: "
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [where + m.replace("{keys}", str(keys)) for m in messages]


def test_an_encrypted_key_file_never_prompts_on_the_terminal(tmp_path, keys):
    """OpenSSL asks for a passphrase on the controlling terminal (not stdin): give pgne one."""
    config = tmp_path / "events_config.yml"
    config.write_text(VALID_CONFIG)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {keys}/encrypted.crt\n  key_file: {keys}/encrypted.key\n")
    terminal, follower = pty.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(follower, termios.TIOCSCTTY, 0)

    process = subprocess.Popen([sys.executable, "-m", "pgne", "run", "-c", str(config), "--listen-address",
                                "127.0.0.1:9", "--web.config.file", str(web)], env=pgne_env(), cwd=tmp_path,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, preexec_fn=take_terminal, pass_fds=(follower,))
    os.close(follower)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("pgne run waited (for a passphrase?) instead of exiting")
    shown = b""
    while select.select([terminal], [], [], 0)[0]:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert process.returncode == 2
    assert shown == b""
    assert f"{keys}/encrypted.key is encrypted" in stderr.decode()
