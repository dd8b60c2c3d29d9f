"""Exactness under concurrency: 8 writer connections x 500 transactions against a running pgne.

Mixed single-row and multi-row INSERTs, UPDATEs (that keep or change the label, or touch no row),
DELETEs, 10% of the transactions rolled back on purpose. Every statement says which rows it
touched (RETURNING the label column: the new row for INSERT/UPDATE, the old one for DELETE,
which is what pgne's trigger counts); a writer adds them to its tally only once its COMMIT has
returned. At the end pgne_events_total must equal the tally per table/operation/label exactly,
and for the insert-only table also what `SELECT count(*) ... GROUP BY` says is in the table.

Uses the shared server (tests/conftest.py `pg_database`): nothing here stops a server.
"""
from __future__ import annotations

import random
import threading
from collections import Counter

import psycopg2
import pytest
from support.configs import RELIABILITY_TAG, config_text, database_entry
from support.databases import query, run_sql
from support.exporter import PgneProcess
from support.faults import Stopwatch, record
from support.metrics import db_labels, events, notifications, settle

WRITERS = 8
TRANSACTIONS = 500
ROLLBACK_SHARE = 0.10
WHITELIST = ["alpha", "beta", "gamma"]
CODES = WHITELIST + ["other"]
# what writers put in the label column: whitelisted values, and values that must count as other
VALUES = ["alpha", "beta", "gamma", "delta", None, "ALPHA", "alpha ", "", "beta'; --"]
LABELLED = {"table": "labelled", "enabled": True, "function": "notification_with_payload",
            "columns_to_label": [{"code": WHITELIST}], "events": ["insert", "update", "delete"]}
LEDGER = {"table": "ledger", "enabled": True, "function": "notification_with_payload",
          "columns_to_label": [{"code": WHITELIST}], "events": ["insert"]}
TABLES = """
CREATE TABLE labelled (id bigserial PRIMARY KEY, writer int NOT NULL, code text, n int NOT NULL DEFAULT 0);
CREATE INDEX ON labelled (writer);
CREATE TABLE ledger (id bigserial PRIMARY KEY, writer int NOT NULL, code text);
"""
CONFIGURED = ({(op, "public.labelled", c) for op in ("INSERT", "UPDATE", "DELETE") for c in CODES}
              | {("INSERT", "public.ledger", c) for c in CODES})


def label(value: str | None) -> str:
    return value if value in WHITELIST else "other"


class Writer(threading.Thread):
    """One connection, TRANSACTIONS transactions; `tally` holds only committed rows."""

    def __init__(self, db, number: int, start_together: threading.Barrier):
        super().__init__(daemon=True, name=f"writer-{number}")
        self.db, self.number, self.barrier = db, number, start_together
        self.rng = random.Random(1000 + number)
        self.tally: Counter = Counter()  # (operation, table, label) -> rows
        self.notifications = 0  # committed statement x label groups: what pgne receives
        self.committed = self.rolled_back = self.failed = 0
        self.errors: list[str] = []

    def values(self, n: int) -> list[str | None]:
        return [self.rng.choice(VALUES) for _ in range(n)]

    def statement(self, cur) -> tuple[str, str, list]:
        """Run one random statement; (operation, table, labels of the rows it touched)."""
        w, rng = self.number, self.rng
        kind = rng.choices(["insert1", "insertN", "ledger1", "ledgerN", "update_keep", "update_change",
                            "update_none", "delete"], weights=[3, 3, 2, 2, 2, 2, 1, 2])[0]
        if kind == "insert1":
            cur.execute("INSERT INTO labelled (writer, code) VALUES (%s, %s) RETURNING code",
                        (w, self.values(1)[0]))
            return "INSERT", "public.labelled", [r[0] for r in cur.fetchall()]
        if kind == "insertN":
            cur.execute("INSERT INTO labelled (writer, code) SELECT %s, c FROM unnest(%s::text[]) AS c "
                        "RETURNING code", (w, self.values(rng.randint(2, 40))))
            return "INSERT", "public.labelled", [r[0] for r in cur.fetchall()]
        if kind in ("ledger1", "ledgerN"):
            n = 1 if kind == "ledger1" else rng.randint(2, 40)
            cur.execute("INSERT INTO ledger (writer, code) SELECT %s, c FROM unnest(%s::text[]) AS c "
                        "RETURNING code", (w, self.values(n)))
            return "INSERT", "public.ledger", [r[0] for r in cur.fetchall()]
        if kind == "update_keep":  # labels of the rows as they are
            cur.execute("UPDATE labelled SET n = n + 1 WHERE id IN (SELECT id FROM labelled WHERE writer = %s "
                        "ORDER BY random() LIMIT %s) RETURNING code", (w, rng.randint(1, 15)))
            return "UPDATE", "public.labelled", [r[0] for r in cur.fetchall()]
        if kind == "update_change":  # counted under the new label
            cur.execute("UPDATE labelled SET code = %s WHERE id IN (SELECT id FROM labelled WHERE writer = %s "
                        "ORDER BY random() LIMIT %s) RETURNING code", (self.values(1)[0], w, rng.randint(1, 15)))
            return "UPDATE", "public.labelled", [r[0] for r in cur.fetchall()]
        if kind == "update_none":  # the statement trigger fires on no row: nothing is sent
            cur.execute("UPDATE labelled SET n = n + 1 WHERE writer = %s AND id < 0 RETURNING code", (w,))
            return "UPDATE", "public.labelled", [r[0] for r in cur.fetchall()]
        cur.execute("DELETE FROM labelled WHERE id IN (SELECT id FROM labelled WHERE writer = %s "
                    "ORDER BY random() LIMIT %s) RETURNING code", (w, rng.randint(1, 10)))
        return "DELETE", "public.labelled", [r[0] for r in cur.fetchall()]

    def run(self) -> None:
        conn = psycopg2.connect(self.db.dsn)
        try:
            self.barrier.wait(60)
            for _ in range(TRANSACTIONS):
                pending: Counter = Counter()
                groups = 0
                try:
                    with conn.cursor() as cur:
                        for _ in range(self.rng.randint(1, 3)):
                            operation, table, touched = self.statement(cur)
                            assert len(touched) == cur.rowcount
                            for value in touched:
                                pending[(operation, table, label(value))] += 1
                            groups += len({label(v) for v in touched})
                    if self.rng.random() < ROLLBACK_SHARE:
                        conn.rollback()
                        self.rolled_back += 1
                        continue
                    conn.commit()
                except psycopg2.errors.DeadlockDetected:  # cannot happen (own rows), but not a pgne bug
                    conn.rollback()
                    self.failed += 1
                    continue
                self.committed += 1
                self.tally.update(pending)
                self.notifications += groups
        except Exception as exc:  # reported by the test
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


