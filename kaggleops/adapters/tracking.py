"""MLflow adapter: runs with provenance, batched metric logging, lookup and write-back.

The only module that talks to MLflow. mlflow is imported lazily inside functions.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops import __version__
from kaggleops.adapters.git import git_info
from kaggleops.environment import detect_env, library_versions
from kaggleops.errors import KopsError, RunNotFound

if TYPE_CHECKING:
    from mlflow.entities import Run

    from kaggleops.config import KopsConfig

TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_BRANCH = "mlflow.source.git.branch"
TAG_GIT_REPO = "mlflow.source.git.repoURL"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_DIRTY = "kops.git.dirty"
TAG_ENV = "kops.env"
TAG_DATASET = "kops.dataset"
TAG_DATASET_VERSION = "kops.dataset.version"
TAG_KERNEL = "kops.kernel"
TAG_KERNEL_VERSION = "kops.kernel.version"
TAG_KIND = "kops.kind"  # fold | kfold | submission | rerank | rerank-fold
TAG_FOLD = "kops.fold"
TAG_ORIGIN_RUN = "kops.origin_run_id"
TAG_ORIGIN_ARTIFACTS = "kops.origin_artifact_uri"
METRIC_BATCH = 500
FLUSH_INTERVAL_S = 5.0
CLOSE_RETRIES = 3

log = logging.getLogger("kaggleops")


class TrackingUnavailable(KopsError):
    """The tracking store could not take a run's metrics or artifacts, even after retries."""


class Tracker:
    """One tracking store (``cfg.resolved_tracking_uri``) and the experiment ``cfg.experiment_name``."""

    def __init__(self, cfg: KopsConfig) -> None:
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.uri = cfg.resolved_tracking_uri
        self.client = MlflowClient(tracking_uri=self.uri)
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.cfg.experiment_name)
            self._experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                self.cfg.experiment_name, artifact_location=self.cfg.resolved_artifact_location
            )
        return self._experiment_id

    def provenance_tags(self) -> tuple[dict[str, str], str]:
        """Tags naming the code and machine of a new run, and the uncommitted diff (empty when clean)."""
        tags = {TAG_ENV: detect_env(), "kops.version": __version__}
        tags.update({f"kops.lib.{k}": v for k, v in library_versions().items()})
        info = git_info(self.cfg.root)
        if info is None:
            return tags, ""
        tags.update({TAG_GIT_COMMIT: info.commit, TAG_GIT_REPO: info.repo_url, TAG_DIRTY: str(info.dirty).lower()})
        if info.branch:
            tags[TAG_GIT_BRANCH] = info.branch
        return tags, info.diff

    def start_run(
        self, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """Create a RUNNING run with provenance tags and params; returns its id."""
        base, diff = self.provenance_tags()
        base.update(tags or {})
        if parent_run_id:
            base[TAG_PARENT] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=base)
        run_id = run.info.run_id
        self.log_params(run_id, params)
        if diff:
            self.client.log_text(run_id, diff, "git/uncommitted.diff")
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def metric_logger(self, run_id: str, skip: dict[str, int] | None = None,
                      background: bool = True) -> MetricLogger:
        """A non-blocking ``log(metrics, step)`` for ``run_id``; see :class:`MetricLogger`."""
        return MetricLogger(self.client, run_id, skip=skip, background=background)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        with self.metric_logger(run_id, background=False) as logger:
            logger(metrics, step)

    def reopen_run(self, run_id: str) -> None:
        """Set a killed/failed/stale run back to RUNNING, to continue it (MLflow cannot choose run ids)."""
        self.client.update_run(run_id, status="RUNNING")

    def last_steps(self, run_id: str) -> dict[str, int]:
        """The last stored step of each metric of a run (what a resumed run must not log again)."""
        run = self.get_run(run_id)
        return {key: max(m.step for m in self.client.get_metric_history(run_id, key))
                for key in run.data.metrics}

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_data_input(self, run_id: str, name: str, digest: str, source: str, source_type: str = "local",
                       profile: str | None = None, context: str = "training") -> None:
        """Record the data a run used as an MLflow dataset input (``mlflow.log_input``; the UI's Datasets)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type=source_type,
                          source=json.dumps({"url" if source_type == "http" else "uri": source}), profile=profile)
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def get_run(self, run_id: str) -> Run:
        """The run, or RunNotFound naming the store."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise RunNotFound(run_id, self.uri) from None

    def resolve(self, run_id: str) -> str:
        """The local id of ``run_id``: itself for a local run, else the run `kops sync pull` imported from that
        origin id (tag ``kops.origin_run_id``); RunNotFound otherwise. Commands taking a RUN_ID accept either."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.run_id
        except MlflowException:
            pass
        if re.fullmatch(r"[0-9a-f]{32}", run_id):
            ids = [e.experiment_id for e in self.client.search_experiments()]
            hits = self.client.search_runs(ids, f"tags.`{TAG_ORIGIN_RUN}` = '{run_id}'", max_results=1) if ids else []
            if hits:
                return hits[0].info.run_id
        raise RunNotFound(run_id, self.uri)

    def _origin_artifacts(self, run_id: str) -> str | None:
        """Where a run pulled by `kops sync pull` keeps its artifacts (e.g. gs://…), or None for a local run."""
        return self.client.get_run(run_id).data.tags.get(TAG_ORIGIN_ARTIFACTS)

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Download an artifact of the run; for a pulled run, from the origin machine's artifact store."""
        dst.mkdir(parents=True, exist_ok=True)
        origin = self._origin_artifacts(run_id)
        if origin and not self.client.list_artifacts(run_id, artifact_path):
            return Path(_artifact_repo(origin).download_artifacts(artifact_path, str(dst)))
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Artifact paths of the run (for a pulled run, those in the origin machine's artifact store)."""
        local = [a.path for a in self.client.list_artifacts(run_id, path)]
        origin = None if local else self._origin_artifacts(run_id)
        if not origin:
            return local
        return [a.path for a in _artifact_repo(origin).list_artifacts(path)]

    def search(self, filter_string: str = "", max_results: int = 1000) -> list[Run]:
        return list(self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, max_results=max_results,
            order_by=["attributes.start_time DESC"],
        ))

    def log_json(self, run_id: str, obj: Any, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(json.dumps(obj, indent=2))
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(run_id, str(path), None if parent == "." else parent)

    def latest_metric(self, run: Run, key: str) -> float | None:
        return run.data.metrics.get(key)


def _artifact_repo(uri: str) -> Any:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(uri)


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
                 interval_s: float = FLUSH_INTERVAL_S, background: bool = True) -> None:
        self.client = client
        self.run_id = run_id
        self.skip = dict(skip or {})
        self.interval_s = interval_s
        self.warned = False
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
                self._warn(e)

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
        for attempt in range(retries + 1):
            try:
                self.flush()
                return
            except Exception as e:
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
        except TrackingUnavailable:
            pass


def runs_tagged(tracker: Tracker, tags: dict[str, str]) -> list[Run]:
    """Runs of the experiment whose tags equal all of ``tags``."""
    clauses: Iterable[str] = (f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return tracker.search(" and ".join(clauses))
