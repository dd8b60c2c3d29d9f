"""What pgne's triggers cost the application's writes.

- bulk: one `INSERT ... SELECT` of N rows (200,000) into a table with no trigger, with pgne's
  notification_with_payload trigger (delivery notify and outbox, installed by pgne's own
  render + apply code path, with a whitelisted label column), and with pg_notify_exporter's
  per-row trigger reproduced.
- pgbench: single-row INSERT throughput at 2 and 8 clients, no trigger / notify / outbox, while
  a real `pgne run` listens (notify) and drains (outbox).

Each variant has its own database (delivery is per database) with the same table; the table is
truncated and the cluster checkpointed before every timed run; variants alternate order.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

from common import (
    CODES,
    Cluster,
    Figure,
    Pgne,
    Section,
    apply_config,
    checkpoint,
    config_yaml,
    counted,
    cpu_seconds,
    pg_bin,
    sample_values,
    spread_note,
    wait_until,
)

TABLE_DDL = """
CREATE TABLE public.bulk_events (id bigint NOT NULL, code text, amount integer, note text);
CREATE TABLE public.row_events (id bigint NOT NULL, code text, amount integer, note text);
"""
# pg_notify_exporter's trigger, reproduced: one notification per row, the whole row as JSON.
PNE_TRIGGER = """
CREATE FUNCTION public.pne_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('pg_notify_exporter', json_build_object(
    'table', TG_TABLE_NAME, 'action', TG_OP, 'data', row_to_json(NEW), 'timestamp', now())::text);
  RETURN NULL;
END $$;
CREATE TRIGGER pne_insert AFTER INSERT ON public.bulk_events FOR EACH ROW EXECUTE FUNCTION public.pne_notify();
CREATE TRIGGER pne_insert AFTER INSERT ON public.row_events FOR EACH ROW EXECUTE FUNCTION public.pne_notify();
"""
BULK_SQL = """
INSERT INTO public.bulk_events (id, code, amount, note)
SELECT g, (ARRAY['alpha','beta','gamma','delta','epsilon'])[g %% 5 + 1], g %% 1000, 'note ' || g
FROM generate_series(1, %s) AS g
"""
PGBENCH_SCRIPT = (
    "\\set c random(0, 4)\n"
    "INSERT INTO public.row_events (id, code, amount, note)"
    " VALUES (:c, (ARRAY['alpha','beta','gamma','delta','epsilon'])[:c + 1], :c, 'note');\n"
)

# The shell every pgne trigger must have (SPEC, issue 8), doing nothing: a statement trigger with a
# transition table (PostgreSQL copies every new row into a tuplestore for it), SECURITY DEFINER,
# SET search_path, an EXCEPTION block (a subtransaction per call). The floor of pgne's write cost.
FLOOR_TRIGGER = """
CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  BEGIN
    NULL;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'not reached';
  END;
  RETURN NULL;
