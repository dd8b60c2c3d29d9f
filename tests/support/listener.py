"""`Listener`: a LISTEN session that sums pgne's NOTIFY payloads per (table, action, labels);
`wait_for()` asserts exact totals without sleeping and hoping (see the class)."""
from __future__ import annotations

import json
import select
import time
import uuid
from collections import Counter
from typing import Any, Mapping

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

DEFAULT_CHANNEL = "pg_notify_exporter"
DEFAULT_TIMEOUT = 15.0
SENTINEL_KEY = "pgne_test_sentinel"

# A key of Listener.totals: (table, action, ((label, value), ...) sorted by label name).
EventKey = tuple[str, str, tuple[tuple[str, str], ...]]


def event(table: str, action: str, **labels: Any) -> EventKey:
    """The Listener.totals key of `action` on `table` with these labels (none for payloads
    without `data`): event("public.one", "INSERT", code="alpha")."""
    return (table, action, tuple(sorted((name, value) for name, value in labels.items())))


# --------------------------------------------------------------------------- Listener


class Listener:
    """LISTENs on `channel` (autocommit, so LISTEN takes effect at once) and sums counts.

    Every notification on the channel is parsed as JSON. A payload with `table` and `action`
    adds its `count` (default 1, as the payload spec says) to `totals[event(table, action,
    **data)]`; the parsed payload is appended to `payloads` (in arrival order). Anything else
    lands in `invalid`. The listener's own sentinels are never counted.

    Create it *before* the writes it is to see: notifications reach only sessions that were
    listening when the writer committed.

    `wait_for(expected)` polls until every expected total is reached (or exceeded), then sends a
    sentinel NOTIFY from a separate connection and waits for it: notifications of one channel
    arrive in commit order, so once the sentinel is in, everything committed before the call
    has been received. Then it asserts `totals == expected` exactly. `wait_for({})` therefore
    proves that nothing was sent.
    """

    def __init__(self, dsn: str, channel: str = DEFAULT_CHANNEL):
        self.dsn = dsn
        self.channel = channel
        self.totals: Counter[EventKey] = Counter()
        self.payloads: list[dict] = []
        self.raw_payloads: list[str] = []  # the text of each one in self.payloads, as received
        self.invalid: list[str] = []
        self._sentinels_seen: set[str] = set()
        self._sender = None
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        for conn in (self.conn, self._sender):
            if conn is not None and not conn.closed:
                conn.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def reset(self) -> None:
        """Forget what was counted so far (after settle(), so that nothing is in flight)."""
        self.totals.clear()
        self.payloads.clear()
        self.raw_payloads.clear()
        self.invalid.clear()

    # -- receiving --------------------------------------------------------------------------

    def _handle(self, notify: psycopg2.extensions.Notify) -> None:
        if notify.channel != self.channel:
            return
        try:
            payload = json.loads(notify.payload)
        except ValueError:
            self.invalid.append(notify.payload)
            return
        if isinstance(payload, dict) and SENTINEL_KEY in payload:
            self._sentinels_seen.add(payload[SENTINEL_KEY])
            return
        if not isinstance(payload, dict) or "table" not in payload or "action" not in payload:
            self.invalid.append(notify.payload)
            return
        data = payload.get("data") or {}
        self.totals[event(payload["table"], payload["action"], **data)] += payload.get("count", 1)
        self.payloads.append(payload)
        self.raw_payloads.append(notify.payload)

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the socket, then take every pending notification."""
        if not self.conn.notifies:
            select.select([self.conn], [], [], max(timeout, 0.0))
        self.conn.poll()
        batch, self.conn.notifies[:] = self.conn.notifies[:], []
        for notify in batch:
            self._handle(notify)

    def _poll_until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0)
            if done():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                     f"totals so far: {dict(self.totals)}; payloads: {self.payloads}; "
                                     f"invalid: {self.invalid}")
            self.poll(min(remaining, 0.5))

    # -- sending ----------------------------------------------------------------------------

    def notify(self, payload: str) -> None:
        """pg_notify(channel, payload) from the listener's separate, autocommit sender connection."""
        if self._sender is None or self._sender.closed:
            self._sender = psycopg2.connect(self.dsn)
            self._sender.autocommit = True
        with self._sender.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))

    def settle(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once every notification committed before this call has been received."""
        token = uuid.uuid4().hex
        self.notify(json.dumps({SENTINEL_KEY: token}))
        self._poll_until(lambda: token in self._sentinels_seen, timeout, "the sentinel notification")

    # -- asserting --------------------------------------------------------------------------

    def wait_for(self, expected: Mapping[EventKey, int], timeout: float = DEFAULT_TIMEOUT) -> Counter:
        """Wait until `expected` is reached, settle, then assert the totals equal it exactly.

        Keys with value 0 in `expected` mean "never seen". Returns the totals.
        """
        wanted = {key: value for key, value in expected.items() if value}

        def reached() -> bool:
            return all(self.totals[key] >= value for key, value in wanted.items())

        self._poll_until(reached, timeout, f"totals {wanted}")
        self.settle(timeout)
        actual = {key: value for key, value in self.totals.items() if value}
        assert actual == wanted, (f"counted {actual}, expected {wanted}; payloads: {self.payloads}; "
                                  f"invalid: {self.invalid}")
        assert not self.invalid, f"payloads that are not pgne events: {self.invalid}"
        return self.totals
