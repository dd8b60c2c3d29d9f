"""What a client of the HTTP port can do to pgne, against real `pgne run` processes over real
sockets (issue 21 items 2 and 16): many and idle connections, slow clients, huge or many
headers, huge bodies; basic-auth guesses whose timing would tell which user names exist."""
from __future__ import annotations

import base64
import statistics
import time

import bcrypt
import pytest
import yaml
from support.configs import RELIABILITY_TAG
from support.databases import run_sql
from support.exporter import PgneProcess
from support.waiting import wait_until

from pgne.webconfig import WebConfig

MONITOR = {"table": "one", "enabled": True, "function": "notification_with_payload", "events": ["insert"]}


@pytest.fixture
def table(pg_database):
    run_sql(pg_database, "CREATE TABLE one (id serial PRIMARY KEY)")
    return pg_database


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- basic auth timing -----------------------------------------------------------------------------

def test_the_dummy_hash_has_the_cost_most_users_have():
    fast, slow = (bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=rounds)) for rounds in (4, 5))
    assert WebConfig(users={"a": fast, "b": fast, "c": slow}).dummy_hash()[:7] == b"$2b$04$"
    assert WebConfig(users={"a": fast, "c": slow}).dummy_hash()[:7] == b"$2b$05$"  # a tie: the higher
    config = WebConfig(users={"a": fast})
    assert config.check_password("a", "x") and not config.check_password("a", "y")
    assert not config.check_password("nobody", "x") and not config.check_password("nobody", "")


def test_an_unknown_user_takes_as_long_as_a_wrong_password(table, write_config, tmp_path, pgne_processes):
    """Today (before the fix) an unknown user is answered in 1-2 ms, a wrong password after a
    bcrypt run: at cost 10 here, about 50x apart. Fixed, both run bcrypt once: their medians over
    interleaved attempts are within 2x of each other (a margin no scheduling noise reaches)."""
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {
        "prometheus": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()}}))
    config = write_config(table, [MONITOR], tag=RELIABILITY_TAG, perform_setup=True)
    proc = PgneProcess(config, tmp_path / "pgne", "--web.config.file", str(web))
    pgne_processes.append(proc)
    proc.spawn()
    good = basic("prometheus", "s3cret")
    wait_until(lambda: _status(proc, "/-/healthy", good) == 200, 60, "/-/healthy", proc.describe)

    def timed(headers: dict[str, str]) -> float:
        started = time.perf_counter()
        assert _status(proc, "/-/healthy", headers) == 401
        return time.perf_counter() - started

    unknown, wrong = [], []
    for attempt in range(15):
        unknown.append(timed(basic(f"nobody{attempt}", "s3cret")))
        wrong.append(timed(basic("prometheus", f"wrong{attempt}")))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 <= ratio <= 2.0, (sorted(unknown), sorted(wrong))
    assert statistics.median(wrong) >= 0.01  # bcrypt ran (cost 10: tens of ms)
    assert _status(proc, "/-/healthy", good) == 200


def _status(proc: PgneProcess, path: str, headers=None) -> int | None:
    try:
        return proc.request("GET", path, headers)[0]
    except OSError:
        return None
