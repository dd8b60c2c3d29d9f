"""The rendered triggers, installed by `pgne apply`, against the real PostgreSQL: exact counts.

Each test installs the standard config in a fresh database, LISTENs (support.listener.Listener), writes,
and asserts the summed `count`s of the notifications exactly (the Listener settles with a
sentinel NOTIFY before comparing, so "nothing more was sent" is checked too).
"""
from __future__ import annotations

import io
import json

import psycopg2
import pytest
from support.databases import pgne_triggers
from support.exporter import apply_in_process
from support.listener import Listener, event
from support.processes import run_pgne

WHITELIST = ["alpha", "beta", "gamma"]

TABLES = """
CREATE TABLE one (id serial PRIMARY KEY, code text);
CREATE TABLE two (id serial PRIMARY KEY, note text);
CREATE TABLE three (id serial PRIMARY KEY, code text);
CREATE TABLE pairs (id serial PRIMARY KEY, code text, level int);
CREATE TABLE kv (k int PRIMARY KEY, code text);
CREATE TABLE parted (id int NOT NULL, code text) PARTITION BY RANGE (id);
CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (1000000);
"""

MONITORS = """
- table: one
  enabled: yes
  function: notification_with_payload
  columns_to_label:
    - code: ['alpha', 'beta', 'gamma']
  events: [insert]
- table: two
  enabled: yes
  function: simple_event_notification
  events: [INSERT, delete]
- table: public.three
  enabled: yes
  function: notification_with_payload
  columns_to_label:
    - code: ['alpha', 'beta', 'gamma']
  events: [update, DELETE, Truncate]
- table: pairs
  enabled: yes
  function: notification_with_payload
  columns_to_label:
    - code: ['alpha', 'beta']
    - level: [1, 2]
  events: [insert]
- table: kv
  enabled: yes
  function: notification_with_payload
  columns_to_label:
    - code: ['alpha', 'beta']
  events: [insert, update, delete]
- table: parted
  enabled: yes
  function: notification_with_payload
  columns_to_label:
    - code: ['alpha', 'beta', 'gamma']
  events: [insert]
"""

ONE, TWO, THREE, PAIRS, PARTED, KV = ("public.one", "public.two", "public.three", "public.pairs", "public.parted",
                                     "public.kv")


def one(code: str, action: str = "INSERT"):
    return event(ONE, action, code=code)


def three(action: str, code: str | None = None):
    return event(THREE, action) if code is None else event(THREE, action, code=code)


@pytest.fixture
def db(pg_database, write_config):
    """The standard tables with pgne's triggers installed (pgne.commands.apply, in process)."""
    pg_database.execute(TABLES)
    result = apply_in_process(write_config(pg_database, MONITORS))
    assert result.code == 0, result.stdout
    [line] = result.lines
    assert line.startswith(f"{pg_database.host}:{pg_database.port}/{pg_database.name}: applied: "), line
    return pg_database


@pytest.fixture
def listener(db, listener_factory) -> Listener:
    return listener_factory(db)


@pytest.fixture
def conn(db):
    """The application's connection (transactions, as psycopg2 opens them)."""
    return db.connect()


def test_a_10000_row_insert_select_applied_by_the_cli_counts_10000(pg_database, write_config, listener_factory):
    pg_database.execute(TABLES)
    path = write_config(pg_database, MONITORS)
    proc = run_pgne("apply", "-c", path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"{pg_database.host}:{pg_database.port}/{pg_database.name}: applied: ")
    listener = listener_factory(pg_database)

    pg_database.execute("INSERT INTO one (code) SELECT (ARRAY['alpha', 'beta', 'gamma', 'delta', NULL])[1 + i % 5] "
                        "FROM generate_series(1, 10000) AS i")

    totals = listener.wait_for({one("alpha"): 2000, one("beta"): 2000, one("gamma"): 2000, one("other"): 4000})
    assert sum(totals.values()) == 10000
    assert len(listener.payloads) == 4  # one notification per label group, not per row


