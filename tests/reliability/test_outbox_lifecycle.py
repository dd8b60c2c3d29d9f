"""Series that stay exact when the config changes what they are made of (issue 21, items 9, 12,
14, 15), through real `pgne run` processes, reloads by SIGHUP and a real PostgreSQL:

- a bucket bound added between two others (and one removed): `_count`, `_sum` and every bucket
  stay exact, cumulative and monotonic, in both delivery modes alike, and (outbox) after a
  restart of pgne with its state dir wiped;
- a database removed from the config (its pgne objects torn down) and added back: its counters
  continue from what was exported, exact and monotonic;
- `--compat-metric`: pg_notify_exporter's series is relabelled like pgne_events_total when a
  reload adds a label column (one series, not two);
- a damaged pgne.event_log (an older layout, a CHECK constraint, a trigger, a rule, ...) never
  makes the application's statement fail; pgne repairs it, and counts again.
"""
from __future__ import annotations

import shutil
import signal
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.configs import RELIABILITY_TAG, config_text, database_entry
from support.databases import query, run_sql
from support.exporter import PgneProcess
from support.metrics import MonotonicWatch
from support.waiting import wait_until

FAMILY = "pgne_observed_values"  # the histogram of an observed column without a unit


def measured(buckets) -> dict:
    return {"table": "m", "enabled": True, "function": "notification_with_payload",
            "columns_to_observe": [{"name": "v", "buckets": list(buckets)}], "events": ["insert"]}


def write_config(path, *entries) -> None:
    path.write_text(config_text(*entries), encoding="utf-8")


def entry(db, monitors, delivery: str, **options):
    if delivery == "outbox":
        options.setdefault("drain_interval", 0.1)
    return database_entry(db, monitors, delivery=delivery, tag=RELIABILITY_TAG, **options)


def workers_replaced(proc: PgneProcess, before: set[int], db) -> None:
    """Wait until none of the workers `before` runs any more and `db` is up again."""
    up = {"host": db.host_label, "database": db.name, "tag": RELIABILITY_TAG}

    def replaced() -> bool:
        children = set(proc.worker_pids())
        return bool(children) and not children & before and proc.value("pgne_database_up", up) == 1

    wait_until(replaced, 30, "the new worker to be up", proc.describe)


def reload(proc: PgneProcess, path, *entries, db) -> None:
    before = set(proc.worker_pids())
    write_config(path, *entries)
    proc.send_signal(signal.SIGHUP)
    workers_replaced(proc, before, db)


def histogram(samples, db) -> dict:
    """The `v` histogram of `db`'s INSERTs into `m`: {"buckets": {le: value}, "count", "sum"}."""
    out: dict = {"buckets": {}, "count": None, "sum": None}
    for (name, items), value in samples.items():
        labels = dict(items)
        if labels.get("database") != db.name or labels.get("table") != "m" or labels.get("column") != "v":
            continue
        if name == FAMILY + "_bucket":
            out["buckets"][labels["le"]] = value
        elif name == FAMILY + "_count":
            out["count"] = value
        elif name == FAMILY + "_sum":
            out["sum"] = value
    return out


