"""Sharding across replicas: `pgne run --shard N --total-shards M` (kube-state-metrics' flags).

Each replica runs the workers of the databases whose stable hash falls in its shard, so M
replicas started from one config serve every database exactly once. The hash is of the
database's identity, the key that makes two config entries the same database (host, port,
database name: pgne.model.Database.key), through SHA-256: the same in every process, machine
and Python version (the built-in hash() of a str is salted per process). A database's shard
depends on its own key and M only: adding or removing other databases never moves it.
Changing M moves most databases, as in any modulo scheme.

Imported by the master's command line before PROMETHEUS_MULTIPROC_DIR is set: standard library
and pgne.errors/pgne.model only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pgne.errors import UserError
from pgne.model import Database


def shard_of(key: tuple[str, int, str], total_shards: int) -> int:
    """The shard (0 .. total_shards-1) of the database with this key (host, port, name)."""
    host, port, name = key
    # NUL separates the parts: validation refuses it in host and database names (and a
    # collision could only put two databases in one shard, never one in two).
    digest = hashlib.sha256(f"{host}\x00{port}\x00{name}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % total_shards


@dataclass(frozen=True)
class Shard:
    """This replica's part of the config: shard `index` of `total`."""

    index: int
    total: int

    def owns(self, database: Database) -> bool:
        return shard_of(database.key, self.total) == self.index

    def __str__(self) -> str:
        return f"shard {self.index} of {self.total} (--shard {self.index} --total-shards {self.total})"


def shard_from_flags(shard: int | None, total_shards: int | None) -> Shard | None:
    """--shard and --total-shards, checked together (both or neither; 0 <= N < M).
    None: no sharding, this replica runs every database."""
    if shard is None and total_shards is None:
        return None
    if total_shards is None:
        raise UserError(f"--shard {shard}: needs --total-shards (how many replicas share the config)")
    if shard is None:
        raise UserError(f"--total-shards {total_shards}: needs --shard (this replica's number, "
                        f"0 to {total_shards - 1})")
    if not 0 <= shard < total_shards:
        raise UserError(f"--shard {shard}: must be between 0 and {total_shards - 1} "
                        f"(--total-shards {total_shards} numbers the shards from 0)")
    return Shard(shard, total_shards)
