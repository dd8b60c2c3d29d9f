"""pgne.shard: which replica runs which database (`pgne run --shard N --total-shards M`), and the
flags' checks. The processes themselves are in tests/integration/test_shards.py."""
from __future__ import annotations

import hashlib

import pytest
from support.processes import run_pgne

from pgne.errors import EXIT_CONFIG, UserError
from pgne.model import Database
from pgne.shard import Shard, shard_from_flags, shard_of


def database(host: str, name: str, port: int = 5432, **options) -> Database:
    fields = {"tag": "t", "perform_setup": False, "username": "u", "password": None, "enabled": True,
              "monitors": (), **options}
    return Database(host=host, name=name, port=port, **fields)


def fleet(count: int, start: int = 0) -> list[Database]:
    """`count` databases on a few hosts and ports, as a config of many databases has them."""
    return [database(f"db{i % 7}.example.com", f"app_{i}", port=5432 + i % 3) for i in range(start, start + count)]


def assignment(databases: list[Database], total: int) -> dict[tuple, int]:
    """{key: its shard}, through what each replica runs (Shard.owns); every database must be run
    by exactly one of the `total` replicas."""
    owners = {db.key: [i for i in range(total) if Shard(i, total).owns(db)] for db in databases}
    assert {key: shards for key, shards in owners.items() if len(shards) != 1} == {}
    return {key: shards[0] for key, shards in owners.items()}


@pytest.mark.parametrize("total", [2, 3])
def test_every_database_of_200_is_run_by_exactly_one_of_the_replicas_and_each_runs_some(total):
    shards = assignment(fleet(200), total)
    assert len(shards) == 200
    sizes = [list(shards.values()).count(i) for i in range(total)]
    assert sum(sizes) == 200 and min(sizes) >= 200 // total // 2, sizes  # none starved


@pytest.mark.parametrize("total", [2, 3])
def test_adding_50_databases_moves_none_of_the_first_200(total):
    before = assignment(fleet(200), total)
    after = assignment(fleet(200) + fleet(50, start=200), total)
    assert len(after) == 250
    assert {key: after[key] for key in before} == before
    # and the order of the config's entries does not matter either
    assert assignment(list(reversed(fleet(250))), total) == after


def test_the_shard_of_known_keys_never_changes():
    """A change of hash (or of how the key is encoded) would move every replica's databases at an
    upgrade: these values are fixed."""
    known = {
        ("localhost", 5432, "app"): (1, 2, 4, 4),
        ("db1.example.com", 5433, "orders"): (0, 1, 0, 1),
        ("10.0.0.7", 5432, "billing"): (1, 1, 1, 6),
        ("::1", 6432, "events"): (1, 0, 3, 4),
        ("localhost", 5432, "test"): (0, 2, 1, 6),
    }
    assert {key: tuple(shard_of(key, m) for m in (2, 3, 5, 7)) for key in known} == known
    # what the README documents: the first 8 bytes of SHA-256("host\0port\0name"), big-endian, modulo M
    digest = hashlib.sha256(b"localhost\x005432\x00app").digest()
    assert [int.from_bytes(digest[:8], "big") % m for m in (2, 3, 5, 7)] == [1, 2, 4, 4]


def test_the_shard_follows_the_database_identity_only():
    """Host, port and database name: the key that makes two config entries the same database.
    Tag, user, enabled and the rest do not move a database; another port is another database."""
    one = database("pg.example.com", "orders")
    same = database("pg.example.com", "orders", tag="other", username="x", enabled=False, perform_setup=True)
    assert one.key == same.key
    assert all(shard_of(one.key, m) == shard_of(same.key, m) for m in range(1, 50))
    assert [shard_of(database("pg.example.com", "orders", port=p).key, 3) for p in (5432, 5433, 5434, 5435)] \
        == [2, 1, 1, 1]


def test_one_shard_runs_everything():
    assert set(assignment(fleet(30), 1).values()) == {0}


def test_a_non_ascii_or_surrogate_name_has_a_shard():
    assert shard_of(("hôte", 5432, "données"), 3) in (0, 1, 2)
    assert shard_of(("h", 5432, "\ud800"), 3) in (0, 1, 2)


# --------------------------------------------------------------------------- the flags


def test_no_flags_no_sharding_and_valid_flags_a_shard():
    assert shard_from_flags(None, None) is None
    assert shard_from_flags(0, 1) == Shard(0, 1)
    assert shard_from_flags(2, 3) == Shard(2, 3)
    assert str(Shard(2, 3)) == "shard 2 of 3 (--shard 2 --total-shards 3)"


@pytest.mark.parametrize("shard, total, message", [
    (1, None, "--shard 1: needs --total-shards (how many replicas share the config)"),
    (None, 3, "--total-shards 3: needs --shard (this replica's number, 0 to 2)"),
    (3, 3, "--shard 3: must be between 0 and 2 (--total-shards 3 numbers the shards from 0)"),
    (5, 2, "--shard 5: must be between 0 and 1 (--total-shards 2 numbers the shards from 0)"),
])
def test_flags_given_alone_or_out_of_range_are_a_usage_error(shard, total, message):
    with pytest.raises(UserError) as caught:
        shard_from_flags(shard, total)
    assert (caught.value.lines, caught.value.exit_code) == ([message], EXIT_CONFIG)


@pytest.mark.parametrize("args, stderr_end", [
    (["--shard", "1"], "--shard 1: needs --total-shards (how many replicas share the config)\n"),
    (["--total-shards", "2"], "--total-shards 2: needs --shard (this replica's number, 0 to 1)\n"),
    (["--shard", "2", "--total-shards", "2"],
     "--shard 2: must be between 0 and 1 (--total-shards 2 numbers the shards from 0)\n"),
    (["--shard", "-1", "--total-shards", "2"], "pgne run: error: argument --shard: '-1' is less than 0\n"),
    (["--shard", "0", "--total-shards", "0"], "pgne run: error: argument --total-shards: '0' is less than 1\n"),
    (["--shard", "one", "--total-shards", "2"], "pgne run: error: argument --shard: 'one' is not a whole number\n"),
    (["--shard", "0", "--total-shards", "1.5"],
     "pgne run: error: argument --total-shards: '1.5' is not a whole number\n"),
])
def test_pgne_run_refuses_bad_shard_flags_with_exit_2_before_reading_the_config(tmp_path, args, stderr_end):
    result = run_pgne("run", "-c", tmp_path / "missing.yml", "--state-dir", tmp_path / "state", *args, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith(stderr_end), result.stderr
    assert "missing.yml" not in result.stderr and not (tmp_path / "state").exists()


def test_pgne_run_help_describes_the_shard_flags(tmp_path):
    result = run_pgne("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--shard N run only the databases of shard N (0 to M-1) of --total-shards M" in text
    assert "--total-shards M how many replicas share the config (with --shard)" in text
