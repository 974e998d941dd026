"""kops.yaml: one validated config per working folder, overridable by environment variables.

Lookup order for every setting: command-line argument > environment variable > kops.yaml > default.
kops.yaml is found in the current folder or the nearest parent folder that has one (``--config`` names another).

Environment variables kops reads (the Kaggle client and MLflow read their own as well):

- ``MLFLOW_TRACKING_URI`` (+ ``MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN``): the tracking store, over ``tracking_uri``;
- ``KAGGLE_USERNAME`` / ``KAGGLE_KEY`` / ``KAGGLE_CONFIG_DIR``: credentials; the username is the default ``owner``;
- ``KOPS_KAGGLE_ENDPOINT``: aim the official kaggle client at a loopback emulator (e.g. ``http://127.0.0.1:8765``);
- ``KOPS_KAGGLE_TIMEOUT``: seconds a Kaggle API read may take;
- ``KOPS_BUCKET``: the sync bucket, over ``storage.bucket``;
- ``KOPS_SWEEP_STORAGE``: the Optuna storage of `kops sweep`, over ``sweep.storage`` (``${VAR}`` in either is
  replaced by that environment variable, so a password stays out of kops.yaml);
- ``KOPS_CACHE_DIR``: where downloads and the Kaggle-image environment of ``kops kernel run-local`` are cached;
- ``KOPS_DEBUG=1``: an unexpected error shows its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kaggleops.errors import ConfigError
from kaggleops.tasks import DEFAULT_COMPETITION

CONFIG_FILE = "kops.yaml"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_KAGGLE_ENDPOINT = "KOPS_KAGGLE_ENDPOINT"
ENV_KAGGLE_USERNAME = "KAGGLE_USERNAME"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
GITIGNORED = ("mlflow.db", f"{DEFAULT_ARTIFACTS}/", ".kops/")  # what kops writes into a project folder


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(BaseModel):
    """The ``train:`` section: kops' own keys (folds) here, every other key belongs to the task.

    The task validates its keys (``task.settings(mapping)``, see :mod:`kaggleops.task`); an unknown one is
    reported by the task with the key's name.
    """

    model_config = ConfigDict(extra="allow")

    n_folds: int = Field(5, ge=2)
    folds: list[int] | None = Field(None, description="folds to train; None = all")
    seed: int = 42

    def task_settings(self) -> dict[str, Any]:
        """The task's keys: everything but n_folds, folds and seed."""
        return dict(self.model_extra or {})


class DatasetConfig(_Strict):
    private: bool = True
    license: str = "CC0-1.0"


class PublishConfig(_Strict):
    """Where `kops publish` (and push-kernel, for runs not yet published) puts a run's weights."""

    to: Literal["dataset", "model"] = "dataset"


class KernelConfig(_Strict):
    slug: str | None = None
    wheels: str | None = Field(None, description="folder of wheels the task needs that the Kaggle image lacks")
    machine_shape: str = "NvidiaTeslaT4"
    enable_gpu: bool = True
    private: bool = True
    submission: Literal["file", "evaluation-api"] | None = Field(
        None, description="how the competition takes predictions (default: found in its data: kaggle_evaluation/)")


class StorageConfig(_Strict):
    """Bucket mode (kops sync): ``bucket`` is gs://BUCKET/PREFIX or a local folder; 0 minutes = no background sync."""

    bucket: str | None = None
    sync_minutes: float = Field(0, ge=0)


class SweepConfig(_Strict):
    """The ``sweep:`` section (`kops sweep`): a search over the task's ``train:`` settings with Optuna.

    ``params``: name -> ``[choice, ...]`` or ``{low, high, log?, step?}`` (ints when low and high are ints);
    validated against the task's settings by the sweep (stages/sweep_space.py). ``storage``: an SQLAlchemy URL
    (default: ``.kops/sweep.db`` beside kops.yaml); a worker whose heartbeat is older than ``grace_s`` has its
    trial put back for another worker (at most ``max_retry`` times), resumed from its run's checkpoint.
    """

    study: str | None = Field(None, description="default: <experiment>-sweep")
    params: dict[str, Any] = Field(default_factory=dict)
    n_trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(5, ge=0, description="trials before the sampler models and the pruner prunes")
    storage: str | None = None
    heartbeat_s: float = Field(60, gt=0)
    grace_s: float | None = Field(None, gt=0, description="default: 2 x heartbeat_s")
    max_retry: int = Field(3, ge=0)


