"""Stopping a long loop at a safe point on SIGINT/SIGTERM.

Inside :func:`graceful`, the first SIGINT (Ctrl-C) or SIGTERM only sets a flag; a loop that calls
:func:`requested` between steps stops at the next one, after saving what it can, by raising KeyboardInterrupt.
A second signal raises KeyboardInterrupt at once (what Ctrl-C does anywhere else). Outside :func:`graceful`
(or outside the main thread) nothing changes and :func:`requested` is always None.

Example:
    >>> with graceful():                      # doctest: +SKIP
    ...     for step in range(total):
    ...         train_step()
    ...         if requested():
    ...             save_checkpoint()
    ...             raise KeyboardInterrupt
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[str] = []
_depth: list[int] = [0]  # graceful() blocks open: an inner one (a sweep's trial inside the sweep) changes nothing


def requested() -> str | None:
    """The name of the signal that asked to stop (``SIGINT``/``SIGTERM``), or None."""
    return _received[0] if _received else None


def _handler(signum: int, frame: Any) -> None:
    if _received:
        raise KeyboardInterrupt  # the second signal: stop now
    _received.append(signal.Signals(signum).name)


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """SIGINT/SIGTERM set :func:`requested` instead of interrupting, until the block ends (main thread only).

    Nested blocks are one: only the outermost installs the handlers and clears the flag, so a signal received
    during an inner block (one trial of a sweep) is still :func:`requested` after it."""
    if threading.current_thread() is not threading.main_thread() or _depth[0]:
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _received.clear()
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()
