"""Hostile input: arbitrary notification payloads, malformed configs, SQL injection via config.

- Payloads: an oracle written here from the spec's "Notification payload (v1)" section
  (`spec_result`, independent of pgne.payload) predicts each payload's result; Router.classify
  must agree with it on arbitrary input and never raise (unit level, fast), and a running pgne
  must count exactly what it predicts, by result and by series, with the same worker process and
  no series beyond the configured set (one pgne for the whole property, payloads in batches).
  Hand-picked payloads have hand-written expectations as well.
- Config fuzzing: `pgne check` (pgne.cli.main in this process, plus a few subprocess runs) on
  arbitrary YAML-ish text and on mutated valid configs exits 0 or 2, never with a traceback or
  an "internal error", and every error line names the file.
- SQL injection: table, schema, column, whitelist values, channel (and tag / database name,
  which reach SQL comments) hold SQL; `pgne apply` must quote them (the objects in pg_catalog
  carry exactly the hostile names, a victim table survives) or reject them.

Payload tests use the shared server (nothing here stops a server).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import select
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2 import sql
from support.configs import RELIABILITY_TAG, config_text, database_entry
from support.databases import Database, host_label, run_sql, throwaway_database
from support.exporter import PgneProcess
from support.faults import Stopwatch, record
from support.metrics import notifications
from support.processes import pgne_env
from support.waiting import wait_until

from pgne.cli import main as pgne_main

# ================================================================================================
# The payload oracle, from SPEC.md ("Notification payload (v1)", "Metrics"), not from pgne.payload
# ================================================================================================

EVENTS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
LABELS = ("code", "kind")  # the config's label columns, in order of first appearance
MAX_EXACT = 2 ** 53  # a larger count cannot be added exactly to a float counter: rejected as invalid
# table -> (schema, table, events, {label column: whitelist as text})
ROUTES = {
    "public.one": ("public", "one", {"INSERT", "DELETE"}, {"code": {"alpha", "beta", "7", "true", "1.5"}}),
    "app.two": ("app", "two", {"INSERT", "TRUNCATE"}, {}),
    "public.three": ("public", "three", {"UPDATE"}, {"kind": {"x", "y z"}}),
}
ROUTES["one"], ROUTES["three"] = ROUTES["public.one"], ROUTES["public.three"]  # bare name: schema public
MONITORS = [
    {"table": "one", "enabled": True, "function": "notification_with_payload",
     "columns_to_label": [{"code": ["alpha", "beta", 7, True, 1.5]}], "events": ["insert", "DELETE"]},
    {"table": "app.two", "enabled": True, "function": "simple_event_notification", "events": ["Insert", "truncate"]},
    {"table": "three", "enabled": True, "function": "notification_with_payload",
     "columns_to_label": [{"kind": ["x", "y z"]}], "events": ["update"]},
]
CONFIGURED = (
    {(op, "public", "one", code, "") for op in ("INSERT", "DELETE")
     for code in ("alpha", "beta", "7", "true", "1.5", "other")}
    | {("INSERT", "app", "two", "", ""), ("TRUNCATE", "app", "two", "", "")}
    | {("UPDATE", "public", "three", "", kind) for kind in ("x", "y z", "other")}
)
RESULTS = ("counted", "invalid", "unknown_table", "unmonitored_event")


def as_text(value) -> str | None:
    """A JSON value as the whitelist compares it: as text (NULL matches nothing)."""
    if value is None:
        return None
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


DEFAULT_RECURSION_LIMIT = 1000  # what the worker runs with


@contextlib.contextmanager
def default_recursion_limit():
    """Hypothesis raises the recursion limit while a test runs; pgne's worker runs with Python's
    default, which decides how deeply nested a payload json can parse (about 1,000 levels)."""
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(DEFAULT_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


def spec_result(payload: str) -> tuple[str, tuple | None, int]:
    """(result, series key or None, count) of one payload, as the spec describes it."""
    with default_recursion_limit():
        return _spec_result(payload)


def _spec_result(payload: str) -> tuple[str, tuple | None, int]:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON (or nested beyond what can be parsed)
        return "invalid", None, 0
    if not isinstance(obj, dict):
        return "invalid", None, 0
    table, action, data = obj.get("table"), obj.get("action"), obj.get("data")
    count = obj["count"] if "count" in obj else 1
    if not isinstance(table, str) or not isinstance(action, str):
        return "invalid", None, 0
    if not (action.isascii() and action.upper() in EVENTS):  # any (ASCII) case
        return "invalid", None, 0
    if type(count) is not int or not 0 < count <= MAX_EXACT:  # a positive integer; not a bool
        return "invalid", None, 0
    if data is not None and not isinstance(data, dict):
        return "invalid", None, 0
    if table not in ROUTES:
        return "unknown_table", None, 0
    schema, name, events, whitelists = ROUTES[table]
    operation = action.upper()
    if operation not in events:
        return "unmonitored_event", None, 0
    labels = []
    for column in LABELS:
        if column not in whitelists or operation == "TRUNCATE":
            labels.append("")
            continue
        try:
            text = as_text((data or {}).get(column))
        except RecursionError:
            return "invalid", None, 0
        labels.append(text if text in whitelists[column] else "other")
    return "counted", (operation, schema, name, *labels), count


def router():
    from pgne.config import load_config
    from pgne.payload import Router
    from pgne.render import Renderer

    path = Path(SCRATCH) / f"router-{uuid.uuid4().hex}.yml"
    db = Database(name="router", host="127.0.0.1", port=5432, user="postgres")
    path.write_text(config_text(database_entry(db, MONITORS, perform_setup=False, tag=RELIABILITY_TAG)))
    config = load_config(str(path), Renderer())
    assert config.label_names == LABELS
    return Router(config.databases[0], config.label_names)


SCRATCH = "/tmp"


@pytest.fixture(scope="module", autouse=True)
def scratch_dir(tmp_path_factory):
    global SCRATCH
    SCRATCH = str(tmp_path_factory.mktemp("hostile"))
    return SCRATCH


def classify(route, payload: str) -> tuple[str, tuple | None, int]:
    """Router.classify in spec_result's shape."""
    with default_recursion_limit():
        key, count = route.classify(payload)
    if count:
        return "counted", key, count
    return key, None, 0


