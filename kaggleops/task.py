"""The public task interface: the one module a competition task imports from kops.

A *task* teaches kops one competition: how to read its files, split folds, train one fold, predict the test
rows with an ensemble of trained folds, and score predictions. kops does everything around it (MLflow runs,
resume, publishing model folders as Kaggle datasets, the offline kernel, submissions, leaderboards). Task
code receives paths, tables and a ``log`` callback; it never imports MLflow or Kaggle code.

Tables are pandas DataFrames. Prediction tables (OOF and test) hold the id column plus the prediction
columns of the submission format. Importing this module imports no pandas/torch.

A minimal task (selected in kops.yaml with ``task: tasks/my_task.py:MyTask``)::

    import pandas as pd
    from kaggleops.task import FoldResult, Metric, Submission, TaskBase, check_columns, check_settings

    class MyTask(TaskBase):
        name = "my-competition"
        submission = Submission(id_column="id", columns=("target",))
        metric = Metric("rmse", higher_is_better=False,
                        fn=lambda truth, pred: float(((truth["target"] - pred["target"]) ** 2).mean() ** 0.5))

        def load_train(self, path):
            return check_columns(pd.read_csv(path), ("id", "x", "target"), path)

        def load_test(self, path):
            return check_columns(pd.read_csv(path), ("id", "x"), path)

        def make_folds(self, df, n_folds, seed):
            return df.assign(fold=[i % n_folds for i in range(len(df))])

        def settings(self, mapping):
            return check_settings(mapping, {"alpha": 1.0})   # unknown key -> SettingsError naming it

        def train_fold(self, train, settings, ctx):
            ...  # fit on train[train.fold != ctx.fold], write files into ctx.out_dir / "model"
            return FoldResult(model_dir=ctx.out_dir / "model", oof=oof_table, score=self.metric(valid, oof_table))

        def predict(self, model_dirs, test, ctx):
            ...  # load each folder, combine (e.g. average with ctx.weights)
            return pd.DataFrame({"id": test["id"], "target": averaged})

A task for an evaluation-API competition (one that ships ``kaggle_evaluation/``: a gateway hands the notebook the
hidden test set batch by batch) also implements :class:`BatchPredict`: ``load_models`` once, on the gateway's first
call, then ``predict_batch`` per batch. Nothing else changes: train, folds, metric and publish are the same.

Every optional hook kops may call (``sample_dir``, ``train_columns``, ``is_checkpoint``, ``kernel_requires``, …) is
declared with its default on :class:`TaskBase`, as LightningModule declares its hooks; subclass it and override
only what differs. A task that does not subclass it works the same: kops reads every optional member through
:func:`hook`, which supplies the declared default. ``kops check-task`` (:func:`kaggleops.stages.check_task.check_task`)
runs a task through a tiny fold, a save/load round trip and a kernel-side predict, naming each contract breach.

Stability: the names in ``__all__`` keep their meaning; new optional fields/methods may be added, existing
signatures do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from kaggleops.errors import DataError, SettingsError

__all__ = [
    "BatchPredict",
    "CheckpointFn",
    "DataError",
    "FoldContext",
    "FoldResult",
    "HOOKS",
    "LogFn",
    "Metric",
    "PostProcessing",
    "PredictContext",
    "REQUIRED_MEMBERS",
    "SecondStage",
    "SecondStageFold",
    "SecondStageTuning",
    "SettingsError",
    "Submission",
    "Task",
    "TaskBase",
    "average_columns",
    "check_columns",
    "check_settings",
    "dataclass_settings",
    "hook",
    "required_members",
]

LogFn = Callable[[dict[str, float], int], None]
"""``log(metrics, step)``: record numbers (e.g. ``{"val_rmse": 0.41}``) at a training step."""

CheckpointFn = Callable[[Path, int], None]
"""``checkpoint(folder, step)``: hand kops a resumable checkpoint folder (it uploads it, then may delete it)."""


@dataclass(frozen=True)
class Metric:
    """The competition metric: ``fn(truth, prediction) -> float`` over tables aligned by the id column.

    ``truth`` has the id column and the target column(s) (train rows, or the hidden solution); ``prediction``
    has the id column and the submission's columns. kops logs ``cv_<name>`` and sorts by ``higher_is_better``.
    """

    name: str
    higher_is_better: bool
    fn: Callable[[Any, Any], float]

    def __call__(self, truth: Any, prediction: Any) -> float:
        return float(self.fn(truth, prediction))

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats score ``b``."""
        return a > b if self.higher_is_better else a < b


