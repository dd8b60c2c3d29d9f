"""`delivery: outbox` is exact through crashes: 8 writers x 500 transactions while pgne's worker
and master are SIGKILLed several times and the database is stopped with
`pg_ctl stop -m immediate` mid-write; afterwards the exported pgne_events_total equals, per
table, operation and label, what committed.

What committed is recorded by the writers themselves, in the same transaction as their writes:
`tx_done` (one row per transaction: resolves a COMMIT whose outcome was lost with the server)
and `ledger` (one row per row the trigger counts, with its label). A transaction that rolled
back, or died with the server, leaves nothing in either, exactly as in pgne.event_log.

The cluster runs with synchronous_commit = on: with it off, a server crash loses the last
acknowledged commits (both the application's and pgne's drains) and no exporter can be exact
about transactions that the database itself forgot.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections import Counter

import psycopg2
import pytest
from support.clusters import TempCluster
from support.databases import create_database, run_sql
from support.exporter import PgneProcess
from support.faults import record
from support.metrics import MonotonicWatch
from support.outbox import OTHER, WHITELIST, backlog_rows, exported, outbox_config, whitelisted
from support.processes import children_of, process_gone, wait_gone
from support.waiting import wait_until

WRITERS = 8
TRANSACTIONS = 500  # per writer
WRITE_SECONDS = 40.0  # the writers are paced to spread their work over this long
ROLLBACK_SHARE = 0.10
CODES = [*WHITELIST, "zeta", None]

ONE = {"table": "one", "enabled": True, "function": "notification_with_payload",
       "columns_to_label": [{"code": list(WHITELIST)}], "events": ["insert", "update", "delete"]}
TWO = {"table": "two", "enabled": True, "function": "simple_event_notification", "events": ["insert", "delete"]}
TABLES = """
CREATE TABLE one (id bigserial PRIMARY KEY, writer int NOT NULL, code text);
CREATE TABLE two (id bigserial PRIMARY KEY, writer int NOT NULL, note text);
CREATE INDEX ON one (writer);
CREATE INDEX ON two (writer);
-- the application's own record of what committed (not monitored)
CREATE TABLE tx_done (tx uuid PRIMARY KEY, writer int NOT NULL);
CREATE TABLE ledger (tx uuid NOT NULL, tbl text NOT NULL, op text NOT NULL, code text NOT NULL);
-- a transaction that inserts here sleeps in its COMMIT (a deferred trigger): the test stops the
-- server right then, so that one COMMIT's outcome is lost with it for certain
CREATE TABLE slow_commit (tx uuid NOT NULL);
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow_commit DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""
# when (a share of all transactions attempted) -> fault. "mid-drain": the kill lands while the
# worker's drain statement is blocked on a pgne.totals row lock that the test holds, after it
# deleted its pgne.event_log rows; the orphaned statement then completes and commits without
# the worker (autocommit), which must not be counted twice nor lost.
SCHEDULE = [
    (0.08, "kill worker"),
    (0.16, "kill master"),
    (0.26, "kill worker"),
    (0.36, "stop database -m immediate"),
    (0.46, "kill worker mid-drain"),
    (0.56, "kill master mid-drain"),
    (0.66, "kill worker"),
    (0.76, "kill master"),
    (0.86, "kill worker"),
]
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


