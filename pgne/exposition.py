"""/metrics for the master: prometheus_client's multiprocess totals, computed and printed fast.

MultiProcessCollector plus prometheus_client's encoders cost about 50 µs per sample (each
scrape parses every key of every file as JSON, then validates and escapes every label of every
sample): a second or more for pgne's 10,000 series with their timestamps. `MetricsRenderer`
computes the same totals, the same way, with what does not change between scrapes kept:

- each file key (JSON of metric, sample name, labels, help) is parsed once, and its sample's
  text up to the value (`name{label="value",...} `) is formatted once;
- the merged files of dead workers (pgne.compaction) change only when the master compacts, which
  replaces them (new inode): their combined content is kept until a file's identity changes;
- only the value is formatted per scrape.

Values are combined exactly as MultiProcessCollector combines them (counters add; gauges by
their multiprocess mode: min, max, sum, mostrecent, and their live variants; histograms add
per bucket, then each series' buckets are cumulated in the order of their bounds and `_count`
is the last of them) and printed as prometheus_client's encoders print them, in the format
choose_encoder() picks for the Accept header. Families come sorted by name. Anything outside
what pgne writes — summaries, `all` gauges (a pid label), names that need escaping, an
escaping scheme that rewrites legacy names — takes prometheus_client's own path, unchanged.
"""
from __future__ import annotations

import functools
import json
import mmap
import os
import re
import struct
import threading
from dataclasses import dataclass, field

from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.utils import floatToGoString

from pgne.statedir import MERGED, collect, metric_files, reading, retry_vanished

MAX_CACHED_KEYS = 500_000  # bounded memory if series come and go; the cache is rebuilt when full

_LEGACY_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# escapings under which a legacy name is printed unchanged (DOTS doubles underscores)
_PLAIN_ESCAPINGS = frozenset({openmetrics.UNDERSCORES, openmetrics.VALUES, openmetrics.ALLOWUTF8})
_GAUGE_MODES = frozenset({"min", "max", "sum", "mostrecent", "livemin", "livemax", "livesum", "livemostrecent"})
_unpack_int = struct.Struct("i").unpack_from
_unpack_two_doubles = struct.Struct("dd").unpack_from


class _Fallback(Exception):
    """The state dir holds something the fast path does not print exactly like prometheus_client."""


@dataclass(frozen=True)
class _Key:
    metric: str  # the family name (a counter's without _total)
    sample: tuple  # (sample name, sorted label items): the identity MultiProcessCollector adds up by
    help: str
    prefix: str  # `name{a="x",b="y"} `
    scope: tuple[str | None, str] | None  # (host, database) for the served-databases filter


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _parse_key(raw: bytes) -> _Key:
    metric, name, labels, help_text = json.loads(raw.decode("utf-8"))
    if (not isinstance(help_text, str) or not isinstance(labels, dict)
            or not _LEGACY_METRIC.match(metric) or not _LEGACY_METRIC.match(name)
            or name in (metric + "_created", metric + "_gsum", metric + "_gcount")
            or not all(_LEGACY_LABEL.match(k) and isinstance(v, str) for k, v in labels.items())):
        raise _Fallback()
    items = tuple(sorted(labels.items()))
    text = ",".join(f'{k}="{_escape_value(v)}"' for k, v in items)
    prefix = f"{name}{{{text}}} " if items else f"{name} "
    scope = (labels.get("host"), labels["database"]) if "database" in labels else None
    return _Key(metric, (name, items), help_text, prefix, scope)


def _entries(path: str):
    """(raw key, value, timestamp) of one file, like MmapedDict.read_all_values_from_file."""
    with open(path, "rb") as f:
        data = f.read(mmap.PAGESIZE)
        used = _unpack_int(data, 0)[0]
        if used > len(data):
            data += f.read(used - len(data))
    pos = 8
    out = []
    append = out.append
    while pos < used:
        length = _unpack_int(data, pos)[0]
        if length + pos > used:
            raise RuntimeError("Read beyond file size detected, file is corrupted.")
        pos += 4
        raw = data[pos:pos + length]
        pos += length + (8 - (length + 4) % 8)
        value, timestamp = _unpack_two_doubles(data, pos)
        pos += 16
        append((raw, value, timestamp))
    return out