END $$;
CREATE TRIGGER noop_insert AFTER INSERT ON public.bulk_events REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION public.noop();
CREATE TRIGGER noop_insert AFTER INSERT ON public.row_events REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION public.noop();
"""

NONE, NOTIFY, OUTBOX, PNE = "no trigger", "pgne notify", "pgne outbox", "pg_notify_exporter per-row"
FLOOR = "floor: pgne's trigger shell doing nothing"
NOTIFY_WORK_MEM = "pgne notify, session work_mem 64MB"
UNHEARD = "pgne notify, nobody listening"
# the notify trigger that also observes `amount` (columns_to_observe) with 10 buckets: its cost is
# compared with the count-only notify trigger's (issue 15: at most +10%)
OBSERVE = "pgne notify, observing amount (10 buckets)"
OBSERVED = [{"name": "amount", "buckets": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], "unit": "units"}]
DATABASES = {NONE: "bw_none", NOTIFY: "bw_notify", OUTBOX: "bw_outbox", PNE: "bw_pne", FLOOR: "bw_floor",
             UNHEARD: "bw_unheard", OBSERVE: "bw_observe"}


def setup(cluster: Cluster, workdir: str) -> str:
    """Databases and triggers; returns the config for `pgne run` (notify and outbox databases).

    The UNHEARD database gets pgne's notify trigger too (same apply), but no pgne listens to it.
    """
    for variant, db in DATABASES.items():
        cluster.create_database(db, TABLE_DDL + {PNE: PNE_TRIGGER, FLOOR: FLOOR_TRIGGER}.get(variant, ""))
    monitors = [(table, "code", CODES, ["insert"]) for table in ("bulk_events", "row_events")]
    observing = [(table, "code", CODES, ["insert"], OBSERVED) for table in ("bulk_events", "row_events")]
    run_config = [
        {"name": DATABASES[NOTIFY], "monitors": monitors},
        {"name": DATABASES[OUTBOX], "monitors": monitors, "delivery": "outbox"},
        {"name": DATABASES[OBSERVE], "monitors": observing},
    ]
    apply_path, run_path = (os.path.join(workdir, name) for name in ("write_path_apply.yml", "write_path.yml"))
    with open(apply_path, "w") as f:
        f.write(config_yaml(cluster, run_config + [{"name": DATABASES[UNHEARD], "monitors": monitors}]))
    with open(run_path, "w") as f:
        f.write(config_yaml(cluster, run_config))
    apply_config(apply_path)
    return run_path


def _rotate(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def bulk(cluster: Cluster, workdir: str, rows: int, reps: int) -> Section:
    started = time.monotonic()
    setup(cluster, workdir)
    variants = [NONE, NOTIFY, OUTBOX, PNE, FLOOR, NOTIFY_WORK_MEM, OBSERVE]
    times: dict[str, list[float]] = {v: [] for v in variants}
    conns = {v: cluster.connect(DATABASES.get(v, DATABASES[NOTIFY])) for v in variants}
    with conns[NOTIFY_WORK_MEM].cursor() as cur:
        cur.execute("SET work_mem = '64MB'")  # the transition table's tuplestore stays in memory
    try:
        for rep in range(reps):
            for variant in _rotate(variants, rep):
                conn = conns[variant]
                with conn.cursor() as cur:
                    cur.execute("TRUNCATE public.bulk_events")
                checkpoint(cluster)
                with conn.cursor() as cur:
                    t0 = time.perf_counter()
                    cur.execute(BULK_SQL, (rows,))  # autocommit: the COMMIT (and its fsync) is timed
                    times[variant].append((time.perf_counter() - t0) * 1000)
        # sanity: the outbox trigger logged every row of the last run, with the whitelist applied
        with conns[OUTBOX].cursor() as cur:
            cur.execute("SELECT labels->>'code', sum(n) FROM pgne.event_log GROUP BY 1 ORDER BY 1")
            logged = dict(cur.fetchall())
    finally:
        for conn in conns.values():
            conn.close()

    base = Figure(f"{NONE}", "ms", times[NONE])
    figures = [base]
    for variant in (NOTIFY, OUTBOX):
        figures.append(Figure(variant, "ms", times[variant], baseline=base, target=f"<= 1.10x {NONE}",
                              check=lambda f: f.ratio <= 1.10, paired=True))
    figures.append(Figure(OBSERVE, "ms", times[OBSERVE], baseline=figures[1], target=f"<= 1.10x {NOTIFY}",
                          check=lambda f: f.ratio <= 1.10, paired=True))
    figures.append(Figure(PNE, "ms", times[PNE], baseline=base, target="(reference)", paired=True))
    figures.append(Figure(FLOOR, "ms", times[FLOOR], baseline=base, target="(reference: the floor)", paired=True))
    figures.append(Figure(NOTIFY_WORK_MEM, "ms", times[NOTIFY_WORK_MEM], baseline=base, target="(reference)",
                          paired=True))
    expected_other = rows * reps // 5
    return Section(
        title=f"Write path: bulk INSERT of {rows:,} rows",
        method=f"""
One `INSERT INTO bulk_events ... SELECT ... FROM generate_series(1, {rows})` in autocommit
(statement and COMMIT timed, client side); `code` cycles through alpha, beta, gamma, delta and
epsilon (whitelist: the first four; epsilon counts as `other`). pgne's triggers are installed
with pgne's own render + apply code path (`notification_with_payload`, label column `code`,
events insert); pg_notify_exporter's trigger is reproduced as `AFTER INSERT ... FOR EACH ROW`
with `pg_notify(json_build_object('table', TG_TABLE_NAME, 'action', TG_OP, 'data',
row_to_json(NEW), 'timestamp', now()))`. One database per variant, same table (no index);
TRUNCATE and CHECKPOINT before every run; the order of the variants rotates between
repetitions; nothing LISTENs during these runs (the notify queue is written either way).
"Observing amount": the same notify trigger with `columns_to_observe` on `amount` (integer,
0-999) with 10 buckets (1 to 1000), compared with the count-only notify trigger.
References: the floor, pgne's trigger shell doing nothing (`AFTER INSERT ... FOR EACH STATEMENT`
with a transition table, `SECURITY DEFINER`, `SET search_path`, an `EXCEPTION` block: what SPEC
and issue 8 require of every pgne trigger; PostgreSQL copies every new row into the transition
table's tuplestore, spilled to a temporary file beyond `work_mem`, default 4MB), and pgne's
notify trigger with the inserting session's `work_mem` at 64MB (the tuplestore stays in memory).
""",
        figures=figures,
        notes=[n for n in [spread_note(base)] if n] + [f"Outbox sanity check: pgne.event_log holds, per label, "
               f"{', '.join(f'{k}={int(v):,}' for k, v in sorted(logged.items()))} rows' worth "
               f"(expected {rows * reps // 5:,} each, `other` {expected_other:,})."],
        seconds=time.monotonic() - started,
    )


def _xid(cluster: Cluster) -> int:
    """Assigns one transaction ID (its own) and returns it: the cluster's XID counter."""
    return int(cluster.execute("SELECT pg_current_xact_id()::text")[0][0])


