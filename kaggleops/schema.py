"""The loop's schema: every tag, kind value, artifact and file name kops writes, and its two JSON records.

Standard library only: the offline kernel runtime imports it too. Names are defined here once; the records
``kops-manifest.json`` (a published dataset version) and ``kops-kernel.json`` (a kernel's plan) are typed,
versioned and validated in one place (:meth:`Manifest.from_dict`, :meth:`KernelPlan.from_dict`). Files
written before the records had a ``schema_version`` read as version 1. Keys this kops does not know (written
by a newer one) are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from kaggleops.errors import SchemaError

# ---- MLflow tags ------------------------------------------------------------------------------------------
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_BRANCH = "mlflow.source.git.branch"
TAG_GIT_REPO = "mlflow.source.git.repoURL"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
INPUT_TAG_CONTEXT = "mlflow.data.context"  # a dataset input's role on a run (training, evaluation)
TAG_SHARED_VIEW = "mlflow.sharedViewState."  # prefix: the MLflow UI's saved views

#: A kernel session's time limit in seconds: the reference code competition's 3 h (Kaggle ends any session at 12 h).
#: `kops kernel run-local` stops a kernel at it; `kops push-kernel` refuses a blend estimated to need more.
SESSION_LIMIT_S = 3 * 3600
TAG_VERSION = "kops.version"
TAG_LIB_PREFIX = "kops.lib."  # + library name: its version on the machine that made the run
TAG_DIRTY = "kops.git.dirty"
TAG_ENV = "kops.env"
TAG_TASK = "kops.task"
TASK_ENTRY_POINTS = "kops.tasks"  # the entry-point group installed packages register tasks under
TAG_METRIC = "kops.metric"  # the task metric's name: runs log cv_<metric> / best_val_<metric> / val_<metric>
TAG_METRIC_HIGHER = "kops.metric.higher_is_better"  # "true" | "false": which way leaderboards sort
TAG_KIND = "kops.kind"  # one of Kind
TAG_FOLD = "kops.fold"
TAG_STAGE = "kops.stage"
TAG_TRAIN_KEY = "kops.train.key"
TAG_RESUMES = "kops.resumes"
TAG_GPU = "kops.gpu"
TAG_WORLD_SIZE = "kops.world_size"
TAG_DATASET = "kops.dataset"
TAG_DATASET_VERSION = "kops.dataset.version"
# MLflow's own tag names (mlflow.utils.mlflow_tags), written as MLflow's fluent API would
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
TAG_SOURCE_NAME, TAG_SOURCE_TYPE, TAG_USER = "mlflow.source.name", "mlflow.source.type", "mlflow.user"
# on the MLflow LoggedModel of a published weight set: where it lives on Kaggle (dataset or Kaggle Model version)
TAG_PUBLISHED_REF = "kops.published.ref"  # owner/slug (dataset) or owner/model/framework/variation (Kaggle Model)
TAG_PUBLISHED_VERSION = "kops.published.version"
TAG_PUBLISHED_KIND = "kops.published.kind"  # dataset | model
TAG_PUBLISHED_URL = "kops.published.url"
TAG_KERNEL = "kops.kernel"
TAG_KERNEL_VERSION = "kops.kernel.version"
TAG_KERNEL_MACHINE_SHAPE = "kops.kernel.machine_shape"  # the accelerator the kernel was pushed with
TAG_KERNEL_DOCKER_IMAGE = "kops.kernel.docker_image"  # original | latest | default
TAG_MODEL = "kops.model"  # owner/model/framework/variation on Kaggle Models
TAG_MODEL_VERSION = "kops.model.version"
TAG_COMPETITION = "kops.competition"
TAG_SOURCE_RUNS = "kops.source_runs"
TAG_DATASETS = "kops.datasets"
TAG_RERANK_BASE_RUNS = "kops.rerank.base_runs"
TAG_RERANK_FROM = "kops.rerank.from"
TAG_RERANK_OPTIONS = "kops.rerank.options"  # JSON: the second stage's own choices (SecondStageTuning.options)
TAG_ENSEMBLE_MEMBERS = "kops.ensemble.members"  # JSON list of the member run ids (kops ensemble)
TAG_ENSEMBLE_WEIGHTS = "kops.ensemble.weights"  # JSON {member run id: weight}, weights summing to 1
TAG_ENSEMBLE_METHOD = "kops.ensemble.method"  # caruana | rank | nnls | hill
TAG_TASK_CODE = "kops.task.code"  # on a training run: the sha256 of the project task's code it ran (push-kernel ships)
TAG_ENSEMBLE_OF = "kops.ensemble.of"  # on a member: comma-separated ensemble run ids it belongs to
TAG_SWEEP_STUDY = "kops.sweep.study"  # the Optuna study name (on the study run and on each trial run)
TAG_SWEEP_TRIAL = "kops.sweep.trial"  # the trial's number in its study
TAG_SWEEP_STATE = "kops.sweep.state"  # the trial's Optuna state: RUNNING | COMPLETE | PRUNED | FAIL
TAG_SUBMISSION_KEY = "kops.submission.key"
TAG_SUBMISSION_REF = "kops.submission.ref"
TAG_SUBMISSION_STATUS = "kops.submission.status"
TAG_SUBMISSION_ERROR = "kops.submission.error"
TAG_SUBMISSION_ORIGIN = "kops.submission.origin"  # one of Origin
TAG_SUBMISSION_FILE = "kops.submission.file"
TAG_SUBMISSION_SHA256 = "kops.submission.sha256"
TAG_SUBMISSION_DESCRIPTION = "kops.submission.description"
TAG_SUBMISSION_DATE = "kops.submission.date"
TAG_SUBMISSION_ERROR_TYPE = "kops.submission.error_type"  # an evaluation-API gateway's ErrorType name
TAG_SUBMISSION_KIND = "kops.submission.kind"  # one of SubmissionKind
TAG_ORIGIN_RUN = "kops.origin_run_id"
TAG_ORIGIN_ARTIFACTS = "kops.origin_artifact_uri"
TAG_ORIGIN_MACHINE = "kops.origin_machine"
TAG_ORIGIN_MD5 = "kops.origin_md5"
TAG_ORIGIN_CHUNKS = "kops.origin_chunks"  # "<count>:<last chunk name>" of a pulled run's imported chunks


class Kind:
    """Values of the ``kops.kind`` tag: what a run is."""

    FOLD = "fold"
    KFOLD = "kfold"
    SUBMISSION = "submission"
    RERANK = "rerank"
    RERANK_FOLD = "rerank-fold"
    ENSEMBLE = "ensemble"  # kops ensemble: weights over member runs chosen on their OOF
    SWEEP = "sweep"  # kops sweep: one Optuna study; its trials are ordinary training runs beneath it
    LEADERBOARD = "leaderboard"  # kops leaderboard --plot: one run per competition holding the CV-vs-LB picture
    ALL = frozenset({FOLD, KFOLD, SUBMISSION, RERANK, RERANK_FOLD, ENSEMBLE, SWEEP, LEADERBOARD})


class Origin:
    """Values of ``kops.submission.origin``: who made the submission a submission run records."""

    KOPS = "kops"  # made by kops submit
    OUTSIDE = "outside"  # made elsewhere, adopted by kops scores --all
    UNRECORDED = "unrecorded"  # made elsewhere, only reported (no run)


class SubmissionStatus:
    """Values of ``kops.submission.status`` (kops' own, then Kaggle's)."""

    SUBMITTING = "SUBMITTING"
    FAILED = "FAILED"
    PENDING = "PENDING"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"


class SubmissionKind:
    """How a competition takes a kernel's predictions: a file it writes, or its evaluation API (a gateway)."""

    FILE = "file"
    EVALUATION_API = "evaluation-api"
    ALL = (FILE, EVALUATION_API)


