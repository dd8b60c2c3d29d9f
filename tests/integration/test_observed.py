"""Histograms of observed columns (columns_to_observe) through a real `pgne run`: what pgne
exports equals what SQL computes over the rows the application committed, exactly, after a
mixed workload (bulk, multi-statement transactions, rollbacks, UPDATE, DELETE, NULL, NaN,
±Infinity, numeric beyond float64, negative values); and the setup problems of an observed
column (missing, not numeric) in `apply` and `status`."""
from __future__ import annotations

import json
from decimal import Decimal

import psycopg2
import pytest
from support.configs import config_text, database_entry
from support.databases import host_label, query, run_sql
from support.exporter import PgneProcess, apply_in_process, status_in_process
from support.metrics import settle
from support.observed import (
    MONITORS,
    ORDERS,
    TABLES,
    WORKLOAD,
    as_exported,
    expected_histograms,
    exported_histograms,
    nonzero,
    run_workload,
    wait_histograms,
)
from support.outbox import outbox_entry
from support.waiting import wait_until


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
        samples = proc.scrape()
        exported = exported_histograms(samples, pg_database)
    expected = expected_histograms(pg_database.dsn)
    assert nonzero(exported) == as_exported(expected)
    # every row counted is observed or skipped: _count + null + not_finite = pgne_events_total
    events = {(d["operation"], d["table"], d.get("supplier", "")): value for (name, labels), value in samples.items()
              if name == "pgne_events_total" for d in [dict(labels)]}
    assert {k[1:4]: h["count"] + h["null"] + h["not_finite"] for k, h in exported.items()} == events
    # the numeric with many digits is in acme's INSERT sum, exact in PostgreSQL (and exported as
    # the float64 nearest to that exact sum, above)
    acme = expected[("pgne_observed_euros", "INSERT", "orders", "acme", "amount")]
    assert str(acme["sum"]) == "24691357802469144188.49691357802469135600"  # as the README shows it
    assert exported[("pgne_observed_euros", "INSERT", "orders", "acme", "amount")]["sum"] == 2.4691357802469143e+19
    assert len(acme["sum"].as_tuple().digits) > 17  # more than a float64 holds
    # every configured series exists from the start: 3 operations x 3 label values + 2 for lines
    assert len(exported) == 3 * 3 + 2
    assert exported[("pgne_observed_euros", "UPDATE", "orders", "other", "amount")]["buckets"].keys() == {
        "-100.0", "0.0", "10.0", "100.0", "1000.5", "+Inf"}


def test_outbox_histograms_equal_sql_and_are_durable_across_a_restart_of_pgne(pg_database, tmp_path):
    pg_database.execute(TABLES)
    config = write(tmp_path, config_text(outbox_entry(pg_database, MONITORS, perform_setup=True)))
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        run_workload(pg_database.dsn)
        expected = expected_histograms(pg_database.dsn)
        wait_histograms(proc, pg_database, expected)
    # pgne.totals keeps each sum exactly, as text: the 38-digit numeric is not rounded
    [[total]] = query(pg_database.dsn, "SELECT observed->'amount'->>'sum' FROM pgne.totals "
                                       "WHERE operation = 'INSERT' AND labels->>'supplier' = 'acme'")
    assert Decimal(total) == expected[("pgne_observed_euros", "INSERT", "orders", "acme", "amount")]["sum"]
    run_workload(pg_database.dsn, WORKLOAD[:2])  # while pgne is stopped: counted when it is back
    expected = expected_histograms(pg_database.dsn)
    with PgneProcess(config, tmp_path / "pgne-again").running() as proc:  # a new state dir: from pgne.totals
        wait_histograms(proc, pg_database, expected)


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


