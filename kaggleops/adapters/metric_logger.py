"""The background metric logger training hands its ``log(metrics, step)`` callback: batched, non-blocking, ordered
with checkpoint uploads, and stopping training at once on a full disk. :class:`kaggleops.adapters.tracking.Tracker`
builds it (``tracker.metric_logger(run_id)``) on the store's MLflow client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from kaggleops.errors import DiskFull, TrackingUnavailable, disk_full_detail, is_disk_full

METRIC_BATCH = 500  # metric points per log_batch call
FLUSH_INTERVAL_S = 5.0  # seconds between sends (sooner when a batch is full)
CLOSE_RETRIES = 3

log = logging.getLogger("kaggleops")


class MetricLogger:
    """A ``log(metrics, step)`` callback that never blocks training.

    Metrics are buffered and sent by a background thread with ``log_batch`` (≤ ``METRIC_BATCH`` per call,
    every ``interval_s`` or sooner when a batch is full); :meth:`upload` queues an artifact folder behind the
    metrics logged before it, so a stored checkpoint implies its metrics are stored too. A slow or unreachable
    tracking server only delays the sender: it warns once, keeps everything, and retries at the next flush.
    ``skip`` maps metric keys to the last step already stored (a resumed run): those steps are not re-sent.
    :meth:`close` (or leaving the ``with`` block) sends what is left and raises if the store stays unreachable.
    """

    def __init__(self, client: Any, run_id: str, skip: dict[str, int] | None = None,
                 interval_s: float = FLUSH_INTERVAL_S, background: bool = True,
                 resume_command: str = "kops train --resume", store: str = "the tracking store") -> None:
        self.client = client
        self.run_id = run_id
        self.skip = dict(skip or {})
        self.interval_s = interval_s
        self.warned = False
        self.resume_command = resume_command
        self.store = store  # where its metrics and artifacts go, for a message
        self.disk_full: BaseException | None = None  # the sender met a full disk: training stops at its next log
        self._ops: deque[Any] = deque()  # list[Metric] batches and ("upload", dir, path, on_done) tuples
        self._lock = threading.Lock()  # guards _ops
        self._send = threading.Lock()  # one sender at a time, in order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name=f"kops-metrics-{run_id[:8]}", daemon=True)
            self._thread.start()

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        self._check_disk()
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if step > self.skip.get(k, -1)]
        if not items:
            return
        with self._lock:
            if self._ops and isinstance(self._ops[-1], list):
                self._ops[-1].extend(items)
            else:
                self._ops.append(items)
            full = sum(len(op) for op in self._ops if isinstance(op, list)) >= METRIC_BATCH
        if full:
            self._wake.set()

    def upload(self, local_dir: Path, artifact_path: str, on_done: Any = None) -> None:
        """Queue ``local_dir`` for upload as ``artifact_path`` after the metrics logged so far; then
        ``on_done()`` (e.g. delete the folder)."""
        self._check_disk()
        with self._lock:
            self._ops.append(("upload", Path(local_dir), artifact_path, on_done))
        self._wake.set()

    @property
    def pending(self) -> int:
        """Operations (metric batches, uploads) not yet stored."""
        with self._lock:
            return len(self._ops)

    def _send_one(self) -> bool:
        with self._lock:
            if not self._ops:
                return False
            op = self._ops[0]
            if isinstance(op, list):
                chunk = op[:METRIC_BATCH]
        if isinstance(op, list):
            self.client.log_batch(self.run_id, metrics=chunk)
            with self._lock:
                del op[: len(chunk)]
                if not op:
                    self._ops.popleft()
            return True
        _, local_dir, artifact_path, on_done = op
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)
        with self._lock:
            self._ops.popleft()
        if on_done is not None:
            on_done()
        return True

    def flush(self) -> None:
        """Send everything queued now, in the caller's thread; raises what the store raised (nothing is lost)."""
        with self._send:
            while self._send_one():
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - any store failure: keep the data, retry later
                if is_disk_full(e):  # retrying cannot help: stop training at its next log call (_check_disk)
                    self.disk_full = e
                    return
                self._warn(e)

    def _check_disk(self) -> None:
        """Raise :class:`DiskFull` in the training loop as soon as the sender met a full disk (not at the end)."""
        if self.disk_full is not None:
            raise self._disk_full_error(self.disk_full)

    def _disk_full_error(self, error: BaseException) -> DiskFull:
        return DiskFull(f"The disk is full: storing run {self.run_id}'s metrics and checkpoints failed "
                        f"({disk_full_detail(error)}); {self.pending} operation(s) were not stored.",
                        f"Free space where the run is stored ({self.store}), then resume the run: "
                        f"{self.resume_command}")

    def _warn(self, error: Exception) -> None:
        if not self.warned:
            self.warned = True
            log.warning("kops: tracking store unreachable or failing (%s: %s); training goes on, %d pending "
                        "operation(s) kept and retried", type(error).__name__, str(error)[:200], self.pending)

    def close(self, retries: int = CLOSE_RETRIES) -> None:
        """Stop the sender and send what is left, retrying ``retries`` times with backoff."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self.disk_full is not None:
            raise self._disk_full_error(self.disk_full)
        for attempt in range(retries + 1):
            try:
                self.flush()
                return
            except Exception as e:
                if is_disk_full(e):
                    raise self._disk_full_error(e) from e
                self._warn(e)
                if attempt == retries:
                    raise TrackingUnavailable(
                        f"Could not store {self.pending} pending metric batch(es)/upload(s) of run {self.run_id}: "
                        f"{type(e).__name__}: {str(e)[:200]}.",
                        "Check the tracking server (MLFLOW_TRACKING_URI), then resume with: kops train --resume",
                    ) from e
                time.sleep(min(30.0, 2.0**attempt))

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing: store what we can, but never hide the original error
            self.close(retries=0)
        except (TrackingUnavailable, DiskFull):
            pass