# ================================================================================================
# payload strategies
# ================================================================================================

TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")  # what text can hold
json_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(TEXT, max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(TEXT, max_size=8), inner, max_size=4), max_leaves=10)
tables = (st.sampled_from(["one", "public.one", "app.two", "two", "three", "public.three", "ONE", "public.One",
                           "nosuch", "app.one", "", " one", "one.", "public.", ".one", "pg_catalog.pg_class"])
          | st.text(TEXT, max_size=15) | json_values)
actions = (st.sampled_from(["INSERT", "insert", "Insert", "DELETE", "delete", "UPDATE", "update", "TRUNCATE",
                            "truncate", "UPSERT", "", "insert ", "\u0131nsert", "\u0130NSERT", "in\u017fert", "SELECT"])
           | st.text(TEXT, max_size=10) | json_values)
counts = (st.sampled_from([0, 1, 2, -1, 2 ** 53, 2 ** 53 + 1, 2 ** 63, 2 ** 64, 10 ** 30, 1.0, 1.5, -0.0, True, False,
                           None, "1", float("nan"), float("inf")])
          | st.integers(-10, 10 ** 6) | json_values)
label_values = (st.sampled_from(["alpha", "beta", "7", "true", "1.5", "ALPHA", "gamma", "", " alpha", None, 7, True,
                                 False, 1.5, 7.0, 1.50, -0.0, [], {}, ["alpha"], {"alpha": 1}, "x", "y z", "other"])
                | json_values)
datas = (st.fixed_dictionaries({}, optional={"code": label_values, "kind": label_values,
                                             "other": label_values, "": json_values})
         | json_values)
objects = st.fixed_dictionaries({}, optional={"table": tables, "action": actions, "count": counts, "data": datas,
                                              "seq": json_values, "timestamp": json_values, "extra": json_values})


