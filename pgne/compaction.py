"""Folds a dead worker's multiprocess metric files into one merged file per kind.

prometheus_client's multiprocess mode writes one file per process and kind (`counter_<pid>.db`,
`gauge_max_<pid>.db`, ...), and every scrape reads every file. A dead worker's counters must
keep adding to the totals (counts survive restarts), so its files cannot just be deleted; left
alone they pile up and scrape time grows with every restart. The master reaps every worker, so
once it has reaped one, nothing writes that worker's files any more: `compact()` adds them into
`<kind>_merged.db` (a file prometheus_client reads like any other process's: the type comes from
the name's prefix, a gauge's mode from its second part, and "merged" stands where the pid would)
and deletes them.

Values are combined the way MultiProcessCollector combines processes, so every scrape reads the
same totals before and after: counters, histograms, summaries and `sum` gauges add; `min` and
`max` gauges keep the minimum / maximum; `mostrecent` keeps the value with the newest timestamp.
Not merged: `all` gauges (their pid is a label) and `live*` gauges (mark_process_dead deletes
them: a dead process no longer asserts them).

A dead worker's file may be incomplete: a worker killed between creating a file and sizing it
leaves it 0 bytes long (nothing to fold: it is removed). Any other damage (a file shorter than
its header says, a record that does not parse) is not something pgne writes; the records that
read whole are folded, the file is set aside as `<name>.corrupt` (not *.db: no reader sees it
again, so nothing is counted twice) and a warning names it. Compaction never raises.

A reader must never see a value twice (merged file written, dead file not yet deleted) nor a
file vanish between listing the directory and reading it: `compact()` holds the state dir's
readers' lock exclusively (pgne.statedir.exclusive) and everything that reads the directory
wraps its read in pgne.statedir.reading(), which holds it shared. Workers never take it for
writing their own files.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
from typing import Callable

from prometheus_client.mmap_dict import MmapedDict

from pgne.model import OBSERVED_PREFIX
from pgne.statedir import MERGED, Busy, exclusive, metric_file

log = logging.getLogger(__name__)

Entry = tuple[float, float]  # (value, timestamp), as MmapedDict stores them
CORRUPT = ".corrupt"  # a damaged dead file, set aside under <name>.corrupt

_unpack_int = struct.Struct("i").unpack_from
_unpack_two_doubles = struct.Struct("dd").unpack_from


def _add(old: Entry, new: Entry) -> Entry:
    return old[0] + new[0], max(old[1], new[1])


def _max(old: Entry, new: Entry) -> Entry:
    return (new[0] if new[0] > old[0] else old[0]), max(old[1], new[1])


def _min(old: Entry, new: Entry) -> Entry:
    return (new[0] if new[0] < old[0] else old[0]), max(old[1], new[1])


def _newest(old: Entry, new: Entry) -> Entry:
    return new if new[1] >= old[1] else old  # ties: the later process wins


# file prefix -> how two processes' values of one key combine
MERGEABLE: dict[str, Callable[[Entry, Entry], Entry]] = {
    "counter": _add,
    "histogram": _add,  # per-bucket counts and _sum are stored per process, not cumulated
    "summary": _add,
    "gauge_sum": _add,
    "gauge_max": _max,
    "gauge_min": _min,
    "gauge_mostrecent": _newest,
}


def read_entries(path: str) -> tuple[list[tuple[str, float, float]], bool]:
    """([(key, value, timestamp)], whole) of a multiprocess file, without ever raising on its
    content: the records that read whole, and whether the file was whole (a 0-byte file, or
    one sized but not yet written, is whole and empty)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return [], True
    if len(data) < 8:
        return [], False
    used = _unpack_int(data, 0)[0]
    if used == 0:
        return [], True
    end = min(used, len(data))
    entries = []
    pos = 8
    while pos + 4 <= end:
        length = _unpack_int(data, pos)[0]
        value_at = pos + 4 + length + (8 - (length + 4) % 8)
        if length <= 0 or value_at + 16 > end:
            break
        try:
            key = data[pos + 4:pos + 4 + length].decode("utf-8")
            metric, name, labels, help_text = json.loads(key)  # what every scrape will parse
            if not (isinstance(metric, str) and isinstance(name, str) and isinstance(labels, dict)
                    and isinstance(help_text, str)):
                break
        except (UnicodeDecodeError, ValueError, TypeError):
            break
        value, timestamp = _unpack_two_doubles(data, value_at)
        entries.append((key, value, timestamp))
        pos = value_at + 16
    return entries, pos == used


def merge_entries(entries: list[tuple[str, float, float]], target: str,
                  combine: Callable[[Entry, Entry], Entry]) -> None:
    """Add `entries` into the file `target` (created if missing).

    The new content is built in a copy and renamed over `target`: an error half-way leaves
    `target` as it was, never half-added.
    """
    work = target + ".tmp"  # not *.db: invisible to readers
    if os.path.exists(target):
        shutil.copyfile(target, work)
    elif os.path.exists(work):
        os.remove(work)
    merged = MmapedDict(work)
    try:
        existing = {key: (value, timestamp) for key, value, timestamp in merged.read_all_values()}
        for key, value, timestamp in entries:
            entry = (value, timestamp)
            if key in existing:
                entry = combine(existing[key], entry)
            existing[key] = entry
            merged.write_value(key, entry[0], entry[1])
    finally:
        merged.close()
    os.replace(work, target)