def test_two_single_row_inserts_in_one_transaction_count_2(conn, listener):
    """The NOTIFY-folding trap: identical payloads in one transaction are delivered once."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        cur.execute("INSERT INTO two (note) VALUES ('x')")
        cur.execute("INSERT INTO two (note) VALUES ('x')")
    conn.commit()

    listener.wait_for({one("alpha"): 2, event(TWO, "INSERT"): 2})
    seqs = [p["seq"] for p in listener.payloads]
    assert len(set(seqs)) == 4 and seqs == sorted(seqs), seqs  # grows with each statement

    # the sequence starts again in the next transaction of the same session, and still no folding
    with conn.cursor() as cur:
        cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        cur.execute("INSERT INTO one (code) VALUES ('alpha')")
    conn.commit()
    listener.wait_for({one("alpha"): 4, event(TWO, "INSERT"): 2})


def test_a_rolled_back_insert_counts_0(conn, listener):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 5)")
        cur.execute("INSERT INTO two (note) VALUES ('x')")
    conn.rollback()
    listener.wait_for({})

    with conn.cursor() as cur:
        cur.execute("INSERT INTO one (code) VALUES ('beta')")
    conn.commit()
    listener.wait_for({one("beta"): 1})


def test_a_savepoint_rolled_back_inside_a_committed_transaction_is_not_counted(conn, listener):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        cur.execute("SAVEPOINT s")
        cur.execute("INSERT INTO one (code) SELECT 'beta' FROM generate_series(1, 3)")
        cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        cur.execute("ROLLBACK TO SAVEPOINT s")
        cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        cur.execute("SAVEPOINT t")
        cur.execute("INSERT INTO one (code) VALUES ('gamma')")
        cur.execute("RELEASE SAVEPOINT t")
    conn.commit()

    listener.wait_for({one("alpha"): 2, one("gamma"): 1})
    seqs = [p["seq"] for p in listener.payloads]
    assert len(set(seqs)) == len(seqs) == 3


def test_the_whitelist_other_split_is_exact_and_null_counts_as_other(db, listener):
    db.execute("INSERT INTO one (code) VALUES ('alpha'), ('beta'), ('beta'), ('gamma'), ('gamma'), ('gamma'), "
               "(NULL), ('ALPHA'), (' alpha'), ('alpha '), (''), ('delta'), ('other')")
    # values are compared as text: the integer whitelist [1, 2] matches level 1 and 2 only
    db.execute("INSERT INTO pairs (code, level) VALUES ('alpha', 1), ('alpha', 1), ('alpha', 2), "
               "('beta', NULL), ('zeta', 1), (NULL, 3), (NULL, NULL), ('beta', -1)")

    listener.wait_for({
        one("alpha"): 1, one("beta"): 2, one("gamma"): 3, one("other"): 7,
        event(PAIRS, "INSERT", code="alpha", level="1"): 2,
        event(PAIRS, "INSERT", code="alpha", level="2"): 1,
        event(PAIRS, "INSERT", code="beta", level="other"): 2,
        event(PAIRS, "INSERT", code="other", level="1"): 1,
        event(PAIRS, "INSERT", code="other", level="other"): 2,
    })


def test_update_counts_the_updated_rows_with_labels_from_the_new_rows(db, listener):
    db.execute("INSERT INTO three (code) VALUES ('alpha'), ('alpha'), ('alpha'), ('beta'), ('gamma'), (NULL)")
    db.execute("UPDATE three SET code = 'beta' WHERE code = 'alpha'")  # alpha -> beta: counted as beta
    db.execute("UPDATE three SET code = 'secret' WHERE code = 'gamma'")  # gamma -> other
    db.execute("UPDATE three SET code = 'gamma' WHERE code IS NULL")  # NULL -> gamma
    db.execute("UPDATE three SET code = code WHERE code = 'beta'")  # 4 rows, unchanged values still count

    listener.wait_for({three("UPDATE", "beta"): 3 + 4, three("UPDATE", "other"): 1, three("UPDATE", "gamma"): 1})


def test_delete_counts_the_deleted_rows_with_labels_from_the_old_rows(db, listener):
    db.execute("INSERT INTO three (code) VALUES ('alpha'), ('alpha'), ('beta'), ('zeta'), (NULL)")
    db.execute("DELETE FROM three WHERE code = 'alpha'")
    db.execute("DELETE FROM three")  # beta, zeta, NULL

    listener.wait_for({three("DELETE", "alpha"): 2, three("DELETE", "beta"): 1, three("DELETE", "other"): 2})


def test_copy_from_stdin_is_counted(conn, listener):
    with conn.cursor() as cur:
        cur.copy_expert("COPY one (code) FROM STDIN", io.StringIO("alpha\nbeta\nbeta\n\\N\nzeta\n"))
        cur.copy_expert("COPY two (note) FROM STDIN", io.StringIO("a\nb\nc\n"))
    conn.commit()

    listener.wait_for({one("alpha"): 1, one("beta"): 2, one("other"): 2, event(TWO, "INSERT"): 3})


def test_a_partitioned_table_is_counted_at_its_root(db, listener):
    # the statement triggers sit on the root only (statement triggers are not cloned to partitions)
    with db.connect() as conn:
        triggers = pgne_triggers(conn)
    assert {t for t in triggers if t[1].startswith("parted")} == {("public", "parted", "pgne_insert")}

    db.execute("INSERT INTO parted (id, code) SELECT i, (ARRAY['alpha', 'beta', NULL])[1 + i % 3] "
               "FROM generate_series(1, 150) AS i")  # 99 rows into parted_low, 51 into parted_high

    listener.wait_for({event(PARTED, "INSERT", code="alpha"): 50, event(PARTED, "INSERT", code="beta"): 50,
                       event(PARTED, "INSERT", code="other"): 50})
    assert db.execute("SELECT count(*) FROM parted_low")[0][0] == 99


def test_truncate_sends_count_1_without_data(db, listener):
    db.execute("INSERT INTO three (code) SELECT 'alpha' FROM generate_series(1, 10)")
    db.execute("TRUNCATE three")
    db.execute("TRUNCATE three")  # an empty table: still one TRUNCATE event
    db.execute("TRUNCATE one, three")  # one has no truncate event configured

    listener.wait_for({three("TRUNCATE"): 3})
    assert [(p["table"], p["action"], p["count"], "data" in p) for p in listener.payloads] == \
        [(THREE, "TRUNCATE", 1, False)] * 3


def test_a_statement_touching_0_rows_sends_nothing(db, listener):
    db.execute("INSERT INTO three (code) VALUES ('alpha')")
    db.execute("INSERT INTO one (code) SELECT 'alpha' WHERE false")
    db.execute("INSERT INTO two (note) SELECT 'x' WHERE false")
    db.execute("UPDATE three SET code = 'beta' WHERE false")
    db.execute("DELETE FROM three WHERE code = 'nothing'")
    db.execute("DELETE FROM two")
    db.execute("INSERT INTO parted (id, code) SELECT 1, 'alpha' WHERE false")

    listener.wait_for({})
    assert listener.payloads == []


def test_an_unconfigured_event_on_a_monitored_table_sends_nothing(db, listener):
    db.execute("INSERT INTO three (code) VALUES ('alpha')")  # three: update, delete, truncate only
    db.execute("INSERT INTO one (code) VALUES ('alpha')")
    listener.wait_for({one("alpha"): 1})
    listener.reset()

    db.execute("UPDATE one SET code = 'beta'")  # one: insert only
    db.execute("DELETE FROM one")
    db.execute("TRUNCATE two")  # two: insert, delete only
    db.execute("UPDATE two SET note = 'y'")

    listener.wait_for({})
    with db.connect() as conn:
        triggers = pgne_triggers(conn)
    assert {t[2] for t in triggers if t[1] == "one"} == {"pgne_insert"}
    assert {t[2] for t in triggers if t[1] == "two"} == {"pgne_insert", "pgne_delete"}


def test_simple_event_notification_counts_without_data(db, listener):
    db.execute("INSERT INTO two (note) SELECT 'n' || i FROM generate_series(1, 7) AS i")
    db.execute("INSERT INTO two (note) VALUES ('single')")
    db.execute("DELETE FROM two WHERE note IN ('n1', 'n2', 'n3')")

    listener.wait_for({event(TWO, "INSERT"): 8, event(TWO, "DELETE"): 3})
    assert all("data" not in p for p in listener.payloads), listener.payloads
    assert [p["count"] for p in listener.payloads] == [7, 1, 3]


def test_a_broken_trigger_never_fails_the_application_statement(db, listener):
    """A label column renamed after apply: the INSERT succeeds, a WARNING says why nothing was
    counted, and nothing is counted."""
    db.execute("ALTER TABLE one RENAME COLUMN code TO code_renamed")
    conn = db.connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO one (code_renamed) VALUES ('alpha'), ('beta') RETURNING id")
        assert len(cur.fetchall()) == 2
    conn.commit()

    warnings = [n for n in conn.notices if n.startswith("WARNING:")]
    assert len(warnings) == 1, conn.notices
    assert "pgne: INSERT on public.one not counted" in warnings[0]
    assert "code" in warnings[0] and "42703" in warnings[0]  # undefined_column
    assert db.execute("SELECT count(*) FROM one")[0][0] == 2
    listener.wait_for({})


def test_pg_notify_exporters_per_row_trigger_counts_a_1000_row_insert_as_1(pg_database, listener_factory):
    """Why pgne exists: pg_notify_exporter's FOR EACH ROW trigger sends identical payloads
    (table, action, now()) in one transaction, and PostgreSQL delivers them once."""
    pg_database.execute("""
        CREATE TABLE legacy (id int);
        CREATE FUNCTION legacy_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_notify('pg_notify_exporter', json_build_object(
            'table', TG_TABLE_NAME, 'action', TG_OP, 'timestamp', now())::text);
          RETURN NULL;
        END $$;
        CREATE TRIGGER legacy_insert AFTER INSERT ON legacy FOR EACH ROW EXECUTE FUNCTION legacy_notify();
    """)
    listener = listener_factory(pg_database)

    pg_database.execute("INSERT INTO legacy SELECT i FROM generate_series(1, 1000) AS i")

    listener.wait_for({event("legacy", "INSERT"): 1})
    assert len(listener.payloads) == 1
    assert pg_database.execute("SELECT count(*) FROM legacy")[0][0] == 1000


def test_payloads_are_valid_v1_json_with_a_qualified_table_and_never_identical(conn, listener):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO one (code) VALUES ('alpha'), ('zeta')")
        cur.execute("INSERT INTO three (code) VALUES ('beta')")
        cur.execute("UPDATE three SET code = 'gamma'")
    conn.commit()

    listener.wait_for({one("alpha"): 1, one("other"): 1, three("UPDATE", "gamma"): 1})
    for payload in listener.payloads:
        assert set(payload) == {"table", "action", "data", "count", "seq"}, payload
        assert isinstance(payload["count"], int) and payload["count"] > 0
    # `seq` grows with the statements of the transaction; the groups of one statement differ in labels
    first, second, third = sorted(p["seq"] for p in listener.payloads)
    assert first == second < third, (first, second, third)
    assert len({json.dumps(p, sort_keys=True) for p in listener.payloads}) == 3


def test_payloads_have_json_build_objects_layout_byte_for_byte(conn, listener):
    """The triggers concatenate the payload text themselves (cheaper than json_build_object per
    call); the worker's memo keys on that exact layout, so it must not drift."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO pairs (code, level) VALUES ('alpha', 1), ('alpha', 1)")
        cur.execute("INSERT INTO two (note) VALUES ('x')")
    conn.commit()
    listener.wait_for({event(PAIRS, "INSERT", code="alpha", level="1"): 2, event(TWO, "INSERT"): 1})
    seq1, seq2 = (p["seq"] for p in listener.payloads)
    assert listener.raw_payloads == [
        '{"table" : "public.pairs", "action" : "INSERT", "data" : {"code" : "alpha", "level" : "1"}, "count" : 2, '
        f'"seq" : {seq1}}}',
        f'{{"table" : "public.two", "action" : "INSERT", "count" : 1, "seq" : {seq2}}}',
    ]
    with conn.cursor() as cur:
        cur.execute("SELECT json_build_object('table', 'public.two', 'action', 'INSERT', 'count', 1, 'seq', %s)::text",
                    (seq2,))
        assert cur.fetchone()[0] == listener.raw_payloads[1]


