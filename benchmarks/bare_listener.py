"""The consumption benchmark's baseline: a bare psycopg2 loop that only drains and json.loads.

Protocol on stdin/stdout (one line each): it prints `ready` once it LISTENs; then for every
line `N` read from stdin it waits until it has seen N more notifications and prints
`done <time.monotonic()> <cpu seconds used meanwhile>`. CLOCK_MONOTONIC is system-wide, so the
parent compares it with its own clock.

Usage: bare_listener.py DSN CHANNEL
"""
from __future__ import annotations

import json
import os
import select
import sys
import time

import psycopg2


def main() -> int:
    dsn, channel = sys.argv[1], sys.argv[2]
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'LISTEN "{channel}"')
    print("ready", flush=True)
    loads = json.loads
    for line in sys.stdin:
        wanted = int(line)
        seen = 0
        cpu0 = time.process_time()
        while seen < wanted:
            select.select([conn], [], [], 5.0)
            conn.poll()
            batch = conn.notifies
            if batch:
                conn.notifies = []
                for note in batch:
                    loads(note.payload)
                seen += len(batch)
        done = time.monotonic()
        print(f"done {done!r} {time.process_time() - cpu0!r}", flush=True)
    conn.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PGAPPNAME", "bare_listener")
    sys.exit(main())
