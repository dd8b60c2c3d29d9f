"""The Dockerfile's build and install steps, run for real without a Docker engine: its RUN
commands, as written, with the image's paths (/src, /wheels, /opt/pgne) moved into a temporary
directory and `python` a fresh virtualenv standing for the base image's Python. The first stage
builds pgne's wheel from the checkout (as COPY . . gives it, minus .dockerignore); the second
installs that wheel and its dependencies into a clean virtualenv, whose `pgne` then works.
(The user, entrypoint and paths against deploy/kubernetes/: tests/unit/test_dockerfile.py.)"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from support.dockerfile import DOCKERIGNORE, stages
from support.processes import REPO

import pgne

TIMEOUT = 600  # seconds: the second stage installs pgne's dependencies


def _image_python(path) -> str:
    """A fresh virtualenv with pip: what `python` is in the base image. Its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=TIMEOUT)
    return str(path / "bin")


def _run_step(command: str, moved: dict[str, str], cwd, python_bin: str) -> None:
    for image_path, here in moved.items():
        command = command.replace(image_path, here)
    assert not re.search(r"(?<![\w.-])/(src|wheels|opt)\b", command), command  # every image path moved
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = python_bin + os.pathsep + env["PATH"]
    result = subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


def test_the_dockerfile_builds_the_wheel_and_installs_it_into_a_clean_venv_where_pgne_runs(tmp_path):
    _, (build, final) = stages()
    ignored = [line.strip().removeprefix("**/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*ignored))  # COPY . . (WORKDIR /src)
    moved = {"/opt/pgne": str(tmp_path / "opt" / "pgne"), "/wheels": str(tmp_path / "wheels"), "/src": str(source)}
    (tmp_path / "opt").mkdir()

    for command in build.all("RUN"):
        _run_step(command, moved, source, _image_python(tmp_path / "build-python"))
    wheels = sorted(p.name for p in (tmp_path / "wheels").iterdir())
    assert wheels == [f"pgne-{pgne.__version__}-py3-none-any.whl"]

    final_python = _image_python(tmp_path / "final-python")
    for command in final.all("RUN"):
        if command.startswith("groupadd "):  # the user: root's business, checked in the unit test
            continue
        _run_step(command, moved, tmp_path, final_python)
    assert not (tmp_path / "wheels").exists()  # the image keeps no copy of the wheel

    venv_bin = tmp_path / "opt" / "pgne" / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=str(venv_bin) + os.pathsep + env["PATH"], PYTHONDONTWRITEBYTECODE="1")
    version = subprocess.run(["pgne", "--version"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
    assert (version.returncode, version.stdout) == (0, f"pgne {pgne.__version__}\n"), version.stderr
    where = subprocess.run([str(venv_bin / "python"), "-c", "import pgne; print(pgne.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(tmp_path / "opt" / "pgne" / "lib")), where.stdout + where.stderr
    check = subprocess.run(["pgne", "check", "-c", str(REPO / "config" / "events_config.yml")], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert (check.returncode, check.stderr) == (0, ""), check.stdout
