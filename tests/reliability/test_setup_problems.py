"""Setup problems: what `apply` cannot fix, and where pgne shows them.

- notify delivery on a server that allows prepared transactions (max_prepared_transactions > 0,
  on a TempCluster of this module): a transaction that sent a NOTIFY cannot be prepared, so
  `apply`, perform_setup and `status` refuse it unless the database entry opts in;
- a label column that the table does not have (`Supplier` for `supplier`);
- a monitored table that does not exist.

Each is an error of `apply` and `status` (exit 1, nothing applied), a series of
pgne_setup_problem at 1 in /metrics, and a reason on the landing page, which no longer says
`up` for such a database.
"""
from __future__ import annotations

import html.parser
import os

import psycopg2
import pytest
from support.clusters import start_cluster
from support.configs import RELIABILITY_TAG as TAG
from support.configs import config_text, database_entry
from support.databases import (
    create_database,
    pgne_functions,
    pgne_triggers,
    query,
    run_sql,
    schema_exists,
    throwaway_database,
)
from support.exporter import PgneProcess
from support.processes import run_pgne
from support.waiting import wait_until

ADMIN_DSN = os.environ.get("PGNE_TEST_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
ORDERS = {"table": "orders", "enabled": True, "function": "notification_with_payload",
          "columns_to_label": [{"supplier": ["acme", "globex"]}], "events": ["insert", "delete"]}
PREPARE_ERROR = "cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY"
# The landing page's reason (it knows only the labels of pgne_setup_problem) ...
REFUSED = ("delivery: notify refused: this server allows prepared transactions (max_prepared_transactions > 0), "
           "and a transaction that sent a NOTIFY cannot be prepared; use delivery: outbox "
           "(or set notify_with_prepared_transactions: true to accept that risk)")
# ... and what apply and status say (they read the setting)
REFUSED_5 = REFUSED.replace("> 0", "= 5")


def not_virtual(column: str) -> dict:
    """The virtual_generated_column series of a label column of orders, at 0."""
    return {("virtual_generated_column", "public", "orders", column): 0}


@pytest.fixture(scope="module")
def twopc():
    """A cluster that allows prepared transactions."""
    with start_cluster(settings={"max_prepared_transactions": "5"}) as cluster:
        yield cluster


def orders_database(cluster):
    db = create_database(cluster)
    run_sql(db, "CREATE TABLE orders (id serial PRIMARY KEY, supplier text)")
    return db


def write_config(tmp_path, *entries: dict, name: str = "events_config.yml") -> str:
    path = tmp_path / name
    path.write_text(config_text(*entries))
    return str(path)


def display(db) -> str:
    return f"127.0.0.1:{db.port}/{db.name}"


def installed(db) -> tuple[set, set]:
    """(pgne triggers, pgne functions) in the database."""
    conn = db.connect(autocommit=True)
    try:
        return pgne_triggers(conn), pgne_functions(conn) if schema_exists(conn) else set()
    finally:
        conn.close()


def prepare_and(db, finish: str, gid: str, supplier: str, rows: int) -> None:
    """INSERT `rows` rows in a transaction, PREPARE it, then COMMIT or ROLLBACK PREPARED."""
    conn = db.connect(autocommit=True)  # autocommit: psycopg2 would not know that PREPARE ends the transaction
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO orders (supplier) SELECT %s FROM generate_series(1, %s)", (supplier, rows))
            cur.execute("PREPARE TRANSACTION %s", (gid,))
            cur.execute(f"{finish} PREPARED %s", (gid,))  # finish: a constant of this module
    finally:
        conn.close()


def start(pgne_processes, config: str, workdir, *args: str) -> PgneProcess:
    proc = PgneProcess(config, workdir, *args)
    pgne_processes.append(proc)
    return proc.start()


def host_label(proc: PgneProcess, db) -> str:
    """The `host` label pgne gives this database (read from pgne_database_up, so that the
    assertions hold whatever pgne puts there for a non-default port)."""
    (labels,) = proc.series("pgne_database_up", database=db.name)
    return dict(labels)["host"]


# a pg_notify_exporter trigger on the table (tests/integration/test_migration.py has them)
LEGACY_ORDERS = ("legacy_trigger", "public", "orders", "")


def problems(proc: PgneProcess, db) -> dict[tuple[str, str, str, str], float]:
    """pgne_setup_problem of one database: {(problem, schema, table, column): value}."""
    return {(d["problem"], d["schema"], d["table"], d["column"]): value
            for d, value in ((dict(labels), value)
                             for labels, value in proc.series("pgne_setup_problem", database=db.name).items())}


def triggers(proc: PgneProcess, db) -> dict[tuple[str, str], float]:
    """pgne_trigger_installed of one database: {(table, event): value}."""
    return {(dict(labels)["table"], dict(labels)["event"]): value
            for labels, value in proc.series("pgne_trigger_installed", database=db.name).items()}


class _Rows(html.parser.HTMLParser):
    """The cells of every <tr> with <td>s; items of a list inside a cell are joined by ' | '."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self.cell = []
        elif tag == "li" and self.cell:
            self.cell.append(" | ")

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def landing_rows(proc: PgneProcess) -> list[list[str]]:
    status, _, body = proc.get("/")
    assert status == 200
    parser = _Rows()
    parser.feed(body.decode("utf-8"))
    return [row for row in parser.rows if row]


# --------------------------------------------------------------------------- two-phase commit


def test_notify_where_prepared_transactions_are_allowed_is_refused_by_apply_status_and_perform_setup(
        twopc, tmp_path, pgne_processes):
    db = orders_database(twopc)
    config = write_config(tmp_path, database_entry(db, [ORDERS], tag=TAG))

    proc = run_pgne("apply", "-c", config)
    assert (proc.returncode, proc.stderr, proc.stdout) == (1, "", f"{display(db)}: FAILED: {REFUSED_5} "
                                                                  f"(nothing applied)\n")
    assert installed(db) == (set(), set())
    proc = run_pgne("status", "-c", config)
    assert (proc.returncode, proc.stderr) == (1, "")
    width = len(display(db))
    assert proc.stdout.splitlines() == [f"{'DATABASE':<{width}}  STATE           OBJECT",
                                        f"{display(db)}  notify refused  {REFUSED_5}",
                                        f"{display(db)}  missing         schema pgne",
                                        f"{display(db)}  missing         function pgne.public_orders_86a1f739f8 "
                                        f"for public.orders",
                                        f"{display(db)}  missing         trigger pgne_insert on public.orders",
                                        f"{display(db)}  missing         trigger pgne_delete on public.orders"]

    # pgne run with perform_setup: installs nothing, listens all the same, and says why
    pgne = start(pgne_processes, config, tmp_path / "run")
    assert problems(pgne, db) == {("notify_refused", "", "", ""): 1, ("missing_table", "public", "orders", ""): 0,
                                  LEGACY_ORDERS: 0,
                                  ("missing_label_column", "public", "orders", "supplier"): 0,
                                  **not_virtual("supplier")}
    assert triggers(pgne, db) == {("orders", "INSERT"): 0, ("orders", "DELETE"): 0}
    assert landing_rows(pgne) == [[host_label(pgne, db), db.name, TAG, "SETUP FAILED", "0 of 2 installed", "never",
                                   REFUSED]]
    assert f"setup problem: {REFUSED_5}" in pgne.stderr_text()
    assert installed(db) == (set(), set())
    # and the application's prepared transactions work
    prepare_and(db, "COMMIT", "t1", "acme", 3)
    assert query(db, "SELECT count(*) FROM orders") == [(3,)]


def test_opting_in_installs_notify_as_before_and_installed_triggers_are_reported_not_dropped(
        twopc, tmp_path, pgne_processes):
    db = orders_database(twopc)
    opted_in = write_config(tmp_path, database_entry(db, [ORDERS], notify_with_prepared_transactions=True, tag=TAG),
                            name="opted-in.yml")
    proc = run_pgne("apply", "-c", opted_in)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"{display(db)}: applied: 4 changes: missing: schema pgne; ")
    assert run_pgne("status", "-c", opted_in).returncode == 0
    triggers_and_function = installed(db)
    assert triggers_and_function[0] == {("public", "orders", "pgne_insert"), ("public", "orders", "pgne_delete")}

    # the risk accepted: a prepared transaction that wrote the table fails at PREPARE
    conn = db.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders (supplier) VALUES ('acme')")
            with pytest.raises(psycopg2.errors.FeatureNotSupported) as failure:
                cur.execute("PREPARE TRANSACTION 'lost'")
        assert failure.value.diag.message_primary == PREPARE_ERROR
    finally:
        conn.close()

    # without the key, the installed triggers are reported and left as they are
    refused = write_config(tmp_path, database_entry(db, [ORDERS], tag=TAG), name="refused.yml")
    left = (f"{REFUSED_5}; pgne triggers already installed are left in place (2): PREPARE TRANSACTION fails "
            f"after a write to their tables")
    proc = run_pgne("status", "-c", refused)
    assert (proc.returncode, proc.stderr, proc.stdout.splitlines()[1:]) == (
        1, "", [f"{display(db)}  notify refused  {left}"])
    proc = run_pgne("apply", "-c", refused)
    assert (proc.returncode, proc.stderr, proc.stdout) == (1, "", f"{display(db)}: FAILED: {left} (nothing applied)\n")
    assert installed(db) == triggers_and_function

    # perform_setup with the key installs on a fresh database and counts
    fresh = orders_database(twopc)
    config = write_config(tmp_path, database_entry(fresh, [ORDERS], notify_with_prepared_transactions=True, tag=TAG))
    pgne = start(pgne_processes, config, tmp_path / "run")
    assert problems(pgne, fresh) == {("notify_refused", "", "", ""): 0, ("missing_table", "public", "orders", ""): 0,
                                     LEGACY_ORDERS: 0,
                                     ("missing_label_column", "public", "orders", "supplier"): 0,
                                     **not_virtual("supplier")}
    assert triggers(pgne, fresh) == {("orders", "INSERT"): 1, ("orders", "DELETE"): 1}
    run_sql(fresh, "INSERT INTO orders (supplier) VALUES ('acme'), ('acme')")
    host = host_label(pgne, fresh)
    pgne.wait_for_value("pgne_events_total", {"operation": "INSERT", "host": host, "database": fresh.name,
                                              "tag": TAG, "schema": "public", "table": "orders",
                                              "supplier": "acme"}, 2)
    assert landing_rows(pgne)[0][:5] == [host, fresh.name, TAG, "up", "2 of 2 installed"]


def test_outbox_where_prepared_transactions_are_allowed_installs_and_counts_commit_prepared_only(
        twopc, tmp_path, pgne_processes):
    db = orders_database(twopc)
    config = write_config(tmp_path, database_entry(db, [ORDERS], delivery="outbox", drain_interval=0.1, tag=TAG))
    proc = run_pgne("apply", "-c", config)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"{display(db)}: applied: ")

    pgne = start(pgne_processes, config, tmp_path / "run", "--trigger-check-interval", "1")
    assert problems(pgne, db) == {("notify_refused", "", "", ""): 0, ("missing_table", "public", "orders", ""): 0,
                                  LEGACY_ORDERS: 0,
                                  ("missing_label_column", "public", "orders", "supplier"): 0,
                                  **not_virtual("supplier")}
    assert triggers(pgne, db) == {("orders", "INSERT"): 1, ("orders", "DELETE"): 1}
    prepare_and(db, "ROLLBACK", "rolled-back", "acme", 2)
    prepare_and(db, "COMMIT", "committed", "globex", 3)
    run_sql(db, "INSERT INTO orders (supplier) VALUES ('acme')")  # committed last: counted last
    host = host_label(pgne, db)
    labels = {"operation": "INSERT", "host": host, "database": db.name, "tag": TAG, "schema": "public",
              "table": "orders"}
    pgne.wait_for_value("pgne_events_total", dict(labels, supplier="acme"), 1)
    assert pgne.value("pgne_events_total", dict(labels, supplier="globex")) == 3


# --------------------------------------------------------------------------- missing label column


def test_a_label_column_the_table_lacks_fails_apply_and_status_and_perform_setup_shows_it(tmp_path, pgne_processes):
    with throwaway_database(ADMIN_DSN) as db:
        run_sql(db, "CREATE TABLE orders (id serial PRIMARY KEY, supplier text)")
        monitor = dict(ORDERS, columns_to_label=[{"Supplier": ["acme"]}])
        config = write_config(tmp_path, database_entry(db, [monitor], tag=TAG))
        assert run_pgne("check", "-c", config).returncode == 0  # check does not connect
        reason = "label column Supplier does not exist in table public.orders"
        detail = f"{reason} (it has supplier: column names are case-sensitive)"

        proc = run_pgne("apply", "-c", config)
        assert (proc.returncode, proc.stderr, proc.stdout) == (1, "", f"{display(db)}: FAILED: {detail} "
                                                                      f"(nothing applied)\n")
        assert installed(db) == (set(), set())
        proc = run_pgne("status", "-c", config)
        assert (proc.returncode, proc.stderr) == (1, "")
        assert proc.stdout.splitlines()[1] == f"{display(db)}  missing label column  {detail}"

        pgne = start(pgne_processes, config, tmp_path / "run")
        assert problems(pgne, db) == {("notify_refused", "", "", ""): 0, ("missing_table", "public", "orders", ""): 0,
                                      LEGACY_ORDERS: 0,
                                      ("missing_label_column", "public", "orders", "Supplier"): 1,
                                      **not_virtual("Supplier")}
        assert triggers(pgne, db) == {("orders", "INSERT"): 0, ("orders", "DELETE"): 0}
        assert landing_rows(pgne) == [[host_label(pgne, db), db.name, TAG, "SETUP FAILED", "0 of 2 installed",
                                       "never", reason]]
        assert installed(db) == (set(), set())


def test_the_periodic_check_finds_a_renamed_label_column_and_its_return_with_perform_setup_false(
        tmp_path, pgne_processes):
    with throwaway_database(ADMIN_DSN) as db:
        run_sql(db, "CREATE TABLE orders (id serial PRIMARY KEY, supplier text)")
        config = write_config(tmp_path, database_entry(db, [ORDERS], perform_setup=False, tag=TAG))
        assert run_pgne("apply", "-c", config).returncode == 0
        pgne = start(pgne_processes, config, tmp_path / "run", "--trigger-check-interval", "1")
        missing = ("missing_label_column", "public", "orders", "supplier")
        assert problems(pgne, db)[missing] == 0
        host = host_label(pgne, db)
        assert landing_rows(pgne) == [[host, db.name, TAG, "up", "2 of 2 installed", "never", ""]]

        run_sql(db, "ALTER TABLE orders RENAME COLUMN supplier TO vendor")
        wait_until(lambda: problems(pgne, db)[missing] == 1, 15, "the renamed column to be a problem", pgne.describe)
        assert triggers(pgne, db) == {("orders", "INSERT"): 1, ("orders", "DELETE"): 1}
        assert landing_rows(pgne) == [[host, db.name, TAG, "SETUP FAILED", "2 of 2 installed", "never",
                                       "label column supplier does not exist in table public.orders"]]
        proc = run_pgne("status", "-c", config)
        assert (proc.returncode, proc.stdout.splitlines()[1:]) == (
            1, [f"{display(db)}  missing label column  label column supplier does not exist in table public.orders"])

        run_sql(db, "ALTER TABLE orders RENAME COLUMN vendor TO supplier")
        wait_until(lambda: problems(pgne, db)[missing] == 0, 15, "the column's return to clear it", pgne.describe)
        assert landing_rows(pgne) == [[host, db.name, TAG, "up", "2 of 2 installed", "never", ""]]
        log = pgne.stderr_text()
        assert "setup problem: label column supplier does not exist in table public.orders" in log
        assert "setup problem solved: label column supplier does not exist in table public.orders" in log


# --------------------------------------------------------------------------- the landing page


def test_landing_page_and_metrics_show_each_databases_setup_problems_with_the_reason(twopc, tmp_path, pgne_processes):
    """One `pgne run` with perform_setup on four databases: a missing table, a missing label
    column, notify refused on a 2PC server, and one that is fine."""
    nosuch = {"table": "nosuch", "enabled": True, "function": "simple_event_notification", "events": ["insert"]}
    with throwaway_database(ADMIN_DSN) as lacks_table, throwaway_database(ADMIN_DSN) as lacks_column, \
            throwaway_database(ADMIN_DSN) as fine:
        for db in (lacks_table, lacks_column, fine):
            run_sql(db, "CREATE TABLE orders (id serial PRIMARY KEY, supplier text)")
        refused = orders_database(twopc)
        config = write_config(tmp_path, database_entry(lacks_table, [ORDERS, nosuch], tag=TAG),
                              database_entry(lacks_column, [dict(ORDERS, columns_to_label=[{"supplir": ["acme"]}])],
                                             tag=TAG),
                              database_entry(refused, [ORDERS], tag=TAG), database_entry(fine, [ORDERS], tag=TAG))
        pgne = start(pgne_processes, config, tmp_path / "run")

        assert {db.name: problems(pgne, db) for db in (lacks_table, lacks_column, refused, fine)} == {
            lacks_table.name: {("notify_refused", "", "", ""): 0, ("missing_table", "public", "orders", ""): 0,
                               LEGACY_ORDERS: 0,
                               ("missing_label_column", "public", "orders", "supplier"): 0, **not_virtual("supplier"),
                               ("missing_table", "public", "nosuch", ""): 1,
                               ("legacy_trigger", "public", "nosuch", ""): 0},
            lacks_column.name: {("notify_refused", "", "", ""): 0, ("missing_table", "public", "orders", ""): 0,
                                LEGACY_ORDERS: 0,
                                ("missing_label_column", "public", "orders", "supplir"): 1, **not_virtual("supplir")},
            refused.name: {("notify_refused", "", "", ""): 1, ("missing_table", "public", "orders", ""): 0,
                           LEGACY_ORDERS: 0,
                           ("missing_label_column", "public", "orders", "supplier"): 0, **not_virtual("supplier")},
            fine.name: {("notify_refused", "", "", ""): 0, ("missing_table", "public", "orders", ""): 0,
                        LEGACY_ORDERS: 0,
                        ("missing_label_column", "public", "orders", "supplier"): 0, **not_virtual("supplier")},
        }
        assert {db.name: triggers(pgne, db) for db in (lacks_table, lacks_column, refused, fine)} == {
            # a missing table keeps only its own monitor from being set up
            lacks_table.name: {("orders", "INSERT"): 1, ("orders", "DELETE"): 1, ("nosuch", "INSERT"): 0},
            lacks_column.name: {("orders", "INSERT"): 0, ("orders", "DELETE"): 0},
            refused.name: {("orders", "INSERT"): 0, ("orders", "DELETE"): 0},
            fine.name: {("orders", "INSERT"): 1, ("orders", "DELETE"): 1},
        }
        assert {db.name: pgne.value("pgne_database_up", {"host": host_label(pgne, db), "database": db.name,
                                                         "tag": TAG})
                for db in (lacks_table, lacks_column, refused, fine)} == {
            lacks_table.name: 1, lacks_column.name: 1, refused.name: 1, fine.name: 1}

        expected = {
            lacks_table.name: [host_label(pgne, lacks_table), lacks_table.name, TAG, "SETUP FAILED",
                               "2 of 3 installed", "never", "table public.nosuch does not exist"],
            lacks_column.name: [host_label(pgne, lacks_column), lacks_column.name, TAG, "SETUP FAILED",
                                "0 of 2 installed", "never",
                                "label column supplir does not exist in table public.orders"],
            refused.name: [host_label(pgne, refused), refused.name, TAG, "SETUP FAILED", "0 of 2 installed", "never",
                           REFUSED],
            fine.name: [host_label(pgne, fine), fine.name, TAG, "up", "2 of 2 installed", "never", ""],
        }
        assert landing_rows(pgne) == sorted(expected.values())
