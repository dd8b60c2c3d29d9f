"""Histograms of observed columns (columns_to_observe): the test tables, a workload, what SQL
says each histogram must hold, and what pgne exports.

The expected values come from SQL over an audit table that a plain row trigger fills in the
application's own transactions (new rows for INSERT and UPDATE, old rows for DELETE): rolled-back
rows never reach it, so it holds exactly the rows pgne must have observed.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Mapping

import psycopg2

from support.databases import host_label, query
from support.waiting import wait_until

BUCKETS = (-100, 0, 10, 100, 1000.5)
SUPPLIERS = ("acme", "globex")
OTHER = "other"
TABLES = """
CREATE TABLE orders (id serial PRIMARY KEY, supplier text, amount numeric);
CREATE TABLE lines (id serial PRIMARY KEY, qty integer);
CREATE TABLE audit (tbl text, op text, supplier text, amount numeric);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'orders' THEN
    INSERT INTO audit VALUES ('orders', TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.supplier ELSE NEW.supplier END,
                              CASE WHEN TG_OP = 'DELETE' THEN OLD.amount ELSE NEW.amount END);
  ELSE
    INSERT INTO audit VALUES ('lines', TG_OP, NULL, CASE WHEN TG_OP = 'DELETE' THEN OLD.qty ELSE NEW.qty END);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON lines FOR EACH ROW EXECUTE FUNCTION audit_row();
