"""`kops train`: the task's training loop, wrapped in MLflow runs with provenance.

One run per fold; with more than one fold, the folds are children (``mlflow.parentRunId``) of a k-fold
parent run carrying the mean CV. The task code never sees MLflow: it gets paths and a ``log`` callback.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaggleops.config import KopsConfig
from kaggleops.errors import DataError, UnknownCompetition
from kaggleops.tracking import Tracker

TAG_FOLD = "kops.fold"
TAG_TASK = "kops.task"
TAG_KIND = "kops.kind"
MODEL_ARTIFACT = "model"
OOF_ARTIFACT = "oof"


@dataclass
class FoldRun:
    run_id: str
    fold: int
    val_jaccard: float


@dataclass
class TrainResult:
    runs: list[FoldRun]
    parent_run_id: str | None = None
    cv_jaccard: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """The run to publish/submit: the single fold's run, or the k-fold parent."""
        return self.parent_run_id or self.runs[0].run_id

    def as_dict(self) -> dict[str, object]:
        return {"run_id": self.run_id, "parent_run_id": self.parent_run_id, "cv_jaccard": self.cv_jaccard,
                "runs": [asdict(r) for r in self.runs]}


def get_task_for(cfg: KopsConfig) -> Any:
    from kaggleops.tasks import get_task

    try:
        return get_task(cfg.competition)
    except ValueError as e:
        raise UnknownCompetition(str(e), "Set `competition:` in kops.yaml to a supported one.") from None


def load_training_data(cfg: KopsConfig, task: Any, data_dir: Path | None) -> tuple[Any, Path]:
    folder = data_dir or cfg.resolved_data_dir() or task.sample_dir()
    path = Path(folder) / "train.csv"
    if not path.is_file():
        raise DataError(f"No train.csv in {folder}.", "Point `data_dir:` in kops.yaml (or --data) at the "
                        "competition's files, e.g. from `kaggle competitions download`.")
    try:
        return task.load_train(path), path
    except ValueError as e:
        raise DataError(str(e)) from None


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(cfg: KopsConfig, folds: list[int] | None = None, data_dir: Path | None = None,
          progress: bool = True) -> TrainResult:
    """Train the configured task on the chosen folds; one MLflow run per fold.

    Example:
        >>> train(load_config(), folds=[0])  # doctest: +SKIP
        TrainResult(runs=[FoldRun(run_id='…', fold=0, val_jaccard=0.61)], ...)
    """
    task = get_task_for(cfg)
    df, path = load_training_data(cfg, task, data_dir)
    settings = task.settings(**cfg.train.model_dump(exclude={"folds"}))
    chosen = folds if folds is not None else (cfg.train.folds or list(range(cfg.train.n_folds)))
    bad = [f for f in chosen if not 0 <= f < cfg.train.n_folds]
    if bad:
        raise DataError(f"Fold(s) {bad} out of range for n_folds={cfg.train.n_folds}.", "Use --fold 0..n_folds-1.")
    df = task.make_folds(df, cfg.train.n_folds, cfg.train.seed)
    tracker = Tracker(cfg)
    params = {**asdict(settings), "data": str(path), "data_sha256": _file_sha256(path)[:16], "rows": len(df)}
    parent = None
    if len(chosen) > 1:
        parent = tracker.start_run(f"kfold-{cfg.train.model}", {**params, "folds": chosen},
                                   {TAG_TASK: task.name, TAG_KIND: "kfold"})
    runs = []
    try:
        runs = [_train_fold(tracker, task, df, settings, fold, params, parent, progress) for fold in chosen]
    except BaseException:
        if parent:
            tracker.end_run(parent, "FAILED")
        raise
    result = TrainResult(runs, parent)
    if parent:
        result.cv_jaccard = sum(r.val_jaccard for r in runs) / len(runs)
        tracker.log_metrics(parent, {"cv_jaccard": result.cv_jaccard})
        tracker.end_run(parent)
    else:
        result.cv_jaccard = runs[0].val_jaccard
    return result


def _train_fold(tracker: Tracker, task: Any, df: Any, settings: Any, fold: int, params: dict[str, Any],
                parent: str | None, progress: bool) -> FoldRun:
    run_id = tracker.start_run(f"fold-{fold}", {**params, "fold": fold},
                               {TAG_FOLD: str(fold), TAG_TASK: task.name, TAG_KIND: "fold"}, parent_run_id=parent)
    try:
        with tempfile.TemporaryDirectory(prefix="kops-train-") as tmp, tracker.metric_logger(run_id) as log:
            result = task.train_fold(df, settings, fold, Path(tmp), log, progress=progress)
            log({"best_val_jaccard": result.val_jaccard, "best_step": result.best_step}, result.steps)
            tracker.log_artifacts(run_id, result.model_dir, MODEL_ARTIFACT)
            tracker.log_artifact(run_id, result.oof_path, OOF_ARTIFACT)
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED")
        raise
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id)
    return FoldRun(run_id, fold, result.val_jaccard)
