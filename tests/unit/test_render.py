"""SQL rendering: golden files, determinism, quoting, function names, user templates.

The golden files in golden/ are what `pgne render-sql` prints for the fixtures. After a deliberate
change to the templates (or the version), regenerate them and read the diff before committing:

    UPDATE_GOLDEN=1 python -m pytest tests/unit/test_render.py
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from support.inline_configs import GOLDEN, NAME, OBSERVED_FIXTURE, README_FIXTURE, RICH_FIXTURE, config, errors, parse

from pgne import __version__
from pgne.config import load_config
from pgne.errors import UserError
from pgne.model import Monitor
from pgne.render import (
    Renderer,
    dollar_quote,
    function_name,
    quote_ident,
    quote_literal,
    sql_comment,
)

UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"


def render_file(path: Path, renderer: Renderer | None = None) -> str:
    renderer = renderer or Renderer()
    return renderer.render_config(load_config(str(path), renderer).databases)


def as_outbox(text: str) -> str:
    """A config text with `delivery: outbox` on every database entry."""
    return re.sub(r"^(  - database: .*)$", r"\1\n    delivery: outbox", text, flags=re.M)


def render_outbox_file(path: Path) -> str:
    renderer = Renderer()
    return renderer.render_config(parse(as_outbox(path.read_text(encoding="utf-8")), renderer).databases)


def render_prune_file(path: Path) -> str:
    """The --prune scripts of every database of the config at `path`."""
    renderer = Renderer()
    return "\n".join(renderer.render_prune(d) for d in load_config(str(path), renderer).databases)


def render_text(text: str, renderer: Renderer | None = None) -> str:
    renderer = renderer or Renderer()
    return renderer.render_config(parse(text, renderer).databases)


def monitor(schema: str, table: str) -> Monitor:
    return Monitor(schema=schema, table=table, enabled=True, function="simple_event_notification",
                   events=("INSERT",))


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("fixture, render, golden", [
    (README_FIXTURE, render_file, "pg_notify_exporter_readme.sql"),
    (RICH_FIXTURE, render_file, "rich.sql"),
    (RICH_FIXTURE, render_outbox_file, "rich_outbox.sql"),  # the same config with delivery: outbox
    (RICH_FIXTURE, render_prune_file, "rich_prune.sql"),  # the scripts of `apply --prune`
    (OBSERVED_FIXTURE, render_file, "observed.sql"),  # columns_to_observe
    (OBSERVED_FIXTURE, render_outbox_file, "observed_outbox.sql"),
])
def test_golden(fixture, render, golden):
    sql = render(fixture)
    path = GOLDEN / golden
    if UPDATE_GOLDEN:
        path.write_bytes(sql.encode("utf-8"))
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1"
    assert sql.encode("utf-8") == path.read_bytes(), f"rendering differs from {path} (UPDATE_GOLDEN=1 regenerates)"


def test_rendering_is_byte_identical_every_time():
    first = render_file(RICH_FIXTURE)
    renderer = Renderer()
    assert render_file(RICH_FIXTURE, renderer) == first
    assert render_file(RICH_FIXTURE, renderer) == first  # same renderer, second time
    assert render_file(RICH_FIXTURE, Renderer()) == first


def test_one_transaction_per_database():
    sql = render_file(RICH_FIXTURE)
    assert sql.count("BEGIN;\n") == 3
    assert sql.count("COMMIT;\n") == 3
    assert sql.endswith("COMMIT;\n")
    headers = [line for line in sql.splitlines() if line.startswith("-- pgne ")]
    assert headers == [
        f'-- pgne {__version__}: host "db1.example.com", port 6543, database "shop", tag "production"',
        f'-- pgne {__version__}: host "db1.example.com", port 5432, database "reports", tag ""',
        f'-- pgne {__version__}: host "localhost", port 5432, database "archive", tag "old"',
    ]


def test_triggers_are_after_for_each_statement_with_transition_tables():
    sql = render_file(RICH_FIXTURE)
    orders = re.escape('"sales"."orders"')
    fn = re.escape(f'"pgne"."{function_name(monitor("sales", "orders"))}"()')
    for event, referencing in [("INSERT", "REFERENCING NEW TABLE AS pgne_new\n"),
                               ("UPDATE", "REFERENCING NEW TABLE AS pgne_new\n"),
                               ("DELETE", "REFERENCING OLD TABLE AS pgne_old\n"),
                               ("TRUNCATE", "")]:
        pattern = (rf"    CREATE OR REPLACE TRIGGER pgne_{event.lower()}\n"
                   rf"      AFTER {event} ON {orders}\n"
                   rf"(      {re.escape(referencing)})?"
                   rf"      FOR EACH STATEMENT EXECUTE FUNCTION {fn};\n")
        [match] = re.findall(pattern, sql)
        assert match == (f"      {referencing}" if referencing else "")
    assert "FOR EACH ROW" not in sql


def test_disabled_monitor_and_database_drop_their_objects():
    sql = render_file(RICH_FIXTURE)
    shop, reports, archive = sql.split("-- pgne ")[1:]
    legacy = f'"pgne"."{function_name(monitor("public", "legacy"))}"()'
    assert f"DROP FUNCTION IF EXISTS {legacy};" in shop
    assert f"CREATE OR REPLACE FUNCTION {legacy}" not in shop
    assert "DROP TRIGGER pgne_insert ON \"public\".\"legacy\";" in shop
    assert 'CREATE SCHEMA IF NOT EXISTS "pgne";' in shop and "DROP SCHEMA" not in shop
    assert "-- This database is disabled in the config" in archive
    assert "CREATE" not in archive
    assert 'DROP SCHEMA IF EXISTS "pgne" CASCADE;' in archive
    for table in ("one", "two"):
        fn = f'"pgne"."{function_name(monitor("public", table))}"()'
        assert f"DROP FUNCTION IF EXISTS {fn};" in archive
    assert "shop_events" not in reports  # channels are per database
    assert "'pg_notify_exporter'" in reports


def test_custom_channel_and_whitelists_in_the_trigger_function():
    sql = render_file(RICH_FIXTURE)
    assert "PERFORM pg_catalog.pg_notify('shop_events',\n" in sql
    # whitelists compared byte for byte, whatever the column's collation
    assert "pgne_new.\"status\"::pg_catalog.text COLLATE pg_catalog.\"C\" IN ('new', 'paid', 'shipped')" in sql
    assert "pgne_old.\"status\"::pg_catalog.text COLLATE pg_catalog.\"C\" IN ('new', 'paid', 'shipped')" in sql
    assert "pgne_new.\"priority\"::pg_catalog.text COLLATE pg_catalog.\"C\" IN ('1', '2', 'true', '1.5')" in sql
    assert """|| '", "data" : {"status" : ' || pg_catalog.to_json("pgne-g"."pgne-1")::pg_catalog.text\n""" in sql
    assert """|| ', "priority" : ' || pg_catalog.to_json("pgne-g"."pgne-2")::pg_catalog.text\n""" in sql
    assert "GROUP BY 1, 2\n" in sql


def test_prune_script_is_one_transaction_that_drops_what_the_extra_objects_query_finds():
    renderer = Renderer()
    shop = load_config(str(RICH_FIXTURE), renderer).databases[0]
    script = renderer.render_prune(shop)
    assert script.startswith(f'-- pgne {__version__} --prune: host "db1.example.com", port 6543, database "shop", '
                             f'tag "production"\nBEGIN;\n')
    assert script.endswith("$pgne$;\nCOMMIT;\n") and script.count("BEGIN;\n") == 1
    assert "SET LOCAL lock_timeout = '5000ms';" in script
    query = renderer.render_extra_query(shop)
    assert "    " + query.rstrip("\n").replace("\n", "\n    ") + "\n  LOOP\n" in script
    # every monitor of the database is named, enabled or not; nothing else
    names = [function_name(monitor(s, t)) for s, t in
             [("sales", "orders"), ("public", "customers"), ("audit", "Log"), ("public", "legacy")]]
    assert f"AND p.proname NOT IN ({', '.join(quote_literal(n) for n in names)})\n" in query
    assert ("AND (n.nspname, c.relname) NOT IN (('sales', 'orders'), ('public', 'customers'), ('audit', 'Log'), "
            "('public', 'legacy'))\n") in query
    assert "AND t.tgname IN ('pgne_insert', 'pgne_update', 'pgne_delete', 'pgne_truncate')\n" in query


def test_prune_script_of_a_database_without_monitors_names_nothing():
    renderer = Renderer()
    [database] = parse(config(), renderer).databases
    database = dataclasses.replace(database, monitors=())  # a config always has one; the SQL is valid without
    query = renderer.render_extra_query(database)
    assert "NOT IN" not in query  # every pgne trigger and function is extra
    assert "EXECUTE pg_catalog.format('DROP FUNCTION %I.%I()', 'pgne', extra.name);" in renderer.render_prune(database)


def test_render_config_with_prune_puts_each_databases_prune_script_after_its_own():
    renderer = Renderer()
    databases = load_config(str(RICH_FIXTURE), renderer).databases
    assert renderer.render_config(databases, prune=True) == "\n".join(
        part for d in databases for part in (renderer.render_database(d), renderer.render_prune(d)))
    assert renderer.render_config(databases, replace_legacy=True, prune=True).startswith(
        renderer.render_database(databases[0], replace_legacy=True) + "\n" + renderer.render_prune(databases[0]))


def test_lock_timeout():
    assert "SET LOCAL lock_timeout = '5000ms';" in render_file(README_FIXTURE)
    assert "SET LOCAL lock_timeout = '2500ms';" in render_file(README_FIXTURE, Renderer(lock_timeout=2.5))


# --------------------------------------------------------------------------- quoting


def test_hostile_config_values_are_quoted():
    text = config(
        {
            "table: one": """table: 'we"ird; name'""",
            "    enabled: true\n": "    enabled: true\n    channel: \"it's\"\n",
            "      events: [insert]\n": (
                "      events: [insert, delete]\n"
                "      columns_to_label:\n"
                """      - code: ["o'neil", "x'); DROP TABLE victim; --", 'back\\slash', "$$"]\n"""
            ),
        },
    )
    sql = render_text(text)
    table = '"public"."we""ird; name"'
    assert f"AFTER INSERT ON {table}\n" in sql
    assert f"DROP TRIGGER pgne_update ON {table};" in sql
    assert """tgrelid = '"public"."we""ird; name"'::pg_catalog.regclass""" in sql
    # the payload's table name is JSON-encoded, then quoted as a literal (E'' for the backslash)
    assert """E'{"table" : "public.we\\\\"ird; name", "action" : "' || TG_OP""" in sql
    assert """-- "public.we\\"ird; name": "notification_with_payload" on INSERT, DELETE""" in sql
    assert "PERFORM pg_catalog.pg_notify('it''s',\n" in sql
    assert ("""IN ('o''neil', 'x''); DROP TABLE victim; --', E'back\\\\slash', '$$')""") in sql
    # no value appears unquoted anywhere
    assert "'o'neil" not in sql
    assert sql.count("DROP TABLE victim") == 2  # only inside the two IN (...) literals (new and old rows)
    for line in sql.splitlines():
        assert not line.lstrip().startswith("DROP TABLE"), line


