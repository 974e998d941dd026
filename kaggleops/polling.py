"""One deadline poll loop for everything kops waits on (a dataset version, a kernel run, scores, a server)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


FIRST_POLL_S = 0.25  # the first pause; each next one doubles, up to the caller's poll_s


def poll(check: Callable[[], T | None], timeout_s: float, poll_s: float, timed_out: Callable[[], Exception],
         sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``check()`` until it returns something other than None (it raises to give up early); after
    ``timeout_s`` seconds raise ``timed_out()``.

    The pauses between calls start at a quarter second and double up to ``poll_s``: what is ready at once (a small
    dataset version, a score on a fast competition) is seen at once, and a long wait (a kernel session) still asks
    only every ``poll_s`` — a handful of extra requests per wait, not one per quarter second."""
    deadline = time.monotonic() + timeout_s
    pause = min(FIRST_POLL_S, poll_s)
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise timed_out()
        sleep(pause)
        pause = min(pause * 2, poll_s)
