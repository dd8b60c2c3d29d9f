"""deploy/kubernetes/ as the tests read it, and a StatefulSet pod's pgne started as the kubelet
would start it, without a cluster.

- `manifests()`: every resource of the directory by kind; `container()`, `flags()`,
  `listen_port()`, `named_port()`, `probe_target()`, `scrape_target()` read what pgne is given and where it is
  probed and scraped.
- `Pod`: one ordinal of the StatefulSet: a root directory that stands for its file system (the
  ConfigMap's and Secret's keys written at their mountPaths in the kubelet's layout, emptyDirs
  as empty directories), a loopback address that stands for its pod IP (`pod_addresses()`),
  its environment (the downward API's pod-index label) and its argv (`$(VAR)` expanded as the
  kubelet does).
- `PodPgne`: that argv run as a `PgneProcess`.
"""
from __future__ import annotations

import random
import re
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from support.exporter import PgneProcess
from support.processes import REPO, pgne_env

DIRECTORY = REPO / "deploy" / "kubernetes"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
LABEL_FIELD_RE = re.compile(r"^metadata\.labels\['([^']+)'\]$")
# The kubelet's expansion of command and args: `$(NAME)` is the variable's value when it is
# defined (else left as it is), `$$` is a literal `$`.
EXPANSION_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


# The optional kustomize component (prometheus-operator's CRDs are not in every cluster)
SERVICE_MONITOR = DIRECTORY / "servicemonitor"


def base_manifest_files() -> list[Path]:
    """The resources that `kubectl apply -k deploy/kubernetes/` applies (kustomization.yaml is
    kustomize's, not one)."""
    return sorted(path for path in DIRECTORY.glob("*.yaml") if path.name != "kustomization.yaml")


