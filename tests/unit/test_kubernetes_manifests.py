"""deploy/kubernetes/, offline: every Kubernetes resource validates, strictly (unknown fields are
errors), against the schemas of the oldest Kubernetes the manifests need (1.28: the pod-index
label) and of the newest that kubernetes-validate (pinned in setup.py) knows; the ServiceMonitor,
a prometheus-operator CRD that kubernetes-validate has no schema for, is checked field by field
against the Service and pgne's flags; and the files agree with each other. Running pgne with
these manifests' arguments and files: tests/integration/test_kubernetes.py."""
from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from support.kubernetes import (
    DIRECTORY,
    POD_INDEX_LABEL,
    SERVICE_MONITOR,
    base_manifest_files,
    container,
    flags,
    listen_port,
    manifest_files,
    manifests,
    named_port,
    probe_target,
    scrape_target,
)

KUBERNETES_VERSIONS = ["1.28.0", "1.37.0"]
LABELS = {"app.kubernetes.io/name": "pgne"}
MIB = 1024 * 1024
# BENCHMARKS.md: the master's RSS (99.4 MiB after restarts and scrapes) and its launcher (under
# 50 MiB of PSS), a database's worker (8.4 MiB of PSS, "Fleets")
MASTER_MIB, WORKER_MIB = 150, 10


@pytest.fixture(scope="module")
def resources() -> dict[str, dict]:
    return manifests()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(path, version):
    for resource in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if resource["kind"] == "ServiceMonitor":
            with pytest.raises(SchemaNotFoundError):  # a CRD: see the ServiceMonitor test below
                kubernetes_validate.validate(resource, version, strict=True)
            continue
        assert kubernetes_validate.validate(resource, version, strict=True) == version.rsplit(".", 1)[0]


def test_strict_validation_rejects_a_field_kubernetes_does_not_have(resources):
    """The control: the validation above would see a misspelt field."""
    statefulset = copy.deepcopy(resources["StatefulSet"])
    container(statefulset)["readinesProbe"] = container(statefulset).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[0], strict=True)


def test_the_service_monitor_scrapes_the_service_port_and_path_pgne_serves(resources):
    monitor, service = resources["ServiceMonitor"], resources["Service"]
    spec = container(resources["StatefulSet"])
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    # the fields that this ServiceMonitor uses, and only those (in place of the CRD's schema)
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    assert monitor["spec"]["selector"] == {"matchLabels": LABELS}
    assert all(service["metadata"]["labels"][k] == v for k, v in LABELS.items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) == {"port", "path", "interval"}
    assert [p["name"] for p in service["spec"]["ports"]] == [endpoint["port"]] == ["metrics"]
    assert endpoint["path"] == flags(spec["args"]).get("--web.telemetry-path", "/metrics") == "/metrics"
    assert endpoint["interval"] == "30s"
    assert scrape_target(resources) == (listen_port(spec), "/metrics") == (9292, "/metrics")


def test_every_resource_carries_the_same_label_and_the_selectors_match_the_pods(resources):
    for resource in resources.values():
        assert resource["metadata"]["labels"] == LABELS, resource["kind"]
    statefulset = resources["StatefulSet"]["spec"]
    assert statefulset["selector"] == {"matchLabels": LABELS}
    assert statefulset["template"]["metadata"]["labels"] == LABELS
    assert resources["Service"]["spec"]["selector"] == LABELS
    assert statefulset["serviceName"] == resources["Service"]["metadata"]["name"]
    assert resources["Service"]["spec"]["clusterIP"] == "None"  # every pod scraped on its own


def test_kustomization_lists_every_manifest_and_transforms_nothing():
    kustomization = yaml.safe_load((DIRECTORY / "kustomization.yaml").read_text(encoding="utf-8"))
    assert set(kustomization) == {"apiVersion", "kind", "resources"}
    assert sorted(kustomization["resources"]) == [path.name for path in base_manifest_files()]


