"""What pgne's triggers may never do to the application's database, tried against real PostgreSQL.

- No transaction ID beyond the application's own: a subtransaction is assigned an XID only when
  it writes, and more than 64 of them overflow the backend's subxid cache (every snapshot in the
  cluster is then "suboverflowed"). 1,000 monitored statements in one transaction, every event,
  both delivery modes: one XID, counted exactly. Measured in a cluster of the test's own, where
  nobody else assigns XIDs.
- Two-phase commit in outbox mode: `COMMIT PREPARED` is counted, `ROLLBACK PREPARED` never.
- Label columns named like any identifier the rendered templates use: counted exactly.
- The notify trigger's per-transaction `seq` survives whatever the application does with its
  settings (RESET ALL, SET / SET LOCAL / RESET pgne.seq): no payload repeats, none is folded.
- A trigger broken under its feet (label column renamed, dropped or retyped; pgne.event_log
  dropped or not writable) never fails the application's statement: the outbox INSERT now runs
  outside the EXCEPTION block, so what it needs is checked inside.
"""
from __future__ import annotations

import re
import uuid
from collections import Counter

import pytest
from psycopg2 import sql
from support.clusters import start_cluster
from support.configs import RELIABILITY_TAG, config_text, database_entry
from support.databases import Database, create_database, query, throwaway_database
from support.exporter import PgneProcess, apply_in_process
from support.listener import Listener, event
from support.outbox import wait_drained

from pgne.config import parse_config
from pgne.model import BUILTIN_LABELS, EVENTS, LABEL_NAME_RE
from pgne.render import Renderer

MODES = ("notify", "outbox")
STATEMENTS = 1000


def apply(tmp_path, db, monitors: list[dict], mode: str, name: str = "events_config.yml", **options):
    path = tmp_path / name
    path.write_text(config_text(database_entry(db, monitors, perform_setup=False, delivery=mode,
                                               **{"tag": RELIABILITY_TAG, **options})))
    result = apply_in_process(path)
    assert result.code == 0, result.stdout
    return path


def warnings_of(conn) -> list[str]:
    return [n for n in conn.notices if "WARNING" in n]


def outbox_counts(db, tables=None) -> Counter:
    """pgne.event_log summed like support.listener.Listener sums notifications."""
    counts: Counter = Counter()
    for table, operation, labels, n in query(db, "SELECT table_name, operation, labels, sum(n) FROM pgne.event_log "
                                                 "GROUP BY 1, 2, 3"):
        if tables is None or table in tables:
            counts[event(table, operation, **labels)] += int(n)
    return counts


# -- no XID beyond the application's own ----------------------------------------------------------

@pytest.fixture(scope="module")
def quiet_cluster():
    """A cluster where nothing but the test assigns XIDs (no autovacuum, no other tests)."""
    with start_cluster(settings={"autovacuum": "off"}) as cluster:
        yield cluster


XID_MONITORS = [
    {"table": "one", "enabled": True, "function": "notification_with_payload",
     "columns_to_label": [{"code": ["alpha", "beta"]}], "events": ["insert", "update", "delete", "truncate"]},
    {"table": "two", "enabled": True, "function": "simple_event_notification",
     "events": ["insert", "update", "delete", "truncate"]},
]


def thousand_statements() -> tuple[list[str], Counter]:
    """1,000 single-row statements on `one` and `two`, every event, and the counts they make."""
    codes = ("alpha", "beta", "zeta")
    statements, expected = [], Counter()
    for i in range(300):
        statements.append(f"INSERT INTO one VALUES ({i}, '{codes[i % 3]}')")
        expected[event("public.one", "INSERT", code=codes[i % 3].replace("zeta", "other"))] += 1
    for i in range(200):
        statements.append(f"INSERT INTO two VALUES ({i})")
        expected[event("public.two", "INSERT")] += 1
    for i in range(200):  # one -> the next code; the labels come from the new rows
        statements.append(f"UPDATE one SET code = '{codes[(i + 1) % 3]}' WHERE id = {i}")
        expected[event("public.one", "UPDATE", code=codes[(i + 1) % 3].replace("zeta", "other"))] += 1
    for i in range(150):
        statements.append(f"DELETE FROM one WHERE id = {i}")
        code = codes[(i + 1) % 3]  # as updated
        expected[event("public.one", "DELETE", code=code.replace("zeta", "other"))] += 1
    for i in range(149):
        statements.append(f"UPDATE two SET id = id + 1000 WHERE id = {i}" if i % 2
                          else f"DELETE FROM two WHERE id = {i}")
        expected[event("public.two", "UPDATE" if i % 2 else "DELETE")] += 1
    statements.append("TRUNCATE two")
    expected[event("public.two", "TRUNCATE")] += 1
    assert len(statements) == STATEMENTS and sum(expected.values()) == STATEMENTS
    return statements, expected