EVALUATION_PACKAGE = "kaggle_evaluation"  # the evaluation API a competition ships in its data
INFERENCE_SERVER_SUFFIX = "_inference_server.py"  # kaggle_evaluation/<comp>_inference_server.py
EVALUATION_SUBMISSION_FILE = "submission.parquet"  # what the gateway writes
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"  # set by Kaggle on the hidden rerun of a submitted notebook
GATEWAY_ERROR_TYPES = ("UNSPECIFIED", "SERVER_NEVER_STARTED", "SERVER_CONNECTION_FAILED", "SERVER_RAISED_EXCEPTION",
                       "SERVER_MISSING_ENDPOINT", "GATEWAY_RAISED_EXCEPTION", "INVALID_SUBMISSION",
                       "GRPC_DEADLINE_EXCEEDED")


def inference_server_module(names: Iterable[str]) -> str | None:
    """The competition's inference-server module (``kaggle_evaluation.<comp>_inference_server``) among the relative
    file names of its data, or None (a file competition).

    Example:
        >>> inference_server_module(["train.csv", "kaggle_evaluation/core/relay.py",
        ...                          "kaggle_evaluation/demo_inference_server.py"])
        'kaggle_evaluation.demo_inference_server'
    """
    found = sorted(n for n in (str(x).replace("\\", "/") for x in names) if n.startswith(EVALUATION_PACKAGE + "/")
                   and n.count("/") == 1 and n.endswith(INFERENCE_SERVER_SUFFIX))
    return found[0][:-3].replace("/", ".") if found else None