CASE_INSENSITIVE_COLLATION = "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"


def case_insensitive_code_column(db) -> str:
    """The type of a case-insensitive `code` column that this server can make.

    A nondeterministic ICU collation where the server has ICU. A build without ICU (the embedded
    PostgreSQL 18) cannot make any nondeterministic collation (every other provider compares
    byte for byte when strings are equal), which is asserted; the column is then citext, the
    case-insensitive type that both builds ship."""
    try:
        db.execute(CASE_INSENSITIVE_COLLATION)
        return "text COLLATE ci"
    except psycopg2.errors.FeatureNotSupported as exc:
        assert str(exc).startswith("ICU is not supported in this build"), exc
    for provider, locale in (("libc", "C"), ("builtin", "C")):
        with pytest.raises(psycopg2.errors.FeatureNotSupported,
                           match="^nondeterministic collations not supported with this provider"):
            db.execute(f"CREATE COLLATION ci_{provider} (provider = {provider}, locale = '{locale}', "
                       "deterministic = false)")
    db.execute("CREATE EXTENSION citext")
    return "citext"


@pytest.mark.parametrize("column_kind", ["case-insensitive collation", "citext"])
def test_a_case_insensitive_column_lets_no_raw_value_out(pg_database, write_config, listener_factory,
                                                        column_kind):
    """Whitelists compare byte for byte: where the column's type or collation says 'ALPHA' =
    'alpha', 'ALPHA' is still not on the whitelist, so it must be sent as `other`, never as itself."""
    if column_kind == "citext":
        pg_database.execute("CREATE EXTENSION citext")
        column_type = "citext"
    else:
        column_type = case_insensitive_code_column(pg_database)
    pg_database.execute(f"CREATE TABLE one (id serial PRIMARY KEY, code {column_type})")
    assert apply_in_process(write_config(pg_database, MONITORS.split("- table: two")[0])).code == 0
    listener = listener_factory(pg_database)
    pg_database.execute("INSERT INTO one (code) VALUES ('alpha'), ('ALPHA'), ('Alpha'), ('beta')")
    assert pg_database.execute("SELECT count(*) FROM one WHERE code = 'alpha'") == [(3,)]  # the column's own view
    listener.wait_for({one("alpha"): 1, one("other"): 2, one("beta"): 1})
    assert not any("ALPHA" in raw or "Alpha" in raw for raw in listener.raw_payloads), listener.raw_payloads


