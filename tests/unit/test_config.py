"""Config loading and validation: every rule, each with the exact error line it reports."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from support.inline_configs import NAME, README_FIXTURE, config, errors, parse, yaml_text

from pgne.config import DEFAULT_CONFIG_PATH, config_path, load_config
from pgne.errors import UserError
from pgne.model import Config, Database, LabelColumn, Monitor, value_as_text
from pgne.render import Renderer
from pgne.resources import builtin_templates_dir, config_schema_path

DB = f"{NAME}: localhost > test"  # the prefix of every error about BASE's database
MON = f"{DB} > monitors[0]"  # ... and about its monitor
LABEL_NAME_HINT = "(letters, digits and _, not starting with a digit or __)"


def allowed(definition: str) -> str:
    """The keys the schema allows in a database or monitor, as the error message lists them."""
    schema = json.loads(config_schema_path().read_text(encoding="utf-8"))
    return ", ".join(schema["$defs"][definition]["properties"])


def test_allowed_keys_include_pg_notify_exporters():
    for key in ("database", "tag", "perform_setup", "username", "password", "password_file", "enabled",
                "port", "channel", "sslmode", "connect_timeout", "monitors"):
        assert key in allowed("database").split(", ")
    assert allowed("monitor") == "table, enabled, function, events, columns_to_label, columns_to_observe"


def labels(spec: str) -> dict[str, str]:
    """Give BASE's monitor a columns_to_label block (YAML flow text, e.g. "code: [a, b]")."""
    return {"      events: [insert]\n": f"      events: [insert]\n      columns_to_label:\n      - {spec}\n"}


# --------------------------------------------------------------------------- YAML level


def test_yaml_syntax_error_names_the_line():
    text = yaml_text("""
        - localhost:
          - database: [test
            tag: x
        """)
    assert errors(text) == [f"{NAME}: line 3, column 8: YAML syntax error: expected ',' or ']', but got ':'"]


def test_yaml_syntax_error_from_bad_indentation():
    text = config({"    tag: business_tag\n": "    tag: business_tag\n   username: bad\n"})
    [line] = errors(text)
    assert line.startswith(f"{NAME}: line 4, column 4: YAML syntax error: ")


def test_duplicate_yaml_key_in_database():
    text = config({"    enabled: true\n": "    enabled: true\n    enabled: false\n"})
    assert errors(text) == [f"{NAME}: line 8, column 5: YAML syntax error: duplicate key 'enabled'"]


def test_duplicate_yaml_key_in_monitor():
    text = config(indent=6, append="""
              events: [delete]
        """)
    assert errors(text) == [f"{NAME}: line 13, column 7: YAML syntax error: duplicate key 'events'"]


def test_yaml_merge_key_override_is_not_a_duplicate():
    # Sharing settings between databases with an anchor is ordinary YAML, not a duplicate key.
    text = config({"  - database: test\n": "  - &base\n    database: test\n"}, indent=2, append="""
          - <<: *base
            database: other
        """)
    cfg = parse(text)
    assert [d.name for d in cfg.databases] == ["test", "other"]
    assert cfg.databases[1].monitors == cfg.databases[0].monitors
    assert cfg.databases[1].location == "localhost > other"


def test_duplicate_key_next_to_a_merge_key_is_still_reported():
    text = config({"  - database: test\n": "  - &base\n    database: test\n"}, indent=2, append="""
          - <<: *base
            database: other
            database: third
        """)
    assert errors(text) == [f"{NAME}: line 16, column 5: YAML syntax error: duplicate key 'database'"]


def test_unhashable_yaml_key_is_a_config_error_not_a_crash():
    assert errors("? [a, b]\n: 1\n") == [f"{NAME}: line 1, column 3: YAML syntax error: found unhashable key"]


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n---\n...\n"])
def test_empty_file(text):
    assert errors(text) == [f"{NAME}: the file holds no configuration (every YAML document is empty)"]


def test_multiple_non_empty_documents():
    assert errors(config() + "---\n" + config()) == [f"{NAME}: 2 non-empty YAML documents; expected one"]


def test_empty_documents_around_the_config_are_ignored():
    assert parse("---\n---\n" + config() + "...\n---\n") == parse(config())


# --------------------------------------------------------------------------- the README fixture


def test_pg_notify_exporter_readme_fixture_loads_unchanged():
    path = str(README_FIXTURE)
    cfg = load_config(path, Renderer())
    assert cfg == Config(
        path=path,
        databases=(
            Database(
                host="localhost",
                name="test",
                tag="business_tag",
                perform_setup=True,
                username="postgres",
                password="secret",
                enabled=True,
                monitors=(
                    Monitor(
                        schema="public",
                        table="one",
                        enabled=True,  # `enabled: yes`
                        function="notification_with_payload",
                        events=("INSERT",),
                        label_columns=(LabelColumn("code", ("alpha", "beta", "gamma")),),
                    ),
                    Monitor(
                        schema="public",
                        table="two",
                        enabled=True,
                        function="simple_event_notification",
                        events=("INSERT", "DELETE"),  # `INSERT`, `delete`: upper case, config order
                    ),
                ),
                port=5432,
                channel="pg_notify_exporter",
                sslmode=None,
                connect_timeout=10,
            ),
        ),
    )
    database = cfg.databases[0]
    assert database.location == "localhost > test"
    assert [m.location for m in database.monitors] == ["localhost > test > monitors[0]",
                                                        "localhost > test > monitors[1]"]
    assert cfg.label_names == ("code",)
    assert database.enabled_monitors == database.monitors
    assert database.display_name == "localhost:5432/test"