class HistogramWatch:
    """Every scraped value of the histogram's series: none may ever go down, and every scrape's
    buckets must be cumulative (each at most the next, the last equal to _count)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def observe(self, h: dict) -> None:
        values = [v for _, v in sorted(h["buckets"].items(), key=lambda item: float(item[0]))]
        assert values == sorted(values), f"buckets not cumulative: {h}"
        if values:
            assert values[-1] == h["count"], f"+Inf bucket != _count: {h}"
        for name, value in [*((f"le={le}", v) for le, v in h["buckets"].items()), ("count", h["count"])]:
            if value is None:
                continue
            assert value >= self.last.get(name, 0.0), f"{name} went down: {self.last[name]} -> {value} ({h})"
            self.last[name] = value


def wait_histogram(proc: PgneProcess, db, expected: dict, watch: HistogramWatch) -> dict:
    seen: dict = {}

    def reached():
        seen["h"] = h = histogram(proc.scrape(), db)
        watch.observe(h)
        return h if h == expected else None

    return wait_until(reached, 30, "the histogram to reach its expected values",
                      lambda: f"seen     {seen.get('h')}\nexpected {expected}\n{proc.describe()}")


def hist(count: int, total: float, **buckets: int) -> dict:
    """An expected histogram: buckets given as le_10=..., le_50=... (+Inf is `count`)."""
    les = {f"{float(key[3:])}": float(n) for key, n in buckets.items()}  # as /metrics prints them: 10.0
    return {"buckets": {**les, "+Inf": float(count)}, "count": float(count), "sum": float(total)}


# -------------------------------------------------------------------------- item 9: bucket changes


@pytest.mark.parametrize("delivery", ["notify", "outbox"])
def test_a_bucket_bound_added_and_removed_keeps_the_histogram_exact_cumulative_and_monotonic(
        pg_database, tmp_path, delivery):
    db = pg_database
    db.execute("CREATE TABLE m (id serial PRIMARY KEY, v numeric)")
    config = tmp_path / "events_config.yml"
    write_config(config, entry(db, [measured([10, 100])], delivery))
    watch = HistogramWatch()
    proc = PgneProcess(config, tmp_path / "pgne").start()
    try:
        run_sql(db, "INSERT INTO m (v) SELECT g FROM generate_series(1, 100) AS g")
        wait_histogram(proc, db, hist(100, 5050, le_10=10, le_100=100), watch)

        # 50 between 10 and 100: a new bound's bucket starts at what the bound below it holds
        # (the earlier rows certainly at most 50) and counts every later row exactly.
        reload(proc, config, entry(db, [measured([10, 50, 100])], delivery), db=db)
        run_sql(db, "INSERT INTO m (v) VALUES (30)", "INSERT INTO m (v) VALUES (5), (70), (500)")
        wait_histogram(proc, db, hist(104, 5655, le_10=11, le_50=12, le_100=103), watch)

        # 50 removed again: the other series go on exactly; le=50 is no longer raised by rows
        # above 10.
        reload(proc, config, entry(db, [measured([10, 100])], delivery), db=db)
        run_sql(db, "INSERT INTO m (v) VALUES (40), (8)")
        wait_histogram(proc, db, hist(106, 5703, le_10=12, le_50=13, le_100=105), watch)
        if delivery == "notify":
            return

        # outbox: pgne.totals is the durable record, so a fresh pgne (state dir wiped) shows
        # the configured bounds at their totals.
        proc.stop()
        shutil.rmtree(proc.state_dir)
        proc.start()
        run_sql(db, "INSERT INTO m (v) VALUES (1)")
        watch = HistogramWatch()
        wait_histogram(proc, db, hist(107, 5704, le_10=13, le_100=106), watch)
        stored = query(db.dsn, "SELECT observed->'v' FROM pgne.totals WHERE table_name = 'public.m'")[0][0]
        assert stored == {"count": 107, "sum": "5704", "buckets": {"10": 13, "50": 14, "100": 106},
                          "null": 0, "not_finite": 0}
    finally:
        proc.kill_leftovers()


# ------------------------------------------------------------- item 14: a database removed and added


def counted(proc: PgneProcess, db, watch: MonotonicWatch) -> float | None:
    samples = proc.scrape()
    watch.observe(samples)
    return samples.get(("pgne_events_total", frozenset({
        "operation": "INSERT", "host": db.host_label, "database": db.name, "tag": RELIABILITY_TAG,
        "schema": "public", "table": "t"}.items())))


def wait_counted(proc, db, expected: float, watch: MonotonicWatch) -> None:
    seen = [None]

    def reached() -> bool:
        seen[0] = counted(proc, db, watch)
        return seen[0] == expected

    wait_until(reached, 30, f"pgne_events_total of {db.name} == {expected}",
               lambda: f"seen {seen[0]}\n{proc.describe()}")


@pytest.mark.parametrize("how", ["removed", "disabled"])
def test_an_outbox_database_removed_and_added_back_counts_on_from_what_was_exported(
        pg_database_factory, tmp_path, how):
    db, other = pg_database_factory(), pg_database_factory()
    for d in (db, other):
        d.execute("CREATE TABLE t (id serial PRIMARY KEY)")
    monitors = [{"table": "t", "enabled": True, "function": "simple_event_notification", "events": ["insert"]}]
    config = tmp_path / "events_config.yml"
    present = entry(db, monitors, "outbox", perform_setup=True)
    kept = entry(other, monitors, "outbox", perform_setup=True)
    write_config(config, present, kept)
    watch = MonotonicWatch()
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        run_sql(db, "INSERT INTO t SELECT FROM generate_series(1, 10)")
        wait_counted(proc, db, 10, watch)

        gone = entry(db, monitors, "outbox", perform_setup=True, enabled=False)
        write_config(config, *([kept] if how == "removed" else [gone, kept]))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: not query(db.dsn, "SELECT 1 FROM pg_namespace WHERE nspname = 'pgne'"), 30,
                   "the teardown of schema pgne", proc.describe)

        write_config(config, present, kept)
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_value("pgne_database_up", {"host": db.host_label, "database": db.name, "tag": RELIABILITY_TAG}, 1)
        run_sql(db, "INSERT INTO t SELECT FROM generate_series(1, 5)")
        wait_counted(proc, db, 15, watch)
        assert query(db.dsn, "SELECT total FROM pgne.totals") == [(15,)]
        assert "deleted by hand" not in proc.stderr_text()


# ---------------------------------------------------------------- item 15: the compat series relabelled


def compat_series(proc: PgneProcess, db) -> dict[tuple, float]:
    """pg_notify_exporter's samples of `db` keyed as Prometheus stores them (empty labels are no
    labels); fails if two printed samples are one series."""
    found: dict[tuple, float] = {}
    for family in text_string_to_metric_families(proc.metrics_text()):
        for sample in family.samples:
            if sample.name != "pg_notify_exporter" or sample.labels.get("database") != db.name:
                continue
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if v != ""))
            assert key not in found, f"one series printed twice: {dict(key)}: {found[key]} and {sample.value}"
            found[key] = sample.value
    return found


@pytest.mark.parametrize("delivery", ["notify", "outbox"])
def test_compat_series_are_relabelled_when_a_reload_adds_a_label_column(pg_database, tmp_path, delivery):
    db = pg_database
    db.execute("CREATE TABLE one (id serial PRIMARY KEY, code text); CREATE TABLE two (id serial PRIMARY KEY)")
    two = {"table": "two", "enabled": True, "function": "simple_event_notification", "events": ["insert"]}

    def one(*labels: str) -> dict:
        monitor = {"table": "one", "enabled": True, "function": "notification_with_payload", "events": ["insert"]}
        if labels:
            monitor["columns_to_label"] = [{name: ["a"]} for name in labels]
        return monitor

    config = tmp_path / "events_config.yml"
    write_config(config, entry(db, [one(), two], delivery, perform_setup=True))
    key = tuple(sorted({"operation": "INSERT", "host": db.host_label, "tag": RELIABILITY_TAG, "database": db.name,
                        "table": "public.two"}.items()))
    proc = PgneProcess(config, tmp_path / "pgne", "--compat-metric").start()
    try:
        run_sql(db, "INSERT INTO two SELECT FROM generate_series(1, 7)")
        wait_until(lambda: compat_series(proc, db).get(key) == 7, 30, "7 in the compat series", proc.describe)

        reload(proc, config, entry(db, [one("code"), two], delivery, perform_setup=True), db=db)
        run_sql(db, "INSERT INTO two SELECT FROM generate_series(1, 3)")
        wait_until(lambda: compat_series(proc, db).get(key) == 10, 30, "10 in the compat series",
                   lambda: f"{compat_series(proc, db)}\n{proc.describe()}")
        assert {k: v for k, v in compat_series(proc, db).items() if dict(k)["table"] == "public.two"} == {key: 10}
    finally:
        proc.kill_leftovers()


# ------------------------------------------------- item 12: a damaged pgne.event_log never fails a write

# Each damage, and whether the trigger still writes its rows: it skips them (a WARNING each
# statement) only where its INSERT could fail; a damage that cannot fail that INSERT (it names
# every column, with a non-NULL value) is still counted. pgne rebuilds the table either way.
SKIPPED, COUNTED = "skipped", "counted"
EVENT_LOG_DAMAGE = {
    "older_layout": (SKIPPED, ["DROP TABLE pgne.event_log",
                               "CREATE TABLE pgne.event_log (table_name text NOT NULL, operation text NOT NULL, "
                               "labels jsonb NOT NULL, n bigint NOT NULL, "
                               "created_at timestamptz NOT NULL DEFAULT now())"]),
    "check_constraint": (SKIPPED, ["ALTER TABLE pgne.event_log ADD CONSTRAINT no_rows CHECK (n < 0) NOT VALID"]),
    "trigger": (SKIPPED, ["CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$BEGIN RAISE EXCEPTION 'refused'; END$$",
                          "CREATE TRIGGER refuse BEFORE INSERT ON pgne.event_log FOR EACH ROW "
                          "EXECUTE FUNCTION public.refuse()"]),
    # dropped again at once: pg_class.relhastriggers stays set until a VACUUM
    "trigger_dropped": (SKIPPED, ["CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                                  "$$BEGIN RAISE EXCEPTION 'refused'; END$$",
                                  "CREATE TRIGGER refuse BEFORE INSERT ON pgne.event_log FOR EACH ROW "
                                  "EXECUTE FUNCTION public.refuse()",
                                  "DROP TRIGGER refuse ON pgne.event_log"]),
    "rule": (SKIPPED, ["CREATE RULE refuse AS ON INSERT TO pgne.event_log DO ALSO SELECT 1 / (NEW.n - NEW.n)"]),
    "not_null_column": (SKIPPED, ["ALTER TABLE pgne.event_log ADD COLUMN extra int",
                                  "ALTER TABLE pgne.event_log ALTER extra SET NOT NULL"]),
    "row_level_security": (SKIPPED, ["ALTER TABLE pgne.event_log ENABLE ROW LEVEL SECURITY",
                                     "ALTER TABLE pgne.event_log FORCE ROW LEVEL SECURITY"]),
    "unique_index": (SKIPPED, ["CREATE UNIQUE INDEX one_per_table ON pgne.event_log (table_name)"]),
    "renamed_column": (SKIPPED, ["ALTER TABLE pgne.event_log RENAME n TO count"]),
    "identity_column": (SKIPPED, ["ALTER TABLE pgne.event_log ALTER n ADD GENERATED ALWAYS AS IDENTITY"]),
    "retyped_column_no_assignment_cast": (SKIPPED, ["ALTER TABLE pgne.event_log ALTER labels TYPE int USING 0"]),
    "dropped_column": (SKIPPED, ["ALTER TABLE pgne.event_log ADD COLUMN extra int",
                                 "ALTER TABLE pgne.event_log DROP COLUMN extra"]),
    "failing_default": (COUNTED, ["ALTER TABLE pgne.event_log ALTER created_at SET DEFAULT "
                                  "now() + (1 / 0) * interval '1 s'"]),
    "dropped_default": (COUNTED, ["ALTER TABLE pgne.event_log ALTER created_at DROP DEFAULT"]),
    "not_null_observed": (COUNTED, ["ALTER TABLE pgne.event_log ALTER observed SET NOT NULL"]),
    # any other type than pgne's, even one every value fits: the trigger's check compares the
    # exact types (only some values fit varchar(3), smallint, a domain with a CHECK)
    "retyped_column": (SKIPPED, ["ALTER TABLE pgne.event_log ALTER n TYPE int"]),
    "retyped_column_varchar": (SKIPPED, ["ALTER TABLE pgne.event_log ALTER table_name TYPE varchar(3)"]),
    "retyped_column_domain_with_check": (SKIPPED, ["CREATE DOMAIN public.op AS text CHECK (VALUE <> 'INSERT')",
                                                   "ALTER TABLE pgne.event_log ALTER operation TYPE public.op"]),
    "retyped_column_smallint": (SKIPPED, ["ALTER TABLE pgne.event_log ALTER n TYPE smallint"]),
    # the owner a non-superuser without the INSERT privilege (pgne's functions, a superuser's
    # here, still write)
    "owner_without_insert": (COUNTED, ["ALTER TABLE pgne.event_log OWNER TO {role}",
                                       "REVOKE INSERT ON pgne.event_log FROM {role}"]),
}


@pytest.fixture
def plain_role(pg_database):
    role = f"pgne_owner_{uuid.uuid4().hex[:8]}"
    pg_database.execute(f'CREATE ROLE "{role}"')
    try:
        yield role
    finally:
        pg_database.close_connections()
        pg_database.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


# The rows of the application's second statement: 40,000 overflow a smallint `n`.
DAMAGE_ROWS = {"retyped_column_smallint": 40_000}


@pytest.mark.parametrize("damage, session", [(damage, "long_lived") for damage in sorted(EVENT_LOG_DAMAGE)]
                         + [(damage, "fresh") for damage in sorted(EVENT_LOG_DAMAGE) if "retyped" in damage])
def test_a_damaged_event_log_never_fails_the_application_and_pgne_rebuilds_it(pg_database, plain_role, tmp_path,
                                                                              damage, session):
    """`long_lived`: the application's session wrote before the damage (the trigger's plans
    cached, to be invalidated by it); `fresh`: its first write follows the damage."""
    db = pg_database
    db.execute("CREATE TABLE m (id serial PRIMARY KEY, v numeric)")
    config = tmp_path / "events_config.yml"
    write_config(config, entry(db, [measured([10])], "outbox", perform_setup=True))
    watch = HistogramWatch()
    outcome, statements = EVENT_LOG_DAMAGE[damage]
    rows = DAMAGE_ROWS.get(damage, 10)
    with PgneProcess(config, tmp_path / "pgne", "--trigger-check-interval", "0.5").running() as proc:
        conn = db.connect()
        if session == "long_lived":
            with conn.cursor() as cur:
                cur.execute("INSERT INTO m (v) VALUES (1)")
            conn.commit()
        else:
            run_sql(db, "INSERT INTO m (v) VALUES (1)")
        wait_histogram(proc, db, hist(1, 1, le_10=1), watch)

        # The damage and the application's writes in one transaction: pgne cannot repair the
        # table in between (its lock waits for the commit). Every write succeeds: 1 + `rows` rows.
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement.format(role=plain_role))
            cur.execute("INSERT INTO m (v) VALUES (2)")
            cur.execute("INSERT INTO m (v) SELECT g FROM generate_series(1, %s) AS g", (rows,))
        conn.commit()
        assert query(db.dsn, "SELECT count(*) FROM m") == [(2 + rows,)]
        skipped = sum("pgne: INSERT on public.m not counted" in notice for notice in conn.notices)
        assert skipped == (2 if outcome == SKIPPED else 0), conn.notices

        # the trigger check (every 0.5 s) sees it, the setup rebuilds it; then every row counts again
        wait_until(lambda: "is as pgne makes it again" in proc.stderr_text(), 30, "the rebuild", proc.describe)
        if damage != "older_layout":  # that one only lacks the column observed: added, not rebuilt
            assert "rebuilt as pgne makes it" in proc.stderr_text()
        run_sql(db, "INSERT INTO m (v) VALUES (20), (3)")
        if outcome == SKIPPED:
            wait_histogram(proc, db, hist(3, 24, le_10=2), watch)
        else:  # 1, 2, 1..10, 20, 3
            wait_histogram(proc, db, hist(14, 81, le_10=13), watch)
        assert query(db.dsn, "SELECT count(*) FROM pgne.event_log") == [(0,)]
        assert query(db.dsn, "SELECT pg_get_userbyid(relowner) = current_user FROM pg_class "
                             "WHERE oid = 'pgne.event_log'::regclass") == [(True,)]
        assert "Traceback" not in proc.stderr_text()
