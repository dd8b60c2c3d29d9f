"""deploy/kubernetes/'s StatefulSet, run without a cluster: one real `pgne run` per ordinal
0..replicas-1, with exactly the command, args and environment the manifests give the container
(`$(POD_INDEX)` expanded as the kubelet does, from the pod-index label the downward API reads)
and exactly the files its volumes hold (the ConfigMap's and Secret's keys at their mountPaths, in
the kubelet's `..data` link layout; the emptyDir state directory).

What differs from a pod, and nothing else (support.kubernetes.Pod.argv):
- the pod's file system is a directory per pod: an absolute path under a mountPath, in the args
  and in the config's password_file, is that path under the pod's directory;
- the pod IP is a loopback address per pod (127.A.B.1 + ordinal, A.B random):
  `--web.listen-address=:9292` (every address) listens on that address, port 9292 as given;
- the image's `pgne` console script (pgne.cli:main) is `python -m pgne` (the same function);
- the config's databases point at the test server: host, port and dbname (the test's
  databases); user `pgne` and the Secret's password are used as they are (the test creates the
  role when the server has none).

Checked: `pgne check` passes on the ConfigMap's config; each replica serves exactly the databases
of its shard and together they serve each database exactly once, on the port and path the
ServiceMonitor scrapes through the Service; the liveness and readiness probes, sent where the
manifests send them, answer 200; the logs are JSON lines naming the shard; SIGTERM stops each
within the pod's termination grace period. Not reproduced: what the container runtime enforces
(UID 65532, the read-only root, no capabilities, the memory limit). The manifests' offline
validation: tests/unit/test_kubernetes_manifests.py.
"""
from __future__ import annotations

import json
import signal
from collections import Counter

import pytest
import yaml
from psycopg2 import sql
from support.databases import Database, query
from support.kubernetes import (
    Pod,
    PodPgne,
    container,
    flags,
    listen_port,
    manifests,
    pod_addresses,
    probe_target,
    scrape_target,
)
from support.metrics import http_get
from support.processes import run_pgne
from support.waiting import wait_until

from pgne.shard import shard_of

MAX_DATABASES = 32  # acquired at most, to find an even split of the config's databases


def config_entries(resources: dict) -> list[tuple[str, dict]]:
    """(host, entry) of each database of the ConfigMap's config, in order."""
    (text,) = resources["ConfigMap"]["data"].values()
    return [(host, entry) for item in yaml.safe_load(text) for host, entries in item.items() for entry in entries]


def pod_config(target: dict[tuple[str, str], Database] | None):
    """A Pod.mount rewrite of the ConfigMap's config: password_file under the pod's directory;
    with `target` ({(host, database): test database}), each database on the test server."""
    def rewrite(pod: Pod, text: str) -> str:
        hosts: dict[str, list[dict]] = {}
        for item in yaml.safe_load(text):
            for host, entries in item.items():
                for entry in entries:
                    entry, server = {**entry, "password_file": str(pod.path(entry["password_file"]))}, host
                    if target is not None:
                        db = target[(host, entry["database"])]
                        server, entry = db.host, {**entry, "database": db.name, "port": int(db.port)}
                    hosts.setdefault(server, []).append(entry)
        return yaml.safe_dump([{host: entries} for host, entries in hosts.items()], sort_keys=False)

    return rewrite


def even_split(pg_database_factory, count: int, shards: int) -> list[Database]:
    """`count` test databases, count/shards of each shard (the shard follows from a database's
    random name): so that every replica has databases to serve."""
    wanted = count // shards
    chosen: dict[int, list[Database]] = {shard: [] for shard in range(shards)}
    for _ in range(MAX_DATABASES):
        db = pg_database_factory()
        shard = shard_of((db.host, int(db.port), db.name), shards)
        if len(chosen[shard]) < wanted:
            chosen[shard].append(db)
        if all(len(dbs) == wanted for dbs in chosen.values()):
            return [chosen[shard][position] for position in range(wanted) for shard in range(shards)]
    pytest.fail(f"no even split of {count} databases over {shards} shards in {MAX_DATABASES} databases")


def probe(pod: Pod, name: str) -> tuple[int, bytes]:
    """(status, body) of the container's httpGet probe `name`, sent where the kubelet sends it."""
    port, path = probe_target(pod.spec, name)
    status, _, body = http_get(f"http://{pod.address}:{port}{path}")
    return status, body


