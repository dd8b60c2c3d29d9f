"""benchmarks/run.py --quick: the benchmark suite runs end to end and writes every section.

A smoke run (small N, one repetition, its own throwaway cluster; never the shared server): it
proves the suite works on this machine, not what the numbers are.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = [
    "## Machine",
    "## Summary",
    "## Write path: bulk INSERT of",
    "## Write path: single-row INSERT throughput (pgbench)",
    "## Write path: CPU instructions per statement and per row (cachegrind)",
    "## Consumption:",
    "## Latency: commit to visible in /metrics",
    "## Metrics side:",
    "## Fixes: before and after",
]


# The run's own limit (600 s) decides, not pytest.ini's 300 s per test: on a loaded machine the
# quick run has taken 383 s.
@pytest.mark.timeout(660)
def test_quick_benchmark_run_writes_every_section(tmp_path):
    output = tmp_path / "B.md"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--output", str(output)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    text = output.read_text()
    missing = [s for s in SECTIONS if s not in text]
    assert not missing, f"sections missing: {missing}\n{text[:2000]}"
    assert "FAILED" not in text
    assert "Not run: valgrind" not in text  # `python3 dev.py test` installs valgrind where it is missing
    assert "| pgne notify: single-row INSERT transaction | **" in text
    assert "python benchmarks/run.py --quick --output" in text  # the exact command
    for fact in ("cores (os.cpu_count())", "RAM:", "PostgreSQL 1", "Python 3", "pgne "):
        assert fact in text, fact
    # every target has a verdict
    assert text.count("| PASS |") + text.count("| **MISS** |") >= 8
