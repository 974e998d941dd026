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
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How often a main thread that waits "forever" wakes to run the signal handlers another thread received.
WAKE_S = 0.2

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


def sleep_until_interrupted() -> None:
    """Block until Ctrl-C/SIGTERM raises here (KeyboardInterrupt, or what the signal's handler raises).

    A signal sent to the process lands on any of its threads; one that lands on a helper thread (a server's) only
    flags Python's handler, which runs when the main thread next executes Python code — never, if that thread sits
    in one long ``sleep`` or ``wait``. So the wait is cut into :data:`WAKE_S` slices: the command stops within a
    fraction of a second whichever thread the kernel picked.
    """
    while True:
        time.sleep(WAKE_S)


def wait_interruptibly(proc: subprocess.Popen[Any]) -> int:
    """``proc.wait()`` in :data:`WAKE_S` slices (see :func:`sleep_until_interrupted`): its exit code."""
    while True:
        try:
            return proc.wait(timeout=WAKE_S)
        except subprocess.TimeoutExpired:
            continue