class Writer(threading.Thread):
    """One application connection: TRANSACTIONS paced transactions of 1-3 random statements
    on its own rows, 10% rolled back; reconnects and carries on when the server is gone."""

    def __init__(self, number: int, db, started: float):
        super().__init__(name=f"writer-{number}", daemon=True)
        self.number, self.db, self.started = number, db, started
        self.rng = random.Random(number)
        self.attempted = 0
        self.committed = self.rolled_back = self.died_with_server = 0
        self.unknown_outcome: list[tuple[str, bool]] = []  # (tx, committed after all?)
        self.error: BaseException | None = None
        self.conn = None
        self.slow_commit_next = threading.Event()  # set by the test: next COMMIT sleeps

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                self.conn = psycopg2.connect(self.db.dsn)
                return
            except CONNECTION_ERRORS:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the server is down or recovering: poll until it answers

    def reconnect(self) -> None:
        try:
            self.conn.close()
        except psycopg2.Error:
            pass
        self.connect()

    def committed_after_all(self, tx: str) -> bool:
        with self.conn.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT FROM tx_done WHERE tx = %s)", (tx,))
            result = cur.fetchone()[0]
        self.conn.rollback()
        return result

    # -- work -----------------------------------------------------------------------------------

    def statement(self, cur, counted: list[tuple[str, str, str]]) -> None:
        """One random statement; appends (table, operation, label) of every row it touches."""
        rng, w = self.rng, self.number
        kind = rng.random()
        if kind < 0.30:
            code = rng.choice(CODES)
            cur.execute("INSERT INTO one (writer, code) VALUES (%s, %s)", (w, code))
            counted.append(("one", "INSERT", whitelisted(code)))
        elif kind < 0.50:
            codes = [rng.choice(CODES) for _ in range(rng.randint(2, 25))]
            cur.execute("INSERT INTO one (writer, code) SELECT %s, unnest(%s::text[])", (w, codes))
            counted += [("one", "INSERT", whitelisted(c)) for c in codes]
        elif kind < 0.65:
            cur.execute("""UPDATE one SET code = (ARRAY['alpha', 'beta', 'gamma', 'zeta', NULL])[1 + (id + %s) %% 5]
                           WHERE id IN (SELECT id FROM one WHERE writer = %s ORDER BY random() LIMIT %s)
                           RETURNING code""", (rng.randint(0, 4), w, rng.randint(1, 8)))
            counted += [("one", "UPDATE", whitelisted(c)) for (c,) in cur.fetchall()]
        elif kind < 0.75:
            cur.execute("""DELETE FROM one WHERE id IN (SELECT id FROM one WHERE writer = %s ORDER BY random() LIMIT %s)
                           RETURNING code""", (w, rng.randint(1, 5)))
            counted += [("one", "DELETE", whitelisted(c)) for (c,) in cur.fetchall()]
        elif kind < 0.90:
            cur.execute("INSERT INTO two (writer, note) SELECT %s, 'n' FROM generate_series(1, %s)",
                        (w, rng.randint(1, 6)))
            counted += [("two", "INSERT", "")] * cur.rowcount
        else:
            cur.execute("""DELETE FROM two WHERE id IN (SELECT id FROM two WHERE writer = %s LIMIT %s)""",
                        (w, rng.randint(1, 4)))
            counted += [("two", "DELETE", "")] * cur.rowcount

    def transaction(self) -> None:
        tx = str(uuid.uuid4())
        rollback = self.rng.random() < ROLLBACK_SHARE
        counted: list[tuple[str, str, str]] = []
        in_commit = False
        try:
            with self.conn.cursor() as cur:
                for _ in range(self.rng.randint(1, 3)):
                    self.statement(cur, counted)
                cur.execute("INSERT INTO tx_done (tx, writer) VALUES (%s, %s)", (tx, self.number))
                if not rollback and self.slow_commit_next.is_set():
                    self.slow_commit_next.clear()
                    cur.execute("INSERT INTO slow_commit (tx) VALUES (%s)", (tx,))
                if counted:
                    tables, operations, labels = zip(*counted)
                    cur.execute("INSERT INTO ledger (tx, tbl, op, code) "
                                "SELECT %s, unnest(%s::text[]), unnest(%s::text[]), unnest(%s::text[])",
                                (tx, list(tables), list(operations), list(labels)))
            if rollback:
                self.conn.rollback()
                self.rolled_back += 1
                return
            in_commit = True
            self.conn.commit()
            self.committed += 1
        except CONNECTION_ERRORS:
            if not in_commit:  # the server died mid-transaction: it rolled back
                self.reconnect()
                self.died_with_server += 1
                return
            while True:  # the server died around our COMMIT: did it happen?
                self.reconnect()
                try:
                    committed = self.committed_after_all(tx)
                    break
                except CONNECTION_ERRORS:
                    continue
            self.unknown_outcome.append((tx, committed))
            self.committed += committed

    def run(self) -> None:
        try:
            self.connect()
            interval = WRITE_SECONDS / TRANSACTIONS
            for i in range(TRANSACTIONS):
                # pacing, so that the faults below land mid-write
                delay = self.started + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.transaction()
                self.attempted += 1
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            if self.conn is not None:
                self.conn.close()


@pytest.fixture(scope="module")
def durable_cluster():
    """A TempCluster of its own with synchronous_commit on (see the module docstring)."""
    cluster = TempCluster()
    try:
        with open(os.path.join(cluster.data, "postgresql.conf"), "a") as conf:
            conf.write("synchronous_commit = on\n")
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.destroy()