# ---- artifact paths (inside a run) and file names ----------------------------------------------------------
ARTIFACT_MODEL = "model"
ARTIFACT_SUBMISSION = "submission"
ARTIFACT_RERANK = "rerank"
ARTIFACT_LEADERBOARD = "leaderboard"  # on the leaderboard run: cv_vs_lb.png / .html / .json
ARTIFACT_GIT_DIFF = "git/uncommitted.diff"
ARTIFACT_TASK_CODE = "task-code"  # on a training run (k-fold parent or single run): the task code it ran, staged
MANIFEST = "kops-manifest.json"  # in every published dataset version
MARKER_HASH_CHARS = 16  # the content hash characters in a runtime/code dataset marker's name
CODE_MARKER_PREFIX = "kops-code-"  # kops-code-<hash>.json: a task code version in the code dataset
PLAN_FILE = "kops-kernel.json"  # in a rendered kernel folder and the kernel's output
TIMING_FILE = "kops-timing.json"  # in the kernel's output
SUBMISSION_FILE = "submission.csv"
SAMPLE_SUBMISSION_FILE = "sample_submission.csv"
TEST_FILE = "test.csv"
KERNEL_FILE = "kernel.py"
KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"

Rec = TypeVar("Rec", bound="_Record")
MANIFEST_VERSION = 1
PLAN_VERSION = 1  # task, columns, metric and code are optional keys: a plan without them reads with defaults


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in data:
        raise SchemaError(f"{what} has no {key!r}.")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SchemaError(f"{what}: {key!r} is {value!r}, not a {getattr(kind, '__name__', kind)}.")
    return value


def _version(data: dict[str, Any], supported: int, what: str) -> int:
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise SchemaError(f"{what}: schema_version {version!r} is not a positive integer.")
    if version > supported:
        raise SchemaError(f"{what} has schema_version {version}; this kops reads up to {supported}.",
                          "Upgrade kops: pip install -U kaggleops")
    return version


def _extra(data: dict[str, Any], cls: type) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k not in known}


def _loads(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise SchemaError(f"{what} cannot be read as JSON ({e}).") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{what} is not a JSON object.")
    return data


def _read(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SchemaError(f"{path} cannot be read ({e}).") from None
    return _loads(text, str(path))


class _Record:
    """JSON text and files for a record class with ``from_dict(data, what)`` / ``to_dict()`` and a ``FILE`` name."""

    FILE: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[Rec], data: dict[str, Any], what: str) -> Rec:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls: type[Rec], text: str, what: str | None = None) -> Rec:
        return cls.from_dict(_loads(text, what or cls.FILE), what or cls.FILE)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def read(cls: type[Rec], path: Path) -> Rec:
        return cls.from_dict(_read(path), str(path))

    def write(self, path: Path) -> None:
        Path(path).write_text(self.to_json())


@dataclass(frozen=True)
class FileEntry:
    """One file of a published model folder: its sha256 and size."""

    sha256: str
    bytes: int = 0


