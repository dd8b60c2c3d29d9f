"""Fixtures of the reliability suite: throwaway clusters (support.clusters) and the report of
measured recovery times.

Tests that stop, restart or partition a server use a TempCluster of their own, never the shared
server of PGNE_TEST_DSN. Tests that only write (concurrency, hostile input) use the shared
server through tests/conftest.py's `pg_database`.
"""
from __future__ import annotations

import json
import os

import pytest
from support.clusters import start_cluster
from support.faults import MEASUREMENTS


@pytest.fixture(scope="module")
def cluster_for_module():
    """One TempCluster for a test module; each test makes its own database in it."""
    with start_cluster() as cluster:
        yield cluster


@pytest.fixture
def cluster(cluster_for_module):
    """The module's TempCluster, running (a test that failed while it was stopped must not
    break the next one)."""
    if not cluster_for_module.is_running():
        cluster_for_module.start()
    cluster_for_module.wait_ready()
    yield cluster_for_module
    if not cluster_for_module.is_running():
        cluster_for_module.start()


def pytest_terminal_summary(terminalreporter):
    if not MEASUREMENTS:
        return
    terminalreporter.section("pgne reliability: measured durations (seconds)")
    for name, seconds in MEASUREMENTS.items():
        terminalreporter.write_line(f"{seconds:8.2f}  {name}")
    target = os.environ.get("PGNE_RELIABILITY_MEASUREMENTS")
    if target:
        with open(target, "w") as f:
            json.dump(MEASUREMENTS, f, indent=2, sort_keys=True)
