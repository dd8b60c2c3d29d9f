"""What pgne's triggers cost the application's writes, in CPU instructions: repeatable figures.

Timings on a shared 2-core machine move by 20% and more between runs; instruction counts do
not. A cluster of this benchmark's own is set up with pgne's own render + apply code path, then
stopped, and a single-user backend (`postgres --single`) runs the writes under valgrind's
cachegrind (instruction counting only, no cache simulation):

- single-row: a prepared single-row INSERT, one transaction per EXECUTE (like `pgbench -M
  prepared`); the cost of one transaction is (count for W + N transactions - count for W) / N,
  so start-up, catalog caching and the trigger's first-call compilation cancel out;
- bulk: one INSERT ... SELECT; the cost of one row is (count for N rows - count for 10 rows) / N.

The trigger shell is taken apart step by step: an empty plpgsql statement trigger, plus a
transition table, plus `SET search_path`, plus the EXCEPTION block and SECURITY DEFINER (the
floor: what SPEC and issue 8 require of every pgne trigger).
"""
from __future__ import annotations

import os
import re
import shutil
import time

from common import CODES, Cluster, Figure, Section, _as_postgres, apply_config, config_yaml, pg_bin
from write_path import FLOOR_TRIGGER, PNE_TRIGGER

NONE = "no trigger"
EMPTY = "empty plpgsql statement trigger"
WITH_TT = "+ transition table"
WITH_PATH = "+ SET search_path"
FLOOR = "+ EXCEPTION block, SECURITY DEFINER: the floor"
NOTIFY, OUTBOX, PNE = "pgne notify", "pgne outbox", "pg_notify_exporter per-row"

TABLE = "CREATE TABLE public.{t} (id bigint NOT NULL, code text, amount integer, note text);\n"


def _shell(name: str, transition: bool, search_path: bool) -> str:
    return f"""
CREATE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql
  {'SET search_path = pg_catalog, pg_temp' if search_path else ''} AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER {name} AFTER INSERT ON public.t_{name} {'REFERENCING NEW TABLE AS new_rows' if transition else ''}
  FOR EACH STATEMENT EXECUTE FUNCTION public.{name}();
"""


# variant -> (database, table); pgne's own triggers are installed by `pgne apply` (apply_config)
PLAIN_DB, NOTIFY_DB, OUTBOX_DB = "instr_plain", "instr_notify", "instr_outbox"
VARIANTS = {
    NONE: (PLAIN_DB, "t_none"), EMPTY: (PLAIN_DB, "t_empty"), WITH_TT: (PLAIN_DB, "t_tt"),
    WITH_PATH: (PLAIN_DB, "t_path"), FLOOR: (PLAIN_DB, "bulk_events"), PNE: (PLAIN_DB, "t_pne"),
    NOTIFY: (NOTIFY_DB, "bulk_events"), OUTBOX: (OUTBOX_DB, "bulk_events"),
}
PLAIN_SETUP = (
    "".join(TABLE.format(t=t) for t in ("t_none", "t_empty", "t_tt", "t_path", "bulk_events", "row_events", "t_pne"))
    + _shell("empty", False, False) + _shell("tt", True, False) + _shell("path", True, True)
    + FLOOR_TRIGGER
    + PNE_TRIGGER.replace("public.bulk_events", "public.t_pne").split("CREATE TRIGGER pne_insert AFTER INSERT ON "
                                                                       "public.row_events")[0]
)
COUNT = re.compile(r"I\s+refs:\s+([\d,]+)")