class KopsConfig(_Strict):
    """The validated content of kops.yaml."""

    competition: str
    task: str | None = Field(None, description="module:Class or path/file.py:Class; default: by competition")
    owner: str | None = None
    experiment: str | None = None
    tracking_uri: str = DEFAULT_TRACKING_URI
    artifact_location: str | None = Field(DEFAULT_ARTIFACTS, description="null = the default (see below)")
    data_dir: str | None = None
    kaggle_endpoint: str | None = None
    train: TrainConfig = TrainConfig()
    rerank: dict[str, Any] = Field(default_factory=dict, description="second-stage settings, validated by the task")
    dataset: DatasetConfig = DatasetConfig()
    publish: PublishConfig = PublishConfig()
    kernel: KernelConfig = KernelConfig()
    storage: StorageConfig = StorageConfig()
    sweep: SweepConfig = SweepConfig()
    root: Path = Field(default_factory=Path.cwd, exclude=True)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.competition

    @property
    def kaggle_owner(self) -> str:
        owner = self.owner or os.environ.get(ENV_KAGGLE_USERNAME)
        if not owner:
            raise ConfigError(
                "No Kaggle owner configured.",
                f"Set `owner:` in {CONFIG_FILE} or the {ENV_KAGGLE_USERNAME} environment variable.",
            )
        return owner

    @property
    def resolved_tracking_uri(self) -> str:
        """The tracking URI with env override applied and relative SQLite paths anchored at the config folder."""
        uri = os.environ.get(ENV_TRACKING_URI) or self.tracking_uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            uri = prefix + str((self.root / uri[len(prefix):]).resolve())
        return uri

    @property
    def resolved_artifact_location(self) -> str | None:
        """Where a new experiment's artifacts go: a URI, or None for the tracking server's own root.

        The default (also ``null``, which a config copied for a ``--git`` clone carries in server mode) is the
        server's own root with an http(s) tracking URI (e.g. its ``--artifacts-destination gs://…``), else
        ``mlartifacts`` beside kops.yaml.
        """
        location = self.artifact_location or DEFAULT_ARTIFACTS
        if location == DEFAULT_ARTIFACTS and self.resolved_tracking_uri.startswith("http"):
            return None
        if "://" in location:
            return location
        return (self.root / location).resolve().as_uri()

    @property
    def resolved_kaggle_endpoint(self) -> str | None:
        return os.environ.get(ENV_KAGGLE_ENDPOINT) or self.kaggle_endpoint

    def resolved_data_dir(self) -> Path | None:
        return None if self.data_dir is None else (self.root / self.data_dir).resolve()


def _fields(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (a pydantic error location) of kops.yaml; empty where free-form."""
    model: Any = KopsConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        model = getattr(field, "annotation", None) if field is not None else None
        if model is None:
            return []
    return [k for k in getattr(model, "model_fields", {}) if k != "root"]


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _describe(err: ValidationError, path: Path) -> str:
    """Every problem of the file in one line; an unknown key close to a known one says "did you mean", and a
    required key that is missing because of such a typo is reported as the typo alone."""
    import difflib

    errors = err.errors()
    problems: list[str] = []
    typo_for: set[str] = set()
    for e in errors:
        if e["type"] != "extra_forbidden":
            continue
        loc = tuple(e["loc"])
        close = difflib.get_close_matches(str(loc[-1]), _fields(loc), n=1, cutoff=0.7)
        if close:
            typo_for.add(_dotted((*loc[:-1], close[0])))
            problems.append(f"unknown key `{_dotted(loc)}` (did you mean `{close[0]}`?)")
        else:
            problems.append(f"unknown key `{_dotted(loc)}`")
    for e in errors:
        where = _dotted(tuple(e["loc"]))
        if e["type"] == "missing" and where not in typo_for:
            problems.append(f"required key `{where}` is missing")
        elif e["type"] not in ("missing", "extra_forbidden"):
            problems.append(f"`{where}`: {e['msg']}")
    what = problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems)
    return f"{path}: {what}. Fix it (see `kops init` for a commented example)."


def find_config(start: Path | None = None) -> Path | None:
    """The nearest kops.yaml in ``start`` (default: the current folder) or a parent folder, as git finds .git."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate / CONFIG_FILE
    return None


def load_config(path: Path | str | None = None) -> KopsConfig:
    """Read and validate kops.yaml (default: the nearest one in this folder or a parent folder).

    Example:
        >>> cfg = load_config()            # doctest: +SKIP
        >>> cfg.resolved_tracking_uri      # doctest: +SKIP
        'sqlite:////home/alice/tse/mlflow.db'
    """
    import yaml

    if not path:
        found = find_config()
        if found is None:
            raise ConfigError(f"No {CONFIG_FILE} in {Path.cwd()} or its parent folders.", "Create one with: kops init")
        path = found
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No {CONFIG_FILE} at {path}.", "Create one with: kops init")
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.",
                          "Fix that line of the file.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values.", "See `kops init`.")
    try:
        return KopsConfig(**raw, root=path.parent.resolve())
    except ValidationError as e:
        raise ConfigError(_describe(e, path)) from None


