"""Fault injection for the emulator: per-RPC error statuses, lost answers, dropped connections, delays."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Fault:
    """One injected failure: answer ``status`` (0 = drop the connection without answering).

    ``after``: run the handler first, so the call takes effect, then answer the fault (a lost response).
    ``delay_s``: sleep before answering (to trip client timeouts); with a 2xx ``status`` the call is then
    answered normally.
    """

    status: int
    message: str = ""
    after: bool = False
    delay_s: float = 0.0

    @property
    def text(self) -> str:
        return self.message or f"injected fault {self.status}"


class Faults:
    """Per-RPC injected failures: the next ``times`` calls answer a :class:`Fault`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[Fault]] = {}

    def add(self, method: str, status: int, times: int = 1, message: str = "", after: bool = False,
            delay_s: float = 0.0) -> None:
        """Queue ``times`` failures for ``method`` ("CreateDataset", "svc/Method" or "Upload")."""
        with self._lock:
            self._pending.setdefault(method, []).extend(
                [Fault(int(status), message, after, float(delay_s))] * int(times))

    def take(self, rpc: str) -> Fault | None:
        """Pop the next injected fault for ``rpc`` ("service/Method"), if any."""
        short = rpc.rsplit("/", 1)[-1]
        with self._lock:
            for key in (rpc, short):
                queue = self._pending.get(key)
                if queue:
                    return queue.pop(0)
        return None

    def pending(self) -> dict[str, int]:
        """How many injected faults are still queued, per method."""
        with self._lock:
            return {k: len(v) for k, v in self._pending.items() if v}


def parse_fault_spec(spec: str) -> list[tuple[str, int]]:
    """``"datasets.DatasetApiService/CreateDatasetVersion=503,429"`` → [(method, 503), (method, 429)].

    Statuses are queued in order; ``drop`` (or 0) drops the connection instead of answering.
    """
    method, sep, statuses = spec.partition("=")
    if not sep or not method.strip() or not statuses.strip():
        raise ValueError(f"Not a fault spec: {spec!r}. Expected service/Method=STATUS[,STATUS...], "
                         "e.g. datasets.DatasetApiService/CreateDatasetVersion=503,429 or Upload=drop.")
    out = []
    for item in statuses.split(","):
        item = item.strip().lower()
        if item == "drop":
            item = "0"
        if not item.isdigit() or not (item == "0" or 400 <= int(item) <= 599):
            raise ValueError(f"Fault status {item!r} in {spec!r} must be an HTTP error status (400-599) or drop.")
        out.append((method.strip(), int(item)))
    return out