def committed_counts(db) -> dict[tuple, int]:
    """Per (operation, table, label): rows of committed transactions, from the ledger."""
    conn = psycopg2.connect(db.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT op, tbl, code, count(*) FROM ledger GROUP BY op, tbl, code")
            return {(op, tbl, code): n for op, tbl, code, n in cur.fetchall()}
    finally:
        conn.close()


class Observer:
    """Scrapes pgne (every value is checked by a MonotonicWatch, across every pgne process) and
    reads the backlog from the database's side: the drain lag includes the times pgne is down."""

    def __init__(self, db):
        self.db = db
        self.watch = MonotonicWatch()
        self.conn = None
        self.max_backlog = 0
        self.max_age = 0.0

    def __call__(self, proc: PgneProcess) -> None:
        self.watch.scrape_quietly(proc)
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg2.connect(self.db.dsn)
                self.conn.autocommit = True
            with self.conn.cursor() as cur:
                cur.execute("SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0) "
                            "FROM pgne.event_log")
                backlog, age = cur.fetchone()
            self.max_backlog, self.max_age = max(self.max_backlog, backlog), max(self.max_age, float(age))
        except CONNECTION_ERRORS:  # the server is down
            if self.conn is not None:
                self.conn.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def pgne_lock_waits(db) -> list[int]:
    """Backends of pgne waiting for a lock in this database."""
    conn = psycopg2.connect(db.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'pgne' "
                        "AND wait_event_type = 'Lock'", (db.name,))
            return [pid for (pid,) in cur.fetchall()]
    finally:
        conn.close()


def sleeping_commits(db) -> list[int]:
    conn = psycopg2.connect(db.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep'", (db.name,))
            return [pid for (pid,) in cur.fetchall()]
    finally:
        conn.close()


def test_outbox_totals_are_exact_through_pgne_kills_and_a_database_crash(durable_cluster, tmp_path):
    cluster = durable_cluster
    db = create_database(cluster, "outbox")
    run_sql(db, TABLES)
    config = tmp_path / "events_config.yml"
    config.write_text(outbox_config(db, [ONE, TWO], perform_setup=True, drain_interval=0.05))
    observe = Observer(db)
    runs: list[PgneProcess] = []
    done: Counter = Counter()

    def start_pgne() -> PgneProcess:
        proc = PgneProcess(config, tmp_path / f"pgne-{len(runs) + 1}")  # a new state dir each time
        runs.append(proc)
        return proc.start(expect_up=False)

    def worker_of(proc: PgneProcess, not_pid: int | None = None) -> int:
        def found():
            observe(proc)
            pids = [p for p in proc.worker_pids() if p != not_pid]
            return pids[0] if pids else None
        return wait_until(found, 30, "pgne's worker", proc.describe)

    def kill_master(proc: PgneProcess) -> PgneProcess:
        workers = proc.worker_pids()
        proc.send_signal(signal.SIGKILL)
        proc.process.wait(10)
        wait_gone(workers, 5 + 1, "the workers of a SIGKILLed master to exit by themselves")
        return start_pgne()

    proc = start_pgne()
    writers: list[Writer] = []
    try:
        proc.wait_all_up(30)
        started = time.monotonic() + 0.2
        writers = [Writer(n, db, started) for n in range(WRITERS)]
        for writer in writers:
            writer.start()
        total = WRITERS * TRANSACTIONS

        def progressed_to(share: float) -> bool:
            observe(proc)
            return sum(w.attempted for w in writers) >= share * total or any(w.error for w in writers)

        for share, fault in SCHEDULE:
            wait_until(lambda share=share: progressed_to(share), 120, f"{share:.0%} of the transactions",
                       proc.describe, interval=0.05)
            assert not any(w.error for w in writers), [w.error for w in writers]
            if fault == "kill worker":
                worker = worker_of(proc)
                os.kill(worker, signal.SIGKILL)
                worker_of(proc, not_pid=worker)  # the master started a new one
            elif fault == "kill master":
                proc = kill_master(proc)
            elif fault.endswith("mid-drain"):
                worker = worker_of(proc)
                locker = psycopg2.connect(db.dsn)
                try:
                    with locker.cursor() as cur:
                        cur.execute("SELECT FROM pgne.totals FOR UPDATE")  # every total: the next drain waits
                    wait_until(lambda proc=proc: observe(proc) or pgne_lock_waits(db), 30,
                               "a drain blocked on pgne.totals", proc.describe)
                    if fault.startswith("kill worker"):
                        os.kill(worker, signal.SIGKILL)
                        worker_of(proc, not_pid=worker)
                    else:
                        proc = kill_master(proc)
                finally:
                    locker.close()  # the orphaned drain statement completes now
            else:
                writers[0].slow_commit_next.set()
                wait_until(lambda proc=proc: observe(proc) or sleeping_commits(db), 30,
                           "a COMMIT sleeping in its trigger", proc.describe)
                cluster.stop("immediate")
                assert not process_gone(proc.pid)
                cluster.start()
                cluster.wait_ready()
            done[fault] += 1
        for writer in writers:
            while writer.is_alive():
                writer.join(0.1)
                observe(proc)
        errors = [w.error for w in writers if w.error]
        assert not errors, errors
        writes_ended = time.monotonic()

        expected = committed_counts(db)

        def drained() -> bool:
            observe(proc)
            return backlog_rows(db.dsn) == 0 and {k: v for k, v in exported(proc, db).items() if v} == expected

        wait_until(drained, 60, "the exported totals to equal the committed rows",
                   lambda: f"exported {exported(proc, db)}\nexpected {expected}\n{proc.describe()}")
        drain_seconds = time.monotonic() - writes_ended
        samples = proc.scrape()
        observe.watch.observe(samples)
        values = exported(proc, db, samples)

        # exact, per table, operation and label; and pgne.totals holds the same
        assert {k: v for k, v in values.items() if v} == expected
        conn = psycopg2.connect(db.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT operation, split_part(table_name, '.', 2), coalesce(labels->>'code', ''), "
                            "total FROM pgne.totals")
                assert {(op, t, c): n for op, t, c, n in cur.fetchall()} == expected
                cur.execute("SELECT count(*) FROM tx_done")
                (committed_transactions,) = cur.fetchone()
                cur.execute("SELECT count(*) FROM slow_commit")
                assert cur.fetchone() == (0,)  # the COMMIT that slept died with the server
        finally:
            conn.close()

        # the workload did what it says
        assert done == Counter({"kill worker": 4, "kill master": 2, "kill worker mid-drain": 1,
                                "kill master mid-drain": 1, "stop database -m immediate": 1})
        assert sum(w.attempted for w in writers) == WRITERS * TRANSACTIONS
        assert committed_transactions == sum(w.committed for w in writers)
        unknown = [item for w in writers for item in w.unknown_outcome]
        assert len(unknown) >= 1 and not all(committed for _, committed in unknown)
        assert {op for op, _, _ in expected} == {"INSERT", "UPDATE", "DELETE"}
        assert {label for _, _, label in expected} == {*WHITELIST, OTHER, ""}
        rolled_back = sum(w.rolled_back for w in writers)
        assert 0.05 * total < rolled_back < 0.15 * total
        print(f"\noutbox durability: {committed_transactions} transactions committed, {rolled_back} rolled back, "
              f"{sum(w.died_with_server for w in writers)} died with the server mid-transaction, "
              f"{len(unknown)} with a lost COMMIT outcome ({sum(c for _, c in unknown)} of them committed); "
              f"{sum(expected.values())} rows counted in {len(expected)} series; pgne processes: {len(runs)}; "
              f"scrapes: {observe.watch.scrapes}; max backlog {observe.max_backlog} rows; max age of an "
              f"undrained row {observe.max_age:.2f} s; drained {drain_seconds:.2f} s after the last write")
        record("outbox durability: drained after the last write", drain_seconds)
        record("outbox durability: max age of an undrained row (pgne killed, database down included)",
               observe.max_age)
    finally:
        for writer in writers:
            writer.join(0)  # daemon threads: they end with their connections
        for run in runs:
            run.kill_leftovers()
        observe.close()


def test_a_worker_blocked_in_a_drain_ends_within_5_s_of_its_masters_sigkill(pg_database, tmp_path):
    """A drain waiting for a row lock on pgne.totals cannot notice its master's death (libpq
    waits for the server); only PR_SET_PDEATHSIG ends it, which fires when the launcher exits,
    which it does when the master's end of its socket closes: the workers must not hold that
    end (pgne.launcher_process closes every inherited descriptor in them)."""
    run_sql(pg_database, TABLES)
    config = tmp_path / "events_config.yml"
    config.write_text(outbox_config(pg_database, [ONE], perform_setup=True, drain_interval=0.05))
    proc = PgneProcess(config, tmp_path / "pgne").start(timeout=60)
    run_sql(pg_database, "INSERT INTO one (writer, code) VALUES (0, 'alpha')")
    wait_until(lambda: exported(proc, pg_database).get(("INSERT", "one", "alpha")) == 1, 30, "the first row counted",
               proc.describe)
    locker = psycopg2.connect(pg_database.dsn)
    try:
        with locker.cursor() as cur:
            cur.execute("SELECT FROM pgne.totals FOR UPDATE")  # the next drain waits for this transaction
        run_sql(pg_database, "INSERT INTO one (writer, code) VALUES (0, 'alpha')")
        wait_until(lambda: pgne_lock_waits(pg_database), 30, "the drain blocked on pgne.totals", proc.describe)
        everyone = [*proc.worker_pids(), *children_of(proc.pid)]  # the worker, the launcher
        assert len(everyone) == 2
        proc.send_signal(signal.SIGKILL)
        proc.process.wait(10)
        wait_gone(everyone, 5, "the blocked worker and the launcher to end")
    finally:
        locker.close()  # the server notices its gone client once the lock is granted
        proc.kill_leftovers()
    wait_until(lambda: not pgne_lock_waits(pg_database), 5, "no pgne backend waiting any more")
