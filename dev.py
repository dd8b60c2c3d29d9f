#!/usr/bin/env python3
"""Set up and run pgne from a checkout, on a machine with nothing but Python 3.9+.

    python3 dev.py demo [DEMO OPTIONS]     pgne demo on an embedded PostgreSQL of its own
    python3 dev.py test [PYTEST ARGS]      the whole test suite (ruff first)

Both create `.venv` in the checkout (once) and install pgne into it with the extras they need:
`embedded` for the demo; `test` and `embedded` for the tests. `test` also installs the outside
tools that some tests drive (promtool, systemd-analyze, valgrind) from Debian's packages when it
runs as root and they are missing; elsewhere it names the packages to install.

The tests run against a throwaway PostgreSQL server that the suite starts itself (see
tests/conftest.py), never a server of the machine's:
1. the whole suite on the embedded PostgreSQL 18 (PGNE_TEST_SERVER=embedded), as two runs:
   tests/unit with tests/integration, and tests/reliability;
2. the SQL-facing tests (tests/unit, tests/integration) again on the system's PostgreSQL
   (/usr/lib/postgresql/N/bin, PGNE_TEST_SERVER=system) where one is installed; with CI=true a
   missing system PostgreSQL is an error.
The three runs go side by side (the suite mostly waits), each picking ports in a range of its
own (PGNE_FREE_PORTS); the output of the second and third follows the first's.
With PYTEST ARGS, or with PGNE_TEST_DSN set (a server of your choice), there is one run only.

Standard library only: this runs before anything is installed.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PYTHON = BIN / "python"
# tool -> the Debian package that has it
TEST_TOOLS = {"promtool": "prometheus", "systemd-analyze": "systemd", "valgrind": "valgrind"}
SQL_FACING = ["tests/unit", "tests/integration"]


def say(text: str) -> None:
    print(f"dev.py: {text}", flush=True)


def fail(text: str, code: int = 2) -> None:
    print(f"dev.py: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(argv: list, env: dict | None = None) -> int:
    """Run a command in the foreground; Ctrl-C goes to it (the terminal sends SIGINT to the whole
    process group) and this process waits for it to finish its own clean-up."""
    child = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=env)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT,)}
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 9):  # noqa: UP036 (this runs under any python3, before anything is installed)
        fail(f"pgne needs Python 3.9 or later; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        say(f"creating {VENV.relative_to(ROOT)} ({sys.executable}, Python {sys.version.split()[0]})")
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]
    say(f"installing pgne[{extras}] into .venv")
    # setuptools 70.1+ builds wheels by itself (the packaging tests build pgne offline).
    if run(pip + ["install", "--upgrade", "setuptools>=70.1", "wheel"]) != 0 \
            or run(pip + ["install", f".[{extras}]"]) != 0:
        fail("pip install failed (see above)", 1)


def ensure_tools() -> None:
    missing = {tool: package for tool, package in TEST_TOOLS.items() if shutil.which(tool) is None}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        fail(f"the tests need {', '.join(missing)}: install Debian's packages {' '.join(packages)} "
             f"(sudo apt-get install --no-install-recommends {' '.join(packages)}), or put them on PATH")
    say(f"installing {', '.join(missing)} (Debian packages {' '.join(packages)})")
    running_before = set(subprocess.run(["pgrep", "-x", "prometheus"], capture_output=True, text=True).stdout.split())
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if run(["apt-get", "update", "-q"], env) != 0 or \
            run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env) != 0:
        fail(f"apt-get install {' '.join(packages)} failed (see above)", 1)
    # Only promtool is wanted: stop a Prometheus server that the package may have started.
    for pid in subprocess.run(["pgrep", "-x", "prometheus"], capture_output=True, text=True).stdout.split():
        if pid not in running_before:
            subprocess.run(["kill", pid], capture_output=True)
    still = [tool for tool in missing if shutil.which(tool) is None]
    if still:
        fail(f"still missing after apt-get: {', '.join(still)}", 1)


def system_postgres() -> str | None:
    """The newest system PostgreSQL's major version (Debian's /usr/lib/postgresql/N), if any."""
    versions = [int(Path(p).parent.parent.name) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
                if Path(p).parent.parent.name.isdigit()]
    return str(max(versions)) if versions else None


def pytest(args: list, server: str | None) -> int:
    say(f"python -m pytest {' '.join(args)}" + (f"  (PostgreSQL: {server})" if server else
                                                 f"  (PostgreSQL: PGNE_TEST_DSN={os.environ.get('PGNE_TEST_DSN')})"))
    code = run([PYTHON, "-m", "pytest", *args], pytest_env(server))
    return 1 if code == 5 else code  # pytest's 5: no test ran, a failure here


def pytest_env(server: str | None, ports: str | None = None) -> dict:
    env = dict(os.environ)
    if server:
        env["PGNE_TEST_SERVER"] = server
    if ports:
        env["PGNE_FREE_PORTS"] = ports  # pgne.cluster.free_port(): this pass's own range
    return env


def side_by_side(passes: list) -> list:
    """Run the passes (label, server, pytest args, port range) at once: the first in the
    foreground, the others beside it with their output shown after it. The suite mostly waits
    (for servers, workers, deadlines), so together they take little longer than the longest;
    each picks ports in a range of its own (PGNE_FREE_PORTS) so that they never race for one."""
    sides = []
    try:
        for label, server, args, ports in passes[1:]:
            say(f"python -m pytest -q {' '.join(args)}  (PostgreSQL: {server}; beside the next run, output after it)")
            log = tempfile.TemporaryFile(mode="w+")
            sides.append((label, log, subprocess.Popen(
                [str(PYTHON), "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=ROOT,
                env=pytest_env(server, ports), stdout=log, stderr=subprocess.STDOUT)))
        label, server, args, ports = passes[0]
        say(f"python -m pytest -q {' '.join(args)}  (PostgreSQL: {server})")
        codes = [run([PYTHON, "-m", "pytest", "-q", *args], pytest_env(server, ports))]
        for label, log, process in sides:
            codes.append(process.wait())
            log.seek(0)
            say(f"{label}: its output")
            sys.stdout.write(log.read())
            sys.stdout.flush()
    finally:
        for _, log, process in sides:
            if process.poll() is None:
                process.terminate()
                process.wait()
            log.close()
    return [1 if code == 5 else code for code in codes]  # pytest's 5: no test ran, a failure here


def test(args: list) -> int:
    ensure_venv("test,embedded")
    ensure_tools()
    say("ruff check .")
    if run([BIN / "ruff", "check", "."]) != 0:
        return 1
    if os.environ.get("PGNE_TEST_DSN"):
        return pytest(["-q", *args], None)
    if args:
        return pytest(["-q", *args], os.environ.get("PGNE_TEST_SERVER") or "embedded")
    system = system_postgres()
    if system is None and os.environ.get("CI") == "true":
        fail("CI tests both the embedded and the system PostgreSQL, and /usr/lib/postgresql/*/bin has none", 1)
    passes = [("tests/unit tests/integration on the embedded PostgreSQL", "embedded", list(SQL_FACING),
               "20000-23999"),
              ("tests/reliability on the embedded PostgreSQL", "embedded", ["tests/reliability"], "24000-27999")]
    if system is not None:
        passes.append((f"{' '.join(SQL_FACING)} on PostgreSQL {system}", "system", list(SQL_FACING),
                       "28000-31999"))
    codes = side_by_side(passes)
    if system is None:
        say("no system PostgreSQL under /usr/lib/postgresql: the tests ran on the embedded PostgreSQL 18 only")
    runs = [label for label, _, _, _ in passes]
    for what, code in zip(runs, codes):
        say(f"{what}: {'passed' if code == 0 else f'FAILED (pytest exit {code})'}")
    return 0 if all(code == 0 for code in codes) else 1


def demo(args: list) -> int:
    ensure_venv("embedded")
    return run([BIN / "pgne", "demo", *args])


def main(argv: list) -> int:
    commands = {"demo": demo, "test": test}
    if not argv or argv[0] not in commands:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
