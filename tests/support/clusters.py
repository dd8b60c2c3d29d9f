"""Throwaway PostgreSQL clusters of the suite, all pgne.cluster's ThrowawayCluster:

- `test_server()`: the session's server (tests/conftest.py's `pg_dsn`) when $PGNE_TEST_DSN is
  not set, from the binaries $PGNE_TEST_SERVER names (`embedded`, the default, or `system`).
- `TempCluster` / `start_cluster()`: clusters for tests that stop, restart or crash a server
  (never the test server of PGNE_TEST_DSN). $PGNE_TEST_SERVER picks the binaries here too;
  without it, the system's `/usr/lib/postgresql/*/bin` where present, else the embedded
  server's. A `hot standby` of one of them with `TempCluster.standby_of()`.
"""
from __future__ import annotations

import os
import subprocess

import psycopg2

from pgne.cluster import ClusterError, ThrowawayCluster, find_binaries

__all__ = ["ClusterError", "TempCluster", "start_cluster", "test_binaries", "test_server"]

SERVERS = ("embedded", "system")


def test_server(server: str) -> ThrowawayCluster:
    """The session's throwaway server (not started) from the binaries `server` names
    ("embedded" or "system"); removed when this process exits, however it exits."""
    if server not in SERVERS:
        raise ClusterError(f"PGNE_TEST_SERVER must be 'embedded' or 'system', not {server!r}")
    binaries = find_binaries(prefer=server)
    if binaries.source not in (server, "PGNE_POSTGRES_BIN"):
        raise ClusterError(f"PGNE_TEST_SERVER={server}, but only {binaries.describe()} is at hand")
    cluster = ThrowawayCluster(binaries, settings={"max_connections": 200}, prefix="pgne-test-server-")
    cluster.remove_when_this_process_exits()  # a killed test run leaves no server behind
    return cluster


test_server.__test__ = False  # a helper, not a test


def test_binaries():
    """The PostgreSQL binaries this test run uses for its own clusters."""
    return find_binaries(prefer=os.environ.get("PGNE_TEST_SERVER") or "system")


test_binaries.__test__ = False  # a helper, not a test


class TempCluster(ThrowawayCluster):
    """A ThrowawayCluster (fsync off) from `test_binaries()`; `settings` are more
    postgresql.conf lines, e.g. {"max_prepared_transactions": 5}."""

    def __init__(self, port: int | None = None, settings: dict | None = None):
        super().__init__(test_binaries(), port=port, settings=settings, prefix="pgne-cluster-")
        self.remove_when_this_process_exits()  # a killed test run leaves no server behind

    def bin(self, program: str) -> str:
        """The path of one of this cluster's programs (pg_basebackup, pgbench, ...)."""
        return self.binaries.path(program)

    @classmethod
    def standby_of(cls, primary: "TempCluster") -> "TempCluster":
        """A hot standby of `primary` (pg_basebackup -R: streaming replication), not started yet.
        Promote it with promote()."""
        self = cls.__new__(cls)
        self.binaries, self.user = primary.binaries, primary.user
        self.make_directory("pgne-standby-")
        self.remove_when_this_process_exits()
        self.run("pg_basebackup", "-D", str(self.data), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                 "-R", "-X", "stream", "--no-sync")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:  # the primary's, copied
            conf.write(f"\nport = {self.port}\nunix_socket_directories = '{self.socket_dir}'\nhot_standby = on\n")
        return self

    def promote(self) -> None:
        self.pg_ctl("promote")


def start_cluster(attempts: int = 3, hba: str | None = None, settings: dict[str, str] | None = None) -> TempCluster:
    """initdb + start; a new cluster (and port) if the start fails, e.g. because another test
    run took the free port in between. `hba` replaces pg_hba.conf before the first start;
    `settings` are more postgresql.conf lines."""
    for attempt in range(attempts):
        cluster = TempCluster(settings=settings)
        if hba is not None:
            with open(os.path.join(cluster.data, "pg_hba.conf"), "w") as f:  # keeps its owner, postgres
                f.write(hba)
        try:
            cluster.start()
            cluster.wait_ready()
            return cluster
        except (ClusterError, subprocess.CalledProcessError, psycopg2.OperationalError) as exc:
            try:
                with open(cluster.log) as f:
                    log = f.read()[-2000:]
            except OSError:
                log = ""
            cluster.destroy()
            if attempt == attempts - 1:
                raise RuntimeError(f"cannot start a throwaway cluster: {exc}\n"
                                   f"{getattr(exc, 'stderr', '')}\n{log}") from exc
    raise AssertionError("unreachable")