@pytest.mark.parametrize("value, quoted", [
    ("plain", "'plain'"),
    ("o'neil", "'o''neil'"),
    ("x'); DROP TABLE victim; --", "'x''); DROP TABLE victim; --'"),
    ("back\\slash", "E'back\\\\slash'"),
    ("both\\'", "E'both\\\\'''"),
    ("", "''"),
    (1, "'1'"),
])
def test_quote_literal(value, quoted):
    assert quote_literal(value) == quoted


@pytest.mark.parametrize("name, quoted", [
    ("one", '"one"'), ("One", '"One"'), ('we"ird', '"we""ird"'), ("a b;c", '"a b;c"'),
])
def test_quote_ident(name, quoted):
    assert quote_ident(name) == quoted


def test_nul_is_refused():
    with pytest.raises(ValueError):
        quote_ident("a\x00b")
    with pytest.raises(ValueError):
        quote_literal("a\x00b")


def test_whitelist_value_with_the_dollar_quote_tag_changes_the_tag():
    text = config({"      events: [insert]\n": "      events: [insert]\n      columns_to_label:\n"
                                                 "      - code: ['$pgne$', '$pgne1$ x']\n"})
    sql = render_text(text)
    start = sql.index("CREATE OR REPLACE FUNCTION")
    body_quote = sql[start:].split("AS ", 1)[1].split("\n", 1)[0]
    assert body_quote == "$pgne2$"
    function = sql[start:sql.index("COMMENT ON FUNCTION")]
    assert function.endswith("END\n$pgne2$;\n\n")
    assert "IN ('$pgne$', '$pgne1$ x')" in function
    assert "DO $pgne$\n" in sql  # the DO blocks hold no such value: their tag stays


