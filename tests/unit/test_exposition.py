"""pgne.exposition: /metrics printed fast says exactly what prometheus_client's own path says.

Real multiprocess files (MmapedDict, mmap_key, named as prometheus_client names them) are read
by both MetricsRenderer and MultiProcessCollector + prometheus_client's encoder; the outputs
must hold the same lines (the fast path sorts families by name; prometheus_client keeps file
order) and parse with prometheus_client's parsers, the strict OpenMetrics one included.
"""
from __future__ import annotations

import os

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from support.statefiles import write_multiprocess_file as write

from pgne.compaction import compact
from pgne.exposition import MetricsRenderer

EVENT_LABELS = ["operation", "host", "database", "tag", "schema", "table", "code"]
ACCEPTS = [
    "",
    "text/plain",
    "text/plain; version=0.0.4",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    # what Prometheus 2.x sends
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "text/plain; version=1.0.0; escaping=values",
    "application/openmetrics-text; version=1.0.0; escaping=dots",  # rewrites names: slow path
]


def event_key(metric: str, sample: str, help_text: str, *values: str) -> str:
    return mmap_key(metric, sample, EVENT_LABELS, list(values), help_text)


def events(code: str, database: str = "d1") -> str:
    return event_key("pgne_events", "pgne_events_total", "Rows counted, by table, operation and label values.",
                     "INSERT", "h", database, "t", "public", "one", code)


def last(code: str, database: str = "d1") -> str:
    return event_key("pgne_last_event_timestamp_seconds", "pgne_last_event_timestamp_seconds",
                     "Unix time of the last counted event of the series.", "INSERT", "h", database, "t", "public",
                     "one", code)


def gauge(metric: str, labels: dict, help_text: str = "A gauge.") -> str:
    return mmap_key(metric, metric, list(labels), list(labels.values()), help_text)


def pgne_like_state(state_dir) -> None:
    """Workers 11 and 12 (dead, not yet compacted), 13 (alive), the master (1), odd label values."""
    odd = ['quote"d', "back\\slash", "new\nline", "é ünïcode", "", "other"]
    for pid, base in ((11, 1.0), (12, 10.0), (13, 100.0)):
        write(state_dir, "counter", pid, {events(code): base + i for i, code in enumerate(odd)}
              | {mmap_key("pgne_notifications", "pgne_notifications_total", ["host", "database", "result"],
                          ["h", "d1", "counted"], "Notifications received, by result."): base})
        write(state_dir, "gauge_max", pid, {last(code): 1000.0 * base + i for i, code in enumerate(odd)})
        write(state_dir, "gauge_mostrecent", pid, {
            gauge("pgne_notify_queue_usage_ratio", {"host": "h", "database": "d1"}): (base / 1000, base),
            gauge("pgne_never_set", {"host": "h", "database": "d1"}): (5.0, 0.0),  # no timestamp: absent
        })
        write(state_dir, "gauge_livemax", pid, {gauge("pgne_database_up", {"host": "h", "database": "d1",
                                                                          "tag": "t"}): 1.0})
    write(state_dir, "gauge_livemax", 1, {
        gauge("pgne_database_up", {"host": "h", "database": "d1", "tag": "t"}): 0.0,
        gauge("pgne_database_up", {"host": "h", "database": "d2", "tag": "t"}): 0.0,
        gauge("pgne_build_info", {"version": "0.1.0"}, "Always 1; the version is a label."): 1.0,
        gauge("pgne_config_last_reload_successful", {}, 'Help with "quotes", \\ and\nnewline.'): 1.0,
    })
    write(state_dir, "gauge_min", 13, {gauge("m_min", {"database": "d2"}): 3.0})
    write(state_dir, "gauge_min", 12, {gauge("m_min", {"database": "d2"}): -2.5})
    write(state_dir, "gauge_sum", 13, {gauge("m_sum", {}): 0.25})
    write(state_dir, "gauge_sum", 12, {gauge("m_sum", {}): 1e20})
    write(state_dir, "counter", 1, {mmap_key("pgne_worker_restarts", "pgne_worker_restarts_total",
                                             ["host", "database"], ["h", "d2"], "Workers restarted."): 3.0})


def reference_registry(state_dir) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(state_dir))
    return registry


def reference(state_dir, accept: str) -> tuple[bytes, str]:
    encoder, content_type = choose_encoder(accept)
    return encoder(reference_registry(state_dir)), content_type


