"""Integration tests: pgne against the real PostgreSQL server of PGNE_TEST_DSN.

Every test here is marked `integration` (deselect with `-m "not integration"`). The shared
fixtures (pg_dsn, pg_database, write_config, listener_factory) are in tests/conftest.py, what
tests share (Listener, run_pgne, apply_in_process, catalog queries) in tests/support/.
"""
from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def pg_server_version(pg_dsn: str) -> int:
    """server_version_num of the test server; fails the run once, clearly, when it is not
    reachable or older than PostgreSQL 14 (CREATE OR REPLACE TRIGGER, tgparentid)."""
    try:
        conn = psycopg2.connect(pg_dsn, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"cannot reach the test PostgreSQL server ({pg_dsn!r}; set PGNE_TEST_DSN): {exc}",
                    pytrace=False)
    try:
        version = conn.server_version
    finally:
        conn.close()
    if version < 140000:
        pytest.fail(f"pgne needs PostgreSQL 14 or later; the test server is {version}", pytrace=False)
    return version