@pytest.mark.parametrize("body, tag", [
    ("x", "$pgne$"),
    ("a $$ b", "$pgne$"),
    ("a $pgne$ b", "$pgne1$"),
    ("a $pgne$ $pgne1$ b", "$pgne2$"),
    ("ends with $pgne", "$pgne1$"),  # "$pgne" + "$pgne$" would close the quote early
    ("$pgne$ and ends with $pgne1", "$pgne2$"),
])
def test_dollar_quote(body, tag):
    assert dollar_quote(body) == f"{tag}{body}{tag}"


def test_header_comment_escapes_newlines():
    text = config({"    tag: business_tag\n": '    tag: "x\\nDROP TABLE victim; --\\r\\nSELECT 1"\n',
                   "table: one": 'table: "t\\nDROP TABLE victim2"'})
    sql = render_text(text)
    assert sql.splitlines()[0] == (
        f'-- pgne {__version__}: host "localhost", port 5432, database "test", '
        f'tag "x\\nDROP TABLE victim; --\\r\\nSELECT 1"'
    )
    assert '-- "public.t\\nDROP TABLE victim2": "notification_with_payload" on INSERT\n' in sql
    assert "\r" not in sql
    assert sql.count("victim;") == 1  # the tag is only in the header comment
    for line in sql.splitlines():
        assert not line.startswith(("DROP TABLE victim;", "SELECT 1")), line
    # elsewhere the table name is a quoted identifier or literal: a newline inside those is harmless
    assert '"public"."t\nDROP TABLE victim2"' in sql
    assert """E'{"table" : "public.t\\\\nDROP TABLE victim2", "action" : "' || TG_OP""" in sql
    lines = sql.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("DROP TABLE victim2"):  # each one continues a quoted name begun above
            assert lines[i - 1].endswith(("'public.t", '"public"."t')), lines[i - 1]
            assert line.startswith(("DROP TABLE victim2'", 'DROP TABLE victim2"')), line