def next_xid(db) -> int:
    """Assigns one XID (its own transaction's) and returns it."""
    return int(query(db, "SELECT pg_current_xact_id()::text")[0][0])


def backend_subxact(db, pid: int) -> tuple[int, bool] | None:
    """PostgreSQL 16+: (subxact_count, subxact_overflowed) of the backend `pid`; None before 16."""
    if int(query(db, "SHOW server_version_num")[0][0]) < 160000:
        return None
    [row] = query(db, "SELECT s.subxact_count, s.subxact_overflowed FROM pg_stat_get_backend_idset() AS b (id), "
                      "pg_stat_get_backend_subxact(b.id) AS s WHERE pg_stat_get_backend_pid(b.id) = %s", (pid,))
    return row


@pytest.mark.parametrize("mode", MODES)
def test_1000_monitored_statements_in_one_transaction_use_one_xid_and_count_exactly(quiet_cluster, tmp_path, mode):
    db = create_database(quiet_cluster)
    query(db, "CREATE TABLE one (id int PRIMARY KEY, code text); CREATE TABLE two (id int PRIMARY KEY); SELECT 1")
    apply(tmp_path, db, XID_MONITORS, mode)
    listener = Listener(db.dsn) if mode == "notify" else None
    statements, expected = thousand_statements()
    app = db.connect(autocommit=False)
    try:
        before = next_xid(db)
        with app.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            cur.execute("SELECT pg_current_xact_id()::text, pg_backend_pid()")
            own_xid, pid = cur.fetchone()
            subxact = backend_subxact(db, pid)  # from another session, while the transaction is open
            assert subxact in (None, (0, False)), subxact
            if mode == "outbox":  # every row pgne wrote carries the application's XID, not a subtransaction's
                cur.execute("SELECT xmin::text, sum(n) FROM pgne.event_log GROUP BY 1")
                assert cur.fetchall() == [(str(int(own_xid) % 2**32), STATEMENTS)]
        app.commit()
        assert warnings_of(app) == []
        after = next_xid(db)
        # XIDs assigned between the two: the application's transaction and nothing else
        assert (int(own_xid) - before, after - before) == (1, 2)
        if mode == "notify":
            assert listener.wait_for(expected) == expected
            assert len(listener.payloads) == STATEMENTS
        else:
            assert outbox_counts(db) == expected
    finally:
        app.close()
        if listener:
            listener.close()


def test_outbox_counts_commit_prepared_and_never_rollback_prepared(tmp_path):
    """Two-phase commit: the outbox trigger writes in the application's transaction, so the rows
    become visible to the drain exactly when COMMIT PREPARED makes the transaction's rows visible."""
    cluster = start_cluster(settings={"max_prepared_transactions": "4", "autovacuum": "off"})
    try:
        db = create_database(cluster)
        query(db, "CREATE TABLE one (id serial PRIMARY KEY, code text); SELECT 1")
        monitors = XID_MONITORS[:1]
        path = apply(tmp_path, db, monitors, "outbox", drain_interval=0.1)
        proc = PgneProcess(path, tmp_path / "pgne").start()
        conn = db.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                before = next_xid(db)
                cur.execute("BEGIN")
                for code in ("alpha", "alpha", "beta", "zeta"):
                    cur.execute("INSERT INTO one (code) VALUES (%s)", (code,))
                cur.execute("PREPARE TRANSACTION 'pgne_commit'")
                cur.execute("BEGIN")
                cur.execute("INSERT INTO one (code) SELECT 'alpha' FROM generate_series(1, 5)")
                cur.execute("DELETE FROM one")
                cur.execute("PREPARE TRANSACTION 'pgne_rollback'")
                assert next_xid(db) - before == 3  # one XID per prepared transaction
                # prepared, not committed: nothing to drain yet
                wait_drained(proc, db, {("INSERT", "one", "alpha"): 0})
                cur.execute("COMMIT PREPARED 'pgne_commit'")
                cur.execute("ROLLBACK PREPARED 'pgne_rollback'")
            assert warnings_of(conn) == []
            wait_drained(proc, db, {("INSERT", "one", "alpha"): 2, ("INSERT", "one", "beta"): 1,
                                    ("INSERT", "one", "other"): 1})
            assert query(db, "SELECT count(*) FROM one")[0][0] == 4
        finally:
            conn.close()
            proc.stop()
    finally:
        cluster.destroy()


# -- label columns named like the templates' own identifiers ---------------------------------------

