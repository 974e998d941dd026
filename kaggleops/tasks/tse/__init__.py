"""The built-in Tweet Sentiment Extraction task (Kaggle 2020): extract the span carrying the sentiment.

Importing this package imports no torch/transformers/pandas; the methods import what they need.

Example:
    >>> from kaggleops.tasks import get_task
    >>> tse = get_task("tweet-sentiment-extraction")
    >>> df = tse.load_train(tse.sample_dir() / "train.csv")  # doctest: +SKIP
    >>> res = tse.train_fold(df, tse.settings(epochs=1), 0, Path("out/f0"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops.tasks.errors import DataError
from kaggleops.tasks.tse.metric import jaccard, mean_jaccard

if TYPE_CHECKING:
    import pandas as pd

    from kaggleops.tasks.tse.train import FoldResult, TrainSettings

__all__ = ["DataError", "TweetSentimentExtraction", "jaccard", "mean_jaccard"]

INFER_SOURCE = Path(__file__).parent / "infer.py"


class TweetSentimentExtraction:
    """The Tweet Sentiment Extraction task: data, metric, training and inference."""

    name = "tweet-sentiment-extraction"
    id_column = "textID"
    target_column = "selected_text"
    train_columns: tuple[str, ...] = ("textID", "text", "selected_text", "sentiment")
    test_columns: tuple[str, ...] = ("textID", "text", "sentiment")

    def metric(self, truths: Sequence[str], preds: Sequence[str]) -> float:
        """Mean word-level Jaccard, as the competition scored it."""
        return mean_jaccard(truths, preds)

    def sample_dir(self) -> Path:
        """The bundled synthetic sample in the competition's format."""
        from kaggleops.resources import bundled_competition

        return bundled_competition(self.name)

    def load_train(self, path: str | Path) -> pd.DataFrame:
        """Read a train.csv; see :func:`kaggleops.tasks.tse.data.load_train`."""
        from kaggleops.tasks.tse.data import load_train

        return load_train(path)

    def load_test(self, path: str | Path) -> pd.DataFrame:
        """Read a test.csv; see :func:`kaggleops.tasks.tse.data.load_test`."""
        from kaggleops.tasks.tse.data import load_test

        return load_test(path)

    def make_folds(self, df: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
        """Add a ``fold`` column stratified by sentiment."""
        from kaggleops.tasks.tse.data import make_folds

        return make_folds(df, n_folds, seed)

    def settings(self, **overrides: Any) -> TrainSettings:
        """``TrainSettings`` with ``overrides``; an unknown key raises ValueError naming the known ones.

        Example:
            >>> TweetSentimentExtraction().settings(epochs=1).epochs  # doctest: +SKIP
            1
        """
        from kaggleops.tasks.tse.train import TrainSettings

        known = {f.name for f in dataclasses.fields(TrainSettings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Unknown task setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return TrainSettings(**overrides)

    def train_fold(self, train_df: pd.DataFrame, settings: TrainSettings, fold: int, out_dir: Path,
                   log: Callable[[dict[str, float], int], None] | None = None,
                   progress: bool | None = None, on_checkpoint: Callable[[Path, int], None] | None = None,
                   resume_from: Path | None = None) -> FoldResult:
        """Train one fold; see :func:`kaggleops.tasks.tse.train.train_fold`.

        ``progress`` (when not None) overrides ``settings.progress`` (a tqdm bar over the steps).
        ``on_checkpoint(folder, step)`` receives each resumable checkpoint; ``resume_from`` continues from one.
        """
        from kaggleops.tasks.tse.train import train_fold

        if progress is not None:
            settings = dataclasses.replace(settings, progress=progress)
        return train_fold(train_df, settings, fold, out_dir, log, on_checkpoint=on_checkpoint,
                          resume_from=resume_from)

    def predict(self, model_dir: Path, rows: list[dict[str, Any]], batch_size: int = 64,
                device: str | None = None) -> list[str]:
        """Predicted spans for ``rows`` (dicts with ``text`` and ``sentiment``) from a saved model folder."""
        from kaggleops.tasks.tse.infer import load_model, predict_spans

        model, tokenizer = load_model(model_dir, device)
        return predict_spans(model, tokenizer, rows, batch_size=batch_size)

    def kernel_runtime_source(self) -> str:
        """Source text of ``infer.py`` (stdlib + torch + transformers only), for embedding in kernels."""
        return INFER_SOURCE.read_text(encoding="utf-8")