def test_the_service_monitor_is_an_optional_component_outside_the_base():
    """`kubectl apply -k deploy/kubernetes/` must work without prometheus-operator's CRDs: the
    ServiceMonitor is a kustomize component that the base lists only in a comment."""
    kinds = [yaml.safe_load(path.read_text(encoding="utf-8"))["kind"] for path in base_manifest_files()]
    assert sorted(kinds) == ["ConfigMap", "Secret", "Service", "StatefulSet"]
    component = yaml.safe_load((SERVICE_MONITOR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert component == {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
                         "resources": ["servicemonitor.yaml"]}
    base_text = (DIRECTORY / "kustomization.yaml").read_text(encoding="utf-8")
    assert "#   components:\n#     - servicemonitor\n" in base_text


def test_the_example_databases_land_two_on_each_of_the_two_shards(resources):
    """The example's 2 replicas each run 2 of its 4 databases (pgne.shard's hash of host, port, name)."""
    from pgne.shard import shard_of

    spec = container(resources["StatefulSet"])
    total = int(flags(spec["args"])["--total-shards"])
    (config_key,) = resources["ConfigMap"]["data"]
    config = yaml.safe_load(resources["ConfigMap"]["data"][config_key])
    shards = {}
    for host_entry in config:
        for host, entries in host_entry.items():
            for entry in entries:
                shards.setdefault(shard_of((host, entry.get("port", 5432), entry["database"]), total), []).append(
                    entry["database"])
    assert shards == {0: ["orders", "inventory"], 1: ["payments", "warehouse"]}


def test_each_pod_takes_its_shard_from_its_ordinal_and_the_shard_count_is_the_replica_count(resources):
    statefulset = resources["StatefulSet"]["spec"]
    spec = container(resources["StatefulSet"])
    given = flags(spec["args"])
    assert spec["command"] == ["pgne"] and spec["args"][0] == "run"
    assert given["--shard"] == "$(POD_INDEX)"
    assert spec["env"] == [{"name": "POD_INDEX", "valueFrom": {
        "fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}}}]
    assert int(given["--total-shards"]) == statefulset["replicas"] == 2
    assert statefulset["podManagementPolicy"] == "Parallel"


def test_probes_ask_pgne_liveness_and_readiness_endpoints_on_its_listen_port(resources):
    spec = container(resources["StatefulSet"])
    assert spec["ports"] == [{"name": "metrics", "containerPort": listen_port(spec), "protocol": "TCP"}]
    assert probe_target(spec, "livenessProbe") == (listen_port(spec), "/-/healthy")
    assert probe_target(spec, "readinessProbe") == (listen_port(spec), "/-/ready")
    assert named_port(spec, resources["Service"]["spec"]["ports"][0]["targetPort"]) == listen_port(spec)


def test_config_passwords_and_state_are_where_the_volumes_put_them(resources):
    spec = container(resources["StatefulSet"])
    given = flags(spec["args"])
    mounts = {m["name"]: m for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in resources["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    (config_key,) = resources["ConfigMap"]["data"]
    assert given["--config"] == f"{mounts['config']['mountPath']}/{config_key}"
    assert volumes["config"]["configMap"]["name"] == resources["ConfigMap"]["metadata"]["name"]
    assert volumes["passwords"]["secret"] == {"secretName": resources["Secret"]["metadata"]["name"],
                                              "defaultMode": 0o440}
    assert given["--state-dir"] == mounts["state"]["mountPath"] and volumes["state"]["emptyDir"] == {}
    config = yaml.safe_load(resources["ConfigMap"]["data"][config_key])
    entries = [entry for host in config for entries in host.values() for entry in entries]
    assert len(entries) == 4
    secrets = mounts["passwords"]["mountPath"]
    named = {entry["password_file"] for entry in entries}
    assert named == {f"{secrets}/{key}" for key in resources["Secret"]["stringData"]}
    assert all("password" not in entry for entry in entries)


def test_the_pod_runs_as_non_root_on_a_read_only_root_without_capabilities(resources):
    pod = resources["StatefulSet"]["spec"]["template"]["spec"]
    spec = container(resources["StatefulSet"])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                       "capabilities": {"drop": ["ALL"]}}
    # the only writable mounts: the state directory, and /tmp (for libraries; pgne writes nothing there)
    writable = {m["name"]: m["mountPath"] for m in spec["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"state": "/var/lib/pgne", "tmp": "/tmp"}


def test_the_memory_request_covers_the_master_and_a_worker_per_database_of_the_example(resources):
    resources_ = container(resources["StatefulSet"])["resources"]
    request = int(resources_["requests"]["memory"].removesuffix("Mi")) * MIB
    limit = int(resources_["limits"]["memory"].removesuffix("Mi")) * MIB
    assert request >= (MASTER_MIB + 4 * WORKER_MIB) * MIB  # all 4 databases on one replica
    assert limit == 2 * request
