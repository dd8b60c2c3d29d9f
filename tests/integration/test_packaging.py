"""A plain (non-editable) `pip install` of pgne works from any directory.

The SQL templates and the config schema must be installed inside the package: these tests
install a copy of the checkout into a fresh venv and run the installed `pgne` with its
working directory outside the source tree, so nothing can be found through the checkout.

The venv gets pgne's dependencies without downloading them: a .pth file puts the test
runner's own site-packages behind the venv's, and pgne itself is installed with --no-deps.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.inline_configs import README_FIXTURE

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds, for any one subprocess
# pg_notify_exporter's README example, as it is written there (doubled `---`, trailing `...`).
README_CONFIG = README_FIXTURE.read_text(encoding="utf-8")



@dataclass(frozen=True)
class Installed:
    venv: Path
    python: Path
    pgne: Path
    site_packages: Path
    config: Path  # a copy of README_CONFIG (README_FIXTURE's text)
    cwd: Path  # an empty directory outside the checkout
    env: dict


def _run(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _can_build_wheels_here() -> bool:
    """True if this interpreter builds a wheel without pip's isolated build environment.

    setuptools has its own bdist_wheel from 70.1 on; older ones need the `wheel` package.
    """
    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    import setuptools

    match = re.match(r"(\d+)\.(\d+)", setuptools.__version__)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= (70, 1)


def _runner_site_dirs() -> list[str]:
    """The site-packages directories this test process imports pgne's dependencies from."""
    candidates = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    candidates += [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    seen: list[str] = []
    for path in candidates:
        if Path(path).is_dir() and path not in seen:
            seen.append(path)
    return seen


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout,
    # and a stale build/lib could put files in the wheel that the checkout no longer has.
    source = base / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".tox", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".ruff_cache", ".hypothesis"))

    venv = base / "venv"
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PGNE_CONFIG", "PROMETHEUS_MULTIPROC_DIR", "VIRTUAL_ENV"):
        env.pop(name, None)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")

    result = _run([sys.executable, "-m", "venv", "--without-pip", venv], base, env)
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], base, env)
    assert purelib.returncode == 0, purelib.stderr
    site_packages = Path(purelib.stdout.strip())
    # Appended to sys.path after the venv's own site-packages: the pgne installed below wins
    # over any pgne the test runner has; its dependencies come from the runner.
    (site_packages / "_pgne_test_runner_deps.pth").write_text("\n".join(_runner_site_dirs()) + "\n")

    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps"]
    if _can_build_wheels_here():
        pip.append("--no-build-isolation")  # offline and fast; else pip fetches setuptools
    result = _run([*pip, source], base, env)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"

    cwd = base / "elsewhere"
    cwd.mkdir()
    config = base / "configs" / "events_config.yml"
    config.parent.mkdir()
    config.write_text(README_CONFIG)
    return Installed(venv=venv, python=python, pgne=venv / "bin" / "pgne", site_packages=site_packages,
                     config=config, cwd=cwd, env=env)


def test_installed_pgne_check_validates_readme_config_from_another_directory(installed: Installed) -> None:
    result = _run([installed.pgne, "check", "-c", installed.config], installed.cwd, installed.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"{installed.config}: valid: 1 host, 1 database (1 enabled), "
                             f"2 monitors (2 enabled), 3 triggers\n")
    assert result.stderr == ""