def test_sql_comment():
    assert sql_comment("a\nb") == '"a\\nb"'
    assert sql_comment('q"') == '"q\\""'
    assert sql_comment("é") == '"é"'


# --------------------------------------------------------------------------- function names


def test_function_names_are_deterministic():
    assert function_name(monitor("public", "one")) == "public_one_6415285b3b"
    assert function_name(monitor("public", "one")) == function_name(monitor("public", "one"))
    cfg = load_config(str(README_FIXTURE), Renderer())
    assert [function_name(m) for m in cfg.databases[0].monitors] == [
        "public_one_6415285b3b", "public_two_93be4d32ed"]


@pytest.mark.parametrize("schema, table", [
    ("s" * 63, "t" * 63),
    ("é" * 31, "ü" * 31),
    ("public", "!!!"),
])
def test_function_names_fit_in_63_bytes(schema, table):
    name = function_name(monitor(schema, table))
    assert len(name.encode("utf-8")) <= 63
    assert re.fullmatch(r"[a-z0-9_]+", name)


def test_function_names_are_distinct():
    tables = [("public", "a-b"), ("public", "a_b"), ("public", "A_B"), ("public", "a b"), ("public", "a__b"),
              ("a", "b"), ("a_b", "c"), ("a", "b_c"), ("Public", "a_b"),
              ("s" * 63, "t" * 62 + "1"), ("s" * 63, "t" * 62 + "2")]
    names = [function_name(monitor(s, t)) for s, t in tables]
    assert len(set(names)) == len(names)


def test_long_names_render_within_63_bytes():
    text = config({"table: one": f"table: {'s' * 63}.{'t' * 63}"})
    sql = render_text(text)
    [name] = set(re.findall(r'"pgne"\."([^"]+)"\(\)', sql))
    assert len(name) <= 63
    assert f'"{"s" * 63}"."{"t" * 63}"' in sql


# --------------------------------------------------------------------------- templates