@pytest.fixture
def database(pg_database):
    run_sql(pg_database, TABLES)
    return pg_database


def test_8_writers_x_500_mixed_transactions_are_counted_exactly_per_table_operation_and_label(database, tmp_path):
    db = database
    path = tmp_path / "events_config.yml"
    path.write_text(config_text(database_entry(db, [LABELLED, LEDGER], tag=RELIABILITY_TAG)))
    proc = PgneProcess(path, tmp_path / "pgne")
    try:
        proc.start(timeout=60)
        barrier = threading.Barrier(WRITERS)
        writers = [Writer(db, w, barrier) for w in range(WRITERS)]
        clock = Stopwatch()
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(300)
        record(f"concurrency: {WRITERS} writers x {TRANSACTIONS} transactions written", clock.elapsed())
        assert not any(w.is_alive() for w in writers), "a writer did not finish within 300 s"
        assert not [e for w in writers for e in w.errors], [e for w in writers for e in w.errors]
        committed = sum(w.committed for w in writers)
        rolled_back = sum(w.rolled_back for w in writers)
        assert committed + rolled_back + sum(w.failed for w in writers) == WRITERS * TRANSACTIONS
        assert 0.05 * WRITERS * TRANSACTIONS < rolled_back < 0.15 * WRITERS * TRANSACTIONS

        tally: Counter = Counter()
        for writer in writers:
            tally.update(writer.tally)
        want = dict.fromkeys(CONFIGURED, 0.0)
        for key, rows in tally.items():
            assert key in want, key
            want[key] = float(rows)
        # every kind of statement and label really happened
        assert all(want[(op, "public.labelled", c)] > 0 for op in ("INSERT", "UPDATE", "DELETE") for c in CODES)

        drained = Stopwatch()
        settle(proc, db, timeout=120)
        record("concurrency: writes done -> every notification counted", drained.elapsed())
        assert events(proc, db) == want

        # the insert-only table: what the database holds, per label, is what pgne counted
        in_table = dict(query(db, "SELECT CASE WHEN code IN ('alpha', 'beta', 'gamma') THEN code ELSE 'other' END, "
                                  "count(*) FROM ledger GROUP BY 1"))
        assert {c: float(in_table.get(c, 0)) for c in CODES} == {c: want[("INSERT", "public.ledger", c)] for c in CODES}
        assert sum(in_table.values()) > 1000

        results = notifications(proc, db)
        assert results["counted"] == sum(w.notifications for w in writers)  # one per statement and label group
        assert results["invalid"] == 0 and results["unmonitored_event"] == 0
        assert proc.value("pgne_worker_restarts_total", db_labels(db)) == 0
    finally:
        proc.kill_leftovers()
