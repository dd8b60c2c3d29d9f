"""Can one pgne keep up? N distinct valid notifications sent in one transaction, counted by a
real `pgne run` (timed until /metrics shows all of them) vs a bare psycopg2 loop that only
drains and json.loads them (timed until it has seen all of them). Same run, alternating order.
"""
from __future__ import annotations

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
    counted,
    cpu_seconds,
    one_table_database,
    rss_mb,
)

DB = "bc"
PGNE_CHANNEL, BARE_CHANNEL = "pg_notify_exporter", "bare_listener"
# pgne's own payload shape (what its triggers send): distinct by seq
PGNE_PAYLOADS = """
SELECT count(pg_notify(%s, json_build_object(
  'table', 'public.t', 'action', 'INSERT',
  'data', json_build_object('code', (ARRAY['alpha','beta','gamma','delta','epsilon'])[g %% 5 + 1]),
  'count', 1, 'seq', g)::text))
FROM generate_series(1, %s) AS g
"""
# pg_notify_exporter's shape (its per-row trigger): the whole row and a timestamp, no seq
PNE_PAYLOADS = """
SELECT count(pg_notify(%s, json_build_object(
  'table', 't', 'action', 'INSERT',
  'data', json_build_object('id', g, 'code', (ARRAY['alpha','beta','gamma','delta','epsilon'])[g %% 5 + 1],
                            'amount', g %% 1000, 'note', 'note ' || g),
  'timestamp', now())::text))
FROM generate_series(1, %s) AS g
"""


def send(conn, sql: str, channel: str, n: int) -> float:
    """Send n notifications in one transaction; time.monotonic() when COMMIT returned."""
    with conn.cursor() as cur:
        cur.execute(sql, (channel, n))
    conn.commit()
    return time.monotonic()


def run(cluster: Cluster, workdir: str, n: int, reps: int) -> Section:
    started = time.monotonic()
    config_path = one_table_database(cluster, workdir, DB)

    pgne = Pgne(config_path, os.path.join(workdir, "pgne-consumption"))
    bare = subprocess.Popen([sys.executable, str(BENCH_DIR / "bare_listener.py"),
                             cluster.dsn_for(DB), BARE_CHANNEL],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sender = cluster.connect(DB, autocommit=False)
    styles = {"pgne": PGNE_PAYLOADS, "pne": PNE_PAYLOADS}
    results = {(who, style): [] for who in ("pgne", "bare") for style in styles}
    elapsed = {key: [] for key in results}
    cpu = {key: [] for key in results}
    try:
        assert bare.stdout.readline().strip() == "ready"
        pgne.wait_up(1)
        (worker,) = pgne.workers()

        def trial_pgne(style: str) -> None:
            base = counted(pgne.scrape(), DB)
            cpu0 = cpu_seconds(worker)
            t0 = send(sender, styles[style], PGNE_CHANNEL, n)
            deadline = t0 + 300
            while counted(pgne.scrape(), DB) < base + n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pgne did not count {n} notifications within 300 s")
                time.sleep(0.005)
            t1 = time.monotonic()
            elapsed[("pgne", style)].append(t1 - t0)
            results[("pgne", style)].append(n / (t1 - t0))
            cpu[("pgne", style)].append(cpu_seconds(worker) - cpu0)

        def trial_bare(style: str) -> None:
            bare.stdin.write(f"{n}\n")
            bare.stdin.flush()
            t0 = send(sender, styles[style], BARE_CHANNEL, n)
            word, t1, used = bare.stdout.readline().split()
            assert word == "done"
            elapsed[("bare", style)].append(float(t1) - t0)
            results[("bare", style)].append(n / (float(t1) - t0))
            cpu[("bare", style)].append(float(used))

        for style in styles:
            for rep in range(reps):
                for trial in ((trial_pgne, trial_bare) if rep % 2 == 0 else (trial_bare, trial_pgne)):
                    trial(style)
        worker_rss = rss_mb(worker)
        total = counted(pgne.scrape(), DB)
    finally:
        sender.close()
        bare.stdin.close()
        bare.wait(30)
        pgne.stop()

    figures = []
    for style, label in (("pgne", "pgne's payloads"), ("pne", "pg_notify_exporter's payloads")):
        base = Figure(f"bare psycopg2 loop (drain + json.loads), {label}", "notifications/s",
                      results[("bare", style)], digits=0, higher_is_better=True)
        fig = Figure(f"pgne (`pgne run`, until /metrics shows all), {label}", "notifications/s",
                     results[("pgne", style)], baseline=base, digits=0, higher_is_better=True, paired=True)
        if style == "pgne":  # the benchmark: pgne's own payloads
            fig.target, fig.check = ">= 0.80x bare loop", (lambda f: f.ratio >= 0.80)
        else:
            fig.target = "(reference: what the seq memo cannot serve)"
        figures += [base, fig]

    def med_us(key) -> float:
        v = sorted(cpu[key])
        return 1e6 * v[len(v) // 2] / n

    notes = [
        "Elapsed, commit to done (s): " + "; ".join(
            f"{who} on {style}-shaped payloads: " + ", ".join(f"{x:.3f}" for x in elapsed[(who, style)])
            for style in styles for who in ("pgne", "bare")) + ".",
        "CPU per notification (median run; utime+stime of the process, psycopg2's parsing included): "
        + "; ".join(f"{who} on {style}-shaped payloads {med_us((who, style)):.1f} µs"
                    for style in styles for who in ("pgne", "bare"))
        + ".",
        "pgne's worker memoizes classification on the payload less its trailing `seq` (pgne/payload.py, "
        "Router.classifier): its own payloads are JSON-parsed once per label group and count, the bare loop "
        "parses every one. pg_notify_exporter's payloads (whole row, timestamp, no seq) are parsed every time.",
        f"pgne counted {total:,.0f} notifications in all ({n:,} x {reps} x 2 expected); "
        f"worker RSS after the runs: {worker_rss:.1f} MiB.",
    ]
    return Section(
        title=f"Consumption: {n:,} notifications in one transaction",
        method=f"""
One sender transaction: `SELECT pg_notify(chan, json_build_object('table','public.t',
'action','INSERT','data',json_build_object('code', ...),'count',1,'seq',g)::text)
FROM generate_series(1,{n}) g` (pgne's payload shape), then COMMIT; the clock starts when
COMMIT returns. A second series sends pg_notify_exporter's shape instead:
`json_build_object('table','t','action','INSERT','data',json_build_object('id',g,'code',...,
'amount',...,'note',...),'timestamp',now())`. pgne: one real `pgne run` (one worker, label
column `code` with a 4-value whitelist), done when a scrape of /metrics (every 5 ms) shows
`pgne_notifications_total{{result="counted"}}` up by {n:,}. Bare loop: a separate psycopg2
process that selects, polls, swaps `conn.notifies` and `json.loads` each payload, done when it
has seen {n:,}. They listen on different channels of the same database; trials alternate order.
""",
        figures=figures,
        notes=notes,
        seconds=time.monotonic() - started,
    )