def test_the_application_role_needs_no_rights_on_schema_pgne(db, listener):
    """An application role without any grant on schema pgne can still write: the trigger
    function runs (pg_notify, a setting) with that role's rights and needs none."""
    role = f"app_{db.name}"
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        db.execute(f'GRANT INSERT, SELECT ON one TO "{role}"; GRANT USAGE ON SEQUENCE one_id_seq TO "{role}"')
        conn = db.connect(user=role)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        conn.commit()
        assert not [n for n in conn.notices if n.startswith("WARNING:")], conn.notices
        listener.wait_for({one("alpha"): 1})
    finally:
        db.close_connections()
        db.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "SERIALIZABLE"])
def test_concurrent_writers_are_each_counted_exactly(db, listener, isolation):
    conns = [db.connect() for _ in range(4)]
    for c in conns:
        c.set_session(isolation_level=isolation)
    for round_ in range(5):
        for i, c in enumerate(conns):
            with c.cursor() as cur:
                cur.execute("INSERT INTO one (code) VALUES (%s)", (WHITELIST[(i + round_) % 3],))
                cur.execute("INSERT INTO one (code) VALUES (%s)", (WHITELIST[(i + round_) % 3],))
        for c in conns:
            c.commit()
    # 4 connections x 5 rounds x 2 rows = 40 rows, codes cycling alpha, beta, gamma
    expected: dict = {}
    for round_ in range(5):
        for i in range(4):
            key = one(WHITELIST[(i + round_) % 3])
            expected[key] = expected.get(key, 0) + 2
    listener.wait_for(expected)


