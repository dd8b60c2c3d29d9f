"""The metrics side at scale: /metrics scrape time with many workers and series, fresh and after
hundreds of worker restarts (SIGKILL), and resident memory of the master and the workers.

Every restarted worker leaves prometheus_client files behind (its counters must keep adding to
the totals); how the master deals with them decides whether scrape time grows with restarts.
The restart loop also checks that no count is lost or doubled: each round, every worker counts
one notification before it is killed, and at the end each database must show exactly one
counted notification per round.
"""
from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path

from common import (
    Cluster,
    Figure,
    Pgne,
    Section,
    apply_config,
    config_yaml,
    counted,
    rss_mb,
    sample_values,
    wait_until,
)

TABLES = 5


def _file_values(path: Path) -> list[tuple[str, float]]:
    from prometheus_client.mmap_dict import MmapedDict

    try:
        return [(key, value) for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))]
    except (FileNotFoundError, RuntimeError, struct.error):  # gone, or a process is just creating it
        return []


def _worker_value(state_dir: Path, pid: int, kind: str, metric: str, needle: str = "") -> float | None:
    for key, value in _file_values(state_dir / f"{kind}_{pid}.db"):
        if key.startswith(f'["{metric}"') and needle in key:
            return value
    return None


def _timed_scrapes(instances: list[Pgne], n: int, settle: float) -> list[tuple[list[float], int, int]]:
    """n scrapes of each instance, 0.1 s apart and alternating (order swapped every round), after
    `settle` seconds of quiet (workers that just started are still importing and connecting:
    their CPU is not the scrape's cost). Per instance: (times in ms, body bytes, samples)."""
    time.sleep(settle)
    times: list[list[float]] = [[] for _ in instances]
    texts = [""] * len(instances)
    for i in range(n):
        order = list(range(len(instances)))
        for k in (order if i % 2 == 0 else order[::-1]):
            time.sleep(0.1)
            t0 = time.perf_counter()
            texts[k] = instances[k].scrape()
            times[k].append((time.perf_counter() - t0) * 1000)
    return [(times[k], len(texts[k]), sum(1 for line in texts[k].splitlines() if line and line[0] != "#"))
            for k in range(len(instances))]