def _huge(n: int, filler: str) -> str:
    """A countable payload of about n bytes (UTF-8) with one huge label value."""
    head = '{"table":"one","action":"INSERT","data":{"code":"'
    return head + filler * max(0, (n - len(head) - 3) // len(filler.encode())) + '"}}'


NESTED_HEAD = '{"table":"one","action":"INSERT","data":{"code":'


def _trigger_like(head: str, seq: str) -> str:
    """What json_build_object prints for pgne's triggers ends in `, "seq" : N}`: the worker may
    memoize on what precedes it, so heads that are anything but pgne's own must still be judged
    on the whole payload."""
    return f'{head}, "seq" : {seq}}}'


trigger_heads = (st.sampled_from(['{"table" : "public.one", "action" : "INSERT", "data" : {"code" : "alpha"}, '
                                  '"count" : 3', '{"table" : "public.one", "action" : "DELETE", "data" : '
                                  '{"code" : "zeta"}, "count" : 1', '{"table" : "app.two", "action" : "TRUNCATE", '
                                  '"count" : 1', '{"table" : "one", "action" : "INSERT", "count" : 0',
                                  '{"table" : "one", "action" : "INSERT", "count" : 1, "seq" : 1',
                                  '{"table" : "one", "action" : "INSERT", "data" : "x", "count" : 2',
                                  '{"table" : "one", "action" : "INSERT", "x" : "', "[1", '{"a" : {',
                                  '{"table" : "one", "action" : "INSERT", "data" : {"code" : "alpha"'])
                 | st.text(TEXT, max_size=40) | objects.map(lambda o: json.dumps(o)[:-1]))
trigger_seqs = st.sampled_from(["1", "2", "17", "0", "01", "-1", "1.5", "1e3", "99999999999999999999", "", " 1",
                                "١", "NaN", "1" * 19]) | st.integers(1, 10 ** 18).map(str)
payloads = st.one_of(
    st.builds(_trigger_like, trigger_heads, trigger_seqs),
    objects.map(json.dumps),  # json.dumps writes NaN/Infinity too: Python's json accepts them
    st.text(TEXT, max_size=120),  # mostly not JSON at all
    json_values.map(json.dumps),  # JSON, but seldom an object
    st.builds(_huge, st.integers(1000, 7900), st.sampled_from(["x", "\u00e9", "\u20ac", "\U0001f600"])),
    st.integers(1200, 3900).map(lambda d: "[" * d + "]" * d),  # deeper than Python's json can parse
    st.integers(1200, 3900).map(lambda d: NESTED_HEAD + "[" * d + "]" * d + "}}"),
    st.integers(1, 60).map(lambda d: NESTED_HEAD + "[" * d + "]" * d + "}}"),
    st.sampled_from(['{"table":"nosuch","table":"one","action":"INSERT"}',  # duplicate keys: the last wins
                     '{"table":"one","action":"INSERT","count":1' + "0" * 5000 + "}",  # over Python's int digits
                     '{"table":"one","action":"INSERT"', '{"table":"one",,}', "null", "[]", "{}", "\ufeff{}"]),
).filter(lambda p: len(p.encode("utf-8")) < 8000)  # pg_notify's limit


# ================================================================================================
# unit level: Router.classify
# ================================================================================================

@pytest.fixture(scope="module")
def route():
    return router()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(TEXT, max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_router_classify_never_raises_for_arbitrary_text(route, text):
    result, key, count = classify(route, text)
    assert result in RESULTS
    assert (result, key, count) == spec_result(text)


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(payload=payloads)
def test_router_classify_agrees_with_the_spec_oracle_on_arbitrary_payloads(route, payload):
    got = classify(route, payload)
    assert got == spec_result(payload)
    if got[0] == "counted":
        assert got[1] in CONFIGURED and got[2] >= 1


# hand-picked payloads: (payload, result, series key, count), written by hand from the spec
ONE = ("public", "one")
HAND_PICKED = [
    ('{"table":"one","action":"insert","data":{"code":"alpha"}}', "counted", ("INSERT", *ONE, "alpha", ""), 1),
    ('{"table":"public.one","action":"DeLeTe","data":{"code":"beta"},"count":41}', "counted",
     ("DELETE", *ONE, "beta", ""), 41),
    ('{"table":"one","action":"INSERT","data":{"code":"nope"},"count":2}', "counted", ("INSERT", *ONE, "other", ""), 2),
    ('{"table":"one","action":"INSERT","data":{"code":null}}', "counted", ("INSERT", *ONE, "other", ""), 1),
    ('{"table":"one","action":"INSERT"}', "counted", ("INSERT", *ONE, "other", ""), 1),  # no data: other
    ('{"table":"one","action":"INSERT","data":null}', "counted", ("INSERT", *ONE, "other", ""), 1),
    ('{"table":"one","action":"INSERT","data":{"code":7}}', "counted", ("INSERT", *ONE, "7", ""), 1),
    ('{"table":"one","action":"INSERT","data":{"code":"7"}}', "counted", ("INSERT", *ONE, "7", ""), 1),
    ('{"table":"one","action":"INSERT","data":{"code":true}}', "counted", ("INSERT", *ONE, "true", ""), 1),
    ('{"table":"one","action":"INSERT","data":{"code":1.5}}', "counted", ("INSERT", *ONE, "1.5", ""), 1),
    ('{"table":"one","action":"INSERT","data":{"code":7.0}}', "counted", ("INSERT", *ONE, "other", ""), 1),
    ('{"table":"one","action":"INSERT","data":{"code":["alpha"]}}', "counted", ("INSERT", *ONE, "other", ""), 1),
    ('{"table":"one","action":"INSERT","data":{"code":{"alpha":1}}}', "counted", ("INSERT", *ONE, "other", ""), 1),
    ('{"table":"one","action":"INSERT","data":{"code":"alpha","kind":"x"}}', "counted",
     ("INSERT", *ONE, "alpha", ""), 1),  # kind is not a label of one
    ('{"table":"one","action":"INSERT","data":{"code":"ALPHA"}}', "counted", ("INSERT", *ONE, "other", ""), 1),
    ('{"table":"one","action":"INSERT","count":9007199254740992}', "counted", ("INSERT", *ONE, "other", ""), 2 ** 53),
    ('{"table":"app.two","action":"truncate","data":{"code":"alpha"}}', "counted",
     ("TRUNCATE", "app", "two", "", ""), 1),
    ('{"table":"three","action":"UPDATE","data":{"kind":"y z"},"count":3}', "counted",
     ("UPDATE", "public", "three", "", "y z"), 3),
    ('{"table":"three","action":"UPDATE","data":{"kind":"x","code":"alpha"}}', "counted",
     ("UPDATE", "public", "three", "", "x"), 1),
    ('{"table":"one","action":"INSERT","timestamp":{"a":[1,2]},"seq":"x","extra":1}', "counted",
     ("INSERT", *ONE, "other", ""), 1),
    # invalid
    ("not json at all", "invalid", None, 0),
    ("", "invalid", None, 0),
    ('"a string"', "invalid", None, 0),
    ("42", "invalid", None, 0),
    ("null", "invalid", None, 0),
    ('[{"table":"one","action":"INSERT"}]', "invalid", None, 0),
    ('{"table":"one","action":"INSERT"', "invalid", None, 0),
    ('{"table":"one"}', "invalid", None, 0),
    ('{"action":"INSERT"}', "invalid", None, 0),
    ('{"table":1,"action":"INSERT"}', "invalid", None, 0),
    ('{"table":"one","action":["INSERT"]}', "invalid", None, 0),
    ('{"table":"one","action":"UPSERT"}', "invalid", None, 0),
    ('{"table":"one","action":"\u0131nsert"}', "invalid", None, 0),  # dotless i: not "any case" of INSERT
    ('{"table":"one","action":"INSERT","count":0}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":-3}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":1.0}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":2.5}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":true}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":"3"}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":null}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":NaN}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":9007199254740993}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":1e400}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","count":1' + "0" * 5000 + "}", "invalid", None, 0),
    ('{"table":"one","action":"INSERT","data":"alpha"}', "invalid", None, 0),
    ('{"table":"one","action":"INSERT","data":["alpha"]}', "invalid", None, 0),
    ("[" * 3990 + "]" * 3990, "invalid", None, 0),
    ('{"table":"one","action":"INSERT","data":{"code":' + "[" * 3900 + "]" * 3900 + "}}", "invalid", None, 0),
    # unknown table / unmonitored event
    ('{"table":"nosuch","action":"INSERT"}', "unknown_table", None, 0),
    ('{"table":"two","action":"INSERT"}', "unknown_table", None, 0),  # two is in schema app
    ('{"table":"ONE","action":"INSERT"}', "unknown_table", None, 0),
    ('{"table":"public.one ","action":"INSERT"}', "unknown_table", None, 0),
    ('{"table":"nosuch","table":"one","action":"TRUNCATE"}', "unmonitored_event", None, 0),
    ('{"table":"one","action":"UPDATE","data":{"code":"alpha"}}', "unmonitored_event", None, 0),
    ('{"table":"app.two","action":"delete","count":5}', "unmonitored_event", None, 0),
    ('{"table":"three","action":"INSERT"}', "unmonitored_event", None, 0),
]
HUGE = _huge(7900, "\u20ac")
assert 7800 < len(HUGE.encode()) < 8000
HAND_PICKED.append((HUGE, "counted", ("INSERT", *ONE, "other", ""), 1))


def test_router_classify_gives_the_hand_picked_results(route):
    for payload, result, key, count in HAND_PICKED:
        assert classify(route, payload) == (result, key, count), payload[:200]
        assert spec_result(payload) == (result, key, count), payload[:200]  # the oracle agrees with the hand


# ================================================================================================
# a running pgne
# ================================================================================================

class Exporter:
    """One `pgne run` for the module, and what it should have counted so far."""

    def __init__(self, db, proc: PgneProcess):
        self.db, self.proc = db, proc
        self.results: Counter = Counter({r: 0 for r in RESULTS})
        self.series: Counter = Counter({key: 0 for key in CONFIGURED})
        self.sender = psycopg2.connect(db.dsn)
        [self.worker] = proc.worker_pids()
        self.broken: list[str] | None = None
        self.last_batch: list[str] = []

    def send(self, batch: list[str]) -> None:
        """All payloads in one transaction (distinct, so that none is folded)."""
        assert len(set(batch)) == len(batch)
        self.last_batch = batch
        with self.sender.cursor() as cur:
            cur.execute("SELECT count(pg_notify('pg_notify_exporter', p)) FROM unnest(%s::text[]) AS p", (batch,))
        self.sender.commit()

    def expect(self, result: str, key: tuple | None, count: int) -> None:
        self.results[result] += 1
        if key is not None:
            self.series[key] += count

    def check(self, timeout: float = 60) -> None:
        """Wait until pgne has seen as many notifications as were sent; compare exactly.

        After a first mismatch every later check fails too (the totals are cumulative), so the
        example hypothesis reports after shrinking is not the culprit: the message names the
        batch that broke it."""
        if self.broken is not None:
            raise AssertionError(f"an earlier batch was miscounted: {self.broken!r}")
        try:
            self._check(timeout)
        except AssertionError:
            self.broken = self.last_batch
            raise

    def _check(self, timeout: float) -> None:
        total = sum(self.results.values())
        seen: list[dict] = [{}]

        def caught_up() -> bool:
            seen[0] = notifications(self.proc, self.db)
            return sum(seen[0].values()) >= total

        wait_until(caught_up, timeout, f"{total} notifications processed",
                   lambda: f"seen {seen[0]}, expected {dict(self.results)}\n{self.proc.describe()}")
        samples = self.proc.scrape()
        assert notifications(self.proc, self.db) == {r: float(n) for r, n in self.results.items()}
        events = {}
        for (name, labels), value in samples.items():
            if name == "pgne_events_total" and ("database", self.db.name) in labels:
                d = dict(labels)
                events[(d["operation"], d["schema"], d["table"], d["code"], d["kind"])] = value
        assert events == {k: float(v) for k, v in self.series.items()}  # and no series beyond the config
        stamps = {labels for (name, labels) in samples if name == "pgne_last_event_timestamp_seconds"}
        assert len(stamps) <= len(CONFIGURED)
        assert self.proc.worker_pids() == [self.worker], "the worker was replaced"
        assert self.proc.process.poll() is None

    def close(self) -> None:
        self.sender.close()


@pytest.fixture(scope="module")
def exporter(pg_dsn, tmp_path_factory):
    """A database on the shared server (dropped afterwards) and a pgne counting its channel."""
    with throwaway_database(pg_dsn) as db:
        work = tmp_path_factory.mktemp("hostile-pgne")
        path = work / "events_config.yml"
        path.write_text(config_text(database_entry(db, MONITORS, perform_setup=False, tag=RELIABILITY_TAG)))
        proc = PgneProcess(path, work / "pgne")
        try:
            proc.start(timeout=60)
            exp = Exporter(db, proc)
            yield exp
            exp.close()
        finally:
            proc.kill_leftovers()


# pgne_events_total is a float64: a series is exact while its total stays below 2**53. A single
# payload may carry up to 2**53 (pgne.payload.MAX_COUNT), after which adding 1 to that series is
# lost; so the running pgne gets counts up to 2**40 (the unit tests cover the 2**53 boundary).
EXACT_IN_A_RUN = 2 ** 40


def test_hand_picked_hostile_payloads_are_counted_by_result_by_a_running_pgne(exporter):
    picked = [item for item in HAND_PICKED if item[3] <= EXACT_IN_A_RUN]
    assert len(HAND_PICKED) - len(picked) == 1  # only the 2**53 one
    batch = [payload for payload, *_ in picked]
    for _, result, key, count in picked:
        exporter.expect(result, key, count)
    exporter.send(batch)
    exporter.check()
    assert exporter.results["invalid"] >= 25 and exporter.results["counted"] >= 20


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(batch=st.lists(payloads, min_size=1, max_size=12, unique=True))
def test_arbitrary_payloads_never_crash_the_worker_are_counted_by_result_and_add_no_series(exporter, route, batch):
    expectations = [(payload, spec_result(payload)) for payload in batch]
    batch = [payload for payload, (_, _, count) in expectations if count <= EXACT_IN_A_RUN]
    if not batch:
        return
    for payload, expected in expectations:
        assert classify(route, payload) == expected, payload[:200]
        if expected[2] <= EXACT_IN_A_RUN:
            exporter.expect(*expected)
    exporter.send(batch)
    exporter.check()


# ================================================================================================
# config fuzzing
# ================================================================================================

VALID = [{"localhost": [{
    "database": "test", "tag": "business", "perform_setup": True, "username": "postgres", "password": "secret",
    "enabled": True, "port": 5432, "channel": "pg_notify_exporter", "connect_timeout": 5,
    "monitors": [
        {"table": "one", "enabled": True, "function": "notification_with_payload",
         "columns_to_label": [{"code": ["alpha", "beta", 3, True]}], "events": ["insert", "UPDATE"]},
        {"table": "app.two", "enabled": False, "function": "simple_event_notification", "events": ["delete"]},
    ]}, {
    "database": "other", "tag": "", "perform_setup": False, "username": "u", "password_file": "secret.txt",
    "enabled": False, "delivery": "outbox", "drain_interval": 0.5,
    "monitors": [{"table": "x", "enabled": True, "function": "simple_event_notification", "events": ["truncate"]}],
}]}]
TOKENS = ["- ", ": ", "\n", "  ", "[", "]", "{", "}", ", ", "&a ", "*a", "<<: ", "!!python/object/apply:os.system ",
          "!!binary ", "!!str ", "!!int ", "---\n", "...\n", "%YAML 1.1\n", "? ", "| ", "> ", "'", '"', "# ", "\t",
          "localhost", "database", "monitors", "table", "events", "insert", "password", "password_file", "${HOME}",
          "${PGNE_SURELY_UNSET}", "/etc/shadow", "/", "~", "true", "null", "1e400", ".nan", "0x10", "2001-01-01",
          "\\0", "\u00e9", "\ufeff", "enabled", "function", "notification_with_payload", "columns_to_label", "-1",
          "5432", "99999999999999999999999", "__proto__", "\r"]
yaml_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 64), 2 ** 64) | st.floats()
                | st.text(TEXT, max_size=20)
                | st.sampled_from(["insert", "INSERT", "notification_with_payload", "simple_event_notification",
                                   "_database", "../../etc/passwd", "a.b.c", "${HOME}", "${PGNE_SURELY_UNSET}",
                                   "/nonexistent/file", "", "other", "operation", "__x", "code\n", "insert\n",
                                   "x" * 70, "\u00e9" * 40]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(TEXT, max_size=10) | st.integers(0, 3), inner, max_size=3),
                           max_leaves=8)


