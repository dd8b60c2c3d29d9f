"""The latency benchmark's writer: single-row INSERT transactions at a steady rate.

Transaction i is due at start + i / rate: a late transaction starts at once and the schedule
does not shift (the writer catches up; it reports the rate it achieved). Writes
the time.monotonic() at which each COMMIT returned, as JSON into OUTPUT (a file: a pipe
would fill up before the parent reads it).

Usage: paced_writer.py DSN RATE SECONDS SYNCHRONOUS_COMMIT OUTPUT
"""
from __future__ import annotations

import json
import sys
import time

import psycopg2

CODES = ("alpha", "beta", "gamma", "delta", "epsilon")


def main() -> int:
    dsn, rate, seconds, synchronous_commit, output = (sys.argv[1], float(sys.argv[2]), float(sys.argv[3]),
                                                      sys.argv[4], sys.argv[5])
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,))
    total = int(rate * seconds)
    commits = []
    start = time.monotonic() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cur.execute("INSERT INTO public.t (id, code) VALUES (%s, %s)", (i, CODES[i % 5]))  # autocommit
        commits.append(time.monotonic())
    conn.close()
    with open(output, "w") as f:
        json.dump({"start": start, "commits": commits}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
