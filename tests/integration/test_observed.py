"""Histograms of observed columns (columns_to_observe) through a real `pgne run`: what pgne
exports equals what SQL computes over the rows the application committed, exactly, after a
mixed workload (bulk, multi-statement transactions, rollbacks, UPDATE, DELETE, NULL, NaN,
±Infinity, numeric beyond float64, negative values); and the setup problems of an observed
column (missing, not numeric) in `apply` and `status`."""
from __future__ import annotations

import json

from support.configs import config_text, database_entry
from support.databases import host_label, run_sql
from support.exporter import PgneProcess, apply_in_process, status_in_process
from support.metrics import settle
from support.observed import (
    MONITORS,
    ORDERS,
    TABLES,
    as_exported,
    expected_histograms,
    exported_histograms,
    nonzero,
    run_workload,
)


def write(tmp_path, text: str):
    path = tmp_path / "events_config.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_notify_histograms_equal_sql_over_the_committed_rows(pg_database, tmp_path):
    pg_database.execute(TABLES)
    config = write(tmp_path, config_text(database_entry(pg_database, MONITORS)))
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        run_workload(pg_database.dsn)
        settle(proc, pg_database)
        exported = exported_histograms(proc.scrape(), pg_database)
    expected = expected_histograms(pg_database.dsn)
    assert nonzero(exported) == as_exported(expected)
    # the numeric with many digits is in acme's INSERT sum, exact in PostgreSQL (and exported as
    # the float64 nearest to that exact sum, above)
    acme = expected[("pgne_observed_euros", "INSERT", "orders", "acme", "amount")]
    assert str(acme["sum"]).endswith("35600")  # 2 x MANY_DIGITS' last decimals: nothing rounded
    assert len(acme["sum"].as_tuple().digits) > 17  # more than a float64 holds
    # every configured series exists from the start: 3 operations x 3 label values + 2 for lines
    assert len(exported) == 3 * 3 + 2
    assert exported[("pgne_observed_euros", "UPDATE", "orders", "other", "amount")]["buckets"].keys() == {
        "-100.0", "0.0", "10.0", "100.0", "1000.5", "+Inf"}


def test_a_payload_with_values_from_the_application_is_counted_and_bad_values_are_skipped(pg_database, tmp_path):
    pg_database.execute(TABLES)
    config = write(tmp_path, config_text(database_entry(pg_database, MONITORS, perform_setup=False)))
    apply_in_process(config)
    good = {"table": "public.orders", "action": "INSERT", "data": {"supplier": "acme"}, "count": 3,
            "values": {"amount": {"count": 2, "sum": "10.25", "null": 1,
                                  "buckets": {"-100": 0, "0": 0, "10": 1, "100": 2, "1000.5": 2}}}}
    bad = dict(good, values={"amount": {"count": 2, "sum": "x"}})
    without = {"table": "public.orders", "action": "INSERT", "data": {"supplier": "acme"}, "count": 4}
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        for payload in (good, bad, without):
            run_sql(pg_database, ("SELECT pg_notify('pg_notify_exporter', %s)", (json.dumps(payload),)))
        settle(proc, pg_database)
        samples = proc.scrape()
    histogram = exported_histograms(samples, pg_database)[("pgne_observed_euros", "INSERT", "orders", "acme", "amount")]
    assert histogram == {"count": 2.0, "sum": 10.25, "null": 1.0, "not_finite": 0.0,
                         "buckets": {"-100.0": 0.0, "0.0": 0.0, "10.0": 1.0, "100.0": 2.0, "1000.5": 2.0, "+Inf": 2.0}}
    labels = {"host": host_label(pg_database.host, pg_database.port), "database": pg_database.name}
    assert samples[("pgne_observed_invalid_values_total", frozenset(labels.items()))] == 1.0
    events = {dict(k[1])["supplier"]: v for k, v in samples.items() if k[0] == "pgne_events_total"
              and dict(k[1]).get("operation") == "INSERT" and dict(k[1]).get("table") == "orders"}
    assert events["acme"] == 3 + 3 + 4  # the rows are counted, also those whose values were bad


def test_apply_and_status_report_a_missing_or_non_numeric_observed_column(pg_database, tmp_path):
    pg_database.execute("CREATE TABLE orders (id serial, supplier text, amount text)")
    monitor = dict(ORDERS, columns_to_observe=[{"name": "amount"}, {"name": "qty"}])
    config = write(tmp_path, config_text(database_entry(pg_database, [monitor], perform_setup=False)))
    outcome = apply_in_process(config)
    assert outcome.code == 1
    [line] = outcome.lines
    assert "observed column amount of table public.orders is not of a numeric type" in line
    assert "observed column qty does not exist in table public.orders" in line
    status = status_in_process(config)
    assert status.code == 1
    assert "observed column not numeric" in status.stdout and "missing observed column" in status.stdout
