"""A throwaway PostgreSQL cluster for tests that stop, restart or crash the server.

Never the shared server at 127.0.0.1:5432: `initdb` into a temporary directory owned by the
`postgres` OS user (tests run as root, PostgreSQL refuses to), started with `pg_ctl` on a free
port. fsync is off: `pg_ctl stop -m immediate` is a crash of the server, not of the machine,
so committed data survives it all the same.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from typing import Mapping

import psycopg2
from runner import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"{name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


class TempCluster:
    def __init__(self, port: int | None = None, settings: Mapping[str, str] | None = None):
        """`settings`: more postgresql.conf lines, name -> value as written there."""
        self.port = port or free_port()
        self.base = tempfile.mkdtemp(prefix="pgne-cluster-")
        self.data = os.path.join(self.base, "data")
        self.socket_dir = os.path.join(self.base, "sock")
        self.log = os.path.join(self.base, "server.log")
        os.makedirs(self.socket_dir)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        _as_postgres([_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync"])
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.socket_dir}'\nfsync = off\n"
                       "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n"
                       "shared_buffers = 64MB\n")
            conf.writelines(f"{name} = {value}\n" for name, value in (settings or {}).items())

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        _as_postgres([_bin("pg_ctl"), "-D", self.data, "-l", self.log, "-w", "-t", str(int(timeout)), *args],
                     timeout=timeout + 10)

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self.pg_ctl("restart", "-m", mode)

    def is_running(self) -> bool:
        args = [_bin("pg_ctl"), "-D", self.data, "status"]
        if os.geteuid() == 0:  # pg_ctl refuses to run as root: as root this was always False
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(args, capture_output=True).returncode == 0

    def connect(self, dbname: str = "postgres", autocommit: bool = True):
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                                connect_timeout=5)
        conn.autocommit = autocommit
        return conn

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def destroy(self) -> None:
        if self.is_running():
            try:
                self.stop("immediate")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)
