"""Which basic-auth checks get a bcrypt run and in what order (pgne.password_checks): one
waiting check per client, QUEUE_DEPTH in all, turns in order of arrival. The real HTTP flood
is tests/reliability/test_http_hostility.py."""
from __future__ import annotations

import threading

import pytest
from support.waiting import wait_until

from pgne.password_checks import QUEUE_DEPTH, AuthBusy, PasswordChecks, client_key


@pytest.mark.parametrize("address, key", [
    ("10.1.2.3", "10.1.2.3"),
    ("::ffff:10.1.2.3", "10.1.2.3"),  # a dual-stack socket's IPv4 client is that IPv4 client
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # one host's /64 is one client
    ("fe80::1%eth0", "fe80::/64"),
    ("not an address", "not an address"),
])
def test_client_key(address, key):
    assert client_key(address) == key


class Holder:
    """A thread that holds a check of `client` (admitted and waiting, or running) until released."""

    def __init__(self, checks: PasswordChecks, client: str, ran: list[str] | None = None):
        self.release = threading.Event()
        self.error: Exception | None = None

        def hold() -> None:
            try:
                with checks.turn(client):
                    if ran is not None:
                        ran.append(client)
                    self.release.wait(30)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.error = exc

        self.thread = threading.Thread(target=hold, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.release.set()
        self.thread.join(30)
        assert not self.thread.is_alive() and self.error is None


def test_one_check_per_client_and_queue_depth_in_all():
    checks = PasswordChecks()
    assert QUEUE_DEPTH == 4
    first = Holder(checks, "10.0.0.1")
    wait_until(lambda: checks.admitted() == 1, 10, "the first check admitted")
    for same_client in ("10.0.0.1", "::ffff:10.0.0.1"):
        with pytest.raises(AuthBusy), checks.turn(same_client):
            pass
    others = [Holder(checks, address) for address in ("10.0.0.2", "2001:db8::1", "10.0.0.3")]
    wait_until(lambda: checks.admitted() == 4, 10, "four clients admitted")
    with pytest.raises(AuthBusy), checks.turn("10.0.0.4"):  # a fifth client: the queue is full
        pass
    with pytest.raises(AuthBusy), checks.turn("2001:db8::2"):  # the same /64 as one waiting
        pass
    for holder in (first, *others):
        holder.finish()
    assert checks.admitted() == 0
    with checks.turn("10.0.0.1"):  # everything given back
        assert checks.admitted() == 1


def test_turns_go_in_order_of_arrival():
    checks, ran = PasswordChecks(), []
    holders = []
    for number, client in enumerate(("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"), start=1):
        holders.append(Holder(checks, client, ran))
        wait_until(lambda n=number: checks.admitted() == n, 10, f"{number} admitted")
    for holder in holders:
        holder.finish()
    assert ran == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


def test_a_check_that_raises_gives_its_place_back():
    checks = PasswordChecks()
    with pytest.raises(ValueError), checks.turn("10.0.0.1"):
        raise ValueError
    assert checks.admitted() == 0
    with checks.turn("10.0.0.1"):
        pass
