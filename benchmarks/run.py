#!/usr/bin/env python3
"""pgne's benchmarks: start a PostgreSQL cluster of their own, run each benchmark, write BENCHMARKS.md.

    python benchmarks/run.py                    # everything (about 17 minutes on 2 cores)
    python benchmarks/run.py --quick            # a smoke run: small N, one repetition
    python benchmarks/run.py --only consumption --only latency
    python benchmarks/run.py --output /tmp/B.md --note "taken on a shared machine"

Benchmarks: bulk, pgbench (write-path overhead), instructions (the same, counted by valgrind),
consumption, latency, scale (the metrics side), fleet (memory, start-up and scrape with 1 to
200 databases; `--fleet-baseline REV` runs pgne at git revision REV beside it). Needs the
PostgreSQL server binaries (initdb, pg_ctl, pgbench) under /usr/lib/postgresql/*/bin, and
valgrind for `instructions`; run as root, the cluster runs as the `postgres` OS user. Never
touches another server. Not part of CI's pass/fail: a MISS does not change the exit status, a
benchmark that crashes does (1).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# the checkout's pgne, the tests' support package (process and wait helpers), the benchmarks
for path in (str(REPO), str(REPO / "tests"), str(BENCH_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

import common  # noqa: E402
import consumption  # noqa: E402
import fleet  # noqa: E402
import instructions  # noqa: E402
import latency  # noqa: E402
import metrics_scale  # noqa: E402
import write_path  # noqa: E402

NAMES = ("bulk", "pgbench", "instructions", "consumption", "latency", "scale", "fleet")
FULL = {
    "bulk_rows": 200_000, "bulk_reps": 9, "instr_transactions": 1_000, "instr_rows": 200_000,
    "pgbench_seconds": 5, "pgbench_reps": 5,
    "consume_n": 200_000, "consume_reps": 5,
    "latency_rate": 500, "latency_seconds": 20, "latency_reps": 3,
    "scale_databases": 20, "scale_series": 10_000, "scale_restarts": 500, "scrapes": 15,
    "fleet_counts": (1, 20, 200),
}
QUICK = {
    "bulk_rows": 20_000, "bulk_reps": 1, "instr_transactions": 50, "instr_rows": 2_000,
    "pgbench_seconds": 1, "pgbench_reps": 1,
    "consume_n": 20_000, "consume_reps": 1,
    "latency_rate": 500, "latency_seconds": 2, "latency_reps": 1,
    "scale_databases": 4, "scale_series": 1_000, "scale_restarts": 8, "scrapes": 3,
    "fleet_counts": (1, 20, 22),
}
HISTORY = BENCH_DIR / "history.md"  # before/after measurements of the fixes, kept by hand


def machine(cluster: common.Cluster) -> list[str]:
    import prometheus_client  # noqa: F401 - version only
    import psycopg2

    import pgne

    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor() or "?")
    try:
        from importlib.metadata import version
        prom_version = version("prometheus_client")
    except Exception:  # noqa: BLE001 - informational only
        prom_version = "?"
    return [
        f"- CPU: {os.cpu_count()} cores (os.cpu_count()), {model}",
        f"- RAM: {mem_kb / 1024 / 1024:.1f} GiB",
        f"- OS: {platform.system()} {platform.release()}",
        f"- PostgreSQL {cluster.server_version()} (the benchmarks' own cluster: fsync, synchronous_commit and "
        "full_page_writes on; shared_buffers 256MB, max_wal_size 4GB)",
        f"- Python {platform.python_version()}, psycopg2 {psycopg2.__version__.split()[0]}, "
        f"prometheus_client {prom_version}",
        f"- pgne {pgne.__version__}",
    ]


def summary(sections: list[common.Section]) -> list[str]:
    lines = ["| section | figure | median | ratio | target | result |", "| --- | --- | ---: | --- | --- | --- |"]
    for section in sections:
        for f in section.figures:
            if not f.target:
                continue
            ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
            lines.append(f"| {section.title} | {f.name} | {f.fmt(f.median)} {f.unit} | {ratio} | {f.target} "
                         f"| {f.verdict()} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pgne's benchmarks -> BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small N, one repetition")
    parser.add_argument("--only", action="append", choices=NAMES, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(NAMES)}")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="default: BENCHMARKS.md at the repo root")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's and pgne's directories")
    parser.add_argument("--fleet-baseline", metavar="REV",
                        help="fleet: also run pgne as it was at this git revision, side by side")
    args = parser.parse_args(argv)
    p = QUICK if args.quick else FULL
    chosen = args.only or list(NAMES)

    started = time.monotonic()
    load_before = os.getloadavg()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    workdir = tempfile.mkdtemp(prefix="pgne-bench-")
    print(f"benchmarks: {', '.join(chosen)}{' (quick)' if args.quick else ''}; work dir {workdir}", flush=True)
    cluster = common.Cluster()
    cluster.start()
    flush_before = common.flush_latency_ms(cluster.base)
    flush_after = float("nan")
    sections: list[common.Section] = []
    failed = []
    try:
        machine_lines = machine(cluster)
        runners = {
            "bulk": lambda: write_path.bulk(cluster, workdir, p["bulk_rows"], p["bulk_reps"]),
            "pgbench": lambda: write_path.pgbench(cluster, workdir, p["pgbench_seconds"], p["pgbench_reps"]),
            "instructions": lambda: instructions.run(workdir, p["instr_transactions"], p["instr_rows"]),
            "consumption": lambda: consumption.run(cluster, workdir, p["consume_n"], p["consume_reps"]),
            "latency": lambda: latency.run(cluster, workdir, p["latency_rate"], p["latency_seconds"],
                                           p["latency_reps"]),
            "scale": lambda: metrics_scale.run(cluster, workdir, p["scale_databases"], p["scale_series"],
                                               p["scale_restarts"], p["scrapes"]),
            "fleet": lambda: fleet.run(cluster, workdir, p["fleet_counts"], p["scrapes"], args.fleet_baseline),
        }
        for name in NAMES:
            if name not in chosen:
                continue
            t0 = time.monotonic()
            print(f"[{t0 - started:5.0f} s] {name} ...", flush=True)
            try:
                section = runners[name]()
            except Exception:  # noqa: BLE001 - report it, run the others
                failed.append(name)
                section = common.Section(title=f"{name}: FAILED", method="```\n" + traceback.format_exc() + "```",
                                         seconds=time.monotonic() - t0)
                print(traceback.format_exc(), file=sys.stderr, flush=True)
            sections.append(section)
            for f in section.figures:
                print(f"    {f.row()}", flush=True)
        flush_after = common.flush_latency_ms(cluster.base)
    finally:
        cluster.destroy()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    total = time.monotonic() - started
    load_after = os.getloadavg()
    command = "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None
                                                                                 else sys.argv[1:]))
    out = [
        "# pgne benchmarks",
        "",
        f"Generated by `{command}` on {when}; total runtime {total / 60:.1f} min"
        f"{' (QUICK smoke run: small N, one repetition; not representative)' if args.quick else ''}.",
        "Every figure is the median of n runs (all runs listed). A ratio marked (paired) is the median of the "
        "per-repetition ratios (variant and baseline measured side by side, order alternating); otherwise "
        "it is median / baseline median.",
        "",
        "## Machine",
        "",
        *machine_lines,
        f"- Load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load_before)} at the start, "
        f"{', '.join(f'{x:.2f}' for x in load_after)} at the end",
        f"- Disk flush (8 kB write + fdatasync, median of 100, on the cluster's disk): {flush_before:.2f} ms at "
        f"the start, {flush_after:.2f} ms at the end",
        *(f"- {note}" for note in args.note),
        "",
        "## Summary",
        "",
        *summary(sections),
        "",
    ]
    out += [s.markdown() for s in sections]
    if HISTORY.exists():
        out += [HISTORY.read_text().strip(), ""]
    Path(args.output).write_text("\n".join(out))
    print(f"wrote {args.output} in {total:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
