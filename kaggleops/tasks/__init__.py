"""Competition tasks: a small ``Task`` protocol and the registry of built-in tasks.

Task code receives paths and a ``log(metrics, step)`` callback; it never imports MLflow or Kaggle
code. Importing this package imports no torch/transformers/pandas.

Example:
    >>> task = get_task("tweet-sentiment-extraction")
    >>> task.id_column
    'textID'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from kaggleops.tasks.errors import DataError

__all__ = ["DataError", "LogFn", "Task", "get_task", "task_names"]

LogFn = Callable[[dict[str, float], int], None]


class Task(Protocol):
    """What kops needs from a competition task."""

    name: str
    id_column: str
    target_column: str
    train_columns: tuple[str, ...]
    test_columns: tuple[str, ...]

    def metric(self, truths: Sequence[str], preds: Sequence[str]) -> float:
        """The competition score of aligned truths and predictions."""
        ...

    def sample_dir(self) -> Path:
        """Folder holding the bundled sample (train.csv, test.csv, sample_submission.csv, solution.csv)."""
        ...

    def load_train(self, path: str | Path) -> Any:
        """Read and check a train file (a pandas DataFrame)."""
        ...

    def load_test(self, path: str | Path) -> Any:
        """Read and check a test file (a pandas DataFrame)."""
        ...

    def make_folds(self, df: Any, n_folds: int, seed: int) -> Any:
        """``df`` with a ``fold`` column (stratified where the task has classes)."""
        ...

    def settings(self, **overrides: Any) -> Any:
        """The task's training settings (a dataclass) with ``overrides``; unknown keys raise ValueError."""
        ...

    def train_fold(self, train_df: Any, settings: Any, fold: int, out_dir: Path,
                   log: LogFn | None = None, progress: bool | None = None) -> Any:
        """Train one fold into ``out_dir``; the result has model_dir, oof_path, val_jaccard, best_step, steps."""
        ...

    def predict(self, model_dir: Path, rows: list[dict[str, Any]], batch_size: int = 64,
                device: str | None = None) -> list[str]:
        """Predictions of the model saved in ``model_dir`` for ``rows``, in order."""
        ...

    def kernel_runtime_source(self) -> str:
        """Source of the inference module (``predict_char_probs``, ``decode_spans``) kernels run."""
        ...


def _builtin() -> dict[str, Callable[[], Task]]:
    from kaggleops.tasks.tse import TweetSentimentExtraction

    return {TweetSentimentExtraction.name: TweetSentimentExtraction}


def task_names() -> list[str]:
    """Names of the known tasks."""
    return sorted(_builtin())


def get_task(name: str) -> Task:
    """The task registered as ``name``; raises ValueError listing the known tasks otherwise.

    Example:
        >>> get_task("tweet-sentiment-extraction").target_column
        'selected_text'
    """
    tasks = _builtin()
    if name not in tasks:
        raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(sorted(tasks))}")
    return tasks[name]()