# sha256 of pg_notify_exporter's README example as ../shared/fixtures/ holds it.
README_FIXTURE_SHA256 = "47d17807e36624672ff20e00860d653c7eda95c741b3a4fd0ac611fff34aef4c"


def test_readme_fixture_copy_matches_the_shared_fixture():
    assert hashlib.sha256(README_FIXTURE.read_bytes()).hexdigest() == README_FIXTURE_SHA256
    repo = Path(__file__).resolve().parents[2]
    for shared in (repo.parent / "shared", Path("/work/shared")):  # beside the clone in CI
        fixture = shared / "fixtures" / "pg_notify_exporter_readme_config.yml"
        if fixture.exists():
            assert README_FIXTURE.read_bytes() == fixture.read_bytes()


# --------------------------------------------------------------------------- structure (JSON Schema)


def test_unknown_key_in_database():
    text = config({"    enabled: true\n": "    enabled: true\n    hostname: db1\n"})
    assert errors(text) == [
        f"{DB}: unknown key 'hostname' (allowed: {allowed('database')})"
    ]


def test_unknown_keys_in_monitor():
    text = config(indent=6, append="""
              trigger: row
              columns: [a]
        """)
    assert errors(text) == [
        f"{MON}: unknown keys 'columns', 'trigger' (allowed: {allowed('monitor')})"
    ]


def test_port_must_be_an_integer():
    text = config({"    enabled: true\n": "    enabled: true\n    port: x\n"})
    assert errors(text) == [f"{DB} > port: 'x' is not of type 'integer'"]


def test_port_must_not_be_a_boolean():
    text = config({"    enabled: true\n": "    enabled: true\n    port: yes\n"})
    assert errors(text) == [f"{DB} > port: True is not of type 'integer'"]


def test_port_out_of_range():
    text = config({"    enabled: true\n": "    enabled: true\n    port: 70000\n"})
    assert errors(text) == [f"{DB} > port: 70000 is greater than the maximum of 65535"]


def test_integral_float_port_becomes_an_int():
    # JSON Schema calls 5433.0 an integer; libpq would refuse the port "5433.0".
    text = config({"    enabled: true\n": "    enabled: true\n    port: 5433.0\n    connect_timeout: 3.0\n"})
    database = parse(text).databases[0]
    assert (database.port, type(database.port)) == (5433, int)
    assert (database.connect_timeout, type(database.connect_timeout)) == (3, int)
    assert database.display_name == "localhost:5433/test"


@pytest.mark.parametrize("delivery", ["", "    delivery: notify\n"], ids=["default", "notify"])
def test_notify_with_prepared_transactions_opts_a_notify_database_in(delivery):
    assert parse(config()).databases[0].notify_with_prepared_transactions is False
    text = config({"    enabled: true\n": f"    enabled: true\n{delivery}"
                                           f"    notify_with_prepared_transactions: true\n"})
    assert parse(text).databases[0].notify_with_prepared_transactions is True


@pytest.mark.parametrize("value", ["true", "false"])
def test_notify_with_prepared_transactions_is_an_error_with_outbox(value):
    text = config({"    enabled: true\n": f"    enabled: true\n    delivery: outbox\n"
                                           f"    notify_with_prepared_transactions: {value}\n"})
    assert errors(text) == [f"{DB} > notify_with_prepared_transactions: only used with delivery: notify"]


def test_notify_with_prepared_transactions_must_be_a_boolean():
    text = config({"    enabled: true\n": "    enabled: true\n    notify_with_prepared_transactions: 1\n"})
    assert errors(text) == [f"{DB} > notify_with_prepared_transactions: 1 is not of type 'boolean'"]


def test_enabled_must_be_a_boolean():
    text = config({"      enabled: yes\n": "      enabled: maybe\n"})
    assert errors(text) == [f"{MON} > enabled: 'maybe' is not of type 'boolean'"]


def test_events_must_be_a_list():
    text = config({"events: [insert]": "events: insert"})
    assert errors(text) == [f"{MON} > events: 'insert' is not of type 'array'"]


def test_sslmode_must_be_a_libpq_mode():
    text = config({"    enabled: true\n": "    enabled: true\n    sslmode: always\n"})
    assert errors(text) == [
        f"{DB} > sslmode: 'always' is not one of "
        f"['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']"
    ]


def test_top_level_must_be_a_list():
    assert errors("localhost: []\n") == [f"{NAME}: (top level): {{'localhost': []}} is not of type 'array'"]


def test_host_entry_must_have_exactly_one_key():
    text = yaml_text("""
        - localhost: [a]
          otherhost: [b]
        """)
    assert errors(text)[0] == f"{NAME}: [0]: expected a mapping with exactly one key, got 2"


