"""Loading the competition's CSV files and splitting them into stratified folds."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kaggleops.task import DataError

if TYPE_CHECKING:
    import pandas as pd

TRAIN_COLUMNS: tuple[str, ...] = ("textID", "text", "selected_text", "sentiment")
TEST_COLUMNS: tuple[str, ...] = ("textID", "text", "sentiment")
_TEXT_COLUMNS = ("text", "selected_text", "sentiment")


def _load(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    path = Path(path)
    dtypes = {c: str for c in ("textID", *_TEXT_COLUMNS)}
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected columns: {', '.join(columns)}"
        )
    for col in _TEXT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    return df


def load_train(path: str | Path) -> pd.DataFrame:
    """Read a competition ``train.csv`` (textID, text, selected_text, sentiment).

    Missing text becomes ``""``. Raises DataError naming the file and the missing column(s).

    Example:
        >>> df = load_train(TSE.sample_dir() / "train.csv")  # doctest: +SKIP
    """
    return _load(path, TRAIN_COLUMNS)


def load_test(path: str | Path) -> pd.DataFrame:
    """Read a competition ``test.csv`` (textID, text, sentiment); see :func:`load_train`."""
    return _load(path, TEST_COLUMNS)


def fold_assignment(labels: Sequence[str], n_folds: int, seed: int) -> list[int]:
    """Stratified fold numbers (0..n_folds-1) for rows with the given class labels.

    Rows of each class are shuffled with ``seed`` and dealt round-robin, continuing the deal
    across classes so fold sizes differ by at most one.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    rng = random.Random(seed)
    folds = [0] * len(labels)
    offset = 0
    for label in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        rng.shuffle(idx)
        for k, i in enumerate(idx):
            folds[i] = (offset + k) % n_folds
        offset += len(idx)
    return folds


def make_folds(df: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Return a copy of ``df`` with a ``fold`` column, stratified by ``sentiment``.

    Example:
        >>> folds = make_folds(load_train("train.csv"), n_folds=5, seed=42)  # doctest: +SKIP
    """
    out = df.copy()
    out["fold"] = fold_assignment(out["sentiment"].astype(str).tolist(), n_folds, seed)
    return out
