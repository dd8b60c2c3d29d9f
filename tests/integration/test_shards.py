"""`pgne run --shard N --total-shards M`: replicas started from one config, as real processes
over real HTTP, share its databases: each database is run (and served) by exactly one replica,
the one pgne.shard's hash names, and counted exactly there; after SIGHUP the filter applies to
the new config, and an added database moves no other. (Two unsharded pgne on one outbox database
never double count: tests/integration/test_outbox.py.)"""
from __future__ import annotations

import signal

import pytest
from support.configs import TAG, config_text, database_entry
from support.databases import run_sql
from support.exporter import PgneProcess
from support.metrics import db_labels, events, settle
from support.waiting import wait_until

from pgne.shard import shard_of

MONITORS = [{"table": "t", "enabled": True, "function": "simple_event_notification", "events": ["insert"]}]


def key(db) -> tuple[str, int, str]:
    """The database's identity as its config entry gives it (pgne.model.Database.key)."""
    return (db.host, int(db.port), db.name)


def write_config(path, databases, disabled=()) -> str:
    entries = [database_entry(db, MONITORS, perform_setup=True) for db in databases]
    entries += [database_entry(db, MONITORS, perform_setup=True, enabled=False) for db in disabled]
    path.write_text(config_text(*entries))
    return str(path)


def with_table(pg_database_factory, count: int) -> list:
    databases = [pg_database_factory() for _ in range(count)]
    for db in databases:
        run_sql(db, "CREATE TABLE t (id int)")
    return databases


def start_replicas(tmp_path, config: str, total: int, owned: dict[int, list]) -> list[PgneProcess]:
    """`total` replicas of `config`, each waited for until its own databases are up."""
    return [PgneProcess(config, tmp_path / f"shard-{i}", "--shard", str(i), "--total-shards", str(total))
            .start(expect_up=bool(owned[i])) for i in range(total)]


def served(replica: PgneProcess) -> set[str]:
    """The databases of this replica's pgne_database_up series."""
    return {dict(labels)["database"] for labels in replica.series("pgne_database_up")}


def assert_serves_exactly(replica: PgneProcess, own: list, others: list) -> None:
    assert served(replica) == {db.name for db in own}, replica.describe()
    text = replica.metrics_text()
    page = replica.get("/")[2].decode()
    for db in others:  # no series of any kind, no landing-page row
        assert f'database="{db.name}"' not in text
        assert db.name not in page
    for db in own:
        assert f"<td>{db.name}</td>" in page


@pytest.mark.parametrize("total", [2, 3])
def test_replicas_from_one_config_run_every_database_exactly_once_and_count_its_rows_exactly(
        total, pg_database_factory, tmp_path):
    databases = with_table(pg_database_factory, 5)
    config = write_config(tmp_path / "events_config.yml", databases)
    owned = {i: [db for db in databases if shard_of(key(db), total) == i] for i in range(total)}
    replicas = start_replicas(tmp_path, config, total, owned)

    rows = {db.name: 3 + n for n, db in enumerate(databases)}  # 3..7: a row counted twice or lost shows
    for db in databases:
        run_sql(db, ("INSERT INTO t SELECT generate_series(1, %s)", (rows[db.name],)))
    for i, replica in enumerate(replicas):
        for db in owned[i]:
            labels = {"operation": "INSERT", "host": db.host_label, "database": db.name, "tag": TAG,
                      "schema": "public", "table": "t"}
            replica.wait_for_value("pgne_events_total", labels, rows[db.name])
            settle(replica, db)
            assert events(replica, db, label=None) == {("INSERT", "public.t"): rows[db.name]}

    union = [name for replica in replicas for name in served(replica)]
    assert sorted(union) == sorted(db.name for db in databases)  # every database, exactly once
    for i, replica in enumerate(replicas):
        assert_serves_exactly(replica, owned[i], [db for db in databases if db not in owned[i]])
        log = replica.stderr_text()
        if owned[i]:
            assert (f"shard {i} of {total} (--shard {i} --total-shards {total}): this replica runs "
                    f"{len(owned[i])} of the config's 5 database(s)") in log
        for db in databases:  # only its own databases' workers were ever started
            assert (f"{db.host}:{db.port}/{db.name}: listen worker started" in log) == (db in owned[i])


