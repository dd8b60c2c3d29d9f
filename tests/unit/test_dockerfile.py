"""The Dockerfile against deploy/kubernetes/: the image runs pgne as the StatefulSet expects (its
user, its entrypoint, its writable paths and port), from the wheel the first stage builds.
Its RUN steps run for real in tests/integration/test_dockerfile.py."""
from __future__ import annotations

import re
import shlex

import pytest
from support.dockerfile import DOCKERFILE, exec_form, stages
from support.kubernetes import container, flags, listen_port, manifests

import pgne


@pytest.fixture(scope="module")
def image():
    return stages()


@pytest.fixture(scope="module")
def statefulset():
    return manifests()["StatefulSet"]


def test_two_stages_on_a_slim_python_the_second_installs_only_the_built_wheel(image):
    args, (build, final) = image
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", args["PYTHON_IMAGE"]), args
    assert build.base == final.base == args["PYTHON_IMAGE"]
    assert (build.name, final.name) == ("wheel", None)
    assert build.all("COPY") == [". ."]
    assert "pip wheel" in build.one("RUN") and "--no-deps" in build.one("RUN") and "-w /wheels ." in build.one("RUN")
    # nothing of the checkout in the image: only the wheel, from the first stage
    assert final.all("COPY") == ["--from=wheel /wheels /wheels"]
    install = [run for run in final.all("RUN") if "pip install" in run]
    assert install == ["python -m venv /opt/pgne && /opt/pgne/bin/python -m pip install --no-cache-dir "
                       "--disable-pip-version-check /wheels/pgne-*.whl && rm -rf /wheels"]


def test_the_image_runs_as_the_statefulsets_user_and_the_user_exists(image, statefulset):
    _, (_, final) = image
    pod = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert final.one("USER") == f"{pod['runAsUser']}:{pod['runAsGroup']}" == "65532:65532"
    (users,) = [run for run in final.all("RUN") if "useradd" in run]
    assert f"groupadd --system --gid {pod['runAsGroup']} pgne" in users
    assert f"useradd --system --uid {pod['runAsUser']} --gid {pod['runAsGroup']} " in users


def test_pgne_is_on_path_and_is_the_entrypoint_the_statefulset_runs(image, statefulset):
    _, (_, final) = image
    spec = container(statefulset)
    assert exec_form(final.one("ENTRYPOINT")) == spec["command"] == ["pgne"]
    env = final.one("ENV")
    assert env.startswith("PATH=/opt/pgne/bin:$PATH ")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # a read-only root file system
    assert spec["image"] == f"pgne:{pgne.__version__}"


def test_the_writable_paths_and_port_are_the_statefulsets(image, statefulset):
    _, (_, final) = image
    spec = container(statefulset)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in spec["volumeMounts"] if not m.get("readOnly")}
    state_dir = flags(spec["args"])["--state-dir"]
    assert writable == {state_dir, "/tmp"} == {"/var/lib/pgne", "/tmp"}
    assert final.one("WORKDIR") == state_dir
    assert f"install -d -o 65532 -g 65532 -m 0750 {state_dir}" in " ".join(final.all("RUN"))
    assert final.one("EXPOSE") == str(listen_port(spec)) == "9292"


def docker_run_example(text: str) -> list[str]:
    """The `docker run` command of the Dockerfile's opening comment, as argv."""
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("docker run "))
    command = ""
    for line in lines[start:]:
        command += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            break
    return shlex.split(command)


def test_the_docker_run_example_can_write_every_path_pgne_writes(image):
    """With --read-only, pgne's --state-dir and /tmp (the launcher's) must be volumes: a tmpfs, a
    writable -v, or the image's VOLUME."""
    _, (_, final) = image
    argv = docker_run_example(DOCKERFILE.read_text())
    assert argv[:2] == ["docker", "run"] and "--read-only" in argv
    writable = set(final.all("VOLUME"))
    for option, value in zip(argv, argv[1:]):
        if option == "--tmpfs":
            writable.add(value.split(":")[0])
        elif option == "-v" and not value.endswith(":ro"):
            writable.add(value.split(":")[1])
    image_name = next(a for a in argv if a.startswith("pgne:"))
    pgne_args = argv[argv.index(image_name) + 1:]
    assert pgne_args[0] == "run"
    written = {pgne_args[pgne_args.index("--state-dir") + 1], "/tmp"}
    assert written <= writable, written - writable
    assert "/var/lib/pgne" in final.all("VOLUME")  # also without the example's -v