def _fold(source: str, target: str, combine: Callable[[Entry, Entry], Entry]) -> bool:
    """Fold one dead file into `target`; True if it was folded (or was empty), False if it
    stays where it is (an I/O error: its values still count, only from their own file)."""
    folding = source + ".folding"  # not *.db: once renamed, no reader can count it twice
    try:
        os.replace(source, folding)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return True
        raise
    try:
        entries, whole = read_entries(folding)
        if entries:
            merge_entries(entries, target, combine)
    except BaseException:
        os.replace(folding, source)  # as it was: still counted, from its own file
        raise
    if whole:
        os.remove(folding)
    else:
        aside = source + CORRUPT
        os.replace(folding, aside)
        log.warning("metrics file %s is damaged: %d readable value(s) kept, the file set aside as %s",
                    os.path.basename(source), len(entries), os.path.basename(aside))
    return True


def compact(state_dir: str, pid: int, timeout: float | None = None) -> int | None:
    """Fold the files of `pid`, a reaped process, into the merged files; returns how many files
    were folded, or None if readers held the directory longer than `timeout` seconds (nothing
    done: call again later). Call it after mark_process_dead(pid). Never raises: on an I/O
    error the files stay where they are (still counted; only scrapes are slower) and the error
    is logged."""
    folded = 0
    try:
        with exclusive(state_dir, timeout):
            for prefix, combine in MERGEABLE.items():
                source = metric_file(state_dir, prefix, pid)
                if not os.path.exists(source):
                    continue
                if _fold(source, metric_file(state_dir, prefix, MERGED), combine):
                    folded += 1
    except Busy:
        return None
    except Exception as exc:  # OSError; RuntimeError from MmapedDict; anything else: never the master's end
        log.warning("cannot merge the metrics files of process %d: %s; they stay as they are", pid, exc)
    return folded


# Series whose label names follow the config's label columns (pgne.metrics.WorkerMetrics.series),
# and so do the histograms of observed columns and their skipped counters (metric names starting
# with OBSERVED_PREFIX, labels with `column`), and pg_notify_exporter's series (--compat-metric),
# whose built-in labels are its own.
SERIES_METRICS = frozenset({"pgne_events", "pgne_last_event_timestamp_seconds"})
SERIES_BUILTINS = ("operation", "host", "database", "tag", "schema", "table")
COMPAT_METRIC = "pg_notify_exporter"
COMPAT_BUILTINS = ("operation", "host", "tag", "database", "table")


def series_labels(labels: dict, label_names: tuple[str, ...], builtins: tuple[str, ...] = SERIES_BUILTINS) -> dict:
    """`labels` of a pgne_events_total series (or its timestamp) with the label columns
    `label_names`: a column the series lacks is added empty; one it has that `label_names` lacks
    is dropped when empty (to Prometheus an empty label is no label: the same series) and kept
    otherwise (a series of its own, that keeps its value). `builtins`: the labels that are not
    label columns."""
    out = {name: labels[name] for name in builtins if name in labels}
    for name in label_names:
        out[name] = labels.get(name, "")
    for name, value in labels.items():
        if name not in out and value != "":
            out[name] = value
    return out


def relabel_series(state_dir: str, label_names: tuple[str, ...]) -> int:
    """Rewrite the merged files' pgne_events_total series (timestamps, histograms and the compat
    series) to the label columns
    `label_names` (see series_labels), combining series that become one; returns the number of
    keys rewritten. Call it when every process that wrote other label columns has been reaped
    and compacted. A file that needs no change is not written."""
    changed = 0
    try:
        with exclusive(state_dir):
            for prefix, combine in MERGEABLE.items():
                path = metric_file(state_dir, prefix, MERGED)
                if not os.path.exists(path):
                    continue
                entries: dict[str, Entry] = {}
                rewritten = 0
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                    metric, name, labels, help_text = json.loads(key)
                    if isinstance(labels, dict) and (metric in SERIES_METRICS or metric == COMPAT_METRIC or (
                            metric.startswith(OBSERVED_PREFIX) and "column" in labels)):
                        new = series_labels(labels, label_names,
                                            COMPAT_BUILTINS if metric == COMPAT_METRIC else SERIES_BUILTINS)
                        if new != labels:
                            key = json.dumps([metric, name, new, help_text], sort_keys=True)
                            rewritten += 1
                    entry = (value, timestamp)
                    entries[key] = combine(entries[key], entry) if key in entries else entry
                if not rewritten:
                    continue
                work = path + ".tmp"
                if os.path.exists(work):
                    os.remove(work)
                target = MmapedDict(work)
                try:
                    for key, (value, timestamp) in entries.items():
                        target.write_value(key, value, timestamp)
                finally:
                    target.close()
                os.replace(work, path)  # a new inode: readers' caches see the change
                changed += rewritten
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("cannot relabel the merged metrics files: %s; they stay as they are", exc)
    return changed
