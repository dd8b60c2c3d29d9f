"""Commit-to-visible-in-/metrics latency at a steady rate of transactions.

A paced writer (its own process) commits one single-row INSERT per transaction into a table
with pgne's notify trigger, and records when each COMMIT returned. Meanwhile this process
scrapes /metrics back to back and records, for every scrape, when its response arrived and the
value of pgne_events_total for the table. Transaction i (in commit order, one connection) is
visible at the first scrape that shows at least i events: its latency is that response time
minus its commit time. That is an upper bound: it includes up to one scrape interval.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import (
    BENCH_DIR,
    Cluster,
    Figure,
    Pgne,
    Section,
    one_table_database,
    percentile,
    sample_values,
)

DB = "bl"


def run(cluster: Cluster, workdir: str, rate: float, seconds: float, reps: int,
        synchronous_commit: str = "off") -> Section:
    started = time.monotonic()
    config_path = one_table_database(cluster, workdir, DB)
    pgne = Pgne(config_path, os.path.join(workdir, "pgne-latency"))
    dsn = cluster.dsn_for(DB)

    def events() -> tuple[float, float]:
        text = pgne.scrape()
        return time.monotonic(), sum(sample_values(text, "pgne_events_total", f'database="{DB}"'))

    p50s, p99s, maxes, rates, scrape_gaps = [], [], [], [], []
    try:
        pgne.wait_up(1)
        for _ in range(reps):
            _, base = events()
            output = os.path.join(workdir, "paced_writer.json")
            writer = subprocess.Popen([sys.executable, str(BENCH_DIR / "paced_writer.py"), dsn, str(rate),
                                       str(seconds), synchronous_commit, output])
            scrapes = []
            while writer.poll() is None:
                scrapes.append(events())
                time.sleep(0.001)
            if writer.returncode != 0:
                raise RuntimeError(f"paced_writer.py exited with {writer.returncode}")
            with open(output) as f:
                out = json.load(f)
            commits = out["commits"]
            deadline = time.monotonic() + 30
            while not scrapes or scrapes[-1][1] < base + len(commits):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pgne showed {scrapes[-1][1] - base:.0f} of {len(commits)} events")
                scrapes.append(events())
                time.sleep(0.001)
            latencies = []
            j = 0
            for i, committed in enumerate(commits, start=1):
                while scrapes[j][1] < base + i:
                    j += 1
                latencies.append(max(0.0, scrapes[j][0] - committed) * 1000)
            latencies.sort()
            p50s.append(percentile(latencies, 50))
            p99s.append(percentile(latencies, 99))
            maxes.append(latencies[-1])
            rates.append(len(commits) / (commits[-1] - out["start"]))
            gaps = sorted(b[0] - a[0] for a, b in zip(scrapes, scrapes[1:]))
            scrape_gaps.append(percentile(gaps, 50) * 1000)
    finally:
        pgne.stop()

    return Section(
        title=f"Latency: commit to visible in /metrics at {rate:g} transactions/s",
        method=f"""
A paced writer process commits {rate:g} single-row INSERT transactions per second for {seconds:g} s
(one connection, synchronous_commit {synchronous_commit} in its session: with fsync on, this machine's WAL flush
alone would cap one connection below the rate) into a table with pgne's notify trigger,
recording when each COMMIT returns; this process scrapes /metrics back to back (1 ms pause) and
records when each response arrived and what it showed. A transaction's latency is the arrival of
the first scrape showing it minus its commit time: an upper bound that includes up to one scrape
interval. Percentiles are nearest-rank over all transactions of a run; n runs.
""",
        figures=[
            Figure("p50 latency", "ms", p50s, digits=1),
            Figure("p99 latency", "ms", p99s, target="< 100 ms", check=lambda f: f.median < 100, digits=1),
            Figure("max latency", "ms", maxes, digits=1),
            Figure("achieved write rate", "tx/s", rates, digits=0, higher_is_better=True),
            Figure("median time between scrapes", "ms", scrape_gaps, digits=1),
        ],
        seconds=time.monotonic() - started,
    )