@dataclass
class Manifest(_Record):
    """``kops-manifest.json``: the run a dataset version carries, and every file's sha256.

    ``files`` maps paths as in the logged model folder (``vocab/merges.txt``) to their entries;
    ``archives`` maps each ``<folder>.zip`` of the dataset to the sub-folder it holds.
    """

    run_id: str
    files: dict[str, FileEntry] = field(default_factory=dict)
    archives: dict[str, str] = field(default_factory=dict)
    experiment: str = ""
    commit: str | None = None
    repo_url: str | None = None
    created: str = ""
    kops_version: str = ""
    schema_version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    FILE: ClassVar[str] = MANIFEST

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = MANIFEST) -> Manifest:
        version = _version(data, MANIFEST_VERSION, what)
        files = data.get("files") or {}
        if not isinstance(files, dict):
            raise SchemaError(f"{what}: 'files' is not an object.")
        entries = {}
        for rel, entry in files.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise SchemaError(f"{what}: file {rel!r} has no sha256.")
            entries[rel] = FileEntry(entry["sha256"], int(entry.get("bytes") or 0))
        archives = data.get("archives") or {}
        if not isinstance(archives, dict):
            raise SchemaError(f"{what}: 'archives' is not an object.")
        return cls(run_id=_need(data, "run_id", str, what), files=entries, archives=dict(archives),
                   experiment=data.get("experiment") or "", commit=data.get("commit"), repo_url=data.get("repo_url"),
                   created=data.get("created") or "", kops_version=data.get("kops_version") or "",
                   schema_version=version, extra=_extra(data, cls))

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "kops_version": self.kops_version, "run_id": self.run_id,
                "experiment": self.experiment, "commit": self.commit, "repo_url": self.repo_url,
                "created": self.created,
                "files": {rel: {"sha256": e.sha256, "bytes": e.bytes} for rel, e in self.files.items()},
                "archives": self.archives, **self.extra}


@dataclass(frozen=True)
class PlanModel:
    """A model the kernel loads: its run, the dataset version carrying it, its ensemble weight.

    ``kind="model"``: a Kaggle Model instance version instead (``dataset`` then holds
    ``owner/model/framework/variation``), attached as a model source.
    """

    run_id: str
    dataset: str
    dataset_version: int
    weight: float = 1.0
    kind: str = "dataset"
    code: str = ""  # a blend of several task code versions: the content sha256 of the code this model ran

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str) -> PlanModel:
        if not isinstance(data, dict):
            raise SchemaError(f"{what}: a model entry is {data!r}, not an object.")
        return cls(_need(data, "run_id", str, what), _need(data, "dataset", str, what),
                   int(_need(data, "dataset_version", (int, str), what)), float(data.get("weight", 1.0)),
                   str(data.get("kind") or "dataset"), str(data.get("code") or ""))

    def to_dict(self) -> dict[str, Any]:
        out = {"run_id": self.run_id, "dataset": self.dataset, "dataset_version": self.dataset_version,
               "weight": self.weight}
        out = out if self.kind == "dataset" else {**out, "kind": self.kind}
        return {**out, "code": self.code} if self.code else out

    def label(self) -> str:
        what = "Kaggle Model" if self.kind == "model" else "dataset"
        return f"run {self.run_id} ({what} {self.dataset} v{self.dataset_version})"


@dataclass(frozen=True)
class PlanReranker:
    """The second stage a kernel attaches: its run (parent or fold), each fold's dataset, and the task's own
    ``options`` chosen on the OOF (opaque to kops; the kernel hands them to the task as ``ctx.options``)."""

    run_id: str
    models: list[PlanModel]
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str) -> PlanReranker:
        if not isinstance(data, dict):
            raise SchemaError(f"{what}: 'reranker' is not an object.")
        models = [PlanModel.from_dict(m, what) for m in _need(data, "models", list, what)]
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise SchemaError(f"{what}: the reranker's 'options' is {options!r}, not an object.")
        return cls(_need(data, "run_id", str, what), models, options)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "options": self.options,
                "models": [{"run_id": m.run_id, "dataset": m.dataset, "dataset_version": m.dataset_version}
                           for m in self.models]}


