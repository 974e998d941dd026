"""Pushes during training: every ``storage.sync_minutes`` on a daemon thread, and once at the end.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from kaggleops.adapters.storage import ObjectStore, open_store
from kaggleops.sync.bundle import PushResult
from kaggleops.sync.push import push
from kaggleops.sync.state import bucket_url, configured_bucket

if TYPE_CHECKING:
    from kaggleops.config import KopsConfig


log = logging.getLogger(__name__)


class BackgroundSync:
    """Pushes every ``every_s`` seconds on a daemon thread, so a lost notebook loses at most one interval."""

    def __init__(self, cfg: KopsConfig, every_s: float, bucket: str | None = None,
                 store: ObjectStore | None = None) -> None:
        self.cfg = cfg
        self.every_s = every_s
        self.store = store or open_store(bucket_url(cfg, bucket), cfg.root)
        self.last_error: Exception | None = None
        self.pushed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kops-sync", daemon=True)

    def start(self) -> BackgroundSync:
        self._thread.start()
        return self

    def push_now(self) -> PushResult | None:
        """One push; a failure is logged and kept in ``last_error`` (training must not die of a network blip)."""
        try:
            result = push(self.cfg, store=self.store)
        except Exception as e:  # noqa: BLE001 - reported, retried at the next interval
            self.last_error = e
            log.warning("kops sync push to %s failed: %s", self.store.url, e)
            return None
        self.pushed.set()
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.push_now()

    def stop(self, final_push: bool = True) -> None:
        """Stop the thread; by default push once more so the final status reaches the bucket."""
        self._stop.set()
        self._thread.join()
        if final_push:
            self.push_now()


@contextlib.contextmanager
def background_sync(cfg: KopsConfig) -> Iterator[BackgroundSync | None]:
    """Around training: push every ``storage.sync_minutes`` when a bucket is configured (else do nothing).

    Example (training.py):
        >>> with background_sync(cfg):              # doctest: +SKIP
        ...     runs = [train_fold(...) for fold in folds]
    """
    if not cfg.storage.sync_minutes or not configured_bucket(cfg):
        yield None
        return
    bg = BackgroundSync(cfg, cfg.storage.sync_minutes * 60).start()
    try:
        yield bg
    finally:
        bg.stop()