@dataclass(frozen=True)
class Submission:
    """The submission file's format: ``id_column`` then ``columns``, rows in sample_submission.csv's order."""

    id_column: str
    columns: tuple[str, ...]

    @property
    def header(self) -> list[str]:
        return [self.id_column, *self.columns]


@dataclass
class FoldContext:
    """What kops hands ``train_fold``: which fold to hold out, where to write, and callbacks.

    ``out_dir`` exists and is empty; put the model folder (everything ``predict`` needs) inside it.
    ``progress``: the label of a progress bar to show (e.g. ``"fold 0 (1/5)"``), None: show none.
    ``resume_from``: a checkpoint folder the task handed to ``checkpoint`` in an earlier, interrupted run
    of the same settings (None: start fresh). ``checkpoint`` is None when kops does not keep checkpoints.
    ``rank`` / ``world_size``: this process among those training the fold together (DDP; 0 / 1 alone): only
    rank 0's FoldResult is used, so the others may skip writing files.
    """

    fold: int
    out_dir: Path
    seed: int = 42
    log: LogFn = field(default=lambda metrics, step: None)
    progress: str | None = None
    resume_from: Path | None = None
    checkpoint: CheckpointFn | None = None
    rank: int = 0
    world_size: int = 1
    stop_requested: Callable[[], bool] = field(default=lambda: False, repr=False)
    """What :meth:`should_stop` asks (kops hands its graceful Ctrl-C flag; the default never stops)."""

    def should_stop(self) -> bool:
        """Whether the user asked to stop (the first Ctrl-C or SIGTERM of ``kops train``).

        Check it between steps; when True, hand a last checkpoint to ``checkpoint`` and raise KeyboardInterrupt:
        kops marks the run KILLED and ``kops train --resume`` continues from that checkpoint. A second Ctrl-C
        interrupts at once.
        """
        return bool(self.stop_requested())


@dataclass
class FoldResult:
    """One trained fold: its model folder, its OOF predictions and its score on the held-out fold.

    ``oof``: a table (id column + prediction columns; extra columns allowed, e.g. candidates for a second
    stage) or the path of a CSV holding it. ``score`` is ``metric`` on the held-out rows.
    """

    model_dir: Path
    oof: Any
    score: float
    steps: int = 0
    best_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class PredictContext:
    """What kops hands ``predict``: the ensemble's weights (one per model folder, summing to 1), a log line
    printer, a scratch folder, and ``options`` (the task's own inference settings, from the kernel plan)."""

    weights: list[float]
    scratch: Path
    log: Callable[[str], None] = print
    options: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    """A short name per model folder (for log lines and timings), e.g. ``m0:3f2a1b4c``."""
    stage: Callable[[str], AbstractContextManager[Any]] | None = None
    """``with ctx.stage("forward m0"):`` times a step in the kernel's timing table (None outside a kernel)."""


@runtime_checkable
class Task(Protocol):
    """What kops needs from a competition task (see the module docstring for a complete example)."""

    name: str
    submission: Submission
    metric: Metric

    def load_train(self, path: Path) -> Any:
        """Read and check train.csv; a wrong shape raises :class:`DataError` naming what is wrong."""
        ...

    def load_test(self, path: Path) -> Any:
        """Read and check test.csv (the rows to predict, in their file order)."""
        ...

    def make_folds(self, train: Any, n_folds: int, seed: int) -> Any:
        """``train`` with an int ``fold`` column in ``0..n_folds-1`` (stratified where the task has classes)."""
        ...

    def settings(self, mapping: Mapping[str, Any]) -> Any:
        """Validate the ``train:`` section of kops.yaml (without kops' own keys n_folds/folds/seed).

        Returns the task's settings (a dataclass is logged as MLflow params); an unknown or bad key raises
        :class:`SettingsError` naming it.
        """
        ...

    def train_fold(self, train: Any, settings: Any, ctx: FoldContext) -> FoldResult:
        """Train on the rows whose fold is not ``ctx.fold``; validate on the others."""
        ...

    def predict(self, model_dirs: Sequence[Path], test: Any, ctx: PredictContext) -> Any:
        """The ensemble's predictions for ``test``: a table with the id column and the submission columns.

        The task decides how models combine (e.g. probabilities averaged with ``ctx.weights``).
        """
        ...


