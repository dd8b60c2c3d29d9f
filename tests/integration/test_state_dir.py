"""`--state-dir` / $PROMETHEUS_MULTIPROC_DIR is pgne's own: it never deletes files it did not create.

Each test runs a real `pgne run` (a config whose one database is disabled: the master starts,
no worker connects anywhere) on a directory in some state and checks what pgne did to it:
took it (and served /metrics), or refused it with exit 2, a message naming the directory, and
every file left as it was.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.configs import config_text, database_entry
from support.databases import Database
from support.exporter import PgneProcess
from support.processes import free_port, pgne_env

MONITORS = [{"table": "one", "enabled": True, "function": "simple_event_notification", "events": ["insert"]}]
MARKER = ".pgne-state-dir"


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(Database("nowhere"), MONITORS, perform_setup=False, enabled=False)))
    return path


def run_briefly(config: Path, state_dir: str | None, env: dict | None = None, timeout: float = 30):
    """`pgne run` expected to refuse at once: the CompletedProcess."""
    args = [sys.executable, "-m", "pgne", "run", "-c", str(config), "--listen-address", f"127.0.0.1:{free_port()}"]
    if state_dir is not None:
        args += ["--state-dir", state_dir]
    return subprocess.run(args, env=pgne_env(**(env or {})), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def started(config: Path, tmp_path: Path, state_dir: Path, name: str = "pgne") -> PgneProcess:
    proc = PgneProcess(config, tmp_path / name)
    proc.state_dir = state_dir
    return proc.start(expect_up=False)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def assert_refused(result, where: str, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(where), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def write_prometheus_file(path: Path) -> None:
    """A file as prometheus_client writes it (a 4-byte used size, padding, no entries)."""
    path.write_bytes((8).to_bytes(4, "little") + b"\0" * 65532)


def test_a_missing_directory_is_created_and_marked_and_an_empty_one_is_taken(config, tmp_path):
    missing = tmp_path / "new" / "state"
    proc = started(config, tmp_path, missing)
    assert proc.get("/metrics")[0] == 200
    assert (missing / MARKER).is_file()
    assert proc.stop()[0] == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = started(config, tmp_path, empty, "pgne2")
    assert (empty / MARKER).is_file()
    assert proc.stop()[0] == 0


def test_a_directory_with_files_pgne_did_not_create_is_refused_and_nothing_is_deleted(config, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "important.db").write_bytes(b"the application's data")
    (state / "notes.txt").write_text("mine")
    before = snapshot(state)
    result = run_briefly(config, str(state))
    assert_refused(result, f"--state-dir {state}:", "important.db", "notes.txt", "nothing was deleted")
    assert snapshot(state) == before


def test_another_programs_multiprocess_directory_is_refused_even_though_its_names_look_like_pgnes(
        config, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR shared with a gunicorn app: counter_<pid>.db files, no pgne lock."""
    state = tmp_path / "gunicorn"
    state.mkdir()
    write_prometheus_file(state / "counter_4242.db")
    write_prometheus_file(state / "gauge_livesum_4242.db")
    before = snapshot(state)
    result = run_briefly(config, None, env={"PROMETHEUS_MULTIPROC_DIR": str(state)})
    assert_refused(result, f"PROMETHEUS_MULTIPROC_DIR {state}:", "counter_4242.db", "without pgne's marker")
    assert snapshot(state) == before


def test_a_foreign_file_in_a_marked_directory_is_refused_too(config, tmp_path):
    state = tmp_path / "state"
    proc = started(config, tmp_path, state)
    assert proc.stop()[0] == 0
    (state / "backup.sql").write_text("SELECT 1;")
    result = run_briefly(config, str(state))
    assert_refused(result, f"--state-dir {state}:", "backup.sql")
    assert (state / "backup.sql").read_text() == "SELECT 1;"


def test_the_state_directory_of_an_earlier_pgne_without_a_marker_is_taken_over_and_cleaned(config, tmp_path):
    """The upgrade path: a directory of pgne before the marker existed holds only pgne's names
    (its compaction lock among them); it is marked, and its stale files are deleted."""
    state = tmp_path / "old"
    state.mkdir()
    for name in ("counter_merged.db", "counter_1234.db", "gauge_livemax_1234.db", "gauge_mostrecent_merged.db"):
        write_prometheus_file(state / name)
    (state / ".pgne-compaction.lock").write_bytes(b"")
    (state / "outbox-offsets-0123456789abcdef.json").write_text("{}")
    proc = started(config, tmp_path, state)
    assert "taking over the state directory of an earlier pgne" in proc.stderr_text()
    names = {p.name for p in state.iterdir()}
    assert MARKER in names
    assert not {"counter_1234.db", "gauge_livemax_1234.db", "gauge_mostrecent_merged.db",
                "outbox-offsets-0123456789abcdef.json"} & names
    assert proc.stop()[0] == 0


def test_two_pgne_runs_on_one_state_directory_the_second_is_refused_and_wipes_nothing(config, tmp_path):
    state = tmp_path / "state"
    first = started(config, tmp_path, state)
    files = snapshot(state)
    result = run_briefly(config, str(state))
    assert_refused(result, f"--state-dir {state}:", f"in use by another pgne run (pid {first.pid})")
    assert {n for n in snapshot(state)} == set(files)
    assert first.get("/metrics")[0] == 200
    assert first.stop()[0] == 0
    second = started(config, tmp_path, state, "pgne2")  # free again once the first has exited
    assert second.stop()[0] == 0


def test_a_symlink_to_a_directory_is_followed_a_dangling_one_and_a_file_are_refused(config, tmp_path):
    target = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(target)
    result = run_briefly(config, str(link))
    assert_refused(result, f"--state-dir {link}:", "symbolic link", "does not exist")
    assert not target.exists()

    target.mkdir()
    proc = started(config, tmp_path, link)
    assert (target / MARKER).is_file()
    assert proc.stop()[0] == 0

    a_file = tmp_path / "state.db"
    a_file.write_text("keep me")
    result = run_briefly(config, str(a_file))
    assert_refused(result, f"--state-dir {a_file}:", "not a directory")
    assert a_file.read_text() == "keep me"


def test_a_directory_pgne_cannot_write_to_is_refused_with_exit_2(config, tmp_path):
    state = tmp_path / "readonly"
    state.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: a read-only file system it is
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "pgne-test", str(state)], check=True)
    else:
        state.chmod(0o555)
    try:
        result = run_briefly(config, str(state))
        assert_refused(result, f"--state-dir {state}:", "Read-only file system" if os.geteuid() == 0
                       else "Permission denied")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(state)], check=True)
        else:
            state.chmod(0o755)