def kv(action: str, code: str):
    return event(KV, action, code=code)


def test_upsert_merge_and_writable_ctes_count_each_row_once_under_its_own_event(db, listener):
    db.execute("INSERT INTO kv VALUES (1, 'alpha'), (2, 'beta'), (3, NULL)")
    listener.wait_for({kv("INSERT", "alpha"): 1, kv("INSERT", "beta"): 1, kv("INSERT", "other"): 1})
    listener.reset()

    # ON CONFLICT DO UPDATE: inserted rows are INSERTs, conflicting rows UPDATEs
    db.execute("INSERT INTO kv VALUES (1, 'beta'), (4, 'alpha'), (5, 'alpha') "
               "ON CONFLICT (k) DO UPDATE SET code = excluded.code")
    db.execute("INSERT INTO kv VALUES (1, 'alpha'), (6, 'beta') ON CONFLICT DO NOTHING")
    listener.wait_for({kv("UPDATE", "beta"): 1, kv("INSERT", "alpha"): 2, kv("INSERT", "beta"): 1})
    listener.reset()

    # MERGE (PostgreSQL 15): each action counted under its event
    db.execute("MERGE INTO kv USING (VALUES (1, 'alpha'), (2, 'x'), (7, 'beta'), (8, NULL)) AS s (k, code) "
               "ON kv.k = s.k WHEN MATCHED AND s.k = 2 THEN DELETE WHEN MATCHED THEN UPDATE SET code = s.code "
               "WHEN NOT MATCHED THEN INSERT VALUES (s.k, s.code)")
    listener.wait_for({kv("DELETE", "beta"): 1, kv("UPDATE", "alpha"): 1, kv("INSERT", "beta"): 1,
                       kv("INSERT", "other"): 1})
    listener.reset()

    # two modifications of one table in one statement: one transition table, counted once
    db.execute("WITH a AS (INSERT INTO kv VALUES (10, 'alpha') RETURNING k) "
               "INSERT INTO kv SELECT k + 1, 'alpha' FROM a")
    db.execute("WITH a AS (DELETE FROM kv WHERE k = 10 RETURNING k) DELETE FROM kv WHERE k = 11")
    listener.wait_for({kv("INSERT", "alpha"): 2, kv("DELETE", "alpha"): 2})


