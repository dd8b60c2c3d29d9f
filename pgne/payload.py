"""Parses v1 notification payloads and maps them to a metric series; pure logic, no I/O.

A v1 payload is a JSON object: `table` ("schema.table", or "table" for schema public),
`action` (INSERT, UPDATE, DELETE, TRUNCATE; any case), optional `data` (label column ->
value), optional `count` (positive integer, default 1), optional `timestamp` and `seq` (not
used for counting), optional `values` (observed column -> its histogram over the rows counted:
{"count": finite values, "sum": their sum (decimal text or a JSON number), "buckets": {bound:
values <= bound}, "null": n, "not_finite": n}; see Observation). A payload without `values` is
exactly what it always was; one whose `values` are malformed, or lack a configured bucket, is
counted all the same and its values are not (see Router.classify).
pg_notify_exporter's payloads are v1 payloads whose `data` may hold raw column values, so the
whitelist is applied here too: unlisted values count as `other`.
"""
from __future__ import annotations

import decimal
import json
import json.scanner
import re
from dataclasses import dataclass
from itertools import product
from typing import Callable, Iterator

from pgne.model import EVENTS, OTHER, Database, ObservedColumn, value_as_text

COUNTED, INVALID, UNKNOWN_TABLE, UNMONITORED_EVENT = "counted", "invalid", "unknown_table", "unmonitored_event"
RESULTS = (COUNTED, INVALID, UNKNOWN_TABLE, UNMONITORED_EVENT)
MAX_COUNT = 2**53  # larger counts cannot be added exactly to a float counter
MAX_PRECREATED_COMBINATIONS = 1000  # per monitor and event; beyond that, series appear when seen

_EVENT_BY_ACTION = {event.lower(): event for event in EVENTS}
_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner json.loads ends up in
# How json_build_object prints the last key of pgne's payloads; see Router.classifier.
SEQ_SEPARATOR = ', "seq" : '
MEMO_SIZE = 2048  # payloads less their seq remembered per worker (label groups x counts seen)


class LongInteger(str):
    """A JSON integer too long for int() (sys.get_int_max_str_digits(), 4,300 digits), as its text:
    a `sum` parses it as decimal text, bounded like any other (sum_in_bounds); anywhere an int is
    wanted (`count`, a bucket's count) it is not one, so only that part is refused; a label value
    prints as the digits, as PostgreSQL prints the number."""


def _int_or_long(text: str) -> int | LongInteger:
    try:
        return int(text)
    except ValueError:
        return LongInteger(text)


def _loads(payload: str) -> object:
    """json.loads(payload), without its Python-level wrappers for the common case (a third to half
    of a small payload): the C scanner straight from the first character. Whatever it does not
    consume whole (leading or trailing whitespace, a BOM, garbage) goes to json.loads, whose
    answer or error stands. A payload with an integer too long for int() (whose ValueError is not
    a JSONDecodeError) is parsed again with such integers as LongInteger: it is valid JSON, and
    one odd value must not make its rows uncounted. Only then: parse_int costs every integer a call."""
    try:
        try:
            obj, end = _scan_once(payload, 0)
        except StopIteration:
            return json.loads(payload)
        if end != len(payload):
            return json.loads(payload)
        return obj
    except json.JSONDecodeError:
        raise
    except ValueError:
        return json.loads(payload, parse_int=_int_or_long)


# Sums are added exactly (PostgreSQL's numeric has up to 131,072 digits before the point):
# decimal's default context would round them to 28 digits.
EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
# What a sum may carry: a value PostgreSQL's numeric can hold (131,072 digits before the point,
# 16,383 after; float8's 1.8e308 and 4.9e-324 are well inside), with 20 digits to spare before
# the point for sums of up to 10^20 such values (pgne.totals). An exact sum costs memory and time
# in proportion to the span from its highest to its lowest digit: "1e999999999999999999" added
# to 1 would need 10^18 digits. Anything outside these bounds is malformed: skipped, never added.
MAX_SUM_INTEGER_DIGITS = 131_072 + 20
MAX_SUM_FRACTION_DIGITS = 16_383
# A sum's text: PostgreSQL's numeric and float8 output (and str(Decimal)'s, in pgne.totals), in
# ASCII digits only. decimal.Decimal() alone would also take "1_0", " 5 ", "١" (other scripts'
# digits), "Infinity": not what PostgreSQL sends.
_SUM_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