def run(cluster: Cluster, workdir: str, databases: int, series: int, restarts: int, scrapes: int) -> Section:
    started = time.monotonic()
    settle = min(5.0, databases / 4)
    per_db = series // databases
    values_per_table = per_db // TABLES - 1  # + `other`
    whitelist = [f"v{i:03d}" for i in range(values_per_table)]
    names = [f"bm{i:02d}" for i in range(1, databases + 1)]
    ddl = "".join(f"CREATE TABLE public.t{j} (id bigint, code text);" for j in range(1, TABLES + 1))
    for name in names:
        cluster.create_database(name, ddl)
    config_path = os.path.join(workdir, "scale.yml")
    with open(config_path, "w") as f:
        f.write(config_yaml(cluster, [
            {"name": name, "monitors": [(f"t{j}", "code", whitelist, ["insert"]) for j in range(1, TABLES + 1)]}
            for name in names]))
    apply_config(config_path)

    pgne = Pgne(config_path, os.path.join(workdir, "pgne-scale"), fast_restarts=True)
    # Its twin: same config, never restarted. "Fresh" and "after restarts" are scraped side by
    # side, alternating, so that the machine's load at the time is the same for both.
    twin = Pgne(config_path, os.path.join(workdir, "pgne-scale-twin"))
    state = pgne.state_dir
    conns = {name: cluster.connect(name) for name in names}
    notify = ("SELECT pg_notify('pg_notify_exporter', "
              "'{\"table\":\"public.t1\",\"action\":\"INSERT\",\"data\":{\"code\":\"v001\"},\"count\":1}')")
    try:
        for instance in (pgne, twin):
            instance.wait_up(databases)
            wait_until(lambda i=instance: len(sample_values(i.scrape(), "pgne_events_total")) == series, 120,
                       f"{series} pgne_events_total series", interval=0.2)
        [(before, size, samples)] = _timed_scrapes([pgne], scrapes, settle)
        workers = pgne.workers()
        master_rss_fresh = rss_mb(pgne.pid)
        worker_rss = sorted(rss_mb(pid) for pid in workers)
        files_fresh = len(list(state.glob("*.db")))

        killed: set[int] = set()
        rounds = max(1, restarts // databases)
        restart_started = time.monotonic()
        for _ in range(rounds):
            def current() -> list[int]:
                pids = [p for p in pgne.workers() if p not in killed]
                return pids if len(pids) == databases else []

            pids = wait_until(current, 120, f"{databases} workers", interval=0.05)
            wait_until(lambda pids=pids: all(_worker_value(state, p, "gauge_livemax", "pgne_database_up") == 1
                                             for p in pids), 120, "every worker up", interval=0.05)
            for conn in conns.values():
                with conn.cursor() as cur:
                    cur.execute(notify)
            wait_until(lambda pids=pids: all(
                _worker_value(state, p, "counter", "pgne_notifications", '"result": "counted"') == 1
                for p in pids), 60, "every worker to count its notification", interval=0.05)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.update(pids)
        restart_seconds = time.monotonic() - restart_started
        pgne.wait_up(databases, timeout=300)
        text = pgne.scrape()
        totals = {name: counted(text, name) for name in names}
        series_after = len(sample_values(text, "pgne_events_total"))
        (fresh, _, _), (after, size_after, samples_after) = _timed_scrapes([twin, pgne], scrapes, settle)
        master_rss_after = rss_mb(pgne.pid)
        master_rss_twin = rss_mb(twin.pid)
        files_after = len(list(state.glob("*.db")))
    finally:
        for conn in conns.values():
            conn.close()
        pgne.stop()
        twin.stop()

    fresh_fig = Figure(f"scrape, fresh ({databases} workers; the never-restarted twin)", "ms", fresh,
                       target="< 250 ms", check=lambda f: f.median < 250)
    after_fig = Figure(f"scrape after {len(killed)} worker restarts (side by side with the twin)", "ms", after,
                       baseline=fresh_fig, target="<= 1.20x fresh", check=lambda f: f.ratio <= 1.20, paired=True)
    before_fig = Figure("scrape of the restarted instance before its restarts", "ms", before, target="(reference)")
    exact = all(v == rounds for v in totals.values())
    notes = [
        f"/metrics: {size:,} bytes, {samples:,} samples fresh ({series:,} pgne_events_total series, "
        f"{per_db} per database, as many pgne_last_event_timestamp_seconds); {size_after:,} bytes, "
        f"{samples_after:,} samples after the restarts ({series_after:,} pgne_events_total series).",
        f"State dir: {files_fresh} files fresh, {files_after} after {len(killed)} restarts "
        f"({restart_seconds:.0f} s of restart rounds: SIGKILL all {databases} workers, wait for the "
        f"new ones to count one notification each, repeat {rounds} times).",
        f"Counts across the restarts: {'exact' if exact else 'NOT EXACT'} — every database shows "
        f"{rounds} counted notifications" + ("" if exact else f" (seen: {sorted(set(totals.values()))})") + ".",
        "Worker RSS is per worker (each has its own /proc/<pid>/status VmRSS, shared library pages "
        "included); its Python imports are the bulk of it.",
    ]
    figures = [
        fresh_fig,
        after_fig,
        before_fig,
        Figure("master RSS, fresh", "MiB", [master_rss_fresh]),
        Figure(f"master RSS after restarts and {2 * scrapes} scrapes", "MiB", [master_rss_after]),
        Figure(f"master RSS of the twin after {scrapes} timed scrapes", "MiB", [master_rss_twin]),
        Figure(f"worker RSS ({per_db} series each), all {databases} workers", "MiB", worker_rss,
               target="<= 40 MiB (max)", check=lambda f: max(f.runs) <= 40),
    ]
    return Section(
        title=f"Metrics side: {databases} workers, {series:,} series, restarts, memory",
        method=f"""
One `pgne run` with {databases} databases in its config (one worker each), {TABLES} monitored tables
per database with a {values_per_table}-value whitelist (+ `other`): {per_db} pre-created
`pgne_events_total` series per worker, {series:,} in all. Scrape time is client side (GET /metrics,
whole body read), {scrapes} scrapes 0.1 s apart after {settle:g} s of quiet. Two such instances
run on the same databases: one has its workers restarted {len(killed)} times, its twin never;
after the restarts both are scraped alternately (the ratio pairs each scrape with its twin's).
Restarts: every worker is SIGKILLed once it counted a notification, {rounds} rounds; the master's
restart backoff is shortened to 0.05 s for this benchmark only (`pgne.master.RESTART_BACKOFF_*`,
`LOOP_TICK`); the reap / mark-dead / compact / respawn path is pgne's own. RSS is VmRSS from
/proc/<pid>/status.
""",
        figures=figures,
        notes=notes,
        seconds=time.monotonic() - started,
    )