REQUIRED_MEMBERS: tuple[str, ...] = ("name", "submission", "metric", "load_train", "load_test", "make_folds",
                                     "settings", "train_fold", "predict")
"""The members of :class:`Task` every task has (kops refuses to load a task lacking one)."""


def required_members(task: Any) -> dict[str, Any]:
    """The members of :data:`REQUIRED_MEMBERS` the task has, by name (a missing one is absent)."""
    return {m: getattr(task, m) for m in REQUIRED_MEMBERS if hasattr(task, m)}


class TaskBase:
    """A base class for tasks: every optional hook kops may call, declared with its default.

    Subclass it, set ``name``/``submission``/``metric`` and write the required methods of :class:`Task`; override a
    hook below only to change its default. (Optional capabilities with no sensible default stay protocols:
    :class:`PostProcessing` and :class:`SecondStage`.) kops reads these members through :func:`hook`, so a task
    that does not subclass this class gets the same defaults.

    Example:
        >>> class MyTask(TaskBase):
        ...     name = "my-competition"
        ...     kernel_requires = ("numpy", "pandas")
        >>> hook(MyTask(), "kernel_requires"), hook(object(), "kernel_requires")
        (('numpy', 'pandas'), ())
    """

    name: str
    submission: Submission
    metric: Metric

    train_columns: tuple[str, ...] = ()
    """Columns train.csv must have; kops checks the header when it fetches or is pointed at the data (``()``:
    only ``load_train`` checks, when a run reads the file)."""

    test_columns: tuple[str, ...] = ()
    """Columns test.csv must have (checked as ``train_columns``)."""

    complete_columns: tuple[str, ...] = ()
    """Columns that should have no empty/NaN cell (e.g. the target): ``kops train`` warns with the count."""

    kernel_requires: tuple[str, ...] = ()
    """Modules the offline kernel imports before anything else, so a package missing from the Kaggle image fails
    by name (e.g. ``("torch", "pandas")``)."""

    kernel_options: Mapping[str, Any] = MappingProxyType({})
    """The task's own inference settings, stored in the kernel plan and handed to ``predict`` as ``ctx.options``."""

    scored_columns: tuple[str, ...] | None = None
    """Second stage: the columns of the scored OOF candidates kops logs (None: every column)."""

    def sample_dir(self) -> Path | None:
        """A folder with a bundled sample of the competition's files (train.csv, test.csv, sample_submission.csv)
        for ``kops train --sample``, the demo and ``kops check-task``; None: the task bundles none."""
        return None

    def is_checkpoint(self, folder: Path) -> bool:
        """Whether a downloaded checkpoint ``folder`` is complete (kops resumes only from those); default:
        a non-empty folder."""
        return folder.is_dir() and any(folder.iterdir())

    def run_label(self, settings: Any) -> str:
        """The short name in run names (``kfold-<label>``, ``rerank-<label>``); default: the settings' ``model``
        attribute where they have a non-empty one, else the task's name."""
        return str(getattr(settings, "model", None) or self.name)

    def second_stage_summary(self, metrics: dict[str, float]) -> str:
        """Second stage: one line summarising the tuned OOF metrics for the terminal (default: none)."""
        return ""

    blend_columns: tuple[str, ...] | None = None
    """The numeric OOF columns a blend averages with weights (``kops ensemble``): class probabilities, regression
    values, per-position probabilities. None: the submission's columns. ``()``: none (the task overrides
    :meth:`combine`)."""

    def combine(self, tables: Sequence[Any], weights: Sequence[float]) -> Any:
        """One prediction table from several runs' prediction tables (OOF rows aligned by id, same order), weighted
        (``weights`` sum to 1): what ``kops ensemble`` scores with ``metric``. The kernel's ``predict`` must blend
        its model folders with ``ctx.weights`` the same way, so a blend's CV is what its submission runs.

        Default: the :attr:`blend_columns` (else the submission's columns) averaged with ``weights``; every other
        column from the first table. Override it for predictions that do not average (e.g. labels from averaged
        probabilities, or a choice among the runs' answers).

        Example:
            >>> import pandas as pd
            >>> class T(TaskBase):
            ...     submission = Submission("id", ("y",))
            >>> a, b = pd.DataFrame({"id": [1, 2], "y": [0.0, 1.0]}), pd.DataFrame({"id": [1, 2], "y": [1.0, 3.0]})
            >>> T().combine([a, b], [0.75, 0.25])["y"].tolist()
            [0.25, 1.5]
        """
        declared = hook(self, "blend_columns")  # self may be a task that does not subclass TaskBase
        columns = list(self.submission.columns if declared is None else declared)
        return average_columns(tables, weights, columns)