def _instructions(data: str, database: str, script: str) -> int:
    """Instructions a single-user backend executes for `script` (one statement per line)."""
    args = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            pg_bin("postgres"), "--single", "-D", data, "-c", "fsync=off", "-c", "synchronous_commit=off",
            database]
    proc = _as_postgres(args, input=script, timeout=1800)
    if "ERROR:" in proc.stdout or "WARNING:" in proc.stderr + proc.stdout:
        raise RuntimeError(f"the single-user backend reported a problem:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return int(COUNT.search(proc.stderr).group(1).replace(",", ""))


def _single_rows(table: str, n: int) -> str:
    lines = [f"PREPARE ins(bigint, text) AS INSERT INTO public.{table} (id, code, amount, note) "
             "VALUES ($1, $2, $1::integer, 'note')"]
    codes = CODES + ("epsilon",)
    lines += [f"EXECUTE ins({i}, '{codes[i % 5]}')" for i in range(n)]
    return "\n".join(lines) + "\n"


def _bulk(table: str, rows: int) -> str:
    return (f"INSERT INTO public.{table} (id, code, amount, note) SELECT g, "
            f"(ARRAY['alpha','beta','gamma','delta','epsilon'])[g % 5 + 1], g % 1000, 'note ' || g "
            f"FROM generate_series(1, {rows}) AS g\n")


def run(workdir: str, transactions: int, rows: int) -> Section:
    started = time.monotonic()
    if shutil.which("valgrind") is None:
        return Section(title="Write path: CPU instructions per statement and per row (cachegrind)",
                       method="Not run: valgrind is not installed (`apt-get install valgrind`).",
                       seconds=time.monotonic() - started)
    cluster = Cluster()
    try:
        cluster.start()
        cluster.create_database(PLAIN_DB, PLAIN_SETUP)
        for db in (NOTIFY_DB, OUTBOX_DB):
            cluster.create_database(db, TABLE.format(t="bulk_events"))
        path = os.path.join(workdir, "instructions.yml")
        with open(path, "w") as f:
            monitors = [("bulk_events", "code", CODES, ["insert"])]
            f.write(config_yaml(cluster, [{"name": NOTIFY_DB, "monitors": monitors},
                                          {"name": OUTBOX_DB, "monitors": monitors, "delivery": "outbox"}]))
        apply_config(path)
        cluster.stop()  # a single-user backend needs the data directory to itself

        warmup = max(10, transactions // 10)
        per_tx, per_row = {}, {}
        for variant, (db, table) in VARIANTS.items():
            short = _instructions(cluster.data, db, _single_rows(table, warmup))
            long = _instructions(cluster.data, db, _single_rows(table, warmup + transactions))
            per_tx[variant] = (long - short) / transactions
            small = _instructions(cluster.data, db, _bulk(table, 10))
            big = _instructions(cluster.data, db, _bulk(table, 10 + rows))
            per_row[variant] = (big - small) / rows
            print(f"    {variant}: {per_tx[variant]:,.0f} per transaction, {per_row[variant]:,.0f} per row", flush=True)
    finally:
        cluster.destroy()

    figures = []
    for label, values, unit in (("single-row INSERT transaction", per_tx, "instructions/transaction"),
                                (f"row of a {rows:,}-row INSERT ... SELECT", per_row, "instructions/row")):
        base = Figure(f"{NONE}: {label}", unit, [values[NONE]], digits=0)
        figures.append(base)
        for variant in VARIANTS:
            if variant != NONE:
                # the shell's build-up steps stay out of the report's summary
                target = "" if variant in (EMPTY, WITH_TT, WITH_PATH) else "(reference)"
                figures.append(Figure(f"{variant}: {label}", unit, [values[variant]], baseline=base, digits=0,
                                      target=target))

    def added(variant: str, values: dict) -> float:
        return values[variant] - values[NONE]

    notes = [
        f"Budget: a single-row target of >= 0.90x the no-trigger throughput leaves a trigger about "
        f"{per_tx[NONE] * (1 / 0.9 - 1):,.0f} instructions per transaction (1/0.9 - 1 = 11% of "
        f"{per_tx[NONE]:,.0f}), if throughput followed the backend's CPU alone. The floor adds "
        f"{added(FLOOR, per_tx):,.0f}, pgne notify {added(NOTIFY, per_tx):,.0f}, pgne outbox "
        f"{added(OUTBOX, per_tx):,.0f}.",
        f"Budget: a bulk target of <= 1.10x leaves {0.10 * per_row[NONE]:,.0f} instructions per row (10% of "
        f"{per_row[NONE]:,.0f}). Capturing the transition table alone (the floor) adds {added(FLOOR, per_row):,.0f}; "
        f"pgne notify adds {added(NOTIFY, per_row):,.0f} in all, the aggregation over the transition table "
        f"(read it back, CASE per row, hash by label) {added(NOTIFY, per_row) - added(FLOOR, per_row):,.0f}.",
        "Instructions are not time: they leave out waiting (WAL flush, locks) and cache misses, and they count "
        "the backend only (not the LISTENing backend nor pgne). They are what a trigger design can change.",
    ]
    return Section(
        title="Write path: CPU instructions per statement and per row (cachegrind)",
        method=__doc__.split("\n\n", 1)[1] + f"\nN = {transactions:,} transactions (W = {warmup:,}), "
        f"{rows:,} rows; fsync and synchronous_commit off in the single-user backend (it does not wait anyway "
        "under valgrind's count). Deterministic: one run each (n = 1); the same binary and input give the "
        "same count.",
        figures=figures,
        notes=notes,
        seconds=time.monotonic() - started,
    )