@dataclass
class _Family:
    name: str
    typ: str  # counter or gauge
    mode: str  # a gauge's multiprocess mode; "" for counters
    help: str
    values: dict = field(default_factory=dict)  # _Key.sample -> value ((value, timestamp) for mostrecent)

    def copy(self) -> _Family:
        return _Family(self.name, self.typ, self.mode, self.help, dict(self.values))


def _kind(path: str) -> tuple[str, str]:
    """(type, gauge mode) from a file name, as MultiProcessCollector reads it."""
    parts = os.path.basename(path).split("_")
    if parts[0] in ("counter", "histogram"):  # values that add up across processes
        return parts[0], ""
    if parts[0] == "gauge" and len(parts) == 3 and parts[1] in _GAUGE_MODES:
        return "gauge", parts[1]
    raise _Fallback()  # histogram, summary, `all` gauges: prometheus_client's path


class MetricsRenderer:
    """Renders /metrics from a state dir; keep one per server (it holds the caches)."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._lock = threading.Lock()  # scrapes share the caches: one at a time
        self._keys: dict[bytes, _Key] = {}
        self._by_sample: dict[tuple, _Key] = {}
        self._merged_id: tuple | None = None
        self._merged: dict[str, _Family] = {}

    # -- reading ---------------------------------------------------------------------------

    def _key(self, raw: bytes) -> _Key:
        key = self._keys.get(raw)
        if key is None:
            key = self._keys[raw] = _parse_key(raw)
            self._by_sample[key.sample] = key
        return key

    def _add_file(self, families: dict[str, _Family], path: str, typ: str, mode: str) -> None:
        try:
            entries = _entries(path)
        except FileNotFoundError:
            if mode.startswith("live"):  # mark_process_dead() removed it since we listed
                return
            raise
        key_of = self._key
        values = None
        family = None
        for raw, value, timestamp in entries:
            key = key_of(raw)
            if family is None or family.name != key.metric:
                family = families.get(key.metric)
                if family is None:
                    family = families[key.metric] = _Family(key.metric, typ, mode, key.help)
                elif family.typ != typ or family.mode != mode:
                    raise _Fallback()  # one metric in files of different kinds: let prometheus_client decide
                values = family.values
            sample = key.sample
            if not mode or mode in ("sum", "livesum"):  # counters and histograms (no mode) add
                values[sample] = values.get(sample, 0.0) + value
            elif mode in ("max", "livemax"):
                current = values.get(sample)
                if current is None or value > current:
                    values[sample] = value
            elif mode in ("min", "livemin"):
                current = values.get(sample)
                if current is None or value < current:
                    values[sample] = value
            else:  # mostrecent, livemostrecent: the newest timestamp wins; never written: absent
                current = values.get(sample)
                if (current[1] if current else 0.0) < timestamp:
                    values[sample] = (value, timestamp)

    def _collect(self) -> dict[str, _Family]:
        if len(self._keys) >= MAX_CACHED_KEYS:  # series came and went: start afresh
            self._keys, self._by_sample, self._merged_id, self._merged = {}, {}, None, {}
        paths = metric_files(self.state_dir)
        merged = sorted(p for p in paths if os.path.basename(p).endswith(f"_{MERGED}.db"))
        identity = []
        for path in merged:
            st = os.stat(path)
            identity.append((path, st.st_ino, st.st_mtime_ns, st.st_size))
        identity = tuple(identity)
        if identity != self._merged_id:  # compaction replaced a merged file: read them again
            self._merged_id, self._merged = None, {}
            base: dict[str, _Family] = {}
            for path in merged:
                self._add_file(base, path, *_kind(path))
            self._merged, self._merged_id = base, identity
        families = {name: family.copy() for name, family in self._merged.items()}
        for path in paths:
            if path not in merged:
                self._add_file(families, path, *_kind(path))
        return families

    # -- printing ----------------------------------------------------------------------------

    def _print(self, families: dict[str, _Family], openmetrics_format: bool,
               databases: frozenset | None) -> bytes:
        keys = self._by_sample
        out = []
        for name in sorted(families):
            family = families[name]
            if openmetrics_format:
                help_text = _escape_value(family.help)
                out.append(f"# HELP {name} {help_text}\n# TYPE {name} {family.typ}\n")
            else:
                shown = name + "_total" if family.typ == "counter" else name
                help_text = family.help.replace("\\", r"\\").replace("\n", r"\n")
                out.append(f"# HELP {shown} {help_text}\n# TYPE {shown} {family.typ}\n")
            if family.typ == "histogram":
                out.extend(_histogram_lines(family, keys, databases))
                continue
            mostrecent = family.mode.endswith("mostrecent")
            for sample, value in family.values.items():
                key = keys[sample]
                if databases is not None and key.scope is not None and key.scope not in databases:
                    continue
                out.append(key.prefix)
                out.append(floatToGoString(value[0] if mostrecent else value))
                out.append("\n")
        if openmetrics_format:
            out.append("# EOF\n")
        return "".join(out).encode("utf-8")

    def render(self, accept: str, databases: frozenset | None = None,
               slow_path=None) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics with this Accept header.

        When the fast path cannot print the state dir exactly like prometheus_client's own encoders,
        they print the CollectorRegistry that `slow_path(databases)` returns (by default
        pgne.statedir.collect's).
        """
        encoder, content_type = exposition.choose_encoder(accept)
        form = _format(encoder)
        if form is not None:
            try:
                with self._lock, reading(self.state_dir):
                    families = retry_vanished(self._collect)
                    return self._print(families, form, databases), content_type
            except _Fallback:
                pass
        registry = slow_path(databases) if slow_path else collect(self.state_dir, databases)
        return encoder(registry), content_type


