"""The exporter conventions' pure parts: the spellings the argparse layer accepts, Accept-Encoding,
and the logfmt/JSON line formats (tests/integration/test_conventions.py runs them in pgne run)."""
from __future__ import annotations

import json
import logging

import pytest

from pgne import logs
from pgne.cli import build_parser
from pgne.http import accepts_gzip


@pytest.mark.parametrize("command", ["check", "render-sql", "apply", "run", "status", "demo"])
def test_log_level_with_a_dot_is_the_same_option_as_with_a_dash(command):
    parser = build_parser()
    assert parser.parse_args([command, "--log.level", "debug"]).log_level == "DEBUG"
    assert parser.parse_args([command, "--log-level", "warning"]).log_level == "WARNING"
    assert parser.parse_args([command, "--log.format", "json"]).log_format == "json"
    assert parser.parse_args([command]).log_format is None


def test_web_listen_address_is_listen_address_and_the_defaults_are_todays():
    parser = build_parser()
    defaults = parser.parse_args(["run"])
    assert (defaults.listen_address, defaults.telemetry_path, defaults.enable_lifecycle) == \
        ("0.0.0.0:9292", "/metrics", False)
    assert parser.parse_args(["run", "--web.listen-address", ":1"]).listen_address == ":1"
    assert parser.parse_args(["run", "--listen-address", ":2"]).listen_address == ":2"


@pytest.mark.parametrize("header, expected", [
    ("gzip", True), ("gzip, deflate, br", True), ("deflate, GZIP;q=0.5", True), ("*", True), ("x-gzip", True),
    ("", False), ("identity", False), ("gzip;q=0", False), ("gzip; q=0.0, identity", False), ("br", False),
    ("gzip;q=x", False),
])
def test_accepts_gzip(header, expected):
    assert accepts_gzip(header) is expected


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("pgne.master", logging.INFO, __file__, 1, msg, args, None)
    record.created, record.msecs, record.process = 1733326685.25, 250.0, 42
    record.__dict__.update(extra)
    return record


def test_logfmt_quotes_and_escapes_only_what_needs_it():
    line = logs.formatter("logfmt").format(_record('%s: said "hi"\\ok\nthen a=b', "h:5432/app",
                                                   **logs.for_database("h:5432/app")))
    assert line == ('time=2024-12-04T15:38:05.250Z level=info logger=pgne.master pid=42 database=h:5432/app '
                    'msg="h:5432/app: said \\"hi\\"\\\\ok\\nthen a=b"')
    assert logs.formatter("logfmt").format(_record("stopping")).endswith(" pid=42 msg=stopping")


def test_json_is_one_object_per_line_with_the_database_when_given():
    text = logs.formatter("json").format(_record("%s: up\nagain", "h/app", **logs.for_database("h/app")))
    assert "\n" not in text
    assert json.loads(text) == {"time": "2024-12-04T15:38:05.250Z", "level": "info", "logger": "pgne.master",
                                "pid": 42, "msg": "h/app: up\nagain", "database": "h/app"}
    assert "database" not in json.loads(logs.formatter("json").format(_record("stopping")))


HOSTILE = "evil\x1b[2J\x00\x7f\x85x\u2028y\u2029\ud800\U000e0001 \"q\" \\ é 日本"


def test_every_format_escapes_what_is_not_printable_by_one_rule():
    """logfmt and JSON in JSON's spelling (\\u001b: what their parsers decode), the default
    format in Python's (\\x1b): the same characters in each, and nothing else."""
    record = _record("db %s", HOSTILE, **logs.for_database(HOSTILE))
    logfmt = logs.formatter("logfmt").format(record)
    quoted = ('"evil\\u001b[2J\\u0000\\u007f\\u0085x\\u2028y\\u2029\\ud800\\udb40\\udc01 '
              '\\"q\\" \\\\ é 日本"')
    assert logfmt == (f"time=2024-12-04T15:38:05.250Z level=info logger=pgne.master pid=42 database={quoted} "
                      f"msg={quoted[0]}db {quoted[1:]}")
    text = logs.formatter("json").format(record)
    assert text == ('{"time": "2024-12-04T15:38:05.250Z", "level": "info", "logger": "pgne.master", "pid": 42, '
                    f'"msg": {quoted[0]}db {quoted[1:]}, "database": {quoted}}}')
    assert json.loads(text)["database"] == HOSTILE
    plain = logs.formatter(None).format(record)
    assert plain.endswith(" INFO pgne.master[42]: db evil\\x1b[2J\\x00\\x7f\\x85x\\u2028y\\u2029\\ud800"
                          "\\U000e0001 \"q\" \\ é 日本")
    assert logfmt.isprintable() and text.isprintable() and plain.isprintable()


def test_without_a_format_the_lines_are_todays():
    record = _record("stopping")
    assert logs.formatter(None).format(record).endswith(" INFO pgne.master[42]: stopping")
    assert logs.LOG_FORMAT == "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
