"""The one poll-until-a-deadline loop: nothing in the suite sleeps and hopes."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

DEFAULT_TIMEOUT = 30.0
POLL = 0.05

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, what: str = "condition",
               describe: Callable[[], str] | None = None, interval: float = POLL) -> T:
    """Poll `condition` until it returns something truthy; return that. At the deadline raise
    AssertionError saying what was awaited (and `describe()`, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = describe() if describe else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{detail}")
        time.sleep(interval)