def assert_same(fast: bytes, slow: bytes, openmetrics: bool) -> None:
    assert sorted(fast.decode().splitlines()) == sorted(slow.decode().splitlines())
    parse = parse_openmetrics if openmetrics else parse_text
    assert {f.name: (f.type, f.documentation, sorted((s.name, sorted(s.labels.items()), s.value)
                                                     for s in f.samples))
            for f in parse(fast.decode())} == \
           {f.name: (f.type, f.documentation, sorted((s.name, sorted(s.labels.items()), s.value)
                                                     for s in f.samples))
            for f in parse(slow.decode())}


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_fast_path_prints_what_prometheus_client_prints(tmp_path, accept):
    pgne_like_state(tmp_path)
    renderer = MetricsRenderer(str(tmp_path))
    slow, slow_type = reference(tmp_path, accept)

    def slow_path(databases):
        assert "dots" in accept, "the fast path should have printed this"
        return reference_registry(tmp_path)

    for _ in range(2):  # cold caches, then warm ones
        fast, fast_type = renderer.render(accept, slow_path=slow_path)
        assert fast_type == slow_type
        assert_same(fast, slow, openmetrics="openmetrics" in slow_type)


def test_values_change_between_scrapes_and_the_caches_follow(tmp_path):
    pgne_like_state(tmp_path)
    renderer = MetricsRenderer(str(tmp_path))
    renderer.render("")
    write(tmp_path, "counter", 13, {events("alpha"): 7.0, events("new series"): 1.0})
    write(tmp_path, "gauge_mostrecent", 13, {
        gauge("pgne_notify_queue_usage_ratio", {"host": "h", "database": "d1"}): (0.9, 999.0)})
    assert_same(renderer.render("")[0], reference(tmp_path, "")[0], openmetrics=False)
    assert b'pgne_events_total{code="new series"' in renderer.render("")[0]


def test_compaction_between_scrapes_changes_nothing_served(tmp_path):
    pgne_like_state(tmp_path)
    renderer = MetricsRenderer(str(tmp_path))
    before = renderer.render("")[0]
    for pid in (11, 12):
        os.remove(tmp_path / f"gauge_livemax_{pid}.db")  # what mark_process_dead does
        compact(str(tmp_path), pid)
        assert sorted(renderer.render("")[0].splitlines()) == sorted(reference(tmp_path, "")[0].splitlines())
    assert sorted(renderer.render("")[0].splitlines()) == sorted(
        line for line in before.splitlines())  # the live gauges of 11 and 12 were 1 as 13's is
    write(tmp_path, "counter", 14, {events("alpha"): 1000.0})  # a new worker on top of the merged totals
    assert_same(renderer.render("")[0], reference(tmp_path, "")[0], openmetrics=False)


def test_served_databases_filter_like_the_slow_path(tmp_path):
    from pgne.statedir import collect

    pgne_like_state(tmp_path)
    write(tmp_path, "counter", 13, {events("alpha", database="d2"): 5.0})
    served = frozenset({("h", "d2")})
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        encoder, _ = choose_encoder(accept)
        slow = encoder(collect(str(tmp_path), served))
        fast, _ = MetricsRenderer(str(tmp_path)).render(accept, served)
        assert_same(fast, slow, openmetrics="openmetrics" in accept)
        assert b'database="d1"' not in fast
        assert b'pgne_events_total{code="alpha",database="d2"' in fast


@pytest.mark.parametrize("extra", [
    ("summary", {mmap_key("lat", "lat_count", [], [], "h"): 1.0, mmap_key("lat", "lat_sum", [], [], "h"): 0.25}),
    ("histogram", {mmap_key("lat", "lat_bucket", ["le"], ["0.5"], "h"): 1.0,  # a sample that is not a
                   mmap_key("lat", "lat_gsum", [], [], "h"): 0.25}),          # histogram's own
    ("gauge_all", {gauge("g_all", {"x": "1"}): 2.0}),
    ("counter", {mmap_key("weird", "weird_total", ["bad-label"], ["v"], "h"): 1.0}),
])
def test_what_the_fast_path_does_not_print_itself_goes_through_prometheus_client(tmp_path, extra):
    pgne_like_state(tmp_path)
    prefix, entries = extra
    write(tmp_path, prefix, 50, entries)
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        fast, _ = MetricsRenderer(str(tmp_path)).render(accept)
        assert fast == reference(tmp_path, accept)[0]