def test_table_name_with_two_dots():
    text = config({"table: one": "table: a.b.c"})
    assert errors(text) == [f"{MON} > table: 'a.b.c' is not a table name: use `table` or `schema.table`"]


def test_schema_qualified_table():
    monitor = parse(config({"table: one": "table: Sales.Orders"})).databases[0].monitors[0]
    assert (monitor.schema, monitor.table, monitor.qualified_name) == ("Sales", "Orders", "Sales.Orders")


def test_missing_required_keys():
    text = config({"    tag: business_tag\n": "", "      events: [insert]\n": ""})
    assert errors(text) == [
        f"{DB}: 'tag' is required",
        f"{MON}: 'events' is required",
    ]


def test_missing_database_name_is_located_by_index():
    text = config({"  - database: test\n    tag": "  - tag"})
    assert errors(text) == [f"{NAME}: localhost[0]: 'database' is required"]


def test_empty_events():
    assert errors(config({"events: [insert]": "events: []"})) == [f"{MON} > events: [] should be non-empty"]


def test_empty_monitors():
    monitors = "    monitors:\n    - table: one\n      enabled: yes\n      function: notification_with_payload\n"
    text = config({monitors + "      events: [insert]\n": "    monitors: []\n"})
    assert errors(text) == [f"{DB} > monitors: [] should be non-empty"]


def test_bad_event_name():
    text = config({"events: [insert]": "events: [insert, upsert]"})
    assert errors(text) == [
        f"{MON} > events[1]: 'upsert' is not one of insert, update, delete, truncate (any case)"
    ]


def test_event_with_a_trailing_newline_is_rejected():
    # Python's `$` matches before a final newline, so the schema's pattern lets "insert\n" through.
    text = config({"events: [insert]": 'events: [update, "insert\\n"]'})
    assert errors(text) == [
        f"{MON} > events[1]: 'insert\\n' is not one of insert, update, delete, truncate (any case)"
    ]


def test_events_any_case_in_config_order():
    monitor = parse(config({"events: [insert]": "events: [Truncate, delete, UPDATE, insert]"})).databases[0].monitors[0]
    assert monitor.events == ("TRUNCATE", "DELETE", "UPDATE", "INSERT")


# --------------------------------------------------------------------------- cross-checks


def test_duplicate_event_case_insensitive():
    text = config({"events: [insert]": "events: [insert, delete, INSERT]"})
    assert errors(text) == [f"{MON} > events[2]: duplicate event 'INSERT'"]


def test_duplicate_database_same_host_port_name():
    # the second entry spells the default port out: still the same database
    text = config(append="""
        - localhost:
          - database: test
            tag: again
            perform_setup: false
            username: postgres
            password: secret
            enabled: true
            port: 5432
            monitors:
            - table: two
              enabled: yes
              function: simple_event_notification
              events: [delete]
        """)
    assert errors(text) == [f"{NAME}: localhost > test: duplicate database localhost:5432/test "
                            f"(database entries #1 and #2 of the file)"]


def test_same_database_name_on_another_port_or_host_is_fine():
    second = """
        - {host}:
          - database: test
            tag: again
            perform_setup: false
            username: postgres
            password: secret
            enabled: true
            port: {port}
            monitors:
            - table: one
              enabled: yes
              function: simple_event_notification
              events: [delete]
        """
    cfg = parse(config(append=second.format(host="localhost", port=5433)))
    assert [d.key for d in cfg.databases] == [("localhost", 5432, "test"), ("localhost", 5433, "test")]
    cfg = parse(config(append=second.format(host="otherhost", port=5432)))
    assert [d.key for d in cfg.databases] == [("localhost", 5432, "test"), ("otherhost", 5432, "test")]


def test_duplicate_table_with_and_without_public():
    text = config(indent=4, append="""
            - table: public.one
              enabled: no
              function: simple_event_notification
              events: [delete]
        """)
    assert errors(text) == [
        f"{DB} > monitors[1] > table: duplicate table 'public.one' (also at localhost > test > monitors[0])"
    ]


def test_tables_differing_in_case_are_different_tables():
    # identifiers are always quoted: "One" and "one" are two tables
    text = config(indent=4, append="""
            - table: One
              enabled: yes
              function: simple_event_notification
              events: [delete]
        """)
    assert [m.table for m in parse(text).databases[0].monitors] == ["one", "One"]


def test_function_with_no_template():
    text = config({"function: notification_with_payload": "function: notification_with_upsert"})
    assert errors(text) == [
        f"{MON} > function: no template 'notification_with_upsert.sql.j2' (searched {builtin_templates_dir()})"
    ]


def test_function_name_that_is_not_a_template_name():
    text = config({"function: notification_with_payload": "function: ../etc/passwd"})
    assert errors(text) == [
        f"{MON} > function: '../etc/passwd' is not a template name: letters, digits, `_` and `-` only"
    ]


@pytest.mark.parametrize("name", ["_database", "_anything"])
def test_internal_templates_are_not_trigger_functions(name):
    text = config({"function: notification_with_payload": f"function: {name}"})
    assert errors(text) == [f"{MON} > function: '{name}' is an internal template, not a trigger function"]