@dataclass
class KernelPlan(_Record):
    """``kops-kernel.json``: what an inference kernel runs.

    ``task``: ``spec`` (the ``module:Class`` the kernel imports), ``name``, ``requires`` (packages imported
    first) and ``options`` (the task's inference options, handed to ``predict`` as ``ctx.options``);
    ``id_column`` + ``columns``: the submission's header (``target_column`` is the first column); ``metric``:
    ``name`` and ``higher_is_better``; ``code``: the task's code dataset (None for a built-in task).
    A plan without ``task`` (written before kops had task specs) runs the competition's built-in task.
    """

    competition: str
    id_column: str
    target_column: str
    models: list[PlanModel]
    reranker: PlanReranker | None = None
    runtime: dict[str, Any] = field(default_factory=dict)  # dataset, version, content_sha256, wheel
    task: dict[str, Any] = field(default_factory=dict)  # spec, name, requires, options
    columns: list[str] = field(default_factory=list)
    metric: dict[str, Any] = field(default_factory=dict)  # name, higher_is_better
    code: dict[str, Any] | None = None  # dataset, version, content_sha256, wheel, wheels (+ versions: a mixed blend)
    submission: dict[str, Any] = field(default_factory=dict)  # kind (SubmissionKind), server_module
    kops_version: str = ""
    schema_version: int = PLAN_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    FILE: ClassVar[str] = PLAN_FILE

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = PLAN_FILE) -> KernelPlan:
        if not isinstance(data, dict):
            raise SchemaError(f"{what} is not a JSON object.")
        version = _version(data, PLAN_VERSION, what)
        models = [PlanModel.from_dict(m, what) for m in _need(data, "models", list, what)]
        reranker = PlanReranker.from_dict(data["reranker"], what) if data.get("reranker") else None
        target = _need(data, "target_column", str, what)
        columns = data.get("columns") or [target]
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise SchemaError(f"{what}: 'columns' is {columns!r}, not a list of column names.")
        task = data.get("task") or {}
        if not isinstance(task, dict):
            raise SchemaError(f"{what}: 'task' is not an object.")
        return cls(
            competition=_need(data, "competition", str, what), id_column=_need(data, "id_column", str, what),
            target_column=target, models=models, reranker=reranker, runtime=dict(data.get("runtime") or {}),
            task=dict(task), columns=list(columns), metric=dict(data.get("metric") or {}),
            code=dict(data["code"]) if data.get("code") else None,
            submission=dict(data.get("submission") or {}),
            kops_version=data.get("kops_version") or "", schema_version=version, extra=_extra(data, cls))

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "kops_version": self.kops_version,
                "competition": self.competition, "task": self.task, "metric": self.metric,
                "id_column": self.id_column, "target_column": self.target_column, "columns": self.columns,
                "models": [m.to_dict() for m in self.models],
                "reranker": self.reranker.to_dict() if self.reranker else None, "runtime": self.runtime,
                "code": self.code, **({"submission": self.submission} if self.submission else {}), **self.extra}

    @property
    def code_versions(self) -> list[dict[str, Any]]:
        """A blend of runs that trained different task code: each version's marker (content_sha256, wheel,
        wheels, module); each model's ``code`` names one. Empty: one version (``code`` or the built-in task)."""
        return list((self.code or {}).get("versions") or [])

    @property
    def reranker_models(self) -> list[PlanModel]:
        return self.reranker.models if self.reranker else []

    @property
    def all_models(self) -> list[PlanModel]:
        """Every model the plan attaches: the ensemble's, then the reranker's folds."""
        return [*self.models, *self.reranker_models]

    @property
    def source_runs(self) -> list[str]:
        """The model runs, then the ensemble run the models blend (``kops ensemble``), which gets the scores too."""
        ensemble = self.extra.get("ensemble")
        run = ensemble.get("run_id") if isinstance(ensemble, dict) else None
        return [m.run_id for m in self.models] + ([run] if isinstance(run, str) and run else [])

    @property
    def dataset_versions(self) -> list[str]:
        return [f"{m.dataset}/{m.dataset_version}" for m in self.models]

    @property
    def task_spec(self) -> str:
        """The ``module:Class`` the kernel imports ('' in a plan written before task specs: the built-in task)."""
        return str(self.task.get("spec") or "")

    @property
    def submission_kind(self) -> str:
        """``file`` (a plan written before evaluation-API support, too) or ``evaluation-api``."""
        return str(self.submission.get("kind") or SubmissionKind.FILE)

    @property
    def task_options(self) -> dict[str, Any]:
        return dict(self.task.get("options") or {})