def check_in_process(path: Path) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = pgne_main(["check", "-c", str(path)])
    return code, err.getvalue()


def assert_clean_outcome(path: Path, code: int, stderr: str) -> None:
    assert code in (0, 2), f"exit {code}: {stderr}"
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    if code == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines, "exit 2 without a message"
        assert all(str(path) in line for line in lines), stderr


def fuzz_file(text: str | bytes) -> Path:
    path = Path(SCRATCH) / f"fuzz-{uuid.uuid4().hex}.yml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    (path.parent / "secret.txt").write_text("s3cret\n")
    return path


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(TOKENS) | st.text(TEXT, max_size=6), max_size=60))
def test_config_fuzz_arbitrary_yamlish_text_exits_0_or_2_with_a_message_never_a_traceback(parts):
    path = fuzz_file("".join(parts))
    try:
        assert_clean_outcome(path, *check_in_process(path))
    finally:
        path.unlink()


def _paths(node, prefix=()):
    """Every (container, key) in a YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _paths(value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield node, i
            yield from _paths(value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_config_fuzz_mutated_valid_configs_exit_0_or_2_with_a_message_never_a_traceback(data):
    config = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        places = list(_paths(config))
        if not places:
            break
        container, key = data.draw(st.sampled_from(places), label="where")
        op = data.draw(st.sampled_from(["replace", "delete", "add", "wrap", "duplicate"]), label="how")
        if op == "replace":
            container[key] = data.draw(yaml_values, label="value")
        elif op == "delete":
            del container[key]
        elif op == "add" and isinstance(container, dict):
            container[data.draw(st.text(TEXT, max_size=12) | st.sampled_from(["port", "sslmode", "channel",
                                                                                "password", "delivery"]))] = \
                data.draw(yaml_values, label="value")
        elif op == "wrap":
            container[key] = [container[key]]
        elif isinstance(container, list):
            container.append(copy.deepcopy(container[key]))
    as_text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    if data.draw(st.booleans(), label="also damage the text"):
        at = data.draw(st.integers(0, len(as_text)), label="at")
        as_text = as_text[:at] + data.draw(st.sampled_from(TOKENS), label="insert") + as_text[at + 1:]
    path = fuzz_file(as_text)
    try:
        assert_clean_outcome(path, *check_in_process(path))
    finally:
        path.unlink()


VALID_TEXT = yaml.safe_dump(VALID, sort_keys=False)
NASTY_FILES = {
    "deeply nested sequences": "[" * 5000 + "]" * 5000,
    "deeply nested mappings": "{a: " * 400 + "1" + "}" * 400,
    "a recursive alias": "- &a localhost: [*a]\n",
    "invalid UTF-8": b"- localhost:\n  - database: \xff\xfe\n",
    "a NUL in a whitelist value": VALID_TEXT.replace("- alpha", '- "al\\0pha"'),
    "a NUL in the table of a disabled monitor": VALID_TEXT.replace("table: app.two", 'table: "app.t\\0wo"'),
    "a python object tag": "!!python/object/apply:os.system ['true']\n",
    "an empty file": "",
    "a billion laughs": "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                        "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
}


def test_config_fuzz_nasty_files_exit_2_with_a_message_as_a_real_process():
    clock = Stopwatch()
    for what, text in NASTY_FILES.items():
        path = fuzz_file(text)
        result = subprocess.run([sys.executable, "-m", "pgne", "check", "-c", str(path)], capture_output=True,
                                text=True, timeout=60, cwd=SCRATCH, env=pgne_env())
        assert result.returncode == 2, (what, result.returncode, result.stderr)
        assert_clean_outcome(path, result.returncode, result.stderr)
        assert_clean_outcome(path, *check_in_process(path))
    record("config fuzzing: nasty files as real processes", clock.elapsed())


# ================================================================================================
# SQL injection through config values
# ================================================================================================

HOSTILE_TABLE = "t\"; DROP TABLE victim; --'$$\\"
HOSTILE_SCHEMA = "s'); DROP TABLE victim; --\"$pgne$"
HOSTILE_VALUES = ["a'); DROP TABLE victim; --", "$$; DROP TABLE victim; $$", "$pgne$", "$pgne",
                  "\\'; DROP TABLE victim; --", "\"; DROP TABLE victim; --", "line\nDROP TABLE victim;", "E'x'"]
HOSTILE_CHANNEL = "c\"; DROP TABLE victim; --'$$"
HOSTILE_COLUMN = "code\"; DROP TABLE victim; --"
assert all(len(s.encode()) <= 63 for s in (HOSTILE_TABLE, HOSTILE_SCHEMA, HOSTILE_CHANNEL))


def apply_config(tmp_path: Path, db, monitors, **entry) -> tuple[int, str, str]:
    path = tmp_path / f"inject-{uuid.uuid4().hex[:6]}.yml"
    path.write_text(config_text(database_entry(db, monitors, **{"tag": RELIABILITY_TAG, **entry})))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = pgne_main(["apply", "-c", str(path)])
    return code, out.getvalue(), err.getvalue()


def catalog(db) -> dict:
    conn = psycopg2.connect(db.dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.victim') IS NOT NULL")
            victim = cur.fetchone()[0]
            cur.execute("SELECT n.nspname, c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname LIKE 'pgne\\_%'")
            triggers = set(cur.fetchall())
            cur.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = 'pgne'")
            functions = cur.fetchone()[0]
        return {"victim": victim, "triggers": triggers, "functions": functions}
    finally:
        conn.close()


def received(db, channel: str, statement, timeout: float = 15) -> list[dict]:
    """LISTEN on `channel`, run `statement` (committed), return the payloads that arrived."""
    listener = psycopg2.connect(db.dsn)
    listener.autocommit = True
    try:
        with listener.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        run_sql(db, statement)
        run_sql(db, ("SELECT pg_notify(%s, 'done')", (channel,)))
        got: list[str] = []

        def done() -> bool:
            select.select([listener], [], [], 0.2)
            listener.poll()
            got.extend(n.payload for n in listener.notifies)
            listener.notifies.clear()
            return "done" in got

        wait_until(done, timeout, "the notifications", lambda: str(got))
        return [json.loads(p) for p in got if p != "done"]
    finally:
        listener.close()


@pytest.fixture
def victim_db(pg_database):
    run_sql(pg_database, "CREATE TABLE victim (id int)")
    return pg_database


def test_sql_injection_through_the_table_name_is_quoted(victim_db, tmp_path):
    db = victim_db
    run_sql(db, sql.SQL("CREATE TABLE {} (id serial, code text)").format(sql.Identifier(HOSTILE_TABLE)))
    code, out, err = apply_config(tmp_path, db, [{"table": HOSTILE_TABLE, "enabled": True,
                                                  "function": "notification_with_payload",
                                                  "columns_to_label": [{"code": ["a"]}],
                                                  "events": ["insert", "delete"]}])
    assert code == 0, out + err
    state = catalog(db)
    assert state["victim"]
    assert state["triggers"] == {("public", HOSTILE_TABLE, "pgne_insert"), ("public", HOSTILE_TABLE, "pgne_delete")}
    payloads = received(db, "pg_notify_exporter", sql.SQL("INSERT INTO {} (code) VALUES ('a'), ('b')").format(
        sql.Identifier(HOSTILE_TABLE)))
    assert sorted((p["table"], p["data"]["code"], p["count"]) for p in payloads) == [
        (f"public.{HOSTILE_TABLE}", "a", 1), (f"public.{HOSTILE_TABLE}", "other", 1)]


def test_sql_injection_through_the_schema_name_is_quoted(victim_db, tmp_path):
    db = victim_db
    run_sql(db, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE_SCHEMA)),
            sql.SQL("CREATE TABLE {}.plain (id int)").format(sql.Identifier(HOSTILE_SCHEMA)))
    code, out, err = apply_config(tmp_path, db, [{"table": f"{HOSTILE_SCHEMA}.plain", "enabled": True,
                                                  "function": "simple_event_notification", "events": ["insert"]}])
    assert code == 0, out + err
    state = catalog(db)
    assert state["victim"] and state["triggers"] == {(HOSTILE_SCHEMA, "plain", "pgne_insert")}
    statement = sql.SQL("INSERT INTO {}.plain SELECT generate_series(1, 3)").format(sql.Identifier(HOSTILE_SCHEMA))
    [payload] = received(db, "pg_notify_exporter", statement)
    assert (payload["table"], payload["action"], payload["count"]) == (f"{HOSTILE_SCHEMA}.plain", "INSERT", 3)
    # and the disabled monitor's teardown path quotes it too
    code, out, err = apply_config(tmp_path, db, [{"table": f"{HOSTILE_SCHEMA}.plain", "enabled": False,
                                                  "function": "simple_event_notification", "events": ["insert"]}])
    assert code == 0, out + err
    state = catalog(db)
    assert state["victim"] and state["triggers"] == set()


def test_sql_injection_through_a_label_column_is_rejected_and_a_reserved_word_column_is_quoted(victim_db, tmp_path):
    db = victim_db
    run_sql(db, sql.SQL("CREATE TABLE labelled (id serial, {} text, \"select\" text)").format(
        sql.Identifier(HOSTILE_COLUMN)))
    code, out, err = apply_config(tmp_path, db, [{"table": "labelled", "enabled": True,
                                                  "function": "notification_with_payload",
                                                  "columns_to_label": [{HOSTILE_COLUMN: ["a"]}], "events": ["insert"]}])
    assert code == 2 and "not a valid Prometheus label name" in err, out + err
    assert catalog(db) == {"victim": True, "triggers": set(), "functions": 0}  # nothing was applied
    # `select` is a valid label name and an SQL reserved word: quoted, it works
    code, out, err = apply_config(tmp_path, db, [{"table": "labelled", "enabled": True,
                                                  "function": "notification_with_payload",
                                                  "columns_to_label": [{"select": ["a"]}], "events": ["insert"]}])
    assert code == 0, out + err
    assert catalog(db)["triggers"] == {("public", "labelled", "pgne_insert")}
    payloads = received(db, "pg_notify_exporter", 'INSERT INTO labelled ("select") VALUES (\'a\'), (\'a\'), (NULL)')
    assert sorted((p["data"]["select"], p["count"]) for p in payloads) == [("a", 2), ("other", 1)]


def test_sql_injection_through_whitelist_values_is_quoted(victim_db, tmp_path):
    db = victim_db
    run_sql(db, "CREATE TABLE one (id serial, code text)")
    code, out, err = apply_config(tmp_path, db, [{"table": "one", "enabled": True,
                                                  "function": "notification_with_payload",
                                                  "columns_to_label": [{"code": HOSTILE_VALUES}],
                                                  "events": ["insert"]}])
    assert code == 0, out + err
    assert catalog(db)["victim"]
    payloads = received(db, "pg_notify_exporter", ("INSERT INTO one (code) SELECT unnest(%s::text[])",
                                                   (HOSTILE_VALUES + ["$$", "x"],)))
    counted = {p["data"]["code"]: p["count"] for p in payloads}
    assert counted == {**{v: 1 for v in HOSTILE_VALUES}, "other": 2}  # each value exactly, as data


def test_sql_injection_through_the_channel_is_quoted_and_pgne_counts_on_it(victim_db, tmp_path):
    db = victim_db
    run_sql(db, "CREATE TABLE one (id serial, code text)")
    monitors = [{"table": "one", "enabled": True, "function": "notification_with_payload",
                 "columns_to_label": [{"code": ["alpha"]}], "events": ["insert"]}]
    code, out, err = apply_config(tmp_path, db, monitors, channel=HOSTILE_CHANNEL)
    assert code == 0, out + err
    assert catalog(db)["victim"]
    [payload] = received(db, HOSTILE_CHANNEL, "INSERT INTO one (code) VALUES ('alpha')")
    assert payload["data"] == {"code": "alpha"}
    # pgne run LISTENs on exactly that channel
    path = tmp_path / "run.yml"
    path.write_text(config_text(database_entry(db, monitors, channel=HOSTILE_CHANNEL, tag="rel")))
    proc = PgneProcess(path, tmp_path / "pgne")
    try:
        proc.start(timeout=60)
        run_sql(db, "INSERT INTO one (code) VALUES ('alpha'), ('alpha'), ('zeta')")
        labels = {"operation": "INSERT", "host": host_label(db.host, db.port), "database": db.name, "tag": "rel",
                  "schema": "public", "table": "one", "code": "alpha"}
        proc.wait_for_value("pgne_events_total", labels, 2, timeout=30)
        proc.wait_for_value("pgne_events_total", dict(labels, code="other"), 1, timeout=30)
    finally:
        proc.kill_leftovers()
    assert catalog(db)["victim"]


def test_sql_injection_through_tag_and_database_name_only_reaches_escaped_comments(pg_dsn, tmp_path):
    """tag, host and database name appear in the header comment of the script: a newline must
    not end the comment."""
    with throwaway_database(pg_dsn, "db\n; DROP TABLE victim; --") as db:
        run_sql(db, "CREATE TABLE victim (id int)", "CREATE TABLE one (id int)")
        code, out, err = apply_config(tmp_path, db, [{"table": "one", "enabled": True,
                                                      "function": "simple_event_notification", "events": ["insert"]}],
                                      tag="t\nDROP TABLE victim; --")
        assert code == 0, out + err
        state = catalog(db)
        assert state["victim"] and state["triggers"] == {("public", "one", "pgne_insert")}

