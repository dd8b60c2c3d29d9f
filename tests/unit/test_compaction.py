"""pgne.compaction: a dead worker's multiprocess files folded into *_merged.db change no total.

The files are real prometheus_client files (MmapedDict, keys from mmap_key, named as values.py
names them); totals are read with prometheus_client's own MultiProcessCollector, before and
after compaction.
"""
from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from support.statefiles import write_multiprocess_file as write

from pgne.compaction import compact, relabel_series
from pgne.statedir import MERGED, READERS_LOCK, reading

LABELS = ("host", "database", "result")


def key(metric: str, sample: str, *values: str) -> str:
    return mmap_key(metric, sample, list(LABELS[:len(values)]), list(values), f"{metric} help")


def totals(state_dir) -> dict:
    """{(sample name, labels): value} exactly as a scrape computes them."""
    out = {}
    for family in MultiProcessCollector(None, path=str(state_dir)).collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def db_files(state_dir) -> list[str]:
    return sorted(f for f in os.listdir(state_dir) if f.endswith(".db"))


COUNTED = key("pgne_notifications", "pgne_notifications_total", "h", "d", "counted")
INVALID = key("pgne_notifications", "pgne_notifications_total", "h", "d", "invalid")
LAST = key("pgne_last_event_timestamp_seconds", "pgne_last_event_timestamp_seconds", "h", "d")
QUEUE = key("pgne_notify_queue_usage_ratio", "pgne_notify_queue_usage_ratio", "h", "d")
UP = key("pgne_database_up", "pgne_database_up", "h", "d")


def worker_files(state_dir, pid: int, counted: float, invalid: float, last: float, queue: tuple) -> None:
    write(state_dir, "counter", pid, {COUNTED: counted, INVALID: invalid})
    write(state_dir, "gauge_max", pid, {LAST: last})
    write(state_dir, "gauge_mostrecent", pid, {QUEUE: queue})
    write(state_dir, "gauge_livemax", pid, {UP: 1.0})


def test_compacting_dead_workers_keeps_every_total_and_leaves_one_file_per_kind(tmp_path):
    worker_files(tmp_path, 101, counted=5, invalid=1, last=1000.0, queue=(0.25, 50.0))
    worker_files(tmp_path, 102, counted=7, invalid=0, last=3000.0, queue=(0.5, 40.0))
    worker_files(tmp_path, 103, counted=11, invalid=2, last=2000.0, queue=(0.75, 30.0))  # stays alive
    write(tmp_path, "gauge_livemax", 1, {UP: 0.0})  # the master's own assertion
    for pid in (101, 102):
        mark_process_dead(pid, str(tmp_path))
    before = totals(tmp_path)

    assert compact(str(tmp_path), 101) == 3
    assert totals(tmp_path) == before
    assert compact(str(tmp_path), 102) == 3
    assert totals(tmp_path) == before

    assert before[("pgne_notifications_total", (("database", "d"), ("host", "h"), ("result", "counted")))] == 23
    assert before[("pgne_last_event_timestamp_seconds", (("database", "d"), ("host", "h")))] == 3000.0
    assert before[("pgne_notify_queue_usage_ratio", (("database", "d"), ("host", "h")))] == 0.25  # newest: ts 50
    assert db_files(tmp_path) == ["counter_103.db", "counter_merged.db", "gauge_livemax_1.db",
                                  "gauge_livemax_103.db", "gauge_max_103.db", "gauge_max_merged.db",
                                  "gauge_mostrecent_103.db", "gauge_mostrecent_merged.db"]