def test_outbox_observing_statements_assign_no_subtransaction_id(pg_database, tmp_path):
    pg_database.execute(TABLES)
    config = write(tmp_path, config_text(outbox_entry(pg_database, MONITORS)))
    assert apply_in_process(config).code == 0
    conn = psycopg2.connect(pg_database.dsn)
    try:
        with conn.cursor() as cur:
            for i in range(200):
                cur.execute("INSERT INTO orders (supplier, amount) VALUES ('acme', %s)", (i,))
            cur.execute("SELECT pg_backend_pid(), pg_current_xact_id_if_assigned() IS NOT NULL")
            pid, assigned = cur.fetchone()
            assert assigned
            # every XID a transaction (or one of its subtransactions) is assigned holds a lock on
            # it until the end: one, its own, so the EXCEPTION blocks wrote nothing (any version)
            [[xid_locks]] = query(pg_database.dsn, "SELECT count(*) FROM pg_catalog.pg_locks "
                                                   "WHERE locktype = 'transactionid' AND pid = %s", (pid,))
            assert xid_locks == 1
        conn.commit()
    finally:
        conn.close()
    [[rows, observed]] = query(pg_database.dsn, "SELECT count(*), sum((observed->'amount'->>'count')::int) "
                                                "FROM pgne.event_log")
    assert (rows, observed) == (200, 200)


def test_an_outbox_install_from_before_columns_to_observe_is_in_sync_until_a_column_is_observed(pg_database, tmp_path):
    pg_database.execute(TABLES)
    plain = [{k: v for k, v in m.items() if k != "columns_to_observe"} for m in MONITORS]
    config = write(tmp_path, config_text(outbox_entry(pg_database, plain)))
    assert apply_in_process(config).code == 0
    # pgne.event_log has one layout (the triggers check it by its number of columns); pgne.totals
    # gets `observed` only when a column is observed
    assert query(pg_database.dsn, "SELECT attrelid::regclass::text FROM pg_attribute WHERE attname = 'observed' "
                                  "AND attrelid IN ('pgne.event_log'::regclass, 'pgne.totals'::regclass)") == [
        ("pgne.event_log",)]
    assert status_in_process(config).code == 0  # an install without the column is not broken
    config = write(tmp_path, config_text(outbox_entry(pg_database, MONITORS)))
    status = status_in_process(config)
    assert status.code == 1
    rows = [line.split()[1:] for line in status.stdout.splitlines()[1:]]
    assert ["missing", "column", "pgne.totals.observed"] in rows
    assert apply_in_process(config).code == 0
    assert status_in_process(config).code == 0
    # added without a rewrite: nullable, no default (the tables keep their relfilenode)
    assert query(pg_database.dsn, "SELECT count(*) FROM pg_attribute WHERE attname = 'observed' AND NOT attnotnull "
                                  "AND NOT atthasdef AND attrelid IN ('pgne.event_log'::regclass, "
                                  "'pgne.totals'::regclass)") == [(2,)]


ODD_NAMES = ("observed", "n", "count", "labels", "seq", "pgne-v1", "pgne-r", "tg_op", "sum")


@pytest.mark.parametrize("delivery", ["notify", "outbox"])
def test_observed_columns_named_like_the_templates_identifiers_are_observed_exactly(pg_database, tmp_path, delivery):
    columns = ", ".join(f'"{name}" int' for name in ODD_NAMES)
    pg_database.execute(f"CREATE TABLE odd (id serial, {columns})")
    monitor = {"table": "odd", "enabled": True, "function": "notification_with_payload",
               "columns_to_observe": [{"name": name, "buckets": [1]} for name in ODD_NAMES],
               "events": ["insert", "delete"]}
    entry = (outbox_entry(pg_database, [monitor], perform_setup=True) if delivery == "outbox"
             else database_entry(pg_database, [monitor]))
    config = write(tmp_path, config_text(entry))
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        values = ", ".join(str(i) for i in range(len(ODD_NAMES)))
        run_sql(pg_database, f"INSERT INTO odd ({', '.join(f'{chr(34)}{n}{chr(34)}' for n in ODD_NAMES)}) "
                             f"SELECT {values} FROM generate_series(1, 3)", "DELETE FROM odd WHERE id = 1")

        def observed():
            found = {}
            for (name, items), value in proc.scrape().items():
                labels = dict(items)
                if name == "pgne_observed_values_sum" and labels.get("database") == pg_database.name:
                    found[(labels["operation"], labels["column"])] = value
            return found

        want = {**{("INSERT", name): 3.0 * i for i, name in enumerate(ODD_NAMES)},
                **{("DELETE", name): 1.0 * i for i, name in enumerate(ODD_NAMES)}}
        wait_until(lambda: observed() == want, 30, "every odd column observed", lambda: f"{observed()}")
    assert "WARNING" not in proc.stderr_text()


