"""The largest notification a monitor's built-in notify trigger (notification_with_payload) can
send, from the config alone: what `pgne check` compares with PostgreSQL's NOTIFY limit.

Every part of the payload is bounded by the config (the table's name, the label columns' names
and whitelisted values or `other`, the bucket bounds) or by its type (counts are int8: 19
digits) except a sum: a float8 sum prints in at most 24 characters, an integer column's in at
most 39, but a numeric column's sum may have thousands of digits. So the check assumes sums of
ordinary length (SUM_TEXT_BYTES), and the trigger sends a payload that would still be too long
with `"values" : null` (its rows counted, its values skipped): no value can make a statement's
rows go uncounted. Mirrors sql_templates/notification_with_payload.sql.j2's layout.
"""
from __future__ import annotations

import json

from pgne.model import OTHER, Monitor

NOTIFY_LIMIT = 8000  # bytes; a payload of 8000 or more fails (SQLSTATE 22023)
COUNT_BYTES = 19  # an int8 count: 9223372036854775807
SEQ_BYTES = 20
SUM_TEXT_BYTES = 40  # "-1.7976931348623157e+308", an int8 column's 39-digit sum; longer: values null
CHECKED_TEMPLATE = "notification_with_payload"


def _json_bytes(text: str) -> int:
    """Bytes of `text` as a JSON string, escaped as PostgreSQL's to_json escapes it."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def _joined(parts: list[int]) -> int:
    """Bytes of parts joined by ", "."""
    return sum(parts) + len(", ") * max(len(parts) - 1, 0)


def worst_case_payload_bytes(monitor: Monitor) -> int:
    """The bytes of the longest payload the monitor's notify trigger sends with full values:
    {"table" : T, "action" : "UPDATE"[, "data" : {L : V, ...}], "count" : N[, "values" : {C : {...}, ...}], "seq" : S}
    """
    size = (len('{"table" : , "action" : "UPDATE", "count" : , "seq" : }') + _json_bytes(monitor.qualified_name)
            + COUNT_BYTES + SEQ_BYTES)
    if monitor.label_columns:
        size += len(', "data" : {}') + _joined([
            _json_bytes(c.name) + len(" : ") + max(_json_bytes(v) for v in (*c.values, OTHER))
            for c in monitor.label_columns])
    if monitor.observed_columns:
        columns = []
        for column in monitor.observed_columns:
            size_of = (_json_bytes(column.name) + len(' : {"count" : , "sum" : "", "null" : , "not_finite" : }')
                       + SUM_TEXT_BYTES + 3 * COUNT_BYTES)
            if column.bounds:
                size_of += len(', "buckets" : {}') + _joined([_json_bytes(b) + len(" : ") + COUNT_BYTES
                                                              for b in column.bounds])
            columns.append(size_of)
        size += len(', "values" : {}') + _joined(columns)
    return size


def payload_problem(monitor: Monitor) -> str | None:
    """Why the config cannot be used with notify delivery (a payload could reach the limit), or None."""
    size = worst_case_payload_bytes(monitor)
    if size < NOTIFY_LIMIT:
        return None
    buckets = sum(len(c.bounds) for c in monitor.observed_columns)
    return (f"a notification of this monitor can reach {size} bytes ({len(monitor.label_columns)} label "
            f"column(s) with their longest whitelisted value, {len(monitor.observed_columns)} observed "
            f"column(s) with {buckets} bucket(s) in all, sums of up to {SUM_TEXT_BYTES} characters): "
            f"PostgreSQL's NOTIFY takes less than {NOTIFY_LIMIT}; observe fewer columns or buckets, shorten "
            f"the whitelisted values, or use delivery: outbox")