def test_statements_inside_a_function_with_a_set_clause_are_not_folded(db, listener):
    """The per-transaction sequence survives the exit of an application function whose SET
    clause restores its settings (only the settings it names are restored)."""
    db.execute("CREATE FUNCTION app_two_rows() RETURNS void LANGUAGE plpgsql SET search_path = public "
               "AS $$ BEGIN INSERT INTO one (code) VALUES ('alpha'); INSERT INTO one (code) VALUES ('alpha'); END $$")
    conn = db.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT app_two_rows()")
        cur.execute("SELECT app_two_rows()")
        cur.execute("INSERT INTO one (code) VALUES ('alpha')")
        cur.execute("DO $$ BEGIN INSERT INTO one (code) VALUES ('alpha'); "
                    "INSERT INTO one (code) VALUES ('alpha'); END $$")
    conn.commit()
    listener.wait_for({one("alpha"): 7})


def test_a_failed_application_statement_sends_nothing(db, listener):
    db.execute("ALTER TABLE one ADD CONSTRAINT no_delta CHECK (code IS DISTINCT FROM 'delta')")
    with pytest.raises(psycopg2.errors.CheckViolation):
        db.execute("INSERT INTO one (code) VALUES ('alpha'), ('delta')")
    listener.wait_for({})


# -- delivery: outbox -----------------------------------------------------------------------------


def outbox_totals(db) -> dict:
    """pgne.event_log summed like the Listener sums notifications."""
    rows = db.execute("SELECT table_name, operation, labels, sum(n) FROM pgne.event_log GROUP BY 1, 2, 3")
    return {event(table, operation, **labels): int(n) for table, operation, labels, n in rows}


def test_outbox_triggers_log_every_committed_row_exactly_once(pg_database, write_config, listener_factory):
    db = pg_database
    db.execute(TABLES)
    result = apply_in_process(write_config(db, MONITORS, delivery="outbox"))
    assert result.code == 0, result.stdout
    listener = listener_factory(db)
    role = f"app_{db.name}"
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        db.execute(f'GRANT INSERT ON one, two TO "{role}"; GRANT USAGE ON SEQUENCE one_id_seq, two_id_seq TO "{role}"')
        db.execute("INSERT INTO one (code) SELECT (ARRAY['alpha', 'beta', 'gamma', 'delta', NULL])[1 + i % 5] "
                   "FROM generate_series(1, 10000) AS i")
        conn = db.connect()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO one (code) VALUES ('alpha')")
            cur.execute("INSERT INTO one (code) VALUES ('alpha')")
            cur.execute("SAVEPOINT s")
            cur.execute("INSERT INTO one (code) VALUES ('beta')")
            cur.execute("ROLLBACK TO SAVEPOINT s")
            cur.execute("DELETE FROM two WHERE false")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO one (code) SELECT 'gamma' FROM generate_series(1, 5)")
        conn.rollback()
        app = db.connect(user=role)  # no rights on schema pgne: the functions are SECURITY DEFINER
        with app.cursor() as cur:
            cur.execute("INSERT INTO two (note) VALUES ('a'), ('b')")
            cur.execute("INSERT INTO one (code) VALUES ('beta')")
        app.commit()
        assert not app.notices, app.notices
        db.execute("INSERT INTO three (code) VALUES ('alpha')")
        db.execute("TRUNCATE three")

        assert outbox_totals(db) == {one("alpha"): 2002, one("beta"): 2001, one("gamma"): 2000, one("other"): 4000,
                                     event(TWO, "INSERT"): 2, three("TRUNCATE"): 1}
        listener.wait_for({})  # nothing goes through NOTIFY in outbox mode
    finally:
        db.close_connections()
        db.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