def test_merged_values_are_the_sum_max_and_newest_of_the_dead_files(tmp_path):
    worker_files(tmp_path, 201, counted=3, invalid=0, last=10.0, queue=(0.1, 5.0))
    worker_files(tmp_path, 202, counted=4, invalid=6, last=30.0, queue=(0.9, 2.0))
    worker_files(tmp_path, 203, counted=0.5, invalid=0, last=20.0, queue=(0.3, 9.0))
    for pid in (201, 202, 203):
        mark_process_dead(pid, str(tmp_path))
        compact(str(tmp_path), pid)

    def merged(prefix):
        return {k: (v, ts) for k, v, ts, _ in MmapedDict.read_all_values_from_file(
            os.path.join(tmp_path, f"{prefix}_merged.db"))}

    assert merged("counter") == {COUNTED: (7.5, 0.0), INVALID: (6.0, 0.0)}
    assert merged("gauge_max") == {LAST: (30.0, 0.0)}
    assert merged("gauge_mostrecent") == {QUEUE: (0.3, 9.0)}


def test_min_sum_histogram_and_summary_files_merge_like_the_collector_combines_them(tmp_path):
    for pid, base in ((301, 1.0), (302, 2.0), (303, 4.0)):
        write(tmp_path, "gauge_min", pid, {key("g_min", "g_min", "x"): 10 - base})
        write(tmp_path, "gauge_sum", pid, {key("g_sum", "g_sum", "x"): base})
        write(tmp_path, "histogram", pid, {
            mmap_key("lat", "lat_bucket", ["le"], ["0.5"], "h"): base,
            mmap_key("lat", "lat_bucket", ["le"], ["+Inf"], "h"): 2 * base,
            mmap_key("lat", "lat_sum", [], [], "h"): 0.25 * base,
        })
        write(tmp_path, "summary", pid, {mmap_key("s", "s_count", [], [], "h"): base,
                                         mmap_key("s", "s_sum", [], [], "h"): 0.5 * base})
    before = totals(tmp_path)
    for pid in (301, 302):
        assert compact(str(tmp_path), pid) == 4
    assert totals(tmp_path) == before
    assert before[("g_min", (("host", "x"),))] == 6.0
    assert before[("g_sum", (("host", "x"),))] == 7.0
    assert before[("lat_bucket", (("le", "+Inf"),))] == 21.0  # buckets are stored per bucket, cumulated on read
    assert before[("lat_count", ())] == 21.0


def test_live_and_all_gauges_are_never_merged(tmp_path):
    write(tmp_path, "gauge_all", 401, {key("g_all", "g_all", "x"): 3.0})
    write(tmp_path, "gauge_liveall", 401, {key("g_la", "g_la", "x"): 3.0})
    write(tmp_path, "counter", 401, {COUNTED: 1.0})
    before = totals(tmp_path)
    assert compact(str(tmp_path), 401) == 1
    assert totals(tmp_path) == before  # the `all` sample keeps its pid label
    assert "gauge_all_401.db" in db_files(tmp_path)
    assert "gauge_liveall_401.db" in db_files(tmp_path)  # mark_process_dead's business, not ours


def test_a_pid_without_files_is_a_no_op(tmp_path):
    assert compact(str(tmp_path), 999) == 0
    assert db_files(tmp_path) == []


def test_a_worker_restarted_after_compaction_adds_on_top_of_the_merged_totals(tmp_path):
    write(tmp_path, "counter", 501, {COUNTED: 10.0})
    compact(str(tmp_path), 501)
    write(tmp_path, "counter", 502, {COUNTED: 1.0})  # its successor counts on from 0 in its own file
    assert totals(tmp_path)[("pgne_notifications_total",
                             (("database", "d"), ("host", "h"), ("result", "counted")))] == 11.0
    compact(str(tmp_path), 502)
    assert db_files(tmp_path) == ["counter_merged.db"]
    assert totals(tmp_path)[("pgne_notifications_total",
                             (("database", "d"), ("host", "h"), ("result", "counted")))] == 11.0