@pytest.mark.parametrize("column, shown", [
    ("1code", "'1code'"),
    ("co-de", "'co-de'"),
    ("'co de'", "'co de'"),
    ("__code", "'__code'"),
    ("'code\\n'", "'code\\n'"),  # "code\n": Python's `$` would have let it through
    ("'cöde'", "'cöde'"),
])
def test_label_column_must_be_a_prometheus_label_name(column, shown):
    text = config(labels(f'{column}: [a]'.replace("'", '"')))
    assert errors(text) == [
        f"{MON} > columns_to_label[0]: {shown} is not a valid Prometheus label name {LABEL_NAME_HINT}"
    ]


@pytest.mark.parametrize("column", ["operation", "host", "database", "tag", "schema", "table"])
def test_label_column_must_not_collide_with_builtin_labels(column):
    text = config(labels(f"{column}: [a]"))
    assert errors(text) == [
        f"{MON} > columns_to_label[0]: label column '{column}' collides with the built-in label '{column}' "
        f"(built-in: operation, host, database, tag, schema, table)"
    ]


def test_duplicate_label_column():
    text = config({"      events: [insert]\n": "      events: [insert]\n      columns_to_label:\n"
                                                 "      - code: [a]\n      - code: [b]\n"})
    assert errors(text) == [f"{MON} > columns_to_label[1]: duplicate label column 'code'"]


def test_other_is_reserved_in_a_whitelist():
    text = config(labels("code: [alpha, other]"))
    assert errors(text) == [
        f"{MON} > columns_to_label[0] > code[1]: 'other' is reserved for values outside the whitelist"
    ]


@pytest.mark.parametrize("values, index, shown", [
    ("[a, b, a]", 2, "'a'"),
    ("[1, '1']", 1, "'1'"),
    ("[true, 'true']", 1, "'true'"),
    ("[yes, 'true']", 1, "'true'"),
    ("[1.5, '1.5']", 1, "'1.5'"),
])
def test_duplicate_whitelist_values_compared_as_text(values, index, shown):
    text = config(labels(f"code: {values}"))
    assert errors(text) == [f"{MON} > columns_to_label[0] > code[{index}]: duplicate value {shown}"]


def test_whitelist_values_become_text():
    text = config(labels("code: [1, true, 1.5, alpha, no, '007', -3]"))
    [column] = parse(text).databases[0].monitors[0].label_columns
    assert column == LabelColumn("code", ("1", "true", "1.5", "alpha", "false", "007", "-3"))


@pytest.mark.parametrize("value, text", [
    (1, "1"), (True, "true"), (False, "false"), (1.5, "1.5"), ("x", "x"), (None, None), (-0.25, "-0.25"),
])
def test_value_as_text(value, text):
    assert value_as_text(value) == text


def test_null_whitelist_value_is_rejected():
    text = config(labels("code: [a, null]"))
    assert errors(text) == [
        f"{MON} > columns_to_label[0] > code[1]: None is not of type 'string', 'integer', 'number', 'boolean'"
    ]


def test_columns_to_label_with_a_template_that_ignores_it():
    text = config({"function: notification_with_payload": "function: simple_event_notification",
                   **labels("code: [a]")})
    assert errors(text) == [
        f"{MON} > columns_to_label: template 'simple_event_notification' ignores columns_to_label "
        f"(use notification_with_payload, or a template that reads columns_to_label)"
    ]


# --------------------------------------------------------------------------- passwords


def test_password_and_password_file_together():
    text = config({"    password: secret\n": "    password: secret\n    password_file: pw.txt\n"})
    assert errors(text) == [f"{DB}: give either password or password_file, not both"]


def test_neither_password_nor_password_file():
    text = config({"    password: secret\n": ""})
    assert errors(text) == [f"{DB}: password or password_file is required"]


def test_password_from_environment(monkeypatch):
    monkeypatch.setenv("PGNE_TEST_PASSWORD", "s3cr$t")
    text = config({"password: secret": "password: ${PGNE_TEST_PASSWORD}"})
    assert parse(text).databases[0].password == "s3cr$t"


def test_password_from_missing_environment_variable(monkeypatch):
    monkeypatch.delenv("PGNE_TEST_PASSWORD", raising=False)
    text = config({"password: secret": "password: ${PGNE_TEST_PASSWORD}"})
    assert errors(text) == [f"{DB} > password: environment variable PGNE_TEST_PASSWORD is not set"]


@pytest.mark.parametrize("password", ["pa${X}ss", "$X", "${X", "${X}${Y}", "'${1X}'"])
def test_password_that_is_not_exactly_an_env_reference_is_literal(monkeypatch, password):
    monkeypatch.setenv("X", "expanded")
    text = config({"password: secret": f"password: {password}"})
    assert parse(text).databases[0].password == password.strip("'")