@pytest.fixture
def user_templates(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "notification_with_payload.sql.j2").write_text(
        "-- user override for {{ table_name }}\n"
        "{% set body %}\nBEGIN PERFORM 1; RETURN NULL; END\n{% endset %}\n"
        "CREATE OR REPLACE FUNCTION {{ function_name }}() RETURNS trigger LANGUAGE plpgsql\n"
        "AS {{ body|dollar_quote }};\n"
        "{% for c in columns_to_label %}-- label {{ c.name }}\n{% endfor %}",
        encoding="utf-8")
    (folder / "count_only.sql.j2").write_text(
        "CREATE OR REPLACE FUNCTION {{ function_name }}() RETURNS trigger LANGUAGE plpgsql\n"
        "AS $$BEGIN PERFORM pg_notify({{ channel|literal }}, {{ table_name|literal }}); RETURN NULL; END$$;\n",
        encoding="utf-8")
    (folder / "labelled.sql.j2").write_text(
        "CREATE OR REPLACE FUNCTION {{ function_name }}() RETURNS trigger LANGUAGE plpgsql\n"
        "AS $$BEGIN RETURN NULL; END$$; -- {{ columns_to_label|map(attribute='name')|join(',') }}\n",
        encoding="utf-8")
    (folder / "broken.sql.j2").write_text("CREATE {{ function_name }\n", encoding="utf-8")
    (folder / "undefined.sql.j2").write_text("CREATE {{ function_name }} {{ no_such_variable }}\n",
                                             encoding="utf-8")
    return folder


def test_user_template_overrides_a_builtin_one(user_templates):
    sql = render_text(config(), Renderer([user_templates]))
    assert "-- user override for public.one\n" in sql
    assert "BEGIN PERFORM 1; RETURN NULL; END" in sql
    assert "pg_notify" not in sql
    # the other built-in templates are still there
    text = config({"function: notification_with_payload": "function: simple_event_notification"})
    assert "PERFORM pg_catalog.pg_notify('pg_notify_exporter'" in render_text(text, Renderer([user_templates]))


def test_user_template_with_a_new_name(user_templates):
    text = config({"function: notification_with_payload": "function: count_only"})
    assert errors(text) == [
        f"{NAME}: localhost > test > monitors[0] > function: "
        f"no template 'count_only.sql.j2' (searched {Renderer().search_path[0]})"
    ]
    sql = render_text(text, Renderer([user_templates]))
    assert "PERFORM pg_notify('pg_notify_exporter', 'public.one')" in sql


def test_search_order_is_user_folders_first(user_templates, tmp_path):
    renderer = Renderer([user_templates, tmp_path])
    assert renderer.search_path[:2] == [str(user_templates), str(tmp_path)]
    assert len(renderer.search_path) == 3


def test_templates_folder_must_exist(tmp_path):
    with pytest.raises(UserError) as info:
        Renderer([tmp_path / "absent"])
    assert info.value.lines == [f"--templates {tmp_path / 'absent'}: not a directory"]


def test_template_that_reads_columns_to_label_uses_labels(user_templates):
    renderer = Renderer([user_templates])
    assert renderer.uses_labels("labelled")
    assert renderer.uses_labels("notification_with_payload")  # the override loops over them too
    assert not renderer.uses_labels("count_only")
    assert not renderer.uses_labels("simple_event_notification")
    assert Renderer().uses_labels("notification_with_payload")
    labelled = config({"function: notification_with_payload": "function: labelled",
                       "      events: [insert]\n": "      events: [insert]\n      columns_to_label:\n"
                                                   "      - code: [a]\n      - kind: [b]\n"})
    assert "-- code,kind\n" in render_text(labelled, renderer)
    ignored = labelled.replace("function: labelled", "function: count_only")
    assert errors(ignored, renderer) == [
        f"{NAME}: localhost > test > monitors[0] > columns_to_label: template 'count_only' ignores "
        f"columns_to_label (use notification_with_payload, or a template that reads columns_to_label)"
    ]


def test_template_with_a_jinja_syntax_error(user_templates):
    renderer = Renderer([user_templates])
    assert renderer.problem("broken") == "template 'broken' line 1: unexpected '}'"
    text = config({"function: notification_with_payload": "function: broken"})
    assert errors(text, renderer) == [
        f"{NAME}: localhost > test > monitors[0] > function: template 'broken' line 1: unexpected '}}'"
    ]


def test_template_with_an_undefined_variable(user_templates):
    renderer = Renderer([user_templates])
    cfg = parse(config({"function: notification_with_payload": "function: undefined"}), renderer)
    with pytest.raises(UserError) as info:
        renderer.render_config(cfg.databases)
    assert info.value.lines == [
        "template 'undefined': 'no_such_variable' is undefined (rendering localhost > test > monitors[0])"
    ]
    with pytest.raises(UserError):
        renderer.check(cfg)


def test_builtin_templates_have_no_problems():
    renderer = Renderer()
    assert renderer.problem("notification_with_payload") is None
    assert renderer.problem("simple_event_notification") is None
    assert renderer.problem("_database") == "'_database' is an internal template, not a trigger function"