def template_identifiers() -> list[str]:
    """Every word of the rendered trigger functions (all built-in templates, both modes, every
    event) that is a valid label column: what a label column could collide with."""
    renderer = Renderer()
    every_event = [e.lower() for e in EVENTS]
    monitors = [{"table": "t1", "enabled": True, "function": "notification_with_payload",
                 "columns_to_label": [{"code": ["alpha"]}], "events": every_event},
                {"table": "t2", "enabled": True, "function": "simple_event_notification", "events": every_event}]
    db = Database(name="d", host="localhost", port=5432, user="u")
    words: set[str] = set()
    for mode in MODES:
        config = parse_config("events_config.yml",
                              config_text(database_entry(db, monitors, delivery=mode, tag=RELIABILITY_TAG)), renderer)
        [database] = config.databases
        for monitor in database.enabled_monitors:
            rendered = renderer.render_monitor(database, monitor).create_function
            rendered = re.sub(r"--[^\n]*|'(?:[^']|'')*'", " ", rendered)  # comments and string literals
            words.update(w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rendered))
    return sorted(w for w in words if LABEL_NAME_RE.match(w) and not w.startswith("__") and w not in BUILTIN_LABELS)


IDENTIFIERS = template_identifiers()


@pytest.fixture(scope="module", params=MODES)
def named_like_templates(request, pg_dsn, tmp_path_factory):
    """One database per mode: for each identifier, a table `p<i>` with a label column of that
    name (notification_with_payload) and a table `s<i>` with a column of that name
    (simple_event_notification); every event; one apply."""
    mode = request.param
    with throwaway_database(pg_dsn) as db:
        monitors, ddl = [], []
        for i, name in enumerate(IDENTIFIERS):
            column = sql.Identifier(name).as_string(db.connect())
            ddl.append(f"CREATE TABLE p{i} (id int, {column} text); CREATE TABLE s{i} (id int, {column} text);")
            monitors.append({"table": f"p{i}", "enabled": True, "function": "notification_with_payload",
                             "columns_to_label": [{name: ["a"]}], "events": [e.lower() for e in EVENTS]})
            monitors.append({"table": f"s{i}", "enabled": True, "function": "simple_event_notification",
                             "events": [e.lower() for e in EVENTS]})
        query(db, "".join(ddl) + "SELECT 1")
        apply(tmp_path_factory.mktemp(f"named-{mode}"), db, monitors, mode)
        yield mode, db


@pytest.mark.parametrize("index", range(len(IDENTIFIERS)), ids=IDENTIFIERS)
def test_a_label_column_named_like_any_template_identifier_is_counted_exactly(named_like_templates, index):
    mode, db = named_like_templates
    name = IDENTIFIERS[index]
    p, s = f"p{index}", f"s{index}"
    listener = Listener(db.dsn) if mode == "notify" else None
    conn = db.connect(autocommit=False)
    column = sql.Identifier(name).as_string(conn)
    try:
        with conn.cursor() as cur:
            for table in (p, s):
                cur.execute(f"INSERT INTO {table} (id, {column}) VALUES (1, 'a'), (2, 'b'), (3, NULL)")
                cur.execute(f"INSERT INTO {table} (id, {column}) VALUES (4, 'a')")
                cur.execute(f"INSERT INTO {table} (id, {column}) VALUES (4, 'a')")  # the same statement again
                cur.execute(f"UPDATE {table} SET {column} = 'a' WHERE id <= 2")
                cur.execute(f"DELETE FROM {table} WHERE id = 4")
                cur.execute(f"TRUNCATE {table}")
        conn.commit()
        assert warnings_of(conn) == []
        expected = Counter({
            event(f"public.{p}", "INSERT", **{name: "a"}): 3, event(f"public.{p}", "INSERT", **{name: "other"}): 2,
            event(f"public.{p}", "UPDATE", **{name: "a"}): 2, event(f"public.{p}", "DELETE", **{name: "a"}): 2,
            event(f"public.{p}", "TRUNCATE"): 1,
            event(f"public.{s}", "INSERT"): 5, event(f"public.{s}", "UPDATE"): 2, event(f"public.{s}", "DELETE"): 2,
            event(f"public.{s}", "TRUNCATE"): 1,
        })
        if listener:
            assert listener.wait_for(expected) == expected
        else:
            assert outbox_counts(db, {f"public.{p}", f"public.{s}"}) == expected
    finally:
        conn.close()
        if listener:
            listener.close()


# -- the notify trigger's seq, whatever the application does with its settings ---------------------

SETTING_CHANGES = [
    "RESET ALL",
    "RESET pgne.seq",
    "SET pgne.seq = '0'",
    "SET LOCAL pgne.seq = '1'",
    "SET pgne.seq TO DEFAULT",
    "SELECT set_config('pgne.seq', '', true)",
]