def test_password_file_relative_to_the_config_file(tmp_path):
    (tmp_path / "pw.txt").write_text("from file\n\n", encoding="utf-8")
    text = config({"password: secret": "password_file: pw.txt"})
    # only one trailing newline is stripped: the rest is the password
    assert parse(text, base_dir=tmp_path).databases[0].password == "from file\n"


def test_password_file_absolute(tmp_path):
    (tmp_path / "pw").write_text("abs", encoding="utf-8")
    text = config({"password: secret": f"password_file: {tmp_path / 'pw'}"})
    assert parse(text, base_dir=Path("/nonexistent")).databases[0].password == "abs"


def test_password_file_missing(tmp_path):
    text = config({"password: secret": "password_file: nope.txt"})
    assert errors(text, base_dir=tmp_path) == [
        f"{DB} > password_file: cannot read {tmp_path / 'nope.txt'}: No such file or directory"
    ]


def test_password_file_unreadable(tmp_path):
    (tmp_path / "adir").mkdir()  # unreadable as a file even for root, unlike chmod 000
    text = config({"password: secret": "password_file: adir"})
    assert errors(text, base_dir=tmp_path) == [
        f"{DB} > password_file: cannot read {tmp_path / 'adir'}: Is a directory"
    ]


def test_password_file_relative_to_config_in_load_config(tmp_path):
    (tmp_path / "pw.txt").write_text("filed\n", encoding="utf-8")
    path = tmp_path / "events_config.yml"
    path.write_text(config({"password: secret": "password_file: pw.txt"}), encoding="utf-8")
    assert load_config(str(path), Renderer()).databases[0].password == "filed"


def test_repr_never_shows_the_password(monkeypatch):
    monkeypatch.setenv("PGNE_TEST_PASSWORD", "hunter2-very-secret")
    cfg = parse(config({"password: secret": "password: ${PGNE_TEST_PASSWORD}"}))
    database = cfg.databases[0]
    assert database.password == "hunter2-very-secret"
    for text in (repr(database), str(database), repr(cfg), repr(cfg.databases)):
        assert "hunter2" not in text
        assert "password" not in text
    assert database.connect_kwargs()["password"] == "hunter2-very-secret"


# --------------------------------------------------------------------------- identifier lengths


def test_identifiers_of_63_bytes_are_fine():
    name = "s" * 63
    text = config({"table: one": f"table: {name}.{'t' * 63}",
                   "    enabled: true\n": f"    enabled: true\n    channel: {'c' * 63}\n",
                   **labels(f"{'l' * 63}: [a]")})
    monitor = parse(text).databases[0].monitors[0]
    assert (monitor.schema, monitor.table) == (name, "t" * 63)


def test_the_channel_pgne_apply_notifies_is_not_a_config_channel():
    """`pgne apply` NOTIFYs pgne_applied to wake the running workers: events on it would be lost."""
    text = config({"    enabled: true\n": "    enabled: true\n    channel: pgne_applied\n"})
    assert errors(text) == [f"{DB} > channel: pgne_applied is pgne's own channel (pgne apply tells the "
                            "running workers on it); choose another"]


def test_identifiers_longer_than_63_bytes():
    long_schema, long_table, long_column, long_channel = "s" * 64, "é" * 32, "l" * 64, "c" * 64
    text = config({"table: one": f"table: {long_schema}.{long_table}",
                   "    enabled: true\n": f"    enabled: true\n    channel: {long_channel}\n",
                   **labels(f"{long_column}: [a]")})
    assert errors(text) == [
        f"{DB} > channel: channel '{long_channel}' is longer than 63 bytes",
        f"{MON} > table: schema '{long_schema}' is longer than 63 bytes",
        f"{MON} > table: table '{long_table}' is longer than 63 bytes",  # 32 characters, 64 bytes
        f"{MON} > columns_to_label[0]: column '{long_column}' is longer than 63 bytes",
    ]


# --------------------------------------------------------------------------- all errors at once


def test_every_schema_error_is_reported_at_once():
    text = yaml_text("""
        - localhost:
          - database: test
            tag: business_tag
            perform_setup: maybe
            username: postgres
            password: secret
            enabled: true
            port: x
            colour: blue
            monitors:
            - table: one
              enabled: yes
              function: notification_with_payload
              events: [insert, upsert]
            - table: two
              enabled: 1
              events: []
        - otherhost:
          - database: 42
            tag: t
            perform_setup: false
            username: u
            password: p
            enabled: false
            monitors:
            - table: three
              enabled: no
              function: simple_event_notification
              events: insert
        """)
    assert errors(text) == [
        f"{NAME}: localhost > test: unknown key 'colour' (allowed: {allowed('database')})",
        f"{NAME}: localhost > test > monitors[0] > events[1]: "
        f"'upsert' is not one of insert, update, delete, truncate (any case)",
        f"{NAME}: localhost > test > monitors[1]: 'function' is required",
        f"{NAME}: localhost > test > monitors[1] > enabled: 1 is not of type 'boolean'",
        f"{NAME}: localhost > test > monitors[1] > events: [] should be non-empty",
        f"{NAME}: localhost > test > perform_setup: 'maybe' is not of type 'boolean'",
        f"{NAME}: localhost > test > port: 'x' is not of type 'integer'",
        f"{NAME}: otherhost[0] > database: 42 is not of type 'string'",
        f"{NAME}: otherhost[0] > monitors[0] > events: 'insert' is not of type 'array'",
    ]