# float(Decimal) prints the whole number first: 0.8 ms for a sum of 147,000 digits, once per
# batch and series. Rounding it first to 800 significant digits "to odd" (ROUND_05UP: towards
# zero, but away from a last digit of 0 or 5) keeps the float64 it is nearest to: every midpoint
# between two float64s has at most 768 significant digits, so it is kept exactly, and a value
# near one stays on its side of it. Microseconds, whatever the length.
_FOR_FLOAT = decimal.Context(prec=800, rounding=decimal.ROUND_05UP, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def nearest_float(total: decimal.Decimal) -> float:
    """float(total), the float64 nearest to the exact sum, in time that does not grow with its digits."""
    return float(_FOR_FLOAT.plus(total))


def sum_in_bounds(total: decimal.Decimal) -> bool:
    """Is `total` (finite) a sum pgne adds: at most MAX_SUM_INTEGER_DIGITS digits before the point
    and MAX_SUM_FRACTION_DIGITS after it (a zero's exponent counts too: 0E-999999999 + 1 is as
    long as 1E-999999999 + 1)?"""
    return total.as_tuple().exponent >= -MAX_SUM_FRACTION_DIGITS and total.adjusted() < MAX_SUM_INTEGER_DIGITS


@dataclass(frozen=True)
class Observation:
    """One observed column's histogram over the rows of a payload (or of several, added)."""

    column: ObservedColumn
    count: int  # finite values
    sum: decimal.Decimal  # their sum, exact
    buckets: tuple[int, ...]  # finite values <= each of column.buckets (cumulative)
    null: int = 0  # rows whose value is NULL: not observed
    not_finite: int = 0  # NaN, Infinity, -Infinity: not observed

    def plus(self, other: Observation) -> Observation:
        return Observation(self.column, self.count + other.count, EXACT.add(self.sum, other.sum),
                           tuple(a + b for a, b in zip(self.buckets, other.buckets)),
                           self.null + other.null, self.not_finite + other.not_finite)


def _count_value(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def parse_observation(column: ObservedColumn, raw: object, lenient: bool = False) -> Observation | None:
    """An Observation of `column` from a payload's `values` entry (or an outbox total's); None
    if it is malformed: not an object, counts that are not integers from 0 to 2^53, a sum that is
    not a JSON number or decimal text as PostgreSQL prints it (_SUM_TEXT), or is outside
    sum_in_bounds, a configured bucket missing, or buckets that are not cumulative.
    `lenient` (durable outbox totals, which predate a bound added to the config since): a
    missing bound holds what the greatest stored bound below it holds (pgne.outbox.merge_buckets)."""
    if type(raw) is not dict:
        return None
    count, total, null, not_finite = raw.get("count"), raw.get("sum", 0), raw.get("null", 0), raw.get("not_finite", 0)
    if not (_count_value(count) and _count_value(null) and _count_value(not_finite)):
        return None
    if type(total) in (str, LongInteger):
        if not _SUM_TEXT.fullmatch(total):
            return None
        try:
            total = decimal.Decimal(total)
        except decimal.InvalidOperation:
            return None
    elif type(total) in (int, float):
        total = decimal.Decimal(repr(total))  # the number as written: 0.1, not float 0.1's binary value
    else:
        return None
    if not total.is_finite() or not sum_in_bounds(total):
        return None
    buckets: tuple[int, ...] = ()
    if column.buckets:
        raw_buckets = raw.get("buckets")
        if type(raw_buckets) is not dict:
            return None
        by_bound = {}
        for bound, n in raw_buckets.items():
            try:
                by_bound[float(bound)] = n
            except (ValueError, OverflowError):
                continue  # not a bound of ours: ignored, like keys pgne does not know
        buckets = tuple(by_bound.get(bound) for bound in column.buckets)
        if lenient:
            stored = sorted(by_bound.items())
            buckets = tuple(n if n is not None else next((m for b, m in reversed(stored) if b < bound), 0)
                            for bound, n in zip(column.buckets, buckets))
        previous = 0
        for n in buckets:
            if not _count_value(n) or n < previous or n > count:
                return None
            previous = n
    return Observation(column, count, total, buckets, null, not_finite)


@dataclass(frozen=True)
class _Route:
    schema: str
    table: str
    events: frozenset[str]
    # per label of the whole config, in order: the whitelist, or None when the monitor lacks it
    whitelists: tuple[frozenset[str] | None, ...]
    label_columns: tuple[str | None, ...]
    observed: tuple[ObservedColumn, ...] = ()


class Router:
    """Maps payloads of one database to series keys: (operation, schema, table, *label values).

    Built once per worker; `classify` is the hot path.
    """

    def __init__(self, database: Database, label_names: tuple[str, ...]):
        self.label_names = label_names
        self._routes: dict[str, _Route] = {}
        self._empty_labels = ("",) * len(label_names)
        for monitor in database.enabled_monitors:
            columns = {c.name: frozenset(c.values) for c in monitor.label_columns}
            route = _Route(
                schema=monitor.schema,
                table=monitor.table,
                events=frozenset(monitor.events),
                whitelists=tuple(columns.get(name) for name in label_names),
                label_columns=tuple(name if name in columns else None for name in label_names),
                observed=monitor.observed_columns,
            )
            if monitor.schema == "public":  # pg_notify_exporter sent bare table names
                self._routes.setdefault(monitor.table, route)
            self._routes[monitor.qualified_name] = route  # a qualified name always wins

    def classify(self, payload: str) -> tuple:
        """(series key, count) for a countable payload; (result name, 0) otherwise. Never raises.

        A countable payload with a `values` key gives (series key, count, observations): a tuple
        of Observation of the columns its table's monitor observes (others are ignored), or None
        when the values are malformed (the rows are counted, their values are not)."""
        try:
            obj = _loads(payload)
            if type(obj) is not dict:
                return INVALID, 0
            table, action = obj.get("table"), obj.get("action")
            count = obj.get("count", 1)
            if (type(table) is not str or type(action) is not str
                    or type(count) is not int or not 0 < count <= MAX_COUNT):
                return INVALID, 0
            result = self.key_for(table, action, obj.get("data"), count)
            if "values" not in obj or not result[1]:
                return result
            return result + (self.observations(table, obj["values"]),)
        except (ValueError, RecursionError):  # not JSON; or nested deeper than json can parse or
            return INVALID, 0                 # print (a 7,999-byte payload nests ~4,000 levels)

    def observations(self, table: str, values: object) -> tuple[Observation, ...] | None:
        """The Observations of a payload's `values` (see classify); None if malformed."""
        if type(values) is not dict:
            return None
        route = self._routes[table]
        observations = []
        for column in route.observed:
            if column.name in values:
                observation = parse_observation(column, values[column.name])
                if observation is None:
                    return None
                observations.append(observation)
        return tuple(observations)

    def key_for(self, table: str, action: str, data: object, count: int = 1) -> tuple[object, int]:
        """Like classify, for a payload already decoded (outbox rows come as columns)."""
        operation = _EVENT_BY_ACTION.get(action.lower())
        if operation is None or (data is not None and type(data) is not dict):
            return INVALID, 0
        route = self._routes.get(table)
        if route is None:
            return UNKNOWN_TABLE, 0
        if operation not in route.events:
            return UNMONITORED_EVENT, 0
        if operation == "TRUNCATE" or not route.whitelists:
            return (operation, route.schema, route.table) + self._empty_labels, count
        labels = []
        for column, whitelist in zip(route.label_columns, route.whitelists):
            if whitelist is None:
                labels.append("")
                continue
            value = value_as_text(data.get(column)) if data else None
            labels.append(value if value in whitelist else OTHER)
        return (operation, route.schema, route.table, *labels), count

    @property
    def observes(self) -> bool:
        return any(route.observed for route in self._routes.values())

    def observed_columns(self, key: tuple) -> tuple[ObservedColumn, ...]:
        """The columns observed for a series key (none for TRUNCATE: no row images)."""
        route = self._routes.get(f"{key[1]}.{key[2]}")
        return route.observed if route is not None and key[0] != "TRUNCATE" else ()

    def configured_keys(self) -> Iterator[tuple[str, ...]]:
        """Every series the config names, for pre-creation at 0.

        A monitor/event whose label combinations exceed MAX_PRECREATED_COMBINATIONS is skipped
        (its series appear when first seen).
        """
        seen = set()
        for route in self._routes.values():
            if route in seen:
                continue
            seen.add(route)
            choices = [("",) if wl is None else tuple(sorted(wl)) + (OTHER,) for wl in route.whitelists]
            combinations = 1
            for c in choices:
                combinations *= len(c)
            for event in EVENTS:
                if event not in route.events:
                    continue
                if event == "TRUNCATE":
                    yield (event, route.schema, route.table) + self._empty_labels
                elif combinations <= MAX_PRECREATED_COMBINATIONS:
                    for labels in product(*choices):
                        yield (event, route.schema, route.table, *labels)

    def classifier(self, memo_size: int = MEMO_SIZE) -> Callable[[str], tuple]:
        """`classify`, memoized on the payload less its `seq`: the hot path's classifier.

        pgne's triggers send json_build_object(..., 'seq', n) payloads: one statement's label
        groups, and its successive statements, differ only in the trailing `"seq" : n` (and
        `count`). Whatever precedes `, "seq" : <digits>}` at the very end decides the
        classification: the seq is a top-level key (its `}` ends the payload; the separator's
        unescaped quotes cannot sit inside a JSON string); a JSON integer in canonical form (no
        sign, no leading zero, at most 18 digits; _loads takes any length) never changes
        whether the payload is valid JSON; and seq is not used for counting. So such payloads
        are json.loads'ed once per distinct head. Any other payload (pg_notify_exporter's,
        jsonb-printed ones) takes `classify` every time.
        """
        classify = self.classify
        memo: dict[str, tuple] = {}

        def classify_memoized(payload: str) -> tuple:
            head, sep, tail = payload.rpartition(SEQ_SEPARATOR)
            if sep:
                digits = tail[:-1]
                if (tail[-1:] == "}" and 0 < len(digits) <= 18 and digits.isdigit() and digits.isascii()
                        and (digits[0] != "0" or len(digits) == 1)):
                    result = memo.get(head)
                    if result is None:
                        result = classify(payload)
                        if len(memo) >= memo_size:
                            memo.clear()
                        memo[head] = result
                    return result
            return classify(payload)

        return classify_memoized
