"""MLflow adapter: runs with provenance, batched metric logging, lookup and write-back.

The only module that talks to MLflow (mlflow is imported lazily inside functions). Every command builds its
:class:`Tracker` with :func:`open_tracker`, which first applies the credential chain (a ``MLFLOW_TRACKING_*``
kept only in a Kaggle/Colab notebook secret store reaches the environment, where the config and MLflow read
it); :func:`kaggleops.adapters.mlflow_store.translate` turns MLflow's exceptions into kops errors in one place,
and every MLflow call here goes through it. Runs come back as :class:`kaggleops.adapters.run_record.RunRecord`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops import __version__
from kaggleops.adapters.credentials import apply_tracking_credentials
from kaggleops.adapters.git import git_info
from kaggleops.adapters.metric_logger import MetricLogger
from kaggleops.adapters.mlflow_store import check_store, store_lock, translate
from kaggleops.adapters.run_record import RunRecord
from kaggleops.environment import detect_env, library_versions, run_source_tags
from kaggleops.errors import (
    ConfigError,
    RunIdAmbiguous,
    RunNotFound,
    TrackingUnavailable,
)
from kaggleops.refs import RunRef
from kaggleops.schema import (
    ARTIFACT_GIT_DIFF,
    EXPERIMENT_KIND,
    INPUT_TAG_CONTEXT,
    TAG_DIRTY,
    TAG_ENV,
    TAG_EXPERIMENT_KIND,
    TAG_FOLD,
    TAG_GIT_BRANCH,
    TAG_GIT_COMMIT,
    TAG_GIT_REPO,
    TAG_KIND,
    TAG_LIB_PREFIX,
    TAG_ORIGIN_ARTIFACTS,
    TAG_ORIGIN_RUN,
    TAG_PARENT,
    TAG_PUBLISHED_REF,
    TAG_PUBLISHED_VERSION,
    TAG_VERSION,
)

if TYPE_CHECKING:

    from kaggleops.config import KopsConfig

MIN_PREFIX = 6  # the shortest run-id prefix a command accepts
BATCH_ENTITIES, BATCH_PARAMS, BATCH_TAGS = 1000, 100, 100  # MLflow's log_batch limits
SEARCH_PAGE = 50_000

log = logging.getLogger("kaggleops")
ENV_QUIET_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def open_tracker(cfg: KopsConfig) -> Tracker:
    """The Tracker of a command: the credential chain applied first (argument/env > notebook secret store).

    Example:
        >>> open_tracker(load_config()).uri  # in a notebook with MLFLOW_TRACKING_URI as a secret  # doctest: +SKIP
        'https://mlflow.example.com'
    """
    apply_tracking_credentials()
    check_store(cfg.resolved_tracking_uri)
    return Tracker(cfg)


#: Pauses between tries of ``log_inputs`` after losing the race to create the same dataset row (many trainers start
#: at once with the same data against one server: the store's unique key on (experiment, name, digest) refuses all
#: but the first insert; the row exists afterwards, so the next try only links it to the run).
INPUT_RACE_PAUSES_S = (0.2, 0.5, 1.0, 2.0)
_UNIQUE_VIOLATIONS = ("UniqueViolation", "duplicate key value", "UNIQUE constraint failed", "Duplicate entry",
                      "IntegrityError")


def lost_create_race(error: BaseException) -> bool:
    """Whether ``error`` is a store refusing a row another client inserted first (PostgreSQL, SQLite, MySQL)."""
    return any(marker in str(error) for marker in _UNIQUE_VIOLATIONS)


class Tracker:
    """One tracking store (``cfg.resolved_tracking_uri``) and the experiment ``cfg.experiment_name``."""

    def __init__(self, cfg: KopsConfig) -> None:
        from mlflow.tracking import MlflowClient

        os.environ.setdefault(ENV_QUIET_URLS, "true")  # stdout is kops' data (--json); MLflow would print run URLs
        self.cfg = cfg
        self.uri = cfg.resolved_tracking_uri
        with store_lock(self.uri), translate("Opening the tracking store", self.uri):
            self.client = MlflowClient(tracking_uri=self.uri)  # a new SQLite store is created here
        self._experiment_id: str | None = None

    @property
    def where(self) -> str:
        """The store and its artifact folder, as a message names them (``sqlite:///…/mlflow.db, artifacts in …``)."""
        artifacts = self.cfg.resolved_artifact_location
        return f"{self.uri}, artifacts in {artifacts}" if artifacts else self.uri

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, run_id: str | None = None, **kwargs: Any) -> Any:
        with translate(what, self.uri, run_id):
            return fn(*args, **kwargs)

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._get_or_create(self.cfg.experiment_name)
        return self._experiment_id

    def _get_or_create(self, name: str) -> str:
        """The experiment's id; created when missing (another process creating it first is fine: many trainers
        start at once against one server). It is marked as custom-model development (``mlflow.experimentKind``),
        so the MLflow 3 UI shows the model-training pages, not GenAI's."""
        exp = self._call(f"Looking up experiment {name}", self.client.get_experiment_by_name, name)
        if exp:
            if TAG_EXPERIMENT_KIND not in exp.tags:
                try:
                    self._call(f"Tagging experiment {name}", self.client.set_experiment_tag, exp.experiment_id,
                               TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
                except TrackingUnavailable as e:
                    if not lost_create_race(e.__cause__ or e):
                        raise  # else another process tagged it first, with the same value
            return str(exp.experiment_id)
        try:
            return str(self._call(f"Creating experiment {name}", self.client.create_experiment, name,
                                  artifact_location=self.cfg.resolved_artifact_location,
                                  tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}))
        except TrackingUnavailable:
            exp = self._call(f"Looking up experiment {name}", self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def set_experiment_tag(self, key: str, value: str) -> None:
        self._call(f"Tagging experiment {self.cfg.experiment_name}", self.client.set_experiment_tag,
                   self.experiment_id, key, value)

    def record_run(self, run_name: str, tags: dict[str, str]) -> str:
        """A FINISHED run with only ``tags`` (no provenance: for things kops did not make, e.g. an adopted
        submission); returns its id."""
        run = self._call(f"Creating run {run_name}", self.client.create_run, self.experiment_id, run_name=run_name,
                         tags=tags)
        self.end_run(run.info.run_id)
        return str(run.info.run_id)

    def provenance_tags(self) -> tuple[dict[str, str], str]:
        """Tags naming the code and machine of a new run, and the uncommitted diff (empty when clean)."""
        env = detect_env()
        tags = {TAG_ENV: env, TAG_VERSION: __version__, **run_source_tags(env)}
        tags.update({f"{TAG_LIB_PREFIX}{k}": v for k, v in library_versions().items()})
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
        run = self._call(f"Creating run {run_name}", self.client.create_run, self.experiment_id, run_name=run_name,
                         tags=base)
        run_id = run.info.run_id
        self.log_params(run_id, params)
        if diff:
            self._call(f"Saving the uncommitted diff of run {run_id}", self.client.log_text, run_id, diff,
                       ARTIFACT_GIT_DIFF, run_id=run_id)
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call(f"Logging params of run {run_id}", self.client.log_batch, run_id, params=items[i:i + 100],
                       run_id=run_id)

    def metric_logger(self, run_id: str, skip: dict[str, int] | None = None,
                      background: bool = True, resume_command: str = "kops train --resume") -> MetricLogger:
        """A non-blocking ``log(metrics, step)`` for ``run_id``; see :class:`MetricLogger`."""
        return MetricLogger(self.client, run_id, skip=skip, background=background, resume_command=resume_command,
                            store=self.where)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0, model_id: str | None = None) -> None:
        """Metrics at ``step``; with ``model_id`` they are that LoggedModel's too (one point each, linked by MLflow)."""
        if model_id is None:
            with self.metric_logger(run_id, background=False) as logger:
                logger(metrics, step)
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step), model_id=model_id) for k, v in metrics.items()]
        self._call(f"Logging metrics of model {model_id}", self.client.log_batch, run_id, metrics=items, run_id=run_id)

    # ---- MLflow 3 LoggedModels: the published weight sets ----------------------------------------------------

    def published_model(self, run_id: str, name: str, tags: dict[str, str], params: dict[str, str],
                        model_type: str) -> str:
        """The LoggedModel of one published weight set (a dataset version or Kaggle Model version) of ``run_id``:
        found by its reference tags, else created READY; returns its id. Publishing the same weights again (same
        version) finds the same model."""
        key = " AND ".join(f"tags.`{k}` = '{tags[k]}'" for k in (TAG_PUBLISHED_REF, TAG_PUBLISHED_VERSION))
        found = self._call("Looking up published models", self.client.search_logged_models, [self.experiment_id],
                           filter_string=f"source_run_id = '{run_id}' AND {key}")
        if found:
            return str(found[0].model_id)
        model = self._call(f"Recording the published model of run {run_id}", self.client.create_logged_model,
                           self.experiment_id, name=re.sub(r"[/:.%\"']", "-", name)[:250], source_run_id=run_id,
                           tags=tags, params=params, model_type=model_type)
        self._call("Finishing the model record", self.client.finalize_logged_model, model.model_id, "READY")
        from mlflow.entities import LoggedModelOutput  # the run page lists it under "Logged models"

        self._call(f"Linking run {run_id} to its model", self.client.log_outputs, run_id,
                   [LoggedModelOutput(model.model_id, 0)], run_id=run_id)
        return str(model.model_id)

    def link_models(self, run_id: str, model_ids: list[str]) -> None:
        """Record ``model_ids`` as inputs of ``run_id`` (a submission run scoring them)."""
        if not model_ids:
            return
        from mlflow.entities import LoggedModelInput

        self._call(f"Linking the models run {run_id} used", self.client.log_inputs, run_id,
                   models=[LoggedModelInput(m) for m in dict.fromkeys(model_ids)], run_id=run_id)

    def models_of(self, run_id: str) -> list[str]:
        """The LoggedModels published from ``run_id`` that its current publish tags name (newest first)."""
        found = self._call("Looking up published models", self.client.search_logged_models, [self.experiment_id],
                           filter_string=f"source_run_id = '{run_id}'")
        return [str(m.model_id) for m in sorted(found, key=lambda m: -m.creation_timestamp)]

    def reopen_run(self, run_id: str) -> None:
        """Set a killed/failed/stale run back to RUNNING, to continue it (MLflow cannot choose run ids)."""
        self._call(f"Reopening run {run_id}", self.client.update_run, run_id, status="RUNNING", run_id=run_id)

    def last_steps(self, run_id: str) -> dict[str, int]:
        """The last stored step of each metric of a run (what a resumed run must not log again)."""
        run = self.get_run(run_id)
        return {key: max(step for step, _, _ in self.metric_history(run_id, key)) for key in run.metrics}

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(f"Tagging run {run_id}", self.client.log_batch, run_id,
                   tags=[RunTag(k, str(v)) for k, v in tags.items()], run_id=run_id)

    def log_data_input(self, run_id: str, name: str, digest: str, source: str, source_type: str = "local",
                       profile: str | None = None, context: str = "training") -> None:
        """Record the data a run used as an MLflow dataset input (``mlflow.log_input``; the UI's Datasets)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type=source_type,
                          source=json.dumps({"url" if source_type == "http" else "uri": source}), profile=profile)
        inputs = [DatasetInput(dataset, [InputTag(INPUT_TAG_CONTEXT, context)])]
        for pause in (*INPUT_RACE_PAUSES_S, None):
            try:
                self._call(f"Recording the data of run {run_id}", self.client.log_inputs, run_id, inputs, run_id=run_id)
                return
            except TrackingUnavailable as e:
                if pause is None or not lost_create_race(e.__cause__ or e):
                    raise
                time.sleep(pause)  # another trainer inserted the same dataset row first: it exists now

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self._call(f"Uploading {local_dir} to run {run_id}", self.client.log_artifacts, run_id, str(local_dir),
                   artifact_path, run_id=run_id)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self._call(f"Uploading {local_file} to run {run_id}", self.client.log_artifact, run_id, str(local_file),
                   artifact_path, run_id=run_id)

    def delete_run(self, run_id: str) -> None:
        """Mark a run deleted (MLflow keeps it restorable until garbage-collected)."""
        self._call(f"Deleting run {run_id}", self.client.delete_run, run_id, run_id=run_id)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call(f"Ending run {run_id}", self.client.set_terminated, run_id, status, run_id=run_id)

    def get_run(self, run_id: str) -> RunRecord:
        """The run, or RunNotFound naming the store."""
        from mlflow.exceptions import MlflowException

        try:
            return RunRecord.of(self._call(f"Reading run {run_id}", self.client.get_run, run_id, run_id=run_id))
        except TrackingUnavailable as e:
            if isinstance(e.__cause__, MlflowException) and e.__cause__.error_code == "INVALID_PARAMETER_VALUE":
                raise RunNotFound(run_id, self.uri) from None  # a malformed id: the run is not there
            raise

    def resolve(self, run_id: str) -> str:
        """The local id of ``run_id``: itself for a local run, else the run `kops sync pull` imported from that
        origin id (tag ``kops.origin_run_id``); RunNotFound otherwise. Commands taking a RUN_ID accept either."""
        with contextlib.suppress(RunNotFound):
            return self.get_run(run_id).id
        if _is_run_id(run_id):
            with translate(f"Looking up run {run_id}", self.uri):
                ids = [e.experiment_id for e in self.client.search_experiments()]
                query = f"tags.`{TAG_ORIGIN_RUN}` = '{run_id}'"
                hits = self.client.search_runs(ids, query, max_results=1) if ids else []
            if hits:
                return hits[0].info.run_id
        elif re.fullmatch(rf"[0-9a-f]{{{MIN_PREFIX},31}}", run_id):
            return self._by_prefix(run_id)
        elif re.fullmatch(rf"[0-9a-f]{{1,{MIN_PREFIX - 1}}}", run_id):
            raise ConfigError(f"Run id prefix {run_id!r} is too short: a prefix needs {MIN_PREFIX}+ characters.",
                              "Copy more of the id from `kops leaderboard --json` or `kops ui`.")
        raise RunNotFound(run_id, self.uri)

    def _by_prefix(self, prefix: str) -> str:
        """The one run whose id starts with ``prefix``; RunNotFound for none, ConfigError listing them for several."""
        from mlflow.entities import ViewType

        what = f"Looking up run id prefix {prefix}"
        ids = [e.experiment_id for e in self._call(what, self.client.search_experiments, view_type=ViewType.ALL)]
        found, token = [], None
        while ids:
            page = self._call(what, self.client.search_runs, ids, "", run_view_type=ViewType.ALL, max_results=1000,
                              page_token=token)
            found += [r.info.run_id for r in page if r.info.run_id.startswith(prefix)]
            token = page.token
            if not token:
                break
        if len(found) == 1:
            return found[0]
        if not found:
            raise RunNotFound(prefix, self.uri)
        raise RunIdAmbiguous(f"Run id prefix {prefix} matches {len(found)} runs: {', '.join(sorted(found)[:5])}"
                             f"{' …' if len(found) > 5 else ''}.", "Give more characters of the id.")

    def _origin_artifacts(self, run_id: str) -> str | None:
        """Where a run pulled by `kops sync pull` keeps its artifacts (e.g. gs://…), or None for a local run."""
        return self.get_run(run_id).tags.get(TAG_ORIGIN_ARTIFACTS)

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Download an artifact of the run; for a pulled run, from the origin machine's artifact store."""
        dst.mkdir(parents=True, exist_ok=True)
        origin = self._origin_artifacts(run_id)
        what = f"Downloading {artifact_path} of run {run_id}"
        with translate(what, self.uri, run_id):
            if origin and not self.client.list_artifacts(run_id, artifact_path):
                return Path(_artifact_repo(origin).download_artifacts(artifact_path, str(dst)))
            return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Artifact paths of the run (for a pulled run, those in the origin machine's artifact store)."""
        what = f"Listing the artifacts of run {run_id}"
        local = [a.path for a in self._call(what, self.client.list_artifacts, run_id, path, run_id=run_id)]
        origin = None if local else self._origin_artifacts(run_id)
        if not origin:
            return local
        with translate(what, self.uri, run_id):
            return [a.path for a in _artifact_repo(origin).list_artifacts(path)]

    def search(self, filter_string: str = "", max_results: int = 1000) -> list[RunRecord]:
        """Runs of the experiment matching an MLflow filter string, newest first."""
        found = self._call("Searching runs", self.client.search_runs, [self.experiment_id],
                           filter_string=filter_string, max_results=max_results,
                           order_by=["attributes.start_time DESC"])
        return [RunRecord.of(run) for run in found]

    def log_json(self, run_id: str, obj: Any, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(json.dumps(obj, indent=2))
            parent = str(Path(artifact_file).parent)
            self._call(f"Uploading {artifact_file} to run {run_id}", self.client.log_artifact, run_id, str(path),
                       None if parent == "." else parent, run_id=run_id)

    # ---- what `kops sync` reads and writes (kaggleops.sync): listings, histories, bulk import ------------

    def experiment_ids(self, all_experiments: bool = False) -> list[str]:
        """This experiment's id, or every experiment's with ``all_experiments``."""
        if not all_experiments:
            return [self.experiment_id]
        return [e.experiment_id for e in self._call("Listing experiments", self.client.search_experiments)]

    def all_runs(self, experiment_ids: list[str], filter_string: str = "") -> list[RunRecord]:
        """Every run of the experiments (paged): info, params, tags and latest metrics, no metric history."""
        runs: list[RunRecord] = []
        token = None
        while experiment_ids:
            page = self._call("Listing runs", self.client.search_runs, experiment_ids, filter_string=filter_string,
                              max_results=SEARCH_PAGE, page_token=token)
            runs.extend(RunRecord.of(run) for run in page)
            token = page.token
            if not token:
                break
        return runs

    def experiment_name(self, experiment_id: str) -> str:
        return str(self._call(f"Reading experiment {experiment_id}", self.client.get_experiment, experiment_id).name)

    def experiment_for(self, name: str) -> str:
        """The id of experiment ``name`` (created with the configured artifact location when missing)."""
        return self.experiment_id if name == self.cfg.experiment_name else self._get_or_create(name)

    def exists(self, run_id: str) -> bool:
        try:
            self.get_run(run_id)
        except RunNotFound:
            return False
        return True

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, int, float]]:
        """Every stored point of one metric: (step, timestamp, value)."""
        history = self._call(f"Reading metric {key} of run {run_id}", self.client.get_metric_history, run_id, key,
                             run_id=run_id)
        return [(m.step, m.timestamp, m.value) for m in history]

    def create_imported_run(self, experiment_id: str, name: str | None, start_time: int | None,
                            tags: dict[str, str]) -> str:
        """A run with the given start time and tags (what `kops sync pull` creates for another machine's run)."""
        run = self._call(f"Creating run {name}", self.client.create_run, experiment_id, start_time=start_time,
                         tags=tags, run_name=name)
        return str(run.info.run_id)

    def log_bulk(self, run_id: str, points: Iterable[tuple[str, int, int, float]] = (),
                 params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> int:
        """Metric points (key, step, timestamp, value), params and tags in as few ``log_batch`` calls as MLflow
        allows (1,000 entities a call, of them at most 100 params and 100 tags). ``on_batch(n)`` after each call
        with the number of metric points it stored. Returns the number of metric points sent."""
        from mlflow.entities import Metric, Param, RunTag

        metrics = [Metric(k, v, ts, step) for k, step, ts, v in points]
        param_items = [Param(k, str(v)) for k, v in (params or {}).items()]
        tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        total = len(metrics)
        while metrics or param_items or tag_items:
            p, param_items = param_items[:BATCH_PARAMS], param_items[BATCH_PARAMS:]
            t, tag_items = tag_items[:BATCH_TAGS], tag_items[BATCH_TAGS:]
            room = BATCH_ENTITIES - len(p) - len(t)
            m, metrics = metrics[:room], metrics[room:]
            self._call(f"Importing metrics, params and tags into run {run_id}", self.client.log_batch, run_id,
                       metrics=m, params=p, tags=t, run_id=run_id)
            if on_batch is not None:
                on_batch(len(m))
        return total

    def set_status(self, run_id: str, status: str, end_time: int | None) -> None:
        """Set a run's status (and end time for a finished/failed/killed one), e.g. to mirror an imported run."""
        what = f"Setting the status of run {run_id}"
        if status in ("FINISHED", "FAILED", "KILLED"):
            self._call(what, self.client.set_terminated, run_id, status, end_time, run_id=run_id)
        else:
            self._call(what, self.client.update_run, run_id, status=status, run_id=run_id)


def _is_run_id(text: str) -> bool:
    try:
        RunRef.parse(text)
    except ValueError:
        return False
    return True


def _artifact_repo(uri: str) -> Any:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(uri)


def fold_runs(tracker: Tracker, parent_run_id: str, kind: str | None = None) -> list[RunRecord]:
    """The child runs of ``parent_run_id`` (``mlflow.parentRunId``), of ``kind`` when given, in fold order (runs
    without a ``kops.fold`` tag last): THE one "parent → folds" lookup (k-fold parents, second-stage parents)."""
    children = runs_tagged(tracker, {TAG_PARENT: parent_run_id})
    if kind is not None:
        children = [r for r in children if r.tags.get(TAG_KIND) == kind]

    def fold(run: RunRecord) -> int:
        raw = run.tags.get(TAG_FOLD, "")
        return int(raw) if raw.lstrip("-").isdigit() else 1 << 30

    return sorted(children, key=fold)


def runs_tagged(tracker: Tracker, tags: dict[str, str]) -> list[RunRecord]:
    """Runs of the experiment whose tags equal all of ``tags``."""
    clauses: Iterable[str] = (f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return tracker.search(" and ".join(clauses))
