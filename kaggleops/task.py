"""The public task interface: the one module a competition task imports from kops.

A *task* teaches kops one competition: how to read its files, split folds, train one fold, predict the test
rows with an ensemble of trained folds, and score predictions. kops does everything around it (MLflow runs,
resume, publishing model folders as Kaggle datasets, the offline kernel, submissions, leaderboards). Task
code receives paths, tables and a ``log`` callback; it never imports MLflow or Kaggle code.

Tables are pandas DataFrames. Prediction tables (OOF and test) hold the id column plus the prediction
columns of the submission format. Importing this module imports no pandas/torch.

A minimal task (selected in kops.yaml with ``task: tasks/my_task.py:MyTask``)::

    import pandas as pd
    from kaggleops.task import FoldResult, Metric, Submission, check_columns, check_settings

    class MyTask:
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

Stability: the names in ``__all__`` keep their meaning; new optional fields/methods may be added, existing
signatures do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kaggleops.errors import DataError, SettingsError

__all__ = [
    "BatchPredict",
    "CheckpointFn",
    "DataError",
    "FoldContext",
    "FoldResult",
    "LogFn",
    "Metric",
    "PostProcessing",
    "PredictContext",
    "SecondStage",
    "SettingsError",
    "Submission",
    "Task",
    "check_columns",
    "check_settings",
    "dataclass_settings",
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
    ``resume_from``: a checkpoint folder the task handed to ``checkpoint`` in an earlier, interrupted run
    of the same settings (None: start fresh). ``checkpoint`` is None when kops does not keep checkpoints.
    """

    fold: int
    out_dir: Path
    seed: int = 42
    log: LogFn = field(default=lambda metrics, step: None)
    progress: bool = False
    resume_from: Path | None = None
    checkpoint: CheckpointFn | None = None


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


@runtime_checkable
class PostProcessing(Protocol):
    """Optional: a rule applied to the ensemble's test predictions before the submission is written."""

    def post_process(self, test: Any, predictions: Any) -> Any:
        """The predictions table after the task's post-processing (same rows and columns)."""
        ...


@runtime_checkable
class SecondStage(Protocol):
    """Optional: a second model trained on the first stage's OOF candidates (``kops train --stage rerank``).

    kops gathers each base fold run's OOF table, asks the task for the candidate rows, trains one
    second-stage model per fold (held out as in the base), lets the task tune its combination on the OOF and
    logs everything; in the kernel, ``predict_second_stage`` rescores the base ensemble's candidates.
    """

    def second_stage_settings(self, mapping: Mapping[str, Any]) -> Any:
        """Validate the ``rerank:`` section of kops.yaml; an unknown key raises :class:`SettingsError`."""
        ...

    def candidates(self, oofs: Sequence[Any], settings: Any) -> tuple[Any, Any]:
        """(rows, candidates) from the base models' OOF tables (each with a ``fold`` column)."""
        ...

    def train_second_stage_fold(self, candidates: Any, settings: Any, fold: int, out_dir: Path,
                                log: LogFn) -> Any:
        """Train on candidates of other folds; the result has model_dir, scored, train_ids, steps, seconds."""
        ...

    def tune_second_stage(self, rows: Any, scored: Any, settings: Any) -> Any:
        """Choose the combination on the OOF; the result has ``metrics``, ``w``, ``n`` and ``grid``."""
        ...

    def finish_second_stage_fold(self, model_dir: Path, settings: Any, tuned: Any, rows: Any, scored: Any,
                                 fold: int) -> dict[str, float]:
        """Save what inference needs from ``tuned`` into the fold's ``model_dir``; the fold's OOF metrics."""
        ...

    def second_stage_summary(self, metrics: dict[str, float]) -> str:
        """One line summarising the tuned OOF metrics for the terminal."""
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
