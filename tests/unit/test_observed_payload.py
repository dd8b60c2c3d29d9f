"""The payload's optional `values` (columns_to_observe): parsed exactly, malformed values
skipped while the rows stay counted, a payload without values unchanged."""
from __future__ import annotations

import json
import math
from decimal import Decimal

import pytest
from support.inline_configs import config, parse

from pgne.model import ObservedColumn
from pgne.payload import EXACT, INVALID, Observation, Router

AMOUNT = ObservedColumn("amount", (10.0, 100.5), "euros")
CONFIG = config({"      events: [insert]\n": "      columns_to_label:\n      - code: [alpha]\n"
                                              "      columns_to_observe:\n      - name: amount\n"
                                              "        buckets: [10, 100.5]\n        unit: euros\n"
                                              "      events: [insert]\n"})
KEY = ("INSERT", "public", "one", "alpha")


def router() -> Router:
    cfg = parse(CONFIG)
    return Router(cfg.databases[0], cfg.label_names)


def payload(values: object = None, **extra) -> str:
    obj = {"table": "public.one", "action": "INSERT", "data": {"code": "alpha"}, "count": 3, **extra}
    if values is not None:
        obj["values"] = values
    return json.dumps(obj)


def test_a_payload_without_values_is_classified_as_always():
    assert router().classify(payload()) == (KEY, 3)


def test_values_are_parsed_exactly_and_bounds_compared_as_numbers():
    many = "12345678901234567890.123456789012345678"
    result = router().classify(payload({"amount": {"count": 2, "sum": many, "buckets": {"10.0": 1, "100.5": 2},
                                                   "null": 1}, "not_observed": {"count": "x"}}))
    assert result == (KEY, 3, (Observation(AMOUNT, 2, Decimal(many), (1, 2), 1, 0),))
    # keys written as pgne's triggers write them, or any other way of writing the same number
    assert router().classify(payload({"amount": {"count": 1, "sum": 0.1, "buckets": {"1e1": 1, "100.50": 1}}}))[2] \
        == (Observation(AMOUNT, 1, Decimal("0.1"), (1, 1)),)


@pytest.mark.parametrize("values", [
    "not an object",
    {"amount": "not an object"},
    {"amount": {"sum": "1"}},  # no count
    {"amount": {"count": -1, "sum": "1", "buckets": {"10": 0, "100.5": 0}}},
    {"amount": {"count": 1, "sum": "NaN", "buckets": {"10": 0, "100.5": 0}}},
    {"amount": {"count": 1, "sum": "one", "buckets": {"10": 0, "100.5": 0}}},
    {"amount": {"count": 1, "sum": [1], "buckets": {"10": 0, "100.5": 0}}},
    {"amount": {"count": 1, "sum": "1", "buckets": {"10": 0}}},  # a configured bound missing
    {"amount": {"count": 1, "sum": "1", "buckets": {"10": 1, "100.5": 0}}},  # not cumulative
    {"amount": {"count": 1, "sum": "1", "buckets": {"10": 0, "100.5": 2}}},  # more than count
    {"amount": {"count": 1, "sum": "1", "buckets": {"10": 0, "100.5": 1}, "null": True}},
])
def test_malformed_values_leave_the_rows_counted_and_the_values_skipped(values):
    assert router().classify(payload(values)) == (KEY, 3, None)


def test_an_invalid_payload_stays_invalid_whatever_its_values():
    assert router().classify(payload({"amount": {"count": 1}}, count=0)) == (INVALID, 0)


def test_the_memoized_classifier_gives_the_same_answers_for_payloads_with_values():
    r = router()
    classify = r.classifier()
    text = payload({"amount": {"count": 2, "sum": "3.5", "buckets": {"10": 2, "100.5": 2}}})
    with_seq = text[:-1] + ', "seq" : 17}'
    assert classify(with_seq) == classify(with_seq[:-3] + '18}') == r.classify(with_seq)
    assert classify(with_seq)[2] == (Observation(AMOUNT, 2, Decimal("3.5"), (2, 2)),)


def test_observations_of_one_series_add_exactly():
    a = Observation(AMOUNT, 2, Decimal("0.1"), (1, 2), 1, 0)
    b = Observation(AMOUNT, 3, Decimal("1" + "0" * 40 + ".2"), (0, 3), 0, 2)
    assert a.plus(b) == Observation(AMOUNT, 5, Decimal("1" + "0" * 40 + ".3"), (1, 5), 1, 2)


def _sum(text: object) -> str:
    return payload({"amount": {"count": 1, "sum": text, "buckets": {"10": 1, "100.5": 1}}})


