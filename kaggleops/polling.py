"""One deadline poll loop for everything kops waits on (a dataset version, a kernel run, scores, a server)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout_s: float, poll_s: float, timed_out: Callable[[], Exception],
         sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``check()`` until it returns something other than None (it raises to give up early); after
    ``timeout_s`` seconds raise ``timed_out()``. Sleeps ``poll_s`` between calls."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise timed_out()
        sleep(poll_s)