def test_a_hostile_sum_is_skipped_its_rows_counted_and_the_worker_keeps_running(pg_database, tmp_path):
    pg_database.execute(TABLES)
    config = write(tmp_path, config_text(database_entry(pg_database, MONITORS, perform_setup=False)))
    apply_in_process(config)
    good = {"table": "public.orders", "action": "INSERT", "data": {"supplier": "acme"}, "count": 3,
            "values": {"amount": {"count": 2, "sum": "10.25", "null": 1,
                                  "buckets": {"-100": 0, "0": 0, "10": 1, "100": 2, "1000.5": 2}}}}
    # exact addition of the first raised MemoryError (the worker died, the next row was lost);
    # the second cost seconds of CPU and hundreds of MB per payload
    hostile = [dict(good, values={"amount": dict(good["values"]["amount"], sum=total)})
               for total in ("1e999999999999999999", "1e300000000", "0e-999999999")]
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        for payload in (good, *hostile, good):
            run_sql(pg_database, ("SELECT pg_notify('pg_notify_exporter', %s)", (json.dumps(payload),)))
        settle(proc, pg_database)
        samples = proc.scrape()
    histogram = exported_histograms(samples, pg_database)[("pgne_observed_euros", "INSERT", "orders", "acme", "amount")]
    assert histogram == {"count": 4.0, "sum": 20.5, "null": 2.0, "not_finite": 0.0,
                         "buckets": {"-100.0": 0.0, "0.0": 0.0, "10.0": 2.0, "100.0": 4.0, "1000.5": 4.0, "+Inf": 4.0}}
    labels = frozenset({"host": host_label(pg_database.host, pg_database.port), "database": pg_database.name}.items())
    assert samples[("pgne_observed_invalid_values_total", labels)] == 3.0
    assert samples[("pgne_worker_restarts_total", labels)] == 0.0
    events = {dict(k[1])["supplier"]: v for k, v in samples.items() if k[0] == "pgne_events_total"
              and dict(k[1]).get("operation") == "INSERT" and dict(k[1]).get("table") == "orders"}
    assert events["acme"] == 5 * 3  # every payload's rows


def test_a_json_integer_sum_of_thousands_of_digits_is_added_exactly_and_an_odd_sum_text_skipped(pg_database,
                                                                                                  tmp_path):
    """A hand-sent sum of 4,301 digits (valid JSON, that json.loads alone refuses) and its
    opposite are added exactly: the rows of both are counted, and the sum is back to the good
    payloads' 20.5; a sum written "1_0" (not how PostgreSQL prints a number) is skipped, its rows
    counted."""
    pg_database.execute(TABLES)
    config = write(tmp_path, config_text(database_entry(pg_database, MONITORS, perform_setup=False)))
    apply_in_process(config)
    good = {"table": "public.orders", "action": "INSERT", "data": {"supplier": "acme"}, "count": 3,
            "values": {"amount": {"count": 2, "sum": "10.25", "null": 1,
                                  "buckets": {"-100": 0, "0": 0, "10": 1, "100": 2, "1000.5": 2}}}}
    long = "4" + "0" * 4300

    def with_sum(total: str, below: int) -> str:
        values = {"count": 1, "sum": "SUM", "buckets": dict.fromkeys(["-100", "0", "10", "100", "1000.5"], below)}
        return json.dumps(dict(good, values={"amount": values})).replace('"SUM"', total)

    payloads = [json.dumps(good), with_sum(long, 0), with_sum("-" + long, 1), with_sum('"1_0"', 1), json.dumps(good)]
    assert all(len(p.encode()) < 8000 for p in payloads)
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        for payload in payloads:
            run_sql(pg_database, ("SELECT pg_notify('pg_notify_exporter', %s)", (payload,)))
        settle(proc, pg_database)
        samples = proc.scrape()
    histogram = exported_histograms(samples, pg_database)[("pgne_observed_euros", "INSERT", "orders", "acme", "amount")]
    assert histogram == {"count": 6.0, "sum": 20.5, "null": 2.0, "not_finite": 0.0,
                         "buckets": {"-100.0": 1.0, "0.0": 1.0, "10.0": 3.0, "100.0": 5.0, "1000.5": 5.0, "+Inf": 6.0}}
    labels = frozenset({"host": host_label(pg_database.host, pg_database.port), "database": pg_database.name}.items())
    assert samples[("pgne_observed_invalid_values_total", labels)] == 1.0  # "1_0"
    assert samples[("pgne_worker_restarts_total", labels)] == 0.0
    events = {dict(k[1])["supplier"]: v for k, v in samples.items() if k[0] == "pgne_events_total"
              and dict(k[1]).get("operation") == "INSERT" and dict(k[1]).get("table") == "orders"}
    assert events["acme"] == 5 * 3  # every payload's rows


