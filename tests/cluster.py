"""Throwaway PostgreSQL clusters for tests that stop, restart or crash a server (never the
test server of PGNE_TEST_DSN): pgne.cluster's ThrowawayCluster, with the binaries the test run
was asked for.

$PGNE_TEST_SERVER (`embedded` or `system`) picks the binaries, as it does for the session's
server (tests/conftest.py); without it, the system's `/usr/lib/postgresql/*/bin` where present,
else the embedded server's.
"""
from __future__ import annotations

import os

from pgne.cluster import ClusterError, ThrowawayCluster, find_binaries

__all__ = ["ClusterError", "TempCluster", "test_binaries"]


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