def test_five_hundred_restarts_of_twenty_workers_fold_into_one_file_per_kind(tmp_path):
    series = [key("pgne_events", "pgne_events_total", "h", f"db{i % 20}", f"v{i}") for i in range(200)]
    stamps = [key("pgne_last_event_timestamp_seconds", "pgne_last_event_timestamp_seconds", "h", f"db{i % 20}",
                  f"v{i}") for i in range(200)]
    pid = 1000
    for restart in range(500):
        pid += 1
        worker = restart % 20  # each of 20 workers has its own 10 series
        write(tmp_path, "counter", pid, {k: float((restart + j) % 7) for j, k in enumerate(series[worker::20])})
        write(tmp_path, "gauge_max", pid, {k: float(restart) for k in stamps[worker::20]})
        if restart < 499:
            compact(str(tmp_path), pid)
    before_last = totals(tmp_path)
    compact(str(tmp_path), pid)
    assert totals(tmp_path) == before_last
    assert db_files(tmp_path) == ["counter_merged.db", "gauge_max_merged.db"]


entries = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 2**40), max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(entries, st.booleans()), min_size=1, max_size=8))
def test_any_order_of_deaths_keeps_the_counter_totals(tmp_path_factory, workers):
    state_dir = str(tmp_path_factory.mktemp("state"))
    for pid, (values, _) in enumerate(workers, start=10):
        write(state_dir, "counter", pid, {key("m", "m_total", k): float(v) for k, v in values.items()})
    before = totals(state_dir)
    for pid, (_, dead) in enumerate(workers, start=10):
        if dead:
            compact(state_dir, pid)
    assert totals(state_dir) == before


def test_compaction_waits_for_readers_of_the_directory(tmp_path):
    write(tmp_path, "counter", 601, {COUNTED: 1.0})
    done = threading.Event()
    with reading(str(tmp_path)):
        worker = threading.Thread(target=lambda: (compact(str(tmp_path), 601), done.set()))
        worker.start()
        time.sleep(0.2)
        assert not done.is_set()  # blocked on the shared lock
        assert "counter_601.db" in db_files(tmp_path)
    worker.join(5)
    assert done.is_set()
    assert db_files(tmp_path) == ["counter_merged.db"]
    assert os.path.exists(tmp_path / READERS_LOCK)