def test_every_cross_check_error_is_reported_at_once(monkeypatch):
    monkeypatch.delenv("PGNE_NOPE", raising=False)
    text = yaml_text("""
        - localhost:
          - database: test
            tag: business_tag
            perform_setup: true
            username: postgres
            password: ${PGNE_NOPE}
            enabled: true
            monitors:
            - table: one
              enabled: yes
              function: notification_with_payload
              columns_to_label:
              - host: [a, other]
              events: [insert, INSERT]
            - table: public.one
              enabled: yes
              function: nope
              events: [delete]
          - database: test
            tag: again
            perform_setup: true
            username: postgres
            enabled: true
            monitors:
            - table: two
              enabled: yes
              function: simple_event_notification
              columns_to_label:
              - code: [1, '1']
              events: [update]
        """)
    assert errors(text) == [
        f"{NAME}: localhost > test > password: environment variable PGNE_NOPE is not set",
        f"{NAME}: localhost > test > monitors[0] > events[1]: duplicate event 'INSERT'",
        f"{NAME}: localhost > test > monitors[0] > columns_to_label[0]: label column 'host' collides with "
        f"the built-in label 'host' (built-in: operation, host, database, tag, schema, table)",
        f"{NAME}: localhost > test > monitors[0] > columns_to_label[0] > host[1]: "
        f"'other' is reserved for values outside the whitelist",
        f"{NAME}: localhost > test > monitors[1] > function: "
        f"no template 'nope.sql.j2' (searched {builtin_templates_dir()})",
        f"{NAME}: localhost > test > monitors[1] > table: duplicate table 'public.one' "
        f"(also at localhost > test > monitors[0])",
        f"{NAME}: localhost > test: password or password_file is required",
        f"{NAME}: localhost > test: duplicate database localhost:5432/test (database entries #1 and #2 of the file)",
        f"{NAME}: localhost > test > monitors[0] > columns_to_label[0] > code[1]: duplicate value '1'",
        f"{NAME}: localhost > test > monitors[0] > columns_to_label: template 'simple_event_notification' "
        f"ignores columns_to_label (use notification_with_payload, or a template that reads columns_to_label)",
    ]


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "my.yml"
    path.write_text(config({"events: [insert]": "events: [upsert]"}), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_config(str(path), Renderer())
    assert info.value.lines == [
        f"{path}: localhost > test > monitors[0] > events[0]: "
        f"'upsert' is not one of insert, update, delete, truncate (any case)"
    ]


def test_load_config_missing_file(tmp_path):
    path = str(tmp_path / "absent.yml")
    with pytest.raises(UserError) as info:
        load_config(path, Renderer())
    assert info.value.lines == [f"{path}: no such file (give one with -c/--config or $PGNE_CONFIG)"]
    assert info.value.exit_code == 2


def test_load_config_directory(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(str(tmp_path), Renderer())
    assert info.value.lines == [f"{tmp_path}: cannot read: Is a directory"]


# --------------------------------------------------------------------------- the Config object


def test_defaults_and_optional_keys():
    default = parse(config()).databases[0]
    assert (default.port, default.channel, default.sslmode, default.connect_timeout) == (
        5432, "pg_notify_exporter", None, 10)
    text = config({"    enabled: true\n": "    enabled: true\n    port: 6543\n    channel: my events\n"
                                          "    sslmode: require\n    connect_timeout: 3\n"})
    database = parse(text).databases[0]
    assert (database.port, database.channel, database.sslmode, database.connect_timeout) == (
        6543, "my events", "require", 3)
    assert database.connect_kwargs() == {
        "host": "localhost", "port": 6543, "dbname": "test", "user": "postgres", "password": "secret",
        "connect_timeout": 3, "application_name": "pgne", "sslmode": "require",
    }


def test_disabled_database_and_monitor():
    text = config({"      enabled: yes\n": "      enabled: no\n"}, indent=4, append="""
            - table: two
              enabled: true
              function: simple_event_notification
              events: [delete]
        """)
    database = parse(text).databases[0]
    assert [m.table for m in database.enabled_monitors] == ["two"]
    disabled = parse(text.replace("    enabled: true\n    monitors:", "    enabled: false\n    monitors:"))
    assert disabled.databases[0].enabled_monitors == ()
    assert disabled.enabled_databases == ()


def test_select_filters_and_refuses_an_empty_selection():
    text = config(append="""
        - otherhost:
          - database: test
            tag: t
            perform_setup: false
            username: u
            password: p
            enabled: true
            monitors:
            - table: one
              enabled: yes
              function: simple_event_notification
              events: [insert]
          - database: sales
            tag: t
            perform_setup: false
            username: u
            password: p
            enabled: true
            monitors:
            - table: one
              enabled: yes
              function: simple_event_notification
              events: [insert]
        """)
    cfg = parse(text)
    assert [d.display_name for d in cfg.select()] == [
        "localhost:5432/test", "otherhost:5432/test", "otherhost:5432/sales"]
    assert [d.display_name for d in cfg.select(host="otherhost")] == ["otherhost:5432/test", "otherhost:5432/sales"]
    assert [d.display_name for d in cfg.select(database="test")] == ["localhost:5432/test", "otherhost:5432/test"]
    assert [d.display_name for d in cfg.select("otherhost", "sales")] == ["otherhost:5432/sales"]
    with pytest.raises(UserError) as info:
        cfg.select("localhost", "sales")
    assert info.value.lines == [f"{NAME}: no database matches --host 'localhost' and --database 'sales'"]


# --------------------------------------------------------------------------- where the config is


def test_config_path_precedence(monkeypatch):
    monkeypatch.delenv("PGNE_CONFIG", raising=False)
    assert config_path(None) == DEFAULT_CONFIG_PATH == "config/events_config.yml"
    monkeypatch.setenv("PGNE_CONFIG", "/etc/pgne/from-env.yml")
    assert config_path(None) == "/etc/pgne/from-env.yml"
    assert config_path("cli.yml") == "cli.yml"
    monkeypatch.setenv("PGNE_CONFIG", "")
    assert config_path(None) == DEFAULT_CONFIG_PATH
    assert os.environ["PGNE_CONFIG"] == ""


def test_the_default_config_installs_nothing_on_a_server_the_user_did_not_name():
    """A bare `pgne run` in a checkout reads config/events_config.yml, whose database is whatever
    answers on localhost:5432: it must not install triggers there (perform_setup false)."""
    from support.processes import REPO

    renderer = Renderer()
    shipped = load_config(str(REPO / DEFAULT_CONFIG_PATH), renderer)
    assert [(d.display_name, d.perform_setup) for d in shipped.databases] == [("localhost:5432/test", False)]


def test_schema_errors_and_cross_check_errors_of_other_entries_are_reported_together():
    text = yaml_text("""
        - localhost:
          - database: a
            tag: t
            perform_setup: true
            username: postgres
            password: x
            enabled: true
            monitors:
            - {table: one, enabled: true, function: nope, events: [insert]}
          - database: b
            tag: t
            perform_setup: maybe
            username: postgres
            password: x
            enabled: true
            monitors:
            - {table: one, enabled: true, function: notification_with_payload, events: [upsert]}
          - database: a
            tag: t
            perform_setup: true
            username: postgres
            password: x
            enabled: true
            monitors:
            - {table: one, enabled: true, function: simple_event_notification, events: [insert]}
        """)
    assert errors(text) == [
        f"{NAME}: localhost > b > monitors[0] > events[0]: 'upsert' is not one of insert, update, delete, "
        f"truncate (any case)",
        f"{NAME}: localhost > b > perform_setup: 'maybe' is not of type 'boolean'",
        f"{NAME}: localhost > a > monitors[0] > function: no template 'nope.sql.j2' "
        f"(searched {builtin_templates_dir()})",
        f"{NAME}: localhost > a: duplicate database localhost:5432/a (database entries #1 and #3 of the file)",
    ]


def test_structural_and_cross_reference_errors_are_all_reported_in_one_round():
    """4 structural errors and 6 cross-reference errors, among them in the monitors of an entry that
    has a structural error, next to a wrongly typed sibling key, and under a malformed host entry."""
    text = yaml_text("""
        - localhost:
          - database: test
            tag: t
            perform_setup: maybe
            username: postgres
            password: secret
            enabled: true
            monitors:
            - table: one
              enabled: 1
              function: nope
              events: [insert, INSERT]
            - table: public.one
              enabled: true
              function: simple_event_notification
              columns_to_label:
              - code: [a, a]
              events: [insert]
          otherhost:
          - database: d
            tag: t
            perform_setup: true
            username: u
            password: p
            enabled: true
            delivery: pigeon
            monitors:
            - {table: a, enabled: true, function: nope2, events: [insert]}
        """)
    searched = f"(searched {builtin_templates_dir()})"
    assert errors(text) == [
        f"{NAME}: [0]: expected a mapping with exactly one key, got 2",
        f"{NAME}: [0] > localhost > test > monitors[0] > enabled: 1 is not of type 'boolean'",
        f"{NAME}: [0] > localhost > test > perform_setup: 'maybe' is not of type 'boolean'",
        f"{NAME}: [0] > otherhost > d > delivery: 'pigeon' is not one of ['notify', 'outbox']",
        f"{NAME}: [0] > localhost > test > monitors[0] > events[1]: duplicate event 'INSERT'",
        f"{NAME}: [0] > localhost > test > monitors[0] > function: no template 'nope.sql.j2' {searched}",
        f"{NAME}: [0] > localhost > test > monitors[1] > columns_to_label[0] > code[1]: duplicate value 'a'",
        f"{NAME}: [0] > localhost > test > monitors[1] > columns_to_label: template 'simple_event_notification' "
        f"ignores columns_to_label (use notification_with_payload, or a template that reads columns_to_label)",
        f"{NAME}: [0] > localhost > test > monitors[1] > table: duplicate table 'public.one' "
        f"(also at [0] > localhost > test > monitors[0])",
        f"{NAME}: [0] > otherhost > d > monitors[0] > function: no template 'nope2.sql.j2' {searched}",
    ]


def test_a_wrongly_typed_password_is_a_schema_error_only():
    assert errors(config({"password: secret": "password: [1]"})) == [
        f"{DB} > password: (a value that holds a password, not shown) is not of type 'string'"]


def test_json_surrogate_pairs_become_the_character_they_encode():
    text = json.dumps(yaml_load_base(), ensure_ascii=True).replace('"business_tag"', '"\\ud83d\\ude00 tag"')
    assert "\\ud83d\\ude00" in text
    [database] = parse(text).databases
    assert database.tag == "\U0001F600 tag"


def yaml_load_base():
    import yaml

    return yaml.safe_load(config())


@pytest.mark.parametrize("escaped, shown", [('\\ud83d', "'\\ud83d'"), ('\\ude00\\ud83d', "'\\ude00'"),
                                             ('x\\udfffy', "'\\udfff'")])
def test_a_lone_surrogate_is_refused_with_its_line_and_column(escaped, shown):
    assert errors(config({"tag: business_tag": f'tag: "{escaped}"'})) == [
        f"{NAME}: line 3, column 10: {shown} is a lone UTF-16 surrogate, not a character "
        f"(a \\uD800-\\uDFFF escape must be half of a pair)"]


def test_a_lone_surrogate_in_a_key_or_a_whitelist_value_is_refused():
    assert errors(config({"events: [insert]": 'events: [insert]\n      columns_to_label: [{"\\udead": [a]}]'})) \
        == [f"{NAME}: line 13, column 27: '\\udead' is a lone UTF-16 surrogate, not a character "
            f"(a \\uD800-\\uDFFF escape must be half of a pair)"]


@pytest.mark.parametrize("value, shown", [
    ("2001-01-01", "datetime.date(2001, 1, 1)"),
    ("!!binary aGVsbG8=", "b'hello'"),
    ("!!set {a}", "{'a'}"),
    ("2001-01-01 10:00:00", "datetime.datetime(2001, 1, 1, 10, 0)"),
])
def test_yaml_timestamps_binaries_and_sets_are_not_strings(value, shown):
    assert errors(config({"tag: business_tag": f"tag: {value}"})) == [
        f"{DB} > tag: {shown} is not of type 'string'"]


@pytest.mark.parametrize("key, value, message", [
    ("port", "99999999999999999999999", "99999999999999999999999 is greater than the maximum of 65535"),
    ("connect_timeout", "4294967297", "4294967297 is greater than the maximum of 3600"),
])
def test_huge_numbers_are_refused(key, value, message):
    assert errors(config({"enabled: true": f"enabled: true\n    {key}: {value}"})) == [f"{DB} > {key}: {message}"]


def test_a_nan_drain_interval_is_refused():
    assert errors(config({"enabled: true": "enabled: true\n    delivery: outbox\n    drain_interval: .nan"})) == [
        f"{DB} > drain_interval: .nan is not a number of seconds"]


def test_a_long_wrong_value_is_cut_short_in_its_message():
    assert errors(config({"tag: business_tag": f"tag: [{'x' * 500}]"})) == [
        f"{DB} > tag: ['{'x' * 98}... (504 characters) is not of type 'string'"]


def test_a_recursive_alias_is_refused_where_it_is_written():
    assert errors("- &a [localhost, *a]\n") == [
        f"{NAME}: line 1, column 18: alias *a refers to a node that contains it (a recursive alias)"]


def test_shared_defaults_by_merge_keys_are_well_within_the_alias_limit():
    monitors = "    monitors: [{table: one, enabled: yes, function: notification_with_payload, events: [insert]}]\n"
    first = ("  - <<: &defaults {tag: t, perform_setup: true, username: postgres, password: x, enabled: true}\n"
             "    database: test0\n" + monitors)
    others = "".join(f"  - <<: *defaults\n    database: test{n}\n" + monitors for n in range(1, 500))
    databases = parse("- localhost:\n" + first + others).databases
    assert [d.name for d in databases] == [f"test{n}" for n in range(500)]
    assert {(d.tag, d.enabled, d.password) for d in databases} == {("t", True, "x")}


def test_control_characters_from_the_config_are_escaped_so_every_message_line_names_the_file():
    """A host key holding a carriage return (found by fuzzing) split a message into a line that
    did not name its file; an escape sequence would rewrite the operator's terminal."""
    text = ('- localhost:\n  - database: "te\\x1bst"\n    tag: x\n    perform_setup: true\n'
            '    username: p\n    password: s\n    enabled: true\n    monitors: []\n  "\\r": null\n')
    assert errors(text) == [
        f"{NAME}: [0]: expected a mapping with exactly one key, got 2",
        f"{NAME}: [0] > \\r: None is not of type 'array'",
        f"{NAME}: [0] > localhost > te\\x1bst > monitors: [] should be non-empty",
    ]
    assert errors(text.replace('"\\r"', '"\\n"'))[1] == f"{NAME}: [0] > \\n: None is not of type 'array'"