READINGS = {"table": "readings", "enabled": True, "function": "notification_with_payload",
            "columns_to_label": [{"day": ["2024-01-31", "2024-02-01"]}, {"at": ["2024-01-01 00:00:00+00"]}],
            "columns_to_observe": [{"name": "x", "buckets": [1]}], "events": ["insert"]}


@pytest.mark.parametrize("delivery", ["notify", "outbox"])
def test_the_applications_session_settings_never_change_what_pgne_reports(pg_database, tmp_path, delivery):
    pg_database.execute("CREATE TABLE readings (id serial, day date, at timestamptz, x double precision)")
    # the database's zone, which pgne's setup session (and the whitelist's author) reads it in
    pg_database.execute(f'ALTER DATABASE "{pg_database.name}" SET TimeZone = \'UTC\'')
    entry = (outbox_entry(pg_database, [READINGS], perform_setup=True) if delivery == "outbox"
             else database_entry(pg_database, [READINGS]))
    config = write(tmp_path, config_text(entry))
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        conn = psycopg2.connect(pg_database.dsn)
        try:
            with conn.cursor() as cur:  # what an application's session may set; SQL's sums are unchanged
                cur.execute("SET extra_float_digits = -15; SET DateStyle = 'German, DMY'; "
                            "SET IntervalStyle = sql_standard; SET bytea_output = escape; "
                            "SET TimeZone = 'America/New_York'; SET lc_monetary = 'C.utf8'")
                cur.execute("INSERT INTO readings (day, at, x) "
                            "VALUES ('2024-01-31', '2024-01-01 00:00:00+00', 1.5e300)")
                cur.execute("INSERT INTO readings (day, x) VALUES ('2024-02-01', 0.1), ('2024-02-01', 0.2)")
            conn.commit()
        finally:
            conn.close()
        sums = dict(query(pg_database.dsn, "SELECT day::text, sum(x)::text FROM readings GROUP BY 1"))
        assert sums == {"2024-01-31": "1.5e+300", "2024-02-01": "0.30000000000000004"}
        host = host_label(pg_database.host, pg_database.port)

        def exported():
            return {dict(k[1])["day"]: v for k, v in proc.scrape().items()
                    if k[0] == "pgne_observed_values_sum" and dict(k[1])["database"] == pg_database.name
                    and dict(k[1])["host"] == host and v}

        wanted = {"2024-01-31": 1.5e300, "2024-02-01": 0.30000000000000004}  # not 2e+300 and 0.3
        wait_until(lambda: exported() == wanted, 30, "the sums of both days",
                   lambda: f"{exported()}\n{proc.describe()}")
        events = {(dict(k[1])["day"], dict(k[1])["at"]): v for k, v in proc.scrape().items()
                  if k[0] == "pgne_events_total" and dict(k[1])["database"] == pg_database.name
                  and dict(k[1])["host"] == host and v}
        # the dates read as ISO, the instant in the database's zone (UTC), not 'other'
        assert events == {("2024-01-31", "2024-01-01 00:00:00+00"): 1.0, ("2024-02-01", "other"): 2.0}


HUGE = "9" * 8000  # a numeric value whose sum alone is over NOTIFY's 8000-byte limit