@pytest.fixture
def pgne_role(pg_dsn: str):
    """The config's role on the test server, with the Secret's password: created for the test
    (and dropped after it) when the server has none."""
    resources = manifests()
    (user,) = {entry["username"] for _, entry in config_entries(resources)}
    password = next(iter(resources["Secret"]["stringData"].values()))
    created = not query(pg_dsn, "SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
    if created:
        query(pg_dsn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password)))
    yield user
    if created:
        query(pg_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def test_the_statefulset_pods_run_pgne_as_the_manifests_say_and_serve_every_database_exactly_once(
        pg_database_factory, pgne_role, tmp_path):
    resources = manifests()
    spec = container(resources["StatefulSet"])
    replicas = resources["StatefulSet"]["spec"]["replicas"]
    entries = config_entries(resources)
    databases = even_split(pg_database_factory, len(entries), replicas)
    target = {(host, entry["database"]): db for (host, entry), db in zip(entries, databases)}

    # `pgne check` on the ConfigMap's config as shipped (its paths in a pod of its own)
    shipped = Pod(resources, 0, tmp_path / "shipped", "127.0.0.1")
    shipped.mount(pod_config(None))
    config_flag = flags(spec["args"])["--config"]
    check = run_pgne("check", "-c", shipped.path(config_flag))
    assert (check.returncode, check.stderr) == (0, "")
    assert check.stdout == (f"{shipped.path(config_flag)}: valid: 2 hosts, 4 databases (4 enabled), "
                            "4 monitors (4 enabled), 8 triggers\n")

    pods = [Pod(resources, ordinal, tmp_path / f"pgne-{ordinal}", address)
            for ordinal, address in enumerate(pod_addresses(replicas, listen_port(spec)))]
    for pod in pods:
        pod.mount(pod_config(target))
        check = run_pgne("check", "-c", pod.path(config_flag))
        assert check.returncode == 0, check.stderr
    owned = {pod.ordinal: {db.name for db in databases if shard_of((db.host, int(db.port), db.name), replicas)
                           == pod.ordinal} for pod in pods}
    assert [len(owned[pod.ordinal]) for pod in pods] == [len(entries) // replicas] * replicas

    replicas_running = [PodPgne(pod).start() for pod in pods]  # /-/healthy, then every database up
    scrape_port, scrape_path = scrape_target(resources)
    served = Counter()
    for pod, pgne in zip(pods, replicas_running):
        assert pgne.port == scrape_port == 9292
        # pgne writes nothing into the pod's /tmp (no socket, no temporary directory)
        assert list(pod.path("/tmp").iterdir()) == []
        assert probe(pod, "livenessProbe") == (200, b"OK\n")
        wait_until(lambda p=pod: probe(p, "readinessProbe") == (200, b"OK\n"), 30,
                   f"pgne-{pod.ordinal}'s readiness probe to answer 200", pgne.describe)

        # what the ServiceMonitor scrapes: every database of this shard is up, and no other
        status, _, body = http_get(f"http://{pod.address}:{scrape_port}{scrape_path}")
        assert status == 200
        ups = {dict(labels)["database"]: value for labels, value in pgne.series("pgne_database_up").items()}
        assert ups == {name: 1 for name in owned[pod.ordinal]}, pgne.describe()
        assert all(f'database="{db.name}"' not in body.decode() for db in databases
                   if db.name not in owned[pod.ordinal])
        served.update(ups)

        lines = [json.loads(line) for line in pgne.stderr_text().splitlines()]
        assert {line["msg"] for line in lines} >= {
            f"shard {pod.ordinal} of {replicas} (--shard {pod.ordinal} --total-shards {replicas}): this replica "
            f"runs {len(owned[pod.ordinal])} of the config's {len(entries)} database(s)"}
    assert served == Counter({db.name: 1 for db in databases})  # every database, by exactly one replica

    # the kubelet stops a container with SIGTERM, and SIGKILLs it after the grace period
    grace = resources["StatefulSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    for pgne in replicas_running:
        code, seconds = pgne.stop(signal.SIGTERM, timeout=grace)
        assert code == 0 and seconds < grace, pgne.describe()


def test_kubectl_kustomize_builds_the_base_without_the_service_monitor_and_adds_it_as_a_component(tmp_path):
    """`kubectl apply -k deploy/kubernetes/` needs no prometheus-operator CRD; the documented
    `components: [servicemonitor]` adds the ServiceMonitor (kubectl's own kustomize, offline)."""
    import shutil
    import subprocess

    from support.kubernetes import DIRECTORY

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (its `kustomize` builds deploy/kubernetes/ offline)", pytrace=False)

    def kinds(directory) -> list[str]:
        result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return sorted(resource["kind"] for resource in yaml.safe_load_all(result.stdout))

    assert kinds(DIRECTORY) == ["ConfigMap", "Secret", "Service", "StatefulSet"]
    overlay = tmp_path / "with-servicemonitor"
    shutil.copytree(DIRECTORY, overlay)
    kustomization = overlay / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("#   components:\n#     - servicemonitor\n",
                                                               "components:\n  - servicemonitor\n"))
    assert kinds(overlay) == ["ConfigMap", "Secret", "Service", "ServiceMonitor", "StatefulSet"]