def test_after_sighup_an_added_database_is_run_by_its_shard_only_and_no_other_moves(pg_database_factory, tmp_path):
    total = 2
    databases = with_table(pg_database_factory, 5)
    first, added, disabled = databases[:3], databases[3], databases[4]
    path = tmp_path / "events_config.yml"
    config = write_config(path, first)
    owner = {db.name: shard_of(key(db), total) for db in databases}
    replicas = start_replicas(tmp_path, config, total, {i: [db for db in first if owner[db.name] == i]
                                                        for i in range(total)})
    workers = [sorted(replica.worker_pids()) for replica in replicas]

    # one more enabled database, and a disabled one with perform_setup (a teardown worker)
    write_config(path, first + [added], disabled=[disabled])
    for replica in replicas:
        replica.send_signal(signal.SIGHUP)
    for replica in replicas:
        wait_until(lambda r=replica: f"reload: {path} loaded" in r.stderr_text(), 30, "the reload", replica.describe)
    own = {i: [db for db in first + [added] if owner[db.name] == i] for i in range(total)}
    teardown = f"{disabled.host}:{disabled.port}/{disabled.name}: teardown"
    for i, replica in enumerate(replicas):
        if added in own[i]:
            replica.wait_for_value("pgne_database_up", {**db_labels(added), "tag": TAG}, 1)
            run_sql(added, "INSERT INTO t VALUES (1), (2)")
            replica.wait_for_value("pgne_events_total", {"operation": "INSERT", **db_labels(added), "tag": TAG,
                                                         "schema": "public", "table": "t"}, 2)
        if owner[disabled.name] == i:
            wait_until(lambda r=replica: f"{teardown} done" in r.stderr_text(), 30, "the teardown", replica.describe)
        assert_serves_exactly(replica, own[i], [db for db in databases if db not in own[i]])
        assert set(workers[i]) <= set(replica.worker_pids())  # the first databases' workers kept running
        log = replica.stderr_text()
        assert (f"{teardown} worker started" in log) == (owner[disabled.name] == i)
        assert (f"{added.host}:{added.port}/{added.name}: listen worker started" in log) == (added in own[i])
        mine = len([db for db in databases if owner[db.name] == i])  # the disabled one is the config's too
        if mine:
            assert (f"shard {i} of {total} (--shard {i} --total-shards {total}): this replica runs "
                    f"{mine} of the config's 5 database(s)") in log


def test_a_shard_without_databases_serves_pgne_own_metrics_and_says_so(tmp_path):
    from support.databases import Database

    # never connected to: the shard runs none of them
    databases = [Database(name=f"not_here_{n}", host="127.0.0.1", port=1) for n in range(2)]
    total = 3  # two databases, three shards: one has none
    empty = next(i for i in range(total) if all(shard_of(key(db), total) != i for db in databases))
    config = write_config(tmp_path / "events_config.yml", databases)
    replica = PgneProcess(config, tmp_path / "empty", "--shard", str(empty), "--total-shards", str(total))
    replica.start(expect_up=False)
    samples = replica.scrape()
    assert samples[("pgne_config_last_reload_successful", frozenset())] == 1
    assert not [name for name, _ in samples if name == "pgne_database_up"]
    assert "not_here" not in replica.metrics_text() and "not_here" not in replica.get("/")[2].decode()
    assert replica.worker_pids() == []
    assert (f"shard {empty} of {total} (--shard {empty} --total-shards {total}): none of the config's 2 "
            "database(s) falls in this shard; serving pgne's own metrics only") in replica.stderr_text()
