"""The task skeleton `kops init --competition SLUG` writes when no task serves SLUG."""

from __future__ import annotations

import re

SKELETON = '''"""The {competition} task for kops: fill in each method (see the README, "Bring your own competition").

kops calls these methods; nothing here imports MLflow or Kaggle code. Tables are pandas DataFrames.
Until a method is written it raises NotImplementedError, and `kops train` names the first one to write.
Optional hooks (sample_dir, kernel_requires, is_checkpoint, ...) have defaults on TaskBase; `kops check-task`
runs this task through a tiny fold and names each contract breach.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kaggleops.task import FoldContext, FoldResult, Metric, PredictContext, Submission, TaskBase


def _metric(truth: Any, prediction: Any) -> float:
    raise NotImplementedError("implement the metric in {path}: score prediction against truth (tables "
                              "matched by the id column)")


class {cls}(TaskBase):
    name = "{competition}"
    # The submission file: the id column, then the prediction column(s) (see sample_submission.csv).
    submission = Submission(id_column="id", columns=("target",))
    # The competition's metric; higher_is_better=False for RMSE, log loss, ...
    metric = Metric("score", higher_is_better=True, fn=_metric)

    def load_train(self, path: Path) -> Any:
        raise NotImplementedError("implement {cls}.load_train in {path}: read train.csv (e.g. pandas.read_csv) "
                                  "and check its columns (kaggleops.task.check_columns)")

    def load_test(self, path: Path) -> Any:
        raise NotImplementedError("implement {cls}.load_test in {path}: read test.csv and check its columns")

    def make_folds(self, train: Any, n_folds: int, seed: int) -> Any:
        raise NotImplementedError("implement {cls}.make_folds in {path}: return train with an int `fold` "
                                  "column in 0..n_folds-1")

    def settings(self, mapping: dict[str, Any]) -> Any:
        raise NotImplementedError("implement {cls}.settings in {path}: validate kops.yaml's train: keys, e.g. "
                                  "return kaggleops.task.check_settings(mapping, {{'epochs': 3}})")

    def train_fold(self, train: Any, settings: Any, ctx: FoldContext) -> FoldResult:
        raise NotImplementedError("implement {cls}.train_fold in {path}: fit on rows with fold != ctx.fold, "
                                  "save into ctx.out_dir, return FoldResult(model_dir, oof table, score)")

    def predict(self, model_dirs: list[Path], test: Any, ctx: PredictContext) -> Any:
        raise NotImplementedError("implement {cls}.predict in {path}: load each model folder, combine them "
                                  "(ctx.weights) and return a table with the submission's columns")
'''


def class_name(competition: str) -> str:
    """``digit-recognizer`` → ``DigitRecognizerTask``."""
    words = [w for w in re.split(r"[^0-9a-zA-Z]+", competition) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words) or "My"
    return (name if name[0].isalpha() else f"T{name}") + "Task"


def module_name(competition: str) -> str:
    """``digit-recognizer`` → ``digit_recognizer_task``."""
    base = re.sub(r"[^0-9a-zA-Z]+", "_", competition).strip("_").lower() or "my"
    return (base if base[0].isalpha() else f"t_{base}") + "_task"


def render_skeleton(competition: str, path: str) -> tuple[str, str]:
    """(source, class name) of the skeleton for ``competition``, saved at ``path`` (for the hints)."""
    cls = class_name(competition)
    return SKELETON.format(competition=competition, cls=cls, path=path), cls
