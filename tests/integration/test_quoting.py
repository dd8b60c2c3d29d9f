"""No config value can inject SQL: hostile names and values are quoted, applied, and counted
under exactly their own label values (SPEC.md, "SQL": every identifier and literal is quoted;
function bodies use a dollar-quote tag that does not occur in them)."""
from __future__ import annotations

import pytest
from support.databases import pgne_triggers
from support.exporter import apply_in_process
from support.listener import event
from support.processes import run_pgne

SCHEMA = "my schema"
TABLE = 'we"ird; name'
CHANNEL = 'chan"nel'
# A second table whose name holds a dollar-quote tag, a comment opener and upper case.
TABLE2 = "Mixed $pgne$ -- /* $$"
INJECTION = "x'); DROP TABLE victim; --"
VALUES = [
    "o'neil",
    INJECTION,
    "$pgne$",
    "$$); DROP TABLE victim; $$",
    "back\\slash",
    "line\nbreak",
    '"double"',
    "ünïcødé",
]


@pytest.fixture
def hostile(pg_database, write_config):
    pg_database.execute("""
        CREATE SCHEMA "my schema";
        CREATE TABLE "my schema"."we""ird; name" (id serial PRIMARY KEY, code text);
        CREATE TABLE "my schema"."Mixed $pgne$ -- /* $$" (id serial PRIMARY KEY, code text);
        CREATE TABLE victim (id int);
        INSERT INTO victim VALUES (1);
    """)
    monitors = [
        {"table": f"{SCHEMA}.{TABLE}", "enabled": True, "function": "notification_with_payload",
         "columns_to_label": [{"code": VALUES}], "events": ["insert", "update", "delete", "truncate"]},
        {"table": f"{SCHEMA}.{TABLE2}", "enabled": True, "function": "notification_with_payload",
         "columns_to_label": [{"code": [INJECTION]}], "events": ["insert"]},
    ]
    path = write_config(pg_database, monitors, channel=CHANNEL, tag="t'ag\n-- $$")
    return pg_database, path


def victim_rows(db) -> list[tuple]:
    return db.execute("SELECT id FROM victim")


def test_hostile_names_and_values_apply_without_injection_and_count_exactly(hostile, listener_factory):
    db, path = hostile
    proc = run_pgne("apply", "-c", path)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stdout
    assert proc.stdout.startswith(f"{db.host}:{db.port}/{db.name}: applied: ")
    assert victim_rows(db) == [(1,)]
    with db.connect() as conn:
        triggers = pgne_triggers(conn)
    events = ("insert", "update", "delete", "truncate")
    assert triggers == {(SCHEMA, TABLE, f"pgne_{e}") for e in events} | {(SCHEMA, TABLE2, "pgne_insert")}
    status = run_pgne("status", "-c", path)
    assert status.returncode == 0, status.stdout
    assert apply_in_process(path).lines == [f"{db.host}:{db.port}/{db.name}: up to date"]

    listener = listener_factory(db, CHANNEL)
    conn = db.connect()
    with conn.cursor() as cur:
        for value in VALUES:
            cur.execute('INSERT INTO "my schema"."we""ird; name" (code) VALUES (%s)', (value,))
        cur.execute('INSERT INTO "my schema"."we""ird; name" (code) VALUES (%s), (%s), (NULL)',
                    ("O'Neil", "x');"))
        cur.execute('INSERT INTO "my schema"."Mixed $pgne$ -- /* $$" (code) VALUES (%s), (%s)', (INJECTION, "o'neil"))
    conn.commit()

    weird, mixed = f"{SCHEMA}.{TABLE}", f"{SCHEMA}.{TABLE2}"
    expected = {event(weird, "INSERT", code=value): 1 for value in VALUES}
    expected[event(weird, "INSERT", code="other")] = 3
    expected[event(mixed, "INSERT", code=INJECTION)] = 1
    expected[event(mixed, "INSERT", code="other")] = 1
    listener.wait_for(expected)

    with conn.cursor() as cur:
        cur.execute('UPDATE "my schema"."we""ird; name" SET code = %s WHERE code = %s', (INJECTION, "o'neil"))
        cur.execute('DELETE FROM "my schema"."we""ird; name" WHERE code = %s', (INJECTION,))
        cur.execute('TRUNCATE "my schema"."we""ird; name"')
    conn.commit()
    expected[event(weird, "UPDATE", code=INJECTION)] = 1
    expected[event(weird, "DELETE", code=INJECTION)] = 2
    expected[event(weird, "TRUNCATE")] = 1
    listener.wait_for(expected)
    assert victim_rows(db) == [(1,)]


def test_render_sql_quotes_the_hostile_values(hostile):
    """What a DBA reviews: every hostile value appears only inside a quoted literal or identifier."""
    db, path = hostile
    proc = run_pgne("render-sql", "-c", path)
    assert (proc.returncode, proc.stderr) == (0, "")
    text = proc.stdout
    assert "'x''); DROP TABLE victim; --'" in text
    assert "'o''neil'" in text
    assert "E'back\\\\slash'" in text
    assert '"my schema"."we""ird; name"' in text
    assert "'chan\"nel'" in text
    # the script, run by hand as a DBA would (psql-style, one simple query), installs the same
    db.execute(text)
    assert victim_rows(db) == [(1,)]
    assert apply_in_process(path).lines == [f"{db.host}:{db.port}/{db.name}: up to date"]