@pytest.mark.parametrize("total", [
    "1e999999999999999999",  # exact addition to 1 would need 10^18 digits: MemoryError
    "1e300000000",  # seconds of CPU and hundreds of MB per addition
    "-1e131092",  # one digit more before the point than pgne adds
    "0e-999999999",  # a zero: adding it to 1 is as long as adding 1e-999999999
    "1e-16384",  # one digit more after the point than PostgreSQL's numeric holds
    "1e" + "9" * 5000,  # an exponent decimal cannot even hold
])
def test_a_sum_outside_what_postgresql_can_hold_is_skipped_and_its_rows_counted(total):
    assert router().classify(_sum(total)) == (KEY, 3, None)


@pytest.mark.parametrize("total", ["1_0", "1_000.5", "\u0661", "\uff15", " 5 ", "5 ", "+5", ".5", "5.", "1e", "1e+",
                                   "Infinity", "-Infinity", "0x10", "", "1.5e+3 "])
def test_a_sum_not_written_as_postgresql_prints_numbers_is_skipped_and_its_rows_counted(total):
    """Decimal() takes underscores, other scripts' digits and surrounding spaces; PostgreSQL
    never prints them."""
    assert router().classify(_sum(total)) == (KEY, 3, None)


def _raw_sum(number: str, count: str = "3", bucket: str = "1") -> str:
    """A payload whose sum is a JSON number written as is (json.dumps would not write 5,000 digits)."""
    return ('{"table": "public.one", "action": "INSERT", "data": {"code": "alpha"}, "count": COUNT, "values": '
            '{"amount": {"count": 1, "sum": SUM, "buckets": {"10": BUCKET, "100.5": 1}}}, "seq": 7}'
            ).replace("COUNT", count).replace("SUM", number).replace("BUCKET", bucket)


@pytest.mark.parametrize("digits", [4300, 4301, 5000, 131_092])
def test_a_json_integer_sum_longer_than_python_parses_is_added_exactly(digits):
    """json.loads refuses integers over 4,300 digits (int's limit): such a payload is valid JSON,
    its rows are counted and its sum, within sum_in_bounds, added exactly."""
    number = "-" + "9" * digits
    for classify in (router().classify, router().classifier()):
        assert classify(_raw_sum(number)) == (KEY, 3, (Observation(AMOUNT, 1, Decimal(number), (1, 1)),))


def test_a_json_integer_sum_beyond_the_bounds_is_skipped_and_a_long_count_is_invalid():
    long = "1" * 131_093  # one digit more before the point than pgne adds
    assert router().classify(_raw_sum(long)) == (KEY, 3, None)
    assert router().classify(_raw_sum("1", count="1" * 4301)) == (INVALID, 0)
    assert router().classify(_raw_sum("1" * 4301, bucket="1" * 4301)) == (KEY, 3, None)  # a bucket's count
    # a label value is its digits, as PostgreSQL prints the number: a whitelisted one is kept
    long = "7" * 5000
    label = '{"table": "public.one", "action": "INSERT", "data": {"code": ' + long + '}, "count": 2}'
    assert router().classify(label) == (("INSERT", "public", "one", "other"), 2)
    assert router().classify('{"table": ' + long + ', "action": "INSERT"}') == (INVALID, 0)


@pytest.mark.parametrize("total", [
    "9" * 131_072 + "." + "9" * 16_383,  # numeric's largest value
    "-" + "1" + "0" * 131_091,  # and 20 more digits before the point: a sum of 10^20 of them
    "1e-16383",
    "1.7976931348623157e+308", "4.9e-324", "-2.2250738585072014e-308",  # float8's extremes
    "0e-16383", "0e+131091",
])
def test_every_sum_postgresql_can_hold_is_added_exactly(total):
    [observation] = router().classify(_sum(total))[2]
    assert observation.sum == Decimal(total)
    assert observation.plus(observation).sum == EXACT.add(Decimal(total), Decimal(total))


def test_the_exported_sum_is_the_float_nearest_to_the_exact_sum_at_any_length():
    import random

    from pgne.payload import nearest_float
    rng = random.Random(21)
    values = [Decimal("0.30000000000000004"), Decimal("1.5e300"), Decimal("9" * 400), Decimal("-1e-320"),
              Decimal("1" + "0" * 16 + "5"), Decimal("1" + "0" * 16 + "5" + "0" * 30 + "1")]  # a tie, and just above
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 60)))
        values.append(Decimal(f"{rng.choice('-+')}{digits}e{rng.randint(-340, 300)}"))
        f = rng.uniform(-1e6, 1e6)  # exact midpoints between neighbouring floats: the hardest case
        values.append(EXACT.multiply(EXACT.add(Decimal(f), Decimal(math.nextafter(f, math.inf))), Decimal("0.5")))
    for value in values:
        assert nearest_float(value) == float(value), value
    huge = EXACT.add(Decimal("1e131091"), Decimal("1e-16383"))  # 147,475 digits: float() takes 0.8 ms
    assert nearest_float(huge) == float("inf")  # beyond float64, as float() gives it
