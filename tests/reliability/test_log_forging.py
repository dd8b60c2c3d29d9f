"""Names that carry newlines and other control characters cannot forge log lines, nor reach a
terminal or a log viewer raw, in any log format (issue 21 item 17): real `pgne run`s whose
database, table and label values hold a line that reads like a record of pgne's, or terminal
escapes, NEL (U+0085) and the Unicode line and paragraph separators. Every format escapes what
is not printable by one rule (pgne.logs.one_line); logfmt and JSON in JSON's spelling."""
from __future__ import annotations

import json
import re

import pytest
from psycopg2 import sql
from support.configs import RELIABILITY_TAG
from support.databases import run_sql, throwaway_database
from support.exporter import PgneProcess

from pgne.logs import one_line

FORGED = "2000-01-01 00:00:00,000 ERROR pgne[1]: forged"
# PostgreSQL's names are at most 63 bytes
TABLE = f"t\n{FORGED}\r\x1b[31m\u2028"
MISSING = f"gone\n{FORGED}"
DATABASE = f"db\n{FORGED}"
PLAIN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+\[\d+\]: .+")


def test_one_line_escapes_every_character_that_is_not_printable():
    assert one_line("plain text, é 日本") == "plain text, é 日本"
    assert one_line("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert one_line("\x00\x1b[31m\x7f\x85\u2028\u2029\U000e0001") == "\\x00\\x1b[31m\\x7f\\x85\\u2028\\u2029\\U000e0001"


@pytest.fixture
def hostile_database(pg_dsn):
    with throwaway_database(pg_dsn, name=DATABASE) as db:
        yield db


def test_control_characters_in_names_and_labels_never_forge_a_line_in_the_default_format(
        hostile_database, pg_database, write_config, tmp_path, pgne_processes):
    db = hostile_database
    run_sql(db, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, code text)").format(sql.Identifier(TABLE)))
    monitors = [{"table": TABLE, "enabled": True, "function": "notification_with_payload",
                 "columns_to_label": [{"code": [f"x\n{FORGED}"]}], "events": ["insert"]}]
    missing = [{"table": MISSING, "enabled": True, "function": "notification_with_payload", "events": ["insert"]}]
    # a setup problem holds up its whole database: the missing table is in a database of its own
    config = write_config(db, monitors, tag=RELIABILITY_TAG, perform_setup=True,
                          also=[(pg_database, missing, {"tag": RELIABILITY_TAG, "perform_setup": True})])
    proc = PgneProcess(config, tmp_path / "pgne", log_level="DEBUG")
    pgne_processes.append(proc)
    proc.start()  # both up: the trigger is in place before the INSERT
    labels = {"operation": "INSERT", "host": db.host_label, "database": db.name, "tag": RELIABILITY_TAG,
              "schema": "public", "table": TABLE, "code": f"x\n{FORGED}"}
    run_sql(db, (sql.SQL("INSERT INTO {} (code) VALUES (%s)").format(sql.Identifier(TABLE)), (f"x\n{FORGED}",)))
    proc.wait_for_value("pgne_events_total", labels, 1)  # the payload's debug line holds all of them
    assert proc.stop()[0] == 0

    lines = proc.stderr_text().splitlines()
    assert len(lines) >= 5
    assert [line for line in lines if not PLAIN_LINE.fullmatch(line)] == []
    assert [line for line in lines if FORGED in line and not line.startswith(FORGED)]  # it was logged, inside
    assert not [line for line in lines if line.startswith(FORGED)]
    text = "\n".join(lines)
    assert "t\\n" + FORGED + "\\r\\x1b[31m\\u2028" in text  # the table name, escaped visibly
    assert "gone\\n" + FORGED in text  # the missing table's setup problem
    assert "db\\n" + FORGED in text  # the database name
    assert '"code" : "x\\\\n' + FORGED in text  # the label value: JSON in the payload's repr, at DEBUG


# ESC sequences (a terminal's screen cleared, its colour changed), a C0 control, NEL, U+2028/2029:
# raw, the first drive a terminal and the others break the line in many log viewers
CONTROLS = "evil\x1b[2J\x1b[31m\x01db\u0085x\u2028y\u2029z"
LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^ "=]+)(?: |$)')


@pytest.fixture
def controls_database(pg_dsn):
    with throwaway_database(pg_dsn, name=CONTROLS) as db:
        yield db


def logfmt_fields(line: str) -> dict[str, str]:
    """One logfmt line's pairs, quoted values decoded as JSON strings (as logfmt parsers do);
    AssertionError unless the whole line is pairs."""
    pairs = LOGFMT_PAIR.findall(line)
    assert "".join(f"{key}={value} " for key, value in pairs).rstrip() == line, line
    return {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_control_characters_in_a_database_name_are_escaped_in_logfmt_and_json(
        log_format, controls_database, write_config, tmp_path, pgne_processes):
    """Before the fix logfmt wrote ESC, NEL and U+2028 raw, JSON NEL and U+2028. Now no line
    holds a character that is not printable, and each line decodes back to the very name."""
    db = controls_database
    run_sql(db, "CREATE TABLE one (id serial PRIMARY KEY)")
    monitors = [{"table": "one", "enabled": True, "function": "notification_with_payload", "events": ["insert"]}]
    config = write_config(db, monitors, tag=RELIABILITY_TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne", "--log.format", log_format)
    pgne_processes.append(proc)
    proc.start()
    assert proc.stop()[0] == 0

    raw = proc.stderr_text()
    assert sorted({repr(c) for c in raw if not c.isprintable() and c != "\n"}) == []
    lines = raw.rstrip("\n").split("\n")  # not splitlines(): that splits at U+2028 and NEL too
    assert len(lines) >= 3
    parsed = [logfmt_fields(line) if log_format == "logfmt" else json.loads(line) for line in lines]
    named = [fields["database"] for fields in parsed if "database" in fields]
    assert named and {name.rsplit("/", 1)[1] for name in named} == {CONTROLS}
    assert [fields["msg"] for fields in parsed if CONTROLS in fields["msg"]]  # in messages too
    escaped = "evil\\u001b[2J\\u001b[31m\\u0001db\\u0085x\\u2028y\\u2029z"  # JSON's spelling
    assert [line for line, fields in zip(lines, parsed)
            if any(CONTROLS in str(value) for value in fields.values()) and escaped not in line] == []
