"""Which basic-auth password checks get a bcrypt run, and in what order.

bcrypt costs one core for its whole run (hundreds of ms at cost 12), so the runs take turns:
no number of guesses takes more than one core from the workers. A request that waits for its
turn holds an HTTP connection, so few may wait: at most QUEUE_DEPTH in all and PER_CLIENT per
client (an address; an IPv6 client's /64, as one host usually has a whole /64). The others are
answered at once (AuthBusy: 429). Whether the user exists plays no part. The per-client bound
keeps a scrape with the right, not yet verified password (Prometheus' first scrape after a
restart) from being refused while one client floods the port with guesses: that client holds
one place, not all of them. Turns go in order of arrival (a threading.Lock lets a newcomer
overtake one that waits), so an admitted check waits for at most QUEUE_DEPTH - 1 others. A
flood from QUEUE_DEPTH or more clients can still fill every place: that is the limit of this
design (README, "Securing /metrics").
"""
from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager

QUEUE_DEPTH = 4
PER_CLIENT = 1


class AuthBusy(Exception):
    """This client, or QUEUE_DEPTH clients in all, already have a password check waiting."""


def client_key(address: str) -> str:
    """The client a request is counted against: its IPv4 address (also when it comes as an
    IPv4-mapped IPv6 address), or the /64 of its IPv6 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:  # not an IP address (a Unix socket's path): itself
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class PasswordChecks:
    def __init__(self, depth: int = QUEUE_DEPTH, per_client: int = PER_CLIENT):
        self.depth, self.per_client = depth, per_client
        self._changed = threading.Condition()  # guards the four below
        self._admitted = 0
        self._by_client: dict[str, int] = {}
        self._next_ticket = 0  # the next admitted check's place in line
        self._serving = 0  # the ticket whose turn it is

    @contextmanager
    def turn(self, client: str) -> Iterator[None]:
        """Run the body when it is this check's turn; AuthBusy at once if `client` (an address)
        already has PER_CLIENT checks admitted, or QUEUE_DEPTH are admitted in all."""
        key = client_key(client)
        with self._changed:
            if self._admitted >= self.depth or self._by_client.get(key, 0) >= self.per_client:
                raise AuthBusy
            self._admitted += 1
            self._by_client[key] = self._by_client.get(key, 0) + 1
            ticket = self._next_ticket
            self._next_ticket += 1
            # bounded: each of the at most depth - 1 checks ahead is one bcrypt run
            self._changed.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            with self._changed:
                self._serving += 1
                self._admitted -= 1
                if self._by_client[key] == 1:
                    del self._by_client[key]
                else:
                    self._by_client[key] -= 1
                self._changed.notify_all()

    def admitted(self) -> int:
        with self._changed:
            return self._admitted