def test_a_failed_merge_leaves_the_dead_file_and_the_totals_alone(tmp_path, monkeypatch):
    write(tmp_path, "counter", 701, {COUNTED: 2.0})
    write(tmp_path, "counter", 702, {COUNTED: 3.0})
    compact(str(tmp_path), 701)
    before = totals(tmp_path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pgne.compaction.os.replace", fail)
    assert compact(str(tmp_path), 702) == 0
    assert totals(tmp_path) == before
    assert "counter_702.db" in db_files(tmp_path)


@pytest.mark.parametrize("prefix", ["counter", "gauge_max", "gauge_mostrecent"])
def test_merged_file_names_parse_as_their_kind(tmp_path, prefix):
    write(tmp_path, prefix, 801, {LAST: (5.0, 7.0)})
    before = totals(tmp_path)
    compact(str(tmp_path), 801)
    assert db_files(tmp_path) == [f"{prefix}_merged.db"]
    assert totals(tmp_path) == before


MERGED_PID = MERGED  # the merged files: counter_merged.db, ...


def series_key(metric: str, sample: str, **labels: str) -> str:
    base = {"operation": "INSERT", "host": "h", "database": "d", "tag": "t", "schema": "public"}
    base.update(labels)
    return mmap_key(metric, sample, list(base), list(base.values()), f"{metric} help")


def test_relabel_series_brings_dead_workers_series_to_the_current_label_columns(tmp_path):
    """Label columns (code) -> (note): `code` is dropped where empty, kept where it has a value;
    `note` is added empty; series that become one are combined; other metrics are untouched."""
    events, last = ("pgne_events", "pgne_events_total"), ("pgne_last_event_timestamp_seconds",) * 2
    write(tmp_path, "counter", MERGED_PID, {
        series_key(*events, table="one", code="alpha"): 3.0,
        series_key(*events, table="two", code=""): 2.0,
        series_key(*events, table="two", code="", note=""): 5.0,  # already current: one series with the above
        COUNTED: 7.0})
    write(tmp_path, "gauge_max", MERGED_PID, {series_key(*last, table="two", code=""): 10.0,
                                              series_key(*last, table="two", note=""): 20.0})
    assert relabel_series(str(tmp_path), ("note",)) == 4
    got = totals(tmp_path)
    common = (("database", "d"), ("host", "h"), ("operation", "INSERT"), ("schema", "public"), ("tag", "t"))

    def labels(**extra: str) -> tuple:
        return tuple(sorted(common + tuple(extra.items())))

    assert got == {
        ("pgne_events_total", labels(table="one", code="alpha", note="")): 3.0,
        ("pgne_events_total", labels(table="two", note="")): 7.0,
        ("pgne_notifications_total", (("database", "d"), ("host", "h"), ("result", "counted"))): 7.0,
        ("pgne_last_event_timestamp_seconds", labels(table="two", note="")): 20.0,
    }
    assert relabel_series(str(tmp_path), ("note",)) == 0  # nothing left to change: no file written


# -- damaged files of dead workers ---------------------------------------------------------------

def test_a_0_byte_file_of_a_worker_killed_while_creating_it_is_removed_and_changes_nothing(tmp_path):
    write(tmp_path, "counter", 901, {COUNTED: 4.0})
    compact(str(tmp_path), 901)
    before = totals(tmp_path)
    (tmp_path / "counter_902.db").write_bytes(b"")  # opened, killed before MmapedDict sized it
    (tmp_path / "gauge_max_902.db").write_bytes(b"\0" * 65536)  # sized, header not yet written
    assert compact(str(tmp_path), 902) == 2
    assert db_files(tmp_path) == ["counter_merged.db"]
    assert totals(tmp_path) == before == {("pgne_notifications_total", (("database", "d"), ("host", "h"),
                                                                         ("result", "counted"))): 4.0}
    assert not [f for f in os.listdir(tmp_path) if not f.endswith(".db") and f != READERS_LOCK]


def test_a_truncated_file_keeps_its_whole_records_once_and_is_set_aside_with_one_warning(tmp_path, caplog):
    write(tmp_path, "counter", 911, {COUNTED: 5.0})
    write(tmp_path, "counter", 912, {COUNTED: 7.0, INVALID: 3.0})
    path = tmp_path / "counter_912.db"
    data = path.read_bytes()
    used = int.from_bytes(data[:4], "little")
    path.write_bytes(data[:used - 5])  # the second record's value is cut
    compact(str(tmp_path), 911)
    with caplog.at_level("WARNING", logger="pgne.compaction"):
        assert compact(str(tmp_path), 912) == 1
        assert compact(str(tmp_path), 912) == 0  # nothing left to fold: never counted twice
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["metrics file counter_912.db is damaged: 1 readable value(s) kept, "
                        "the file set aside as counter_912.db.corrupt"]
    assert db_files(tmp_path) == ["counter_merged.db"]
    assert (tmp_path / "counter_912.db.corrupt").exists()
    counted = ("pgne_notifications_total", (("database", "d"), ("host", "h"), ("result", "counted")))
    assert totals(tmp_path) == {counted: 12.0}  # 5 + 7; the cut INVALID record is not read


@pytest.mark.parametrize("damage", ["header beyond the end", "garbage key", "short header"])
def test_a_damaged_file_never_makes_compaction_raise_and_the_directory_stays_readable(tmp_path, damage):
    write(tmp_path, "counter", 921, {COUNTED: 2.0, INVALID: 1.0})
    path = tmp_path / "counter_921.db"
    data = bytearray(path.read_bytes())
    if damage == "header beyond the end":
        data[:4] = (1 << 30).to_bytes(4, "little")
    elif damage == "garbage key":
        data[12:16] = b"\xff\xfe{["
    else:
        data = data[:5]
    path.write_bytes(bytes(data))
    assert compact(str(tmp_path), 921) == 1
    assert db_files(tmp_path) in (["counter_merged.db"], [])
    totals(tmp_path)  # prometheus_client reads what is left without an error
    assert (tmp_path / "counter_921.db.corrupt").exists()


def test_compaction_gives_up_after_its_timeout_while_a_reader_holds_the_directory(tmp_path):
    """A reader that never lets go (a SIGSTOPped process) must not hang the master: compact()
    returns None and leaves the files; it folds them once the reader is gone."""
    write(tmp_path, "counter", 931, {COUNTED: 1.0})
    with reading(str(tmp_path)):
        started = time.monotonic()
        assert compact(str(tmp_path), 931, timeout=0.3) is None
        assert 0.3 <= time.monotonic() - started < 2
        assert db_files(tmp_path) == ["counter_931.db"]
    assert compact(str(tmp_path), 931, timeout=0.3) == 1
    assert db_files(tmp_path) == ["counter_merged.db"]


def test_relabel_series_brings_observed_histograms_to_the_current_label_columns(tmp_path):
    """Label columns () -> (note): the histogram's buckets and _sum, and its skipped counter,
    get `note` empty, keeping `column`, `le` and `reason`; pgne_observed_invalid_values (no
    `column`: not a series of pgne_events_total's labels) is untouched."""
    hist = "pgne_observed_euros"
    invalid = mmap_key("pgne_observed_invalid_values", "pgne_observed_invalid_values_total", ["host", "database"],
                       ["h", "d"], "help")
    write(tmp_path, "histogram", MERGED_PID, {
        series_key(hist, hist + "_bucket", table="one", column="amount", le="10.0"): 2.0,
        series_key(hist, hist + "_bucket", table="one", column="amount", le="+Inf"): 1.0,
        series_key(hist, hist + "_sum", table="one", column="amount"): 12.5})
    write(tmp_path, "counter", MERGED_PID, {
        series_key("pgne_observed_skipped", "pgne_observed_skipped_total", table="one", column="amount",
                   reason="null"): 4.0,
        invalid: 1.0})
    assert relabel_series(str(tmp_path), ("note",)) == 4
    got = totals(tmp_path)
    common = (("column", "amount"), ("database", "d"), ("host", "h"), ("note", ""), ("operation", "INSERT"),
              ("schema", "public"), ("table", "one"), ("tag", "t"))

    def labels(**extra: str) -> tuple:
        return tuple(sorted(common + tuple(extra.items())))

    assert got == {
        (hist + "_bucket", labels(le="10.0")): 2.0,
        (hist + "_bucket", labels(le="+Inf")): 3.0,
        (hist + "_count", labels()): 3.0,
        (hist + "_sum", labels()): 12.5,
        ("pgne_observed_skipped_total", labels(reason="null")): 4.0,
        ("pgne_observed_invalid_values_total", (("database", "d"), ("host", "h"))): 1.0,
    }


def test_relabel_series_brings_the_compat_series_to_the_current_label_columns(tmp_path):
    """pg_notify_exporter's series (--compat-metric, a `sum` gauge) written without the label
    column `code` and with it empty are one series to Prometheus: relabelled into one (7 + 3)."""
    labels = ["operation", "host", "tag", "database", "table"]
    values = ["INSERT", "h", "t", "d", "public.two"]
    help_text = "compat help"
    write(tmp_path, "gauge_sum", MERGED_PID, {
        mmap_key("pg_notify_exporter", "pg_notify_exporter", labels, values, help_text): 7.0,
        mmap_key("pg_notify_exporter", "pg_notify_exporter", labels + ["code"], values + [""], help_text): 3.0,
        mmap_key("pg_notify_exporter", "pg_notify_exporter", labels, values[:4] + ["public.one"], help_text): 2.0})
    assert relabel_series(str(tmp_path), ("code",)) == 2
    assert totals(tmp_path) == {
        ("pg_notify_exporter", tuple(sorted(zip(labels + ["code"], values + [""])))): 10.0,
        ("pg_notify_exporter", tuple(sorted(zip(labels + ["code"], values[:4] + ["public.one", ""])))): 2.0}
