"""columns_to_observe: the config keys of a monitor's histograms, each rule with the exact
error line it reports (the column's type is checked by the database: tests/integration)."""
from __future__ import annotations

import pytest
from support.inline_configs import NAME, README_FIXTURE, RICH_FIXTURE, config, errors, parse

from pgne.config import load_config
from pgne.model import ObservedColumn
from pgne.render import Renderer

MON = f"{NAME}: localhost > test > monitors[0]"
SHARED_FIXTURE = "/work/shared/fixtures/pg_notify_exporter_readme_config.yml"


def observe(block: str, labels: str = "") -> str:
    """BASE whose monitor gets `columns_to_observe:` followed by `block` (YAML lines at 6 spaces)."""
    extra = f"      columns_to_label:\n{labels}" if labels else ""
    return config({"      events: [insert]\n": f"      events: [insert]\n{extra}      columns_to_observe:\n{block}"})


def test_observed_columns_with_buckets_and_units_are_read_in_config_order():
    cfg = parse(observe("      - name: amount\n        buckets: [10, 100.5, 1000]\n        unit: euros\n"
                        "      - {name: qty}\n"))
    [monitor] = cfg.databases[0].monitors
    assert monitor.observed_columns == (ObservedColumn("amount", (10.0, 100.5, 1000.0), "euros"),
                                        ObservedColumn("qty", (), None))
    assert [c.family for c in monitor.observed_columns] == ["pgne_observed_euros", "pgne_observed_values"]
    assert monitor.observed_columns[0].bounds == ("10", "100.5", "1000")  # integers where whole
    assert cfg.observes


def test_configs_without_columns_to_observe_stay_valid_and_observe_nothing():
    for path in (README_FIXTURE, RICH_FIXTURE, SHARED_FIXTURE):
        cfg = load_config(str(path), Renderer())
        assert not cfg.observes
        assert all(m.observed_columns == () for d in cfg.databases for m in d.monitors)


def test_buckets_must_be_sorted_unique_and_finite():
    text = observe("      - name: amount\n        buckets: [1, 5, 5, 2, .inf, .nan]\n")
    assert errors(text) == [
        f"{MON} > columns_to_observe[0] > buckets[2]: 5 is not greater than 5: buckets are sorted and unique",
        f"{MON} > columns_to_observe[0] > buckets[3]: 2 is not greater than 5: buckets are sorted and unique",
        f"{MON} > columns_to_observe[0] > buckets[4]: inf is not a finite number (the +Inf bucket is always there)",
        f"{MON} > columns_to_observe[0] > buckets[5]: nan is not a finite number (the +Inf bucket is always there)",
    ]


def test_an_integer_bucket_beyond_floats_range_is_not_finite():
    text = observe(f"      - name: amount\n        buckets: [1, {10 ** 400}]\n")
    [line] = errors(text)
    assert line.startswith(f"{MON} > columns_to_observe[0] > buckets[1]: 1000")
    assert line.endswith("is not a finite number (the +Inf bucket is always there)")


@pytest.mark.parametrize("block, message", [
    ("      - buckets: [1, 2]\n", "columns_to_observe[0]: 'name' is required"),
    ("      - name: amount\n        buckets: []\n", "columns_to_observe[0] > buckets: [] should be non-empty"),
    ("      - name: amount\n        buckets: [a]\n", "columns_to_observe[0] > buckets[0]: 'a' is not of type 'number'"),
    ("      - name: amount\n        buckets: [true]\n",
     "columns_to_observe[0] > buckets[0]: True is not of type 'number'"),
    ("      - name: amount\n        unit: Euros\n",
     "columns_to_observe[0] > unit: 'Euros' is not a unit: lower-case letters and digits, words joined by `_` "
     "(euros, items, seconds)"),
    ("      - name: amount\n        le: [1]\n",
     "columns_to_observe[0]: unknown key 'le' (allowed: name, buckets, unit)"),
    ("      - amount\n", "columns_to_observe[0]: 'amount' is not of type 'object'"),
])
def test_structural_errors_name_their_place(block, message):
    assert errors(observe(block)) == [f"{MON} > {message}"]