def test_installed_pgne_check_rejects_invalid_config_with_exit_2(installed: Installed) -> None:
    bad = installed.config.with_name("bad.yml")
    bad.write_text(README_CONFIG.replace("- insert", "- upsert"))
    result = _run([installed.pgne, "check", "-c", bad], installed.cwd, installed.env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "localhost > test > monitors[0] > events[0]" in result.stderr
    assert "Traceback" not in result.stderr


def test_installed_pgne_render_sql_matches_the_checkout(installed: Installed) -> None:
    result = _run([installed.pgne, "render-sql", "-c", installed.config], installed.cwd, installed.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('-- pgne ')
    assert 'host "localhost", port 5432, database "test", tag "business_tag"' in result.stdout.splitlines()[0]
    for trigger in ("pgne_insert", "pgne_delete"):
        assert trigger in result.stdout
    # The installed templates are the checkout's: byte-identical SQL.
    source_env = dict(installed.env, PYTHONPATH=str(REPO))
    from_source = _run([sys.executable, "-m", "pgne", "render-sql", "-c", installed.config], installed.cwd,
                       source_env)
    assert from_source.returncode == 0, from_source.stderr
    assert result.stdout == from_source.stdout


def test_python_dash_m_pgne_works_in_the_installed_venv(installed: Installed) -> None:
    result = _run([installed.python, "-m", "pgne", "check", "-c", installed.config], installed.cwd,
                  installed.env)
    assert result.returncode == 0, result.stderr
    assert ": valid: 1 host, 1 database" in result.stdout


def test_templates_and_schema_are_installed_inside_the_package(installed: Installed) -> None:
    probe = ("import pgne, pgne.resources as r; "
             "print(pgne.__file__); print(r.builtin_templates_dir()); print(r.config_schema_path())")
    result = _run([installed.python, "-c", probe], installed.cwd, installed.env)
    assert result.returncode == 0, result.stderr
    module, templates, schema = (Path(line) for line in result.stdout.splitlines())
    package = installed.site_packages / "pgne"
    assert module == package / "__init__.py"
    assert templates == package / "sql_templates"
    assert schema == package / "schema" / "events_config.schema.json"
    assert schema.is_file()
    assert schema.read_bytes() == (REPO / "schema" / "events_config.schema.json").read_bytes()
    installed_templates = sorted(p.name for p in templates.glob("*.sql.j2"))
    assert installed_templates == sorted(p.name for p in (REPO / "sql_templates").glob("*.sql.j2"))
    assert "notification_with_payload.sql.j2" in installed_templates
    assert "simple_event_notification.sql.j2" in installed_templates


# --------------------------------------------------------------------------- Debian 12's pip

DEBIAN_PYTHON = Path("/usr/bin/python3")
# Markers of pip's legacy paths and of any warning it prints
LEGACY_MARKERS = ("DEPRECATION", "legacy", "setup.py install", "WARNING", "Warning")


def _debian_pip() -> list[str]:
    """Debian 12's own pip (23.0.1, /usr/bin/python3 -m pip): without pyproject.toml it installs
    pgne through the deprecated `setup.py install`."""
    probe = subprocess.run([str(DEBIAN_PYTHON), "-m", "pip", "--version"], capture_output=True, text=True,
                           timeout=TIMEOUT) if DEBIAN_PYTHON.exists() else None
    if probe is None or probe.returncode != 0:
        pytest.fail("Debian's pip is not installed: apt-get install python3-pip", pytrace=False)
    assert probe.stdout.startswith("pip 23.0"), probe.stdout
    return [str(DEBIAN_PYTHON), "-m", "pip"]


def _bare_venv(path: Path, env: dict) -> Path:
    """A venv without setuptools or pip of its own that sees the test runner's site-packages (pgne's
    dependencies and setuptools >= 70.1, the build requirement, all offline); its python."""
    assert _run([sys.executable, "-m", "venv", "--without-pip", path], path.parent, env).returncode == 0
    python = path / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], path.parent, env)
    (Path(purelib.stdout.strip()) / "_pgne_test_runner_deps.pth").write_text("\n".join(_runner_site_dirs()) + "\n")
    return python


def test_debian_pip_installs_the_checkout_and_its_wheel_through_pep_517_without_a_warning(tmp_path):
    """pyproject.toml declares the build system: Debian's pip 23.0 builds a wheel through
    setuptools' PEP 517 backend (--no-build-isolation: offline, with the runner's setuptools)
    and installs it, with no deprecation and no warning; the built wheel installs the same way."""
    import setuptools

    assert _can_build_wheels_here(), f"setuptools {setuptools.__version__} < 70.1 and no wheel package"
    pip = _debian_pip()
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".tox", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".ruff_cache", ".hypothesis"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON")) and k != "VIRTUAL_ENV"}
    # pip's own settings only: not this machine's pip.conf (indexes, find-links, constraints)
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PYTHONNOUSERSITE="1")

    python = _bare_venv(tmp_path / "venv", env)
    # --ignore-installed: the runner's own pgne is visible through the .pth; never touch it
    install = [*pip, "--python", python, "install", "--no-deps", "--ignore-installed"]
    result = _run([*install, "--no-build-isolation", source], tmp_path, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Building wheel for pgne (pyproject.toml)" in output, output
    assert [m for m in LEGACY_MARKERS if m in output] == [], output
    check = _run([tmp_path / "venv" / "bin" / "pgne", "--version"], tmp_path, env)
    assert (check.returncode, check.stdout) == (0, "pgne 0.1.0\n"), check.stderr

    wheels = tmp_path / "wheels"
    built = _run([*pip, "--python", python, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source],
                 tmp_path, env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert [m for m in LEGACY_MARKERS if m in built.stdout + built.stderr] == [], built.stdout + built.stderr
    assert sorted(p.name for p in wheels.iterdir()) == ["pgne-0.1.0-py3-none-any.whl"]

    other = _bare_venv(tmp_path / "from-wheel", env)
    result = _run([*pip, "--python", other, "install", "--no-deps", "--ignore-installed",
                   wheels / "pgne-0.1.0-py3-none-any.whl"], tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [m for m in LEGACY_MARKERS if m in result.stdout + result.stderr] == [], result.stdout + result.stderr
    check = _run([tmp_path / "from-wheel" / "bin" / "pgne", "check", "-c", REPO / "config" / "events_config.yml"],
                 tmp_path, env)
    assert (check.returncode, check.stderr) == (0, ""), check.stdout