def _histogram_lines(family: _Family, keys: dict, databases: frozenset | None) -> list[str]:
    """A histogram's lines as MultiProcessCollector + the encoders give them: per series (its
    labels less `le`), `_sum`, then `_bucket` cumulated in the order of the bounds (`le` written
    by floatToGoString; labels sorted, as everywhere), then `_count` (the last bucket)."""
    series: dict[tuple, list] = {}  # labels less le -> [sum or None, {bound: value}]
    bucket_name, sum_name = family.name + "_bucket", family.name + "_sum"
    for sample, value in family.values.items():
        key = keys[sample]
        if databases is not None and key.scope is not None and key.scope not in databases:
            continue
        name, items = sample
        if name == bucket_name:
            le = [v for k, v in items if k == "le"]
            if not le:
                raise _Fallback()
            entry = series.setdefault(tuple(i for i in items if i[0] != "le"), [None, {}])
            bound = float(le[0])
            entry[1][bound] = entry[1].get(bound, 0.0) + value
        elif name == sum_name and all(k != "le" for k, _ in items):
            series.setdefault(items, [None, {}])[0] = value
        else:
            raise _Fallback()
    out = []
    for items, (total, buckets) in series.items():
        text = ",".join(f'{k}="{_escape_value(v)}"' for k, v in items)
        if total is not None:
            out.append(f"{sum_name}{{{text}}} {floatToGoString(total)}\n" if items else
                       f"{sum_name} {floatToGoString(total)}\n")
        if not buckets:
            continue
        cumulative = 0.0
        for bound in sorted(buckets):
            cumulative += buckets[bound]
            labels = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(items + (("le", floatToGoString(bound)),)))
            out.append(f"{bucket_name}{{{labels}}} {floatToGoString(cumulative)}\n")
        out.append(f"{family.name}_count{{{text}}} {floatToGoString(cumulative)}\n" if items else
                   f"{family.name}_count {floatToGoString(cumulative)}\n")
    return out


def _format(encoder) -> bool | None:
    """True for OpenMetrics, False for the text format, None when we do not print it ourselves."""
    if encoder is exposition.generate_latest:
        return False
    if isinstance(encoder, functools.partial) and encoder.keywords.get("escaping") in _PLAIN_ESCAPINGS:
        if encoder.func is exposition.generate_latest:
            return False
        if encoder.func is openmetrics.generate_latest:
            return True
    return None