def test_duplicate_observed_column():
    text = observe("      - name: amount\n      - name: amount\n")
    assert errors(text) == [f"{MON} > columns_to_observe[1]: duplicate observed column 'amount'"]


def test_an_observed_column_cannot_be_a_label_column_too():
    text = observe("      - name: code\n", labels="      - code: [a]\n")
    assert errors(text) == [
        f"{MON} > columns_to_observe[0]: column 'code' is also a label column: a column is either a label "
        f"(columns_to_label) or observed (columns_to_observe), not both"
    ]


@pytest.mark.parametrize("name", ["column", "le"])
def test_a_label_column_named_like_a_histogram_label_is_an_error_only_where_a_column_is_observed(name):
    assert parse(config({"      events: [insert]\n": f"      events: [insert]\n      columns_to_label:\n"
                                                     f"      - {name}: [a]\n"}))
    text = config(append="""
        - table: two
          enabled: true
          function: notification_with_payload
          columns_to_observe:
          - name: amount
          events: [insert]
        """, indent=4, replace={"      events: [insert]\n": f"      events: [insert]\n      columns_to_label:\n"
                                                            f"      - {name}: [a]\n"})
    assert errors(text) == [
        f"{MON} > columns_to_label[0]: label column '{name}' collides with the label '{name}' of the histograms "
        f"of columns_to_observe (they add: column, le)"
    ]


def test_a_template_that_ignores_columns_to_observe_is_an_error():
    text = observe("      - name: amount\n").replace("notification_with_payload", "simple_event_notification")
    assert errors(text) == [
        f"{MON} > columns_to_observe: template 'simple_event_notification' ignores columns_to_observe "
        f"(use notification_with_payload, or a template that reads columns_to_observe)"
    ]


def test_an_observed_column_name_over_63_bytes():
    name = "a" * 64
    assert errors(observe(f"      - name: {name}\n")) == [
        f"{MON} > columns_to_observe[0]: column {name!r} is longer than 63 bytes"]


def test_every_error_of_columns_to_observe_is_reported_at_once():
    text = observe("      - name: amount\n        buckets: [10, 5]\n      - {buckets: [1]}\n",
                   labels="      - le: [a]\n")
    assert errors(text) == [
        f"{MON} > columns_to_observe[1]: 'name' is required",
        f"{MON} > columns_to_observe[0] > buckets[1]: 5 is not greater than 10: buckets are sorted and unique",
        f"{MON} > columns_to_label[0]: label column 'le' collides with the label 'le' of the histograms of "
        f"columns_to_observe (they add: column, le)",
    ]


def _columns(n: int, buckets: int) -> str:
    return "".join(f"      - name: c{i}\n        buckets: [{', '.join(str(b) for b in range(buckets))}]\n"
                   for i in range(n))


def test_a_config_whose_notification_could_exceed_notifys_limit_is_refused():
    [line] = errors(observe(_columns(3, 200)))  # every payload was over 8000 bytes: 0 rows counted
    assert line.startswith(f"{MON}: a notification of this monitor can reach ")
    assert ("(0 label column(s) with their longest whitelisted value, 3 observed column(s) with 600 bucket(s) "
            "in all, sums of up to 40 characters): PostgreSQL's NOTIFY takes less than 8000; observe fewer "
            "columns or buckets, shorten the whitelisted values, or use delivery: outbox") in line
    parse(observe(_columns(3, 50)))  # ordinary histograms fit
    # the same in outbox delivery: no NOTIFY, no limit
    parse(observe(_columns(3, 200)).replace("    enabled: true\n", "    enabled: true\n    delivery: outbox\n", 1))


def test_long_whitelisted_label_values_count_towards_the_limit():
    # a control character is sent escaped: \u0001, 6 bytes
    labels = "      - code: ['" + "x" * 3000 + "', 'y']\n      - kind: [\"" + "\\x01" * 900 + "\"]\n"
    [line] = errors(config({"      events: [insert]\n": "      events: [insert]\n      columns_to_label:\n" + labels}))
    assert "a notification of this monitor can reach 8" in line  # 3002 + 5402 + the rest
    parse(config({"      events: [insert]\n": "      events: [insert]\n      columns_to_label:\n"
                                              "      - code: ['" + "x" * 3000 + "', 'y']\n"}))
