"""MLflow adapter: runs with provenance, batched metric logging, lookup and write-back.

The only module that talks to MLflow. mlflow is imported lazily inside functions.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops import __version__
from kaggleops.errors import RunNotFound
from kaggleops.provenance import git_info
from kaggleops.runtime import detect_env, library_versions

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
METRIC_BATCH = 500


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

    def metric_logger(self, run_id: str) -> MetricLogger:
        return MetricLogger(self.client, run_id)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        with self.metric_logger(run_id) as log:
            log(metrics, step)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

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

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return [a.path for a in self.client.list_artifacts(run_id, path)]

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


class MetricLogger:
    """A ``log(metrics, step)`` callback that batches metrics into ``log_batch`` calls.

    Per-call logging costs ~50 ms against a remote server; batching keeps a training loop fast.
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._buffer: list[Any] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(self._buffer) >= METRIC_BATCH:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:METRIC_BATCH], self._buffer[METRIC_BATCH:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def runs_tagged(tracker: Tracker, tags: dict[str, str]) -> list[Run]:
    """Runs of the experiment whose tags equal all of ``tags``."""
    clauses: Iterable[str] = (f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return tracker.search(" and ".join(clauses))