def test_notify_a_sum_too_long_for_a_notification_leaves_the_rows_counted(pg_database, tmp_path):
    pg_database.execute(TABLES)
    config = write(tmp_path, config_text(database_entry(pg_database, MONITORS)))
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        run_workload(pg_database.dsn, [
            ([("INSERT INTO orders (supplier, amount) VALUES ('acme', %s), ('acme', 1)", (HUGE,)),
              ("INSERT INTO orders (supplier, amount) VALUES ('acme', 2.5)", None)], True)])
        settle(proc, pg_database)
        samples = proc.scrape()
    labels = frozenset({"host": host_label(pg_database.host, pg_database.port), "database": pg_database.name}.items())
    assert samples[("pgne_observed_invalid_values_total", labels)] == 1.0  # the first statement's values
    events = {dict(k[1])["supplier"]: v for k, v in samples.items() if k[0] == "pgne_events_total"
              and dict(k[1]).get("operation") == "INSERT" and dict(k[1]).get("table") == "orders"}
    assert events["acme"] == 3  # was 0: the payload failed with a WARNING, nothing was counted
    histogram = exported_histograms(samples, pg_database)[("pgne_observed_euros", "INSERT", "orders", "acme", "amount")]
    assert (histogram["count"], histogram["sum"]) == (1.0, 2.5)


def test_outbox_a_sum_of_thousands_of_digits_is_observed_exactly(pg_database, tmp_path):
    pg_database.execute(TABLES)
    config = write(tmp_path, config_text(outbox_entry(pg_database, MONITORS, perform_setup=True)))
    with PgneProcess(config, tmp_path / "pgne").running() as proc:
        run_workload(pg_database.dsn, [
            ([("INSERT INTO orders (supplier, amount) VALUES ('acme', %s), ('acme', 1)", ("0." + HUGE,))], True)])
        wait_histograms(proc, pg_database, expected_histograms(pg_database.dsn))
    [[total]] = query(pg_database.dsn, "SELECT observed->'amount'->>'sum' FROM pgne.totals "
                                       "WHERE operation = 'INSERT' AND labels->>'supplier' = 'acme'")
    assert total == "1." + HUGE


def test_checks_worst_case_payload_size_is_exactly_what_the_trigger_sends_at_the_widest(pg_database, tmp_path,
                                                                                       listener_factory):
    """notify_size mirrors the trigger's layout: a real payload is the computed worst case less
    exactly the room its narrower parts left (counts of 1 digit for 19, the sum, seq, label)."""
    from pgne.config import load_config
    from pgne.notify_size import COUNT_BYTES, SEQ_BYTES, SUM_TEXT_BYTES, worst_case_payload_bytes
    from pgne.render import Renderer
    pg_database.execute('CREATE TABLE "we""ird" (id serial, code text, amount double precision)')
    monitor = {"table": 'we"ird', "enabled": True, "function": "notification_with_payload", "events": ["insert"],
               "columns_to_label": [{"code": ['a"\\é\x01', "bb"]}],
               "columns_to_observe": [{"name": "amount", "buckets": [-3, 0.5, 1e20]}]}
    config = write(tmp_path, config_text(database_entry(pg_database, [monitor], perform_setup=False)))
    assert apply_in_process(config).code == 0
    [parsed] = load_config(str(config), Renderer()).databases[0].monitors
    listener = listener_factory(pg_database)
    run_sql(pg_database, ("INSERT INTO \"we\"\"ird\" (code, amount) VALUES (%s, 1.25)", ('a"\\é\x01',)))
    wait_until(lambda: listener.poll(0.2) or listener.raw_payloads, 10, "the payload")
    [raw] = listener.raw_payloads
    payload = json.loads(raw)
    assert payload["values"]["amount"]["sum"] == "1.25"
    widest_label = len(json.dumps('a"\\é\x01', ensure_ascii=False).encode())  # the value sent is the widest
    room = ((COUNT_BYTES - 1) * (1 + 3 + 3)  # the row count; count, null, not_finite; 3 buckets
            + SUM_TEXT_BYTES - len("1.25") + SEQ_BYTES - len(str(payload["seq"])))
    assert worst_case_payload_bytes(parsed) - len(raw.encode()) == room, (raw, widest_label)