@pytest.mark.parametrize("change", SETTING_CHANGES)
def test_identical_statements_around_a_settings_change_are_each_counted(pg_database, tmp_path, change):
    db = pg_database
    db.execute("CREATE TABLE one (id int, code text); CREATE TABLE two (id int)")
    apply(tmp_path, db, [{**m, "events": ["insert"]} for m in XID_MONITORS], "notify")
    with Listener(db.dsn) as listener:
        conn = db.connect()
        with conn.cursor() as cur:
            for _ in range(2):  # the change before the first statement, too
                cur.execute(change)
                cur.execute("INSERT INTO one VALUES (1, 'alpha')")
                cur.execute("INSERT INTO two VALUES (1)")
                cur.execute(change)
                cur.execute("INSERT INTO one VALUES (1, 'alpha')")
                cur.execute("INSERT INTO two VALUES (1)")
        conn.commit()
        assert warnings_of(conn) == []
        listener.wait_for({event("public.one", "INSERT", code="alpha"): 4, event("public.two", "INSERT"): 4})
        seqs = [p["seq"] for p in listener.payloads]
        assert len(set(seqs)) == 8 and all(type(s) is int and 0 < s < 2**53 for s in seqs), seqs


# -- a broken trigger never fails the application's statement --------------------------------------

BREAKAGES = {
    "renamed label column": ("ALTER TABLE one RENAME COLUMN code TO code_renamed", "42703"),
    "dropped label column": ("ALTER TABLE one DROP COLUMN code", "42703"),
    "label column of another type": ("ALTER TABLE one ALTER COLUMN code TYPE int USING 0", None),
    "no pgne.event_log": ("DROP TABLE pgne.event_log", "42P01"),
    "no INSERT right on pgne.event_log": ("REVOKE INSERT ON pgne.event_log FROM CURRENT_USER", "42501"),
}


@pytest.fixture
def admin_role(pg_database):
    """A role that is not a superuser (a superuser bypasses every privilege check), owning the
    application's tables and pgne's objects, as `pgne apply` run by an admin would leave them."""
    role = f"pgne_admin_{uuid.uuid4().hex[:8]}"
    pg_database.execute(f'CREATE ROLE "{role}" LOGIN; GRANT CREATE ON DATABASE "{pg_database.name}" TO "{role}"; '
                        f'GRANT CREATE ON SCHEMA public TO "{role}"')
    try:
        yield role
    finally:
        pg_database.close_connections()
        pg_database.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


@pytest.mark.parametrize("mode, breakage", [(mode, breakage) for mode in MODES for breakage in BREAKAGES
                                             if mode == "outbox" or "event_log" not in BREAKAGES[breakage][0]])
def test_a_broken_trigger_never_fails_the_application_statement(pg_database, admin_role, tmp_path, mode, breakage):
    """The trigger installed, then the table or pgne's objects changed under it: every statement
    succeeds, each says why it was not counted in a WARNING, and what is still countable is."""
    change, sqlstate = BREAKAGES[breakage]
    db = pg_database
    conn = db.connect(user=admin_role)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE one (id int, code text); CREATE TABLE two (id int)")
    apply(tmp_path, db, XID_MONITORS, mode, username=admin_role)
    with conn.cursor() as cur:
        cur.execute(change)
    with Listener(db.dsn) as listener:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("INSERT INTO one (id) VALUES (1), (2)")
            cur.execute("INSERT INTO two VALUES (1), (2), (3)")
            cur.execute("UPDATE one SET id = id + 10")
            cur.execute("DELETE FROM one")
            cur.execute("TRUNCATE two")
        conn.commit()
        warnings = warnings_of(conn)
        assert db.execute("SELECT count(*) FROM one")[0][0] == 0
        label_broken = "COLUMN" in change
        if label_broken and "TYPE" in change:  # any type has a text form: still counted
            label_broken = False
        expected = Counter({event("public.two", "INSERT"): 3, event("public.two", "TRUNCATE"): 1})
        if not label_broken:
            expected.update({event("public.one", "INSERT", code="other"): 2,
                             event("public.one", "UPDATE", code="other"): 2,
                             event("public.one", "DELETE", code="other"): 2})
        if sqlstate is None:
            assert warnings == []
        elif label_broken:  # only the labelled table's row statements fail
            assert len(warnings) == 3 and all(f"(SQLSTATE {sqlstate})" in w for w in warnings), warnings
            assert [w.split("pgne: ")[1].split(" not counted")[0] for w in warnings] == [
                "INSERT on public.one", "UPDATE on public.one", "DELETE on public.one"]
        else:  # pgne.event_log unusable: nothing can be counted
            assert len(warnings) == 5 and all(f"(SQLSTATE {sqlstate})" in w for w in warnings), warnings
            expected = Counter()
        if mode == "notify":
            assert listener.wait_for(expected) == expected
        elif "event_log" not in change:
            assert outbox_counts(db) == expected
        else:
            listener.wait_for({})