HOOKS: tuple[str, ...] = tuple(n for n in vars(TaskBase) if not n.startswith("_"))
"""The optional members of a task, each declared with its default on :class:`TaskBase`."""


def hook(task: Any, name: str) -> Any:
    """The task's optional member ``name`` (one of :data:`HOOKS`), or the default :class:`TaskBase` declares for it
    (a method bound to ``task``) when the task has none or sets it to None. The one place kops reads an optional
    member of a task: a task need not subclass TaskBase.

    Example:
        >>> hook(object(), "second_stage_summary")({"lift": 0.1})
        ''
    """
    if name not in HOOKS:
        raise AttributeError(f"{name!r} is not a task hook; the hooks are {', '.join(HOOKS)}")
    value = getattr(task, name, None)
    if value is not None:
        return value
    default = vars(TaskBase)[name]
    return default.__get__(task) if callable(default) else default


def average_columns(tables: Sequence[Any], weights: Sequence[float], columns: Sequence[str]) -> Any:
    """The first table with ``columns`` replaced by their ``weights``-weighted mean over ``tables`` (aligned row by
    row); a column that is not numeric raises :class:`DataError` naming it (override ``combine`` for such outputs)."""
    import numpy as np

    if len(tables) != len(weights) or not tables:
        raise ValueError(f"{len(tables)} table(s) for {len(weights)} weight(s)")
    out = tables[0].copy()
    for column in columns:
        values = [t[column].to_numpy() for t in tables]
        if not all(np.issubdtype(v.dtype, np.number) for v in values):
            raise DataError(f"prediction column {column!r} is not numeric, so it cannot be averaged; declare the "
                            "task's numeric blend_columns or its own combine(tables, weights)")
        out[column] = sum(float(w) * v.astype(float) for w, v in zip(weights, values, strict=True))
    return out


@runtime_checkable
class PostProcessing(Protocol):
    """Optional: a rule applied to the ensemble's test predictions before the submission is written."""

    def post_process(self, test: Any, predictions: Any) -> Any:
        """The predictions table after the task's post-processing (same rows and columns)."""
        ...


@dataclass(frozen=True)
class SecondStageFold:
    """What ``train_second_stage_fold`` returns: one second-stage fold's model and the candidates it scored."""

    fold: int
    model_dir: Path
    train_ids: list[str]
    """The ids of the rows it trained on (logged beside the run)."""
    scored: Any
    """The held-out fold's candidates with the second model's predictions (a table)."""
    steps: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class SecondStageTuning:
    """What ``tune_second_stage`` returns: what the task chose on the OOF, and the OOF metrics."""

    options: dict[str, Any]
    """The task's own choices (JSON values, e.g. how to blend the two stages): kops stores them on the runs and in the
    kernel plan, never reads them, and hands them back in the kernel as ``ctx.options``."""
    metrics: dict[str, float]
    grid: list[dict[str, float]] = field(default_factory=list)
    """Every combination tried, with its OOF metrics."""


@runtime_checkable
class SecondStage(Protocol):
    """Optional: a second model trained on the first stage's OOF candidates (``kops train --stage rerank``).

    kops gathers each base fold run's OOF table, asks the task for the candidate rows, trains one
    second-stage model per fold (held out as in the base), lets the task tune its combination on the OOF and
    logs everything; in the kernel, ``predict_second_stage`` rescores the base ensemble's candidates.
    ``second_stage_summary`` and ``scored_columns`` are optional hooks (see :class:`TaskBase`).
    """

    def second_stage_settings(self, mapping: Mapping[str, Any]) -> Any:
        """Validate the ``rerank:`` section of kops.yaml; an unknown key raises :class:`SettingsError`."""
        ...

    def candidates(self, oofs: Sequence[Any], settings: Any) -> tuple[Any, Any]:
        """(rows, candidates) from the base models' OOF tables (each with a ``fold`` column)."""
        ...

    def train_second_stage_fold(self, candidates: Any, settings: Any, fold: int, out_dir: Path,
                                log: LogFn) -> SecondStageFold:
        """Train on candidates of other folds; score the candidates of ``fold``."""
        ...

    def tune_second_stage(self, rows: Any, scored: Any, settings: Any) -> SecondStageTuning:
        """Choose the combination on the OOF."""
        ...

    def finish_second_stage_fold(self, model_dir: Path, settings: Any, tuned: Any, rows: Any, scored: Any,
                                 fold: int) -> dict[str, float]:
        """Save what inference needs from ``tuned`` into the fold's ``model_dir``; the fold's OOF metrics."""
        ...

    def predict_second_stage(self, model_dirs: Sequence[Path], reranker_dirs: Sequence[Path], test: Any,
                             ctx: PredictContext) -> Any:
        """The final predictions table: the base ensemble's candidates rescored by the second-stage models."""
        ...