TEMPLATE = """\
# kops.yaml: settings for this competition folder. Environment variables override:
#   MLFLOW_TRACKING_URI, KOPS_KAGGLE_ENDPOINT, KAGGLE_USERNAME / KAGGLE_KEY.

# Kaggle competition slug. A built-in task serves it, or name your own (see README):
#   task: tasks/my_task.py:MyTask   or   task: my_package.module:MyTask
competition: {competition}
{task_line}

# Kaggle user (or organisation) that owns the datasets and kernels kops creates.
# Default: the KAGGLE_USERNAME environment variable.
{owner_line}

# MLflow experiment name (default: the competition slug).
experiment: {experiment}

# Where runs go. Default: a SQLite file beside this config; artifacts in ./mlartifacts.
# A team server works too: tracking_uri: https://mlflow.example.com
tracking_uri: {tracking_uri}
artifact_location: mlartifacts

# Folder holding the competition's train.csv / test.csv. Default (null): the attached competition inside a Kaggle
# notebook, else the files `kops data` downloads (cached). The bundled sample only when asked: kops train --sample.
data_dir: {data_dir}

# Base URL of a Kaggle API emulator (tests, dry runs). null = the real kaggle.com.
kaggle_endpoint: null

train:                 # n_folds, folds and seed are kops'; every other key is the task's own (see README)
  n_folds: 5
  folds: {folds}          # null = all folds
  seed: 42
{train_lines}

# kops sweep: an Optuna search over the train: keys above, shared by every machine that joins the study.
# sweep:
#   n_trials: 40
#   params:                  # a list = choices; low/high = a range (ints when both are ints; log: true for rates)
#     lr: {{low: 0.0001, high: 0.01, log: true}}
#     batch_size: [32, 64]
#   pruner: median           # median | hyperband | none: stop a bad trial after its first fold
#   storage: null            # default .kops/sweep.db; a team: postgresql://me:${{PGPASSWORD}}@db.example.com/optuna
#                            # (or `tracking`: the database server of a postgresql:// tracking_uri, database optuna)

dataset:
  private: true
  license: CC0-1.0

kernel:
  slug: null             # default: <experiment>-inference
  machine_shape: NvidiaTeslaT4   # the accelerator when enable_gpu is true (T4 x2; also NvidiaL4, TpuV5E8)
  enable_gpu: {enable_gpu}{gpu_note}
  private: true
"""


def render_template(
    competition: str = DEFAULT_COMPETITION,
    owner: str | None = None,
    experiment: str | None = None,
    tracking_uri: str = DEFAULT_TRACKING_URI,
    data_dir: str | None = None,
    model: str | None = None,
    folds: list[int] | None = None,
    epochs: int | None = None,
    task: str | None = None,
    train: dict[str, Any] | None = None,
    gpu: bool = True,
) -> str:
    """The commented kops.yaml that `kops init` writes (``train``: the task's own keys, with model/epochs)."""
    import json

    keys = {**({"model": model} if model is not None else {}), **({"epochs": epochs} if epochs is not None else {}),
            **(train or {})}
    lines = [f"  {k}: {json.dumps(v)}" for k, v in keys.items()] or ["  # the task's own settings, e.g. epochs: 3"]
    return TEMPLATE.format(
        competition=competition,
        task_line=f"task: {task}" if task else "# task: null",
        owner_line=f"owner: {owner}" if owner else "# owner: your-kaggle-username",
        experiment=experiment or competition,
        tracking_uri=tracking_uri,
        data_dir=data_dir or "null",
        folds="null" if folds is None else "[" + ", ".join(map(str, folds)) + "]",
        train_lines="\n".join(lines),
        enable_gpu="true" if gpu else "false",
        gpu_note="" if gpu else "      # true once your task's model uses a GPU (a CPU kernel spends no GPU quota)",
    )
