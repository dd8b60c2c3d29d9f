"""A histogram whose bucket bounds changed (columns_to_observe, outbox): pgne.totals merges
histograms of different bounds as /metrics merges processes that wrote different bounds, and
reads back the configured bounds from them; the result is always cumulative."""
from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from pgne.model import ObservedColumn
from pgne.outbox import merge_buckets, merge_observed
from pgne.payload import parse_observation


def test_a_bound_added_between_two_others_starts_at_what_the_bound_below_holds():
    old = {"10": 10, "100": 100}  # 100 rows, 1..100
    new = {"10": 1, "50": 2, "100": 3}  # rows 5, 30, 70 (and 500)
    assert merge_buckets(old, new) == {"10": 11, "50": 12, "100": 103}
    assert merge_buckets(new, old) == {"10": 11, "50": 12, "100": 103}


def test_a_removed_bound_keeps_growing_with_the_rows_below_it():
    assert merge_buckets({"10": 11, "50": 12, "100": 103}, {"10": 1, "100": 2}) == {"10": 12, "50": 13, "100": 105}


def test_bounds_are_compared_as_numbers_and_malformed_entries_skipped():
    assert merge_buckets({"1000.5": 4, "-100": 1}, {"2": 2, "x": 5, "NaN": 1, "3": "7"}) == {
        "-100": 1, "2": 3, "1000.5": 6}


def test_merge_observed_adds_counts_and_sums_exactly_and_merges_buckets():
    into: dict = {}
    merge_observed(into, {"v": {"count": 100, "sum": "5050", "buckets": {"10": 10, "100": 100}, "null": 0,
                                "not_finite": 0}})
    merge_observed(into, {"v": {"count": 4, "sum": "605.1", "buckets": {"10": 1, "50": 2, "100": 3}, "null": 1,
                                "not_finite": 0}})
    assert into == {"v": {"count": 104, "sum": "5655.1", "buckets": {"10": 11, "50": 12, "100": 103}, "null": 1,
                          "not_finite": 0}}


def test_configured_bounds_are_read_from_totals_of_other_bounds_leniently():
    column = ObservedColumn("v", (10.0, 50.0, 100.0), None)
    stored = {"count": 104, "sum": "5655", "buckets": {"10": 11, "30": 11, "100": 103}}
    # 50 is not stored: it holds what the greatest stored bound below it (30) holds
    assert parse_observation(column, stored, lenient=True).buckets == (11, 11, 103)
    assert parse_observation(column, stored) is None  # a payload must carry every configured bound
    column = ObservedColumn("v", (5.0, 10.0), None)
    assert parse_observation(column, stored, lenient=True).buckets == (0, 11)
    assert parse_observation(column, stored, lenient=True).sum == Decimal(5655)


histograms = st.dictionaries(st.sampled_from(["-1", "0", "2.5", "10", "50", "100", "1e3"]),
                             st.integers(0, 50), max_size=7).map(
    lambda per_bucket: {b: sum(n for c, n in per_bucket.items() if Decimal(c) <= Decimal(b)) for b in per_bucket})


@given(st.lists(histograms, min_size=1, max_size=6))
def test_merges_in_any_order_and_grouping_are_cumulative_and_only_ever_raise(parts):
    merged: dict = {}
    for part in parts:
        before = merged
        merged = merge_buckets(merged, part)
        values = [merged[b] for b in sorted(merged, key=Decimal)]
        assert values == sorted(values)
        assert all(merged[b] >= n for b, n in before.items())
    again: dict = {}
    for part in reversed(parts):
        again = merge_buckets(part, again)
    assert again == merged
