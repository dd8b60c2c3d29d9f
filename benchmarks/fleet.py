"""Fleets: the memory one more database costs, and start-up and scrape time with many.

For 1, 20 and 200 configured databases (real databases of the benchmarks' cluster, one table
and pgne's notify trigger each, installed by pgne's apply), one `pgne run` is started and
measured:
- start-up: from the process's start until every database is up (pgne_database_up 1 for all);
- memory: PSS (proportional set size: a page shared by k processes counts 1/k in each; from
  /proc/PID/smaps_rollup) of every process pgne runs (master, launcher, workers; a baseline's
  forkserver and resource tracker where there are), summed, after a settling time; RSS too, which counts shared pages
  in full in every process;
- scrape: /metrics, timed from the client, `scrapes` times.
The marginal cost of a database is (total PSS with the most databases - total PSS with 20) /
(the difference in databases).

With `--fleet-baseline REV`, the same runs are made, side by side and in alternating order, with
pgne as it was at git revision REV (exported with `git archive` into the work dir, run with
PYTHONPATH pointing there): the "before" of a change to how workers are started.
"""
from __future__ import annotations

import os
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO, Cluster, Figure, Pgne, Section, apply_config, config_yaml, median, sample_values
from support.processes import children_of, pgne_env
from support.waiting import wait_until

SETTLE = 5.0  # seconds after every database is up: imports done, connections made


@dataclass
class Measured:
    startup: float  # s
    pss: float  # MiB, every process
    rss: float  # MiB, every process
    worker_pss: float  # MiB, the median worker
    worker_rss: float
    processes: int
    scrapes: list[float]  # ms


def descendants(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        found += [child, *descendants(child)]
    return found


def memory(pid: int) -> tuple[float, float]:
    """(PSS, RSS) of one process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])  # kB
    return fields["Pss"] / 1024, fields["Rss"] / 1024


def export_revision(revision: str, workdir: str) -> str:
    """pgne at `revision` (the whole tree), in a directory of its own; its path."""
    target = Path(workdir, f"pgne-at-{revision}")
    target.mkdir(parents=True, exist_ok=True)
    archive = target / "source.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), revision], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    return str(target)


def measure(config_path: str, workdir: str, databases: int, scrapes: int, pythonpath: str | None,
            boot: str = "script") -> Measured:
    env = pgne_env(PYTHONPATH=pythonpath) if pythonpath else None
    started = time.monotonic()
    pgne = Pgne(config_path, workdir, env=env, boot=boot)
    try:
        wait_until(lambda: _all_up(pgne, databases), 300, f"{databases} databases up", interval=0.1)
        startup = time.monotonic() - started
        time.sleep(SETTLE)
        processes = [pgne.pid, *descendants(pgne.pid)]
        readings = {pid: memory(pid) for pid in processes}
        # forked by a launcher (the master's child), else the master's children
        forked = [pid for parent in children_of(pgne.pid) for pid in children_of(parent)]
        workers = [readings[pid] for pid in (forked or children_of(pgne.pid)) if pid in readings]
        times = []
        for _ in range(scrapes):
            time.sleep(0.1)
            t0 = time.perf_counter()
            pgne.scrape()
            times.append((time.perf_counter() - t0) * 1000)
        return Measured(startup, sum(p for p, _ in readings.values()), sum(r for _, r in readings.values()),
                        median([p for p, _ in workers]), median([r for _, r in workers]), len(processes), times)
    finally:
        pgne.stop()


def _all_up(pgne: Pgne, databases: int) -> bool:
    ups = sample_values(pgne.scrape(), "pgne_database_up")
    return len(ups) == databases and all(v == 1 for v in ups)


def run(cluster: Cluster, workdir: str, counts: tuple[int, ...], scrapes: int, baseline: str | None) -> Section:
    started = time.monotonic()
    most = max(counts)
    names = [f"fleet{i:03d}" for i in range(most)]
    for name in names:
        cluster.create_database(name, "CREATE TABLE public.t (id bigint, code text)")
    configs = {}
    for n in counts:
        configs[n] = os.path.join(workdir, f"fleet-{n}.yml")
        with open(configs[n], "w") as f:
            f.write(config_yaml(cluster, [{"name": name, "monitors": [("t", "code", ("alpha", "beta"), ["insert"])]}
                                          for name in names[:n]]))
    apply_config(configs[most])
    kinds = {"this checkout": None}
    if baseline:
        kinds[f"at {baseline}"] = export_revision(baseline, workdir)
    results: dict[tuple[str, int], Measured] = {}
    for i, n in enumerate(counts):
        order = list(kinds) if i % 2 == 0 else list(kinds)[::-1]
        for kind in order:
            print(f"    fleet: {n} databases, pgne {kind}", flush=True)
            results[kind, n] = measure(configs[n], os.path.join(workdir, f"fleet-{n}-{len(results)}"), n, scrapes,
                                       kinds[kind])

    figures = []
    for kind in kinds:
        def fig(name, unit, runs, target="", check=None, digits=1, kind=kind):
            ours = kind == "this checkout"  # the targets are this checkout's
            figures.append(Figure(f"pgne {kind}: {name}", unit, runs, target=target if ours else "",
                                  check=check if ours else None, digits=digits))

        if 20 in counts and most > 20:
            marginal = (results[kind, most].pss - results[kind, 20].pss) / (most - 20)
            fig(f"marginal PSS per database (20 -> {most})", "MiB", [marginal], "<= 10 MiB",
                lambda f: f.median <= 10.0, digits=2)
        for n in counts:
            m = results[kind, n]
            fig(f"{n} database(s): PSS, all {m.processes} processes", "MiB", [m.pss])
            fig(f"{n} database(s): RSS, all {m.processes} processes", "MiB", [m.rss])
            fig(f"{n} database(s): PSS per worker (median)", "MiB", [m.worker_pss], digits=2)
            fig(f"{n} database(s): RSS per worker (median)", "MiB", [m.worker_rss], digits=2)
            fig(f"{n} database(s): start until every database is up", "s", [m.startup],
                "< 30 s" if n == most else "", (lambda f: f.median < 30.0) if n == most else None, digits=2)
            fig(f"{n} database(s): scrape", "ms", m.scrapes, "< 250 ms" if n == most else "",
                (lambda f: f.median < 250.0) if n == most else None)
    method = (f"{', '.join(map(str, counts))} configured databases, each a real database of the cluster (one "
              "table, pgne's notify trigger on INSERT, two whitelisted label values), one `pgne run` each time, "
              f"measured {SETTLE:g} s after every database is up; {scrapes} timed scrapes of /metrics. PSS and RSS "
              "from /proc/PID/smaps_rollup, summed over every process pgne runs. pgne is started as users start "
              "it: the installed `pgne` console script." +
              (f" \"at {baseline}\": pgne at that git revision, started the same way, run side by side, the order "
               "alternating with the number of databases." if baseline else ""))
    return Section(title="Fleets: memory per database, start-up and scrape with 1 to 200 databases",
                   method=method, figures=figures, seconds=time.monotonic() - started)