"""
ORDERS = {"table": "orders", "enabled": True, "function": "notification_with_payload",
          "columns_to_label": [{"supplier": list(SUPPLIERS)}],
          "columns_to_observe": [{"name": "amount", "buckets": list(BUCKETS), "unit": "euros"}],
          "events": ["insert", "update", "delete"]}
LINES = {"table": "lines", "enabled": True, "function": "notification_with_payload",
         "columns_to_observe": [{"name": "qty"}], "events": ["insert", "delete"]}
MONITORS = [ORDERS, LINES]
FAMILIES = {"amount": "pgne_observed_euros", "qty": "pgne_observed_values"}  # column -> histogram
MANY_DIGITS = "12345678901234567890.123456789012345678"  # beyond float64's 17 significant digits

# Mixed statements, each (sql, params, commit?): bulk, multi-statement transactions, rollbacks,
# UPDATE, DELETE, NULL, NaN, ±Infinity, numeric with many digits, negative values.
WORKLOAD = [
    ([("INSERT INTO orders (supplier, amount) SELECT (ARRAY['acme','globex','umbrella'])[g % 3 + 1], "
       "(g % 2500 - 400) / 4.0 FROM generate_series(1, 1000) AS g", None)], True),
    ([("INSERT INTO orders (supplier, amount) VALUES ('acme', NULL), ('acme', 'NaN'), ('globex', 'Infinity'), "
       "('globex', '-Infinity'), (NULL, 5)", None),
      ("INSERT INTO orders (supplier, amount) VALUES ('acme', %s), ('acme', %s)", (MANY_DIGITS, MANY_DIGITS)),
      ("INSERT INTO lines (qty) SELECT g % 7 FROM generate_series(1, 300) AS g", None)], True),
    ([("INSERT INTO orders (supplier, amount) VALUES ('acme', 1000000)", None),
      ("INSERT INTO lines (qty) VALUES (1000000)", None)], False),  # rolled back
    ([("UPDATE orders SET amount = -amount WHERE id % 10 = 0", None)], True),
    ([("DELETE FROM orders WHERE id % 7 = 0", None), ("DELETE FROM lines WHERE qty = 3", None)], True),
    ([("INSERT INTO orders (supplier, amount) VALUES ('globex', -0.005)", None),
      ("UPDATE orders SET amount = NULL WHERE id = 2", None),
      ("UPDATE orders SET amount = 'NaN' WHERE id = 3", None)], True),
    ([("DELETE FROM orders WHERE id = 4", None)], False),  # rolled back
    ([("INSERT INTO lines (qty) VALUES (NULL), (-2)", None)], True),
]


def run_workload(dsn: str, workload=WORKLOAD) -> None:
    conn = psycopg2.connect(dsn)
    try:
        for statements, commit in workload:
            with conn.cursor() as cur:
                for statement, params in statements:
                    cur.execute(statement, params)
            conn.commit() if commit else conn.rollback()
    finally:
        conn.close()


# {(family, operation, table, label value, column): histogram} where a histogram is a dict:
# count, sum (Decimal from SQL; float when exported), buckets {le text: cumulative}, null, not_finite
Key = tuple[str, str, str, str, str]


def expected_histograms(dsn: str) -> dict[Key, dict]:
    """What every histogram must hold, computed by PostgreSQL over the audit table."""
    finite = "amount - amount = 0"
    bucket_sql = ", ".join(f"count(*) FILTER (WHERE {finite} AND amount <= {b})" for b in BUCKETS)
    rows = query(dsn, f"""
        SELECT tbl, op,
               CASE WHEN tbl = 'lines' THEN '' WHEN supplier = ANY(%s) THEN supplier ELSE 'other' END,
               count(*) FILTER (WHERE {finite}), coalesce(sum(amount) FILTER (WHERE {finite}), 0)::text,
               count(*) FILTER (WHERE amount IS NULL), count(*) FILTER (WHERE amount IS NOT NULL AND NOT {finite}),
               {bucket_sql}
        FROM audit GROUP BY 1, 2, 3""", (list(SUPPLIERS),))
    out: dict[Key, dict] = {}
    for tbl, op, label, count, total, null, not_finite, *buckets in rows:
        if tbl == "orders":
            les = {_le(b): n for b, n in zip(BUCKETS, buckets)}
            out[("pgne_observed_euros", op, tbl, label, "amount")] = {
                "count": count, "sum": Decimal(total), "buckets": {**les, "+Inf": count},
                "null": null, "not_finite": not_finite}
        else:
            out[("pgne_observed_values", op, tbl, "", "qty")] = {
                "count": count, "sum": Decimal(total), "buckets": {"+Inf": count}, "null": null,
                "not_finite": not_finite}
    return out


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString
    return floatToGoString(bound)


def exported_histograms(samples: Mapping, db, label: str = "supplier") -> dict[Key, dict]:
    """The histograms one database's pgne exports, in expected_histograms' shape (sum a float)."""
    out: dict[Key, dict] = {}
    host = host_label(db.host, db.port)

    def entry(labels: dict, family: str) -> dict:
        key = (family, labels["operation"], labels["table"], labels.get(label, ""), labels["column"])
        return out.setdefault(key, {"count": None, "sum": None, "buckets": {}, "null": None, "not_finite": None})

    for (name, items), value in samples.items():
        labels = dict(items)
        if labels.get("database") != db.name or labels.get("host") != host:
            continue
        if name == "pgne_observed_skipped_total":
            entry(labels, FAMILIES[labels["column"]])[labels["reason"]] = value
        elif name.startswith("pgne_observed_") and name.endswith("_bucket"):
            entry(labels, name[:-len("_bucket")])["buckets"][labels["le"]] = value
        elif name.startswith("pgne_observed_") and name.endswith("_sum"):
            entry(labels, name[:-len("_sum")])["sum"] = value
        elif name.startswith("pgne_observed_") and name.endswith("_count"):
            entry(labels, name[:-len("_count")])["count"] = value
    return out


def as_exported(expected: Mapping[Key, dict]) -> dict[Key, dict]:
    """expected_histograms' values as /metrics shows them: floats, the sum the float64 nearest
    to PostgreSQL's exact sum."""
    return {key: {"count": float(h["count"]), "sum": float(h["sum"]),
                  "buckets": {le: float(n) for le, n in h["buckets"].items()},
                  "null": float(h["null"]), "not_finite": float(h["not_finite"])}
            for key, h in expected.items()}


def nonzero(histograms: Mapping[Key, dict]) -> dict[Key, dict]:
    """Only the histograms that observed or skipped a row (pgne pre-creates the others at 0)."""
    return {k: h for k, h in histograms.items() if h["count"] or h["null"] or h["not_finite"]}


def wait_histograms(proc, db, expected: Mapping[Key, dict], timeout: float = 30.0) -> dict[Key, dict]:
    """Poll until the non-zero histograms `proc` exports for `db` equal `expected` (as_exported);
    return them."""
    want = as_exported(expected)
    seen: dict = {}

    def done():
        seen["exported"] = nonzero(exported_histograms(proc.scrape(), db))
        return seen["exported"] if seen["exported"] == want else None

    return wait_until(done, timeout, "the exported histograms to equal SQL's",
                      lambda: f"exported: {seen.get('exported')}\nexpected: {want}\n{proc.describe()}")