def _pgbench(cluster: Cluster, db: str, script: str, clients: int, seconds: int) -> tuple[float, int]:
    """(tps, transactions processed)."""
    out = subprocess.run(
        [pg_bin("pgbench"), "-n", "-M", "prepared", "-f", script, "-c", str(clients), "-j", str(min(clients, 2)),
         "-T", str(seconds), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", db],
        capture_output=True, text=True, check=True, timeout=seconds + 120)
    match = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", out.stdout, re.M)
    processed = re.search(r"^number of transactions actually processed: (\d+)", out.stdout, re.M)
    if not match or not processed:
        raise RuntimeError(f"cannot read pgbench's tps:\n{out.stdout}\n{out.stderr}")
    return float(match.group(1)), int(processed.group(1))


def pgbench(cluster: Cluster, workdir: str, seconds: int, reps: int, client_counts=(1, 2, 8)) -> Section:
    started = time.monotonic()
    config_path = setup(cluster, workdir)
    script = os.path.join(workdir, "insert.sql")
    with open(script, "w") as f:
        f.write(PGBENCH_SCRIPT)
    variants = [NONE, NOTIFY, OUTBOX, FLOOR, UNHEARD, OBSERVE]
    tps: dict[tuple[str, int], list[float]] = {(v, c): [] for v in variants for c in client_counts}
    xids: dict[str, list[float]] = {v: [] for v in variants}  # XIDs assigned per pgbench transaction
    inserted = {v: 0 for v in variants}
    pgne = Pgne(config_path, os.path.join(workdir, "pgne-write"))  # listens (notify) and drains (outbox)
    consumer_cpu = {"pgne": 0.0, "backend": 0.0, "notifications": 0}  # during the notify runs

    def listening_backend() -> int:
        [(pid,)] = cluster.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                   "AND datname = current_database() AND pid <> pg_backend_pid()", DATABASES[NOTIFY])
        return pid

    try:
        pgne.wait_up(3)
        for clients in client_counts:
            for rep in range(reps):
                for variant in _rotate(variants, rep):
                    db = DATABASES[variant]
                    conn = cluster.connect(db)
                    with conn.cursor() as cur:
                        cur.execute("SELECT count(*) FROM public.row_events")
                        inserted[variant] += cur.fetchone()[0]
                        cur.execute("TRUNCATE public.row_events")
                    conn.close()
                    checkpoint(cluster)
                    if variant == NOTIFY:
                        backend, workers = listening_backend(), pgne.workers()
                        cpu0 = (sum(map(cpu_seconds, workers)), cpu_seconds(backend))
                    xid0 = _xid(cluster)
                    rate, processed = _pgbench(cluster, db, script, clients, seconds)
                    xids[variant].append((_xid(cluster) - xid0 - 1) / processed)
                    tps[(variant, clients)].append(rate)
                    if variant == NOTIFY:
                        consumer_cpu["pgne"] += sum(map(cpu_seconds, workers)) - cpu0[0]
                        consumer_cpu["backend"] += cpu_seconds(backend) - cpu0[1]
                        consumer_cpu["notifications"] += cluster.execute(
                            "SELECT count(*) FROM public.row_events", db)[0][0]
        for variant in variants:
            inserted[variant] += cluster.execute("SELECT count(*) FROM public.row_events", DATABASES[variant])[0][0]

        def exported(db: str) -> float:
            return sum(sample_values(pgne.scrape(), "pgne_events_total", f'database="{db}"', 'table="row_events"'))

        for variant in (NOTIFY, OUTBOX, OBSERVE):  # every committed row counted, exactly
            db = DATABASES[variant]
            try:
                wait_until(lambda db=db, v=variant: exported(db) == inserted[v], 30, f"{db} counted", interval=0.2)
            except AssertionError:  # support.waiting.wait_until: not all counted within 30 s
                pass
        counts = {v: exported(DATABASES[v]) for v in (NOTIFY, OUTBOX, OBSERVE)}
        observed = sum(sample_values(pgne.scrape(), "pgne_observed_units_count", f'database="{DATABASES[OBSERVE]}"',
                                     'table="row_events"'))
        notify_notes = counted(pgne.scrape(), DATABASES[NOTIFY])
    finally:
        pgne.stop()

    figures = []
    for clients in client_counts:
        who = f"{clients} client{'s' if clients != 1 else ''}"
        base = Figure(f"{NONE}, {who}", "tps", tps[(NONE, clients)])
        figures.append(base)
        notify_target = {2: (">= 0.90x", 0.90)}.get(clients)
        outbox_target = {2: (">= 0.90x", 0.90), 8: (">= 0.85x", 0.85)}.get(clients)
        for variant, target in ((NOTIFY, notify_target), (OUTBOX, outbox_target), (FLOOR, None), (UNHEARD, None)):
            fig = Figure(f"{variant}, {who}", "tps", tps[(variant, clients)], baseline=base,
                         higher_is_better=True, paired=True)
            if target:
                fig.target = f"{target[0]} {NONE}"
                fig.check = lambda f, t=target[1]: f.ratio >= t
            else:
                fig.target = "(reference)"
            figures.append(fig)
            if variant == NOTIFY:  # observing a column costs at most 10% of the count-only trigger's throughput
                figures.append(Figure(f"{OBSERVE}, {who}", "tps", tps[(OBSERVE, clients)], baseline=fig,
                                      higher_is_better=True, paired=True, target=f">= 0.90x {NOTIFY}",
                                      check=lambda f: f.ratio >= 0.90))
    for variant in variants:  # every run of every client count
        fig = Figure(f"{variant}: XIDs per transaction", "XIDs", xids[variant], digits=3)
        if variant in (NOTIFY, OUTBOX):
            fig.target, fig.check = "<= 1.01 (no subtransaction XID)", lambda f: f.median <= 1.01
        else:
            fig.target = "(reference)"
        figures.append(fig)
    notes = [n for n in (spread_note(f) for f in figures if f.baseline is None) if n][:1] + [
        f"Exactness check after all runs: rows inserted into row_events vs pgne_events_total exported: "
        f"notify {inserted[NOTIFY]:,} rows / {counts[NOTIFY]:,.0f} counted "
        f"({notify_notes:,.0f} notifications); outbox {inserted[OUTBOX]:,} rows / {counts[OUTBOX]:,.0f} counted; "
        f"observing {inserted[OBSERVE]:,} rows / {counts[OBSERVE]:,.0f} counted, {observed:,.0f} observed.",
        f"The consumer's CPU during the notify runs, per notification (one per transaction), on the same 2 cores "
        f"as the writers: pgne's workers {consumer_cpu['pgne'] / max(1, consumer_cpu['notifications']) * 1e6:.1f} "
        f"µs, the LISTENing backend {consumer_cpu['backend'] / max(1, consumer_cpu['notifications']) * 1e6:.1f} µs "
        f"(utime + stime from /proc, 10 ms ticks, over {consumer_cpu['notifications']:,} notifications).",
    ]
    return Section(
        title="Write path: single-row INSERT throughput (pgbench)",
        method=f"""
`pgbench -n -M prepared -c C -j min(C,2) -T {seconds}` with a custom script: one single-row
`INSERT INTO row_events` per transaction (`code` random among the four whitelisted values and
one that counts as `other`). One database per variant, same table; TRUNCATE + CHECKPOINT before
every run; the order of the variants rotates. A real `pgne run` (both databases in its config)
runs through all of it: it LISTENs and counts for the notify database and drains the outbox
every second for the outbox database, so every variant has the same background process.
fsync and synchronous_commit are on: each transaction waits for its WAL flush. One client is a
reference: nothing to serialize or group, so it shows the trigger's own cost per transaction;
with more clients, every transaction that NOTIFYs holds PostgreSQL's cluster-wide notify lock
from its pre-commit until after its WAL flush, so notifying commits cannot share a flush.
XIDs per transaction: the cluster's XID counter before and after each run (read with
`pg_current_xact_id()`, which assigns one itself: subtracted), divided by the transactions
pgbench processed, over every run of every client count. It includes whatever else assigned
XIDs meanwhile (pgne's outbox drain, autovacuum's ANALYZE): 1 is the least, and a trigger that
writes inside its EXCEPTION block (a subtransaction with an XID of its own) shows 2.
The floor is pgne's trigger shell doing nothing (see the bulk section): the least any trigger
that SPEC and issue 8 allow can cost. "Nobody listening" is pgne's notify trigger, installed by
the same apply, in a database that no pgne listens to: the trigger and the notify lock without
the consumer (in "pgne notify", the LISTENing backend and pgne's worker run on the same 2 cores
as the writers; see the CPU note below).
""",
        figures=figures,
        notes=notes,
        seconds=time.monotonic() - started,
    )