def manifest_files() -> list[Path]:
    """Every Kubernetes resource of deploy/kubernetes/: the base's, then the ServiceMonitor component's."""
    return base_manifest_files() + sorted(p for p in SERVICE_MONITOR.glob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> dict[str, dict]:
    """{kind: resource}: one resource of each kind."""
    found: dict[str, dict] = {}
    for path in manifest_files():
        for resource in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert resource["kind"] not in found, f"{path.name}: a second {resource['kind']}"
            found[resource["kind"]] = resource
    return found


def container(statefulset: Mapping[str, Any]) -> dict:
    """The StatefulSet's one container."""
    (only,) = statefulset["spec"]["template"]["spec"]["containers"]
    return only


def flags(args: list[str]) -> dict[str, str]:
    """`--name=value` arguments as {--name: value} (the manifests spell every flag so)."""
    return dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


def listen_port(spec: Mapping[str, Any]) -> int:
    """The port of the container's `--web.listen-address=HOST:PORT`."""
    return int(flags(spec["args"])["--web.listen-address"].rsplit(":", 1)[1])


def named_port(spec: Mapping[str, Any], port: int | str) -> int:
    """A container port given by number or by name, as a probe or a Service's targetPort gives it."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in spec["ports"] if p["name"] == port]
    return number


def probe_target(spec: Mapping[str, Any], probe: str) -> tuple[int, str]:
    """(port, path) of an httpGet probe (livenessProbe, readinessProbe) of the container."""
    get = spec[probe]["httpGet"]
    return named_port(spec, get["port"]), get["path"]


def scrape_target(resources: Mapping[str, dict]) -> tuple[int, str]:
    """(container port, path) that Prometheus scrapes on each pod: the ServiceMonitor's endpoint
    names a port of the Service, whose targetPort names the container's."""
    (endpoint,) = resources["ServiceMonitor"]["spec"]["endpoints"]
    (port,) = [p for p in resources["Service"]["spec"]["ports"] if p["name"] == endpoint["port"]]
    return named_port(container(resources["StatefulSet"]), port["targetPort"]), endpoint["path"]


def expand(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return EXPANSION_RE.sub(one, text)


def write_volume(directory: Path, files: Mapping[str, str]) -> None:
    """A ConfigMap or Secret volume as the kubelet writes it: the keys in a timestamped directory,
    `..data` a link to it, and each key a link through `..data` (so pgne reads through links)."""
    payload = directory / "..2026_01_01_00_00_00.000000000"
    payload.mkdir(parents=True)
    for key, text in files.items():
        (payload / key).write_text(text, encoding="utf-8")
        (directory / key).symlink_to(Path("..data") / key)
    (directory / "..data").symlink_to(payload.name)


def pod_addresses(count: int, port: int, tries: int = 50) -> list[str]:
    """`count` loopback addresses (127.A.B.1 ..), standing for pod IPs, on which `port` is free:
    A.B is random, so that two test runs side by side (dev.py's) each have their own."""
    for _ in range(tries):
        prefix = f"127.{random.randrange(1, 255)}.{random.randrange(0, 256)}"
        addresses = [f"{prefix}.{ordinal + 1}" for ordinal in range(count)]
        if all(_bindable(address, port) for address in addresses):
            return addresses
    raise AssertionError(f"no loopback addresses with port {port} free in {tries} tries")


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


class Pod:
    """Ordinal `ordinal` of the StatefulSet, its file system under `root`, its pod IP `address`."""

    def __init__(self, resources: Mapping[str, dict], ordinal: int, root: Path, address: str):
        self.resources = resources
        self.ordinal = ordinal
        self.root = root
        self.address = address
        self.spec = container(resources["StatefulSet"])

    def path(self, absolute: str) -> Path:
        """Where a path of the pod's file system is here."""
        assert absolute.startswith("/"), absolute
        return self.root / absolute.lstrip("/")

    def environment(self) -> dict[str, str]:
        """The container's env: values, and the downward API's labels (the pod-index label alone
        is set on a StatefulSet pod by its controller)."""
        labels = {**self.resources["StatefulSet"]["spec"]["template"]["metadata"]["labels"],
                  POD_INDEX_LABEL: str(self.ordinal)}
        env = {}
        for var in self.spec.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            field = LABEL_FIELD_RE.match(var["valueFrom"]["fieldRef"]["fieldPath"])
            assert field, f"env {var['name']}: this test knows label fieldRefs only: {var}"
            env[var["name"]] = labels[field.group(1)]
        return env

    def mount(self, config_text: Callable[["Pod", str], str]) -> None:
        """Write the pod's volumes at their mountPaths; `config_text(pod, text)` may change the
        text of the ConfigMap's keys (the tests point its databases at the test server)."""
        volumes = {v["name"]: v for v in self.resources["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
        for mount in self.spec["volumeMounts"]:
            volume, where = volumes[mount["name"]], self.path(mount["mountPath"])
            if "configMap" in volume:
                data = self.resources["ConfigMap"]["data"]
                assert volume["configMap"]["name"] == self.resources["ConfigMap"]["metadata"]["name"]
                write_volume(where, {key: config_text(self, text) for key, text in data.items()})
            elif "secret" in volume:
                assert volume["secret"]["secretName"] == self.resources["Secret"]["metadata"]["name"]
                write_volume(where, self.resources["Secret"]["stringData"])
            else:
                assert volume == {"name": mount["name"], "emptyDir": {}}, volume
                where.mkdir(parents=True)

    def argv(self) -> list[str]:
        """command + args, expanded; then, and nothing else: `pgne` (the image's console script,
        pgne.cli:main) is `python -m pgne` (the same main), a value under a mountPath is that
        path under `root`, and an empty listen host (all addresses) is the pod's address."""
        env = self.environment()
        words = [expand(word, env) for word in self.spec["command"] + self.spec["args"]]
        assert words[0] == "pgne", words
        mounts = [m["mountPath"] for m in self.spec["volumeMounts"]]
        out = [sys.executable, "-m", "pgne"]
        for word in words[1:]:
            name, eq, value = word.partition("=")
            if eq and any(value == m or value.startswith(m + "/") for m in mounts):
                value = str(self.path(value))
            elif name == "--web.listen-address" and value.startswith(":"):
                value = self.address + value
            out.append(name + eq + value)
        return out


class PodPgne(PgneProcess):
    """A pod's pgne: its argv and environment exactly (Pod.argv), reached at the pod's address."""

    def __init__(self, pod: Pod):
        telemetry = flags(pod.spec["args"]).get("--web.telemetry-path", "/metrics")
        super().__init__(pod.path(flags(pod.spec["args"])["--config"]), pod.root / "log", telemetry_path=telemetry)
        self.pod = pod
        self.host = pod.address

    def listen_port(self) -> int:
        return listen_port(self.pod.spec)

    def environment(self) -> dict[str, str]:
        """The container's env; and where the pod has a /tmp of its own, TMPDIR points there (a
        process here would use the machine's /tmp)."""
        own_tmp = any(m["mountPath"] == "/tmp" for m in self.pod.spec["volumeMounts"])
        return pgne_env(**self.pod.environment(), **({"TMPDIR": str(self.pod.path("/tmp"))} if own_tmp else {}))

    def command(self) -> list[str]:
        return self.pod.argv()