@runtime_checkable
class BatchPredict(Protocol):
    """Optional: predict batch by batch as an evaluation-API competition's gateway hands the test set over.

    The kernel serves the competition's own ``<Comp>InferenceServer``; the gateway calls ``predict`` once per
    batch with the competition's arguments (e.g. one date's rows and the previous date's revealed answers).
    ``load_models`` runs once, inside the first call (which has no deadline, so slow loading belongs there);
    ``predict_batch`` answers each batch, within the gateway's per-call timeout, with one row per row asked
    (a DataFrame with the submission's columns, or an array of them: kops converts it to the batch's frame type).
    The object ``load_models`` returns is handed to every ``predict_batch`` call: keep state across batches there.

    Example (a complete minimal task: the Task members of the module docstring, plus)::

        def load_models(self, model_dirs, ctx):
            return {"coefs": [np.load(d / "coef.npy") for d in model_dirs], "weights": ctx.weights}

        def predict_batch(self, models, test, lags, ctx):
            x = test[["x0", "x1"]].to_numpy()
            pred = sum(w * x @ c for w, c in zip(models["weights"], models["coefs"]))
            return pd.DataFrame({"target": pred})

        def gateway_data_paths(self, competition_dir):
            return (competition_dir / "test.csv", competition_dir / "lags.csv")
    """

    def load_models(self, model_dirs: Sequence[Path], ctx: PredictContext) -> Any:
        """Load every model folder once (ensemble weights in ``ctx.weights``); the result goes to each batch."""
        ...

    def predict_batch(self, models: Any, *batch: Any, ctx: PredictContext) -> Any:
        """The predictions for one batch: one row per row of the batch, in its order."""
        ...

    def gateway_data_paths(self, competition_dir: Path) -> Sequence[Path] | None:
        """The public test files ``run_local_gateway`` serves (None: the gateway's own defaults)."""
        ...


def check_columns(table: Any, required: Sequence[str], source: Any = "table") -> Any:
    """``table`` itself when it has every ``required`` column; else :class:`DataError` naming the missing ones."""
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{source} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, table.columns))}")
    return table


def check_settings(mapping: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated from ``mapping``; a key not in ``defaults`` raises :class:`SettingsError` naming it.

    Example:
        >>> check_settings({"lr": 0.1}, {"lr": 0.01, "epochs": 3})
        {'lr': 0.1, 'epochs': 3}
    """
    unknown = sorted(set(mapping) - set(defaults))
    if unknown:
        raise SettingsError(f"unknown train setting `{unknown[0]}`; known: {', '.join(sorted(defaults))}")
    return {**defaults, **mapping}


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a kops.yaml value fits a settings field's annotation (scalars, optionals, tuples/lists of them)."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        item = args[0] if args else Any
        return isinstance(value, (tuple, list)) and all(_matches(v, item) for v in value)
    return True  # a type kops does not know: the task's own code checks it


def dataclass_settings(cls: type, mapping: Mapping[str, Any] | None, what: str = "train") -> Any:
    """An instance of the settings dataclass ``cls`` from the ``what:`` section of kops.yaml: an unknown key or a
    value of the wrong type (``epochs: "two"``) raises :class:`SettingsError` naming it, before any run starts.

    Example:
        >>> @dataclass
        ... class S:
        ...     epochs: int = 3
        >>> dataclass_settings(S, {"epochs": "two"})
        Traceback (most recent call last):
        kaggleops.errors.SettingsError: train setting `epochs` must be int, not 'two' (str)
    """
    import dataclasses
    import typing

    values = dict(mapping or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"Unknown {what} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _matches(value, hints[key]):
            raise SettingsError(f"{what} setting `{key}` must be {_type_name(hints[key])}, not {value!r} "
                                f"({type(value).__name__})")
    return cls(**{k: tuple(v) if isinstance(v, list) and typing.get_origin(hints.get(k)) is tuple else v
                  for k, v in values.items()})