def test_a_file_being_created_is_skipped(tmp_path):
    pgne_like_state(tmp_path)
    expected = reference(tmp_path, "")[0]
    (tmp_path / "counter_77.db").write_bytes(b"")  # opened, not yet sized by its process
    assert_same(MetricsRenderer(str(tmp_path)).render("")[0], expected, openmetrics=False)


HISTOGRAM_LABELS = EVENT_LABELS + ["column"]


def observed(sample: str, code: str, le: str | None = None, database: str = "d1") -> str:
    names, values = HISTOGRAM_LABELS, ["INSERT", "h", database, "t", "public", "one", code, "amount"]
    if le is not None:
        names, values = names + ["le"], values + [le]
    return mmap_key("pgne_observed_euros", sample, names, values, "Values of a column.")


def histogram_state(state_dir) -> None:
    """pgne's histograms as workers 11 (dead), 12 (alive) and the merged file hold them: per-bucket
    values, _sum, odd label values, two databases, and a histogram without labels."""
    pgne_like_state(state_dir)
    for pid, base in ((11, 1.0), (12, 10.0), ("merged", 100.0)):
        entries = {}
        for code in ("alpha", 'quo"te', "new\nline"):
            for i, le in enumerate(("0.0", "10.0", "1000.5", "1e+20", "+Inf")):  # OpenMetrics: no negative bound
                entries[observed("pgne_observed_euros_bucket", code, le)] = base + i
            entries[observed("pgne_observed_euros_sum", code)] = base * 2.5  # OpenMetrics: a _sum is >= 0
        entries[observed("pgne_observed_euros_bucket", "alpha", "10.0", database="d2")] = 7.0
        entries[observed("pgne_observed_euros_bucket", "alpha", "+Inf", database="d2")] = 1.0
        entries[observed("pgne_observed_euros_sum", "alpha", database="d2")] = 12.25
        entries[mmap_key("bare", "bare_bucket", ["le"], ["0.5"], "h")] = base
        entries[mmap_key("bare", "bare_bucket", ["le"], ["+Inf"], "h")] = 1.0
        entries[mmap_key("bare", "bare_sum", [], [], "h")] = 0.75
        write(state_dir, "histogram", pid, entries)


# (escaping=dots takes prometheus_client's path, whose output for a histogram its own strict
# OpenMetrics parser refuses: "Clashing name")
@pytest.mark.parametrize("accept", [a for a in ACCEPTS if "dots" not in a])
def test_histograms_are_printed_by_the_fast_path_as_prometheus_client_prints_them(tmp_path, accept):
    histogram_state(tmp_path)
    renderer = MetricsRenderer(str(tmp_path))
    slow, slow_type = reference(tmp_path, accept)

    def slow_path(databases):
        raise AssertionError("the fast path should have printed this")

    for _ in range(2):
        fast, fast_type = renderer.render(accept, slow_path=slow_path)
        assert_same(fast, slow, openmetrics="openmetrics" in slow_type)
    assert 'pgne_observed_euros_count{code="alpha",column="amount",database="d1"' in fast.decode()


def test_a_negative_histogram_sum_is_printed_like_prometheus_client_prints_it(tmp_path):
    """In the text format (OpenMetrics has a histogram's _sum only without negative values)."""
    write(tmp_path, "histogram", 12, {observed("pgne_observed_euros_bucket", "alpha", "-100.0"): 1.0,
                                      observed("pgne_observed_euros_bucket", "alpha", "+Inf"): 2.0,
                                      observed("pgne_observed_euros_sum", "alpha"): -12.5})  # refunds
    fast = MetricsRenderer(str(tmp_path)).render("", slow_path=lambda databases: 1 / 0)[0]
    assert sorted(fast.splitlines()) == sorted(reference(tmp_path, "")[0].splitlines())
    assert b'pgne_observed_euros_sum{code="alpha",column="amount",' in fast and b"} -12.5\n" in fast


def test_histograms_of_databases_not_served_are_left_out_like_the_slow_path(tmp_path):
    from pgne.statedir import collect

    histogram_state(tmp_path)
    served = frozenset({("h", "d2")})
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        encoder, _ = choose_encoder(accept)
        fast, _ = MetricsRenderer(str(tmp_path)).render(accept, served)
        assert_same(fast, encoder(collect(str(tmp_path), served)), openmetrics="openmetrics" in accept)
        assert b'pgne_observed_euros_count{code="alpha",column="amount",database="d2",host="h",' in fast
        assert b'database="d1"' not in fast
