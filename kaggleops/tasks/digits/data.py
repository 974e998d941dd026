"""Digit Recognizer files: ``label,pixel0..pixelN`` (train), ``pixel0..pixelN`` (test), square images.

Pixels are 0-255 intensities of a ``side × side`` image read row by row (Kaggle's MNIST: 28 × 28; the bundled
sample: 8 × 8). The test file has no id column: a row's ``ImageId`` is its 1-based position, as on Kaggle.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from kaggleops.task import DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

LABEL = "label"
ID = "ImageId"
N_CLASSES = 10


def pixel_columns(columns: list[str], path: str | Path) -> list[str]:
    """The ``pixel0..pixelN`` columns in order, checked to make a square image."""
    pixels = [c for c in columns if c.startswith("pixel")]
    expected = [f"pixel{i}" for i in range(len(pixels))]
    if not pixels or pixels != expected:
        raise DataError(f"{path}: expected columns pixel0..pixelN in order (found {len(pixels)} pixel columns)")
    side = math.isqrt(len(pixels))
    if side * side != len(pixels):
        raise DataError(f"{path}: {len(pixels)} pixel columns do not make a square image")
    return pixels


def _read(path: str | Path, with_label: bool) -> pd.DataFrame:
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    df = pd.read_csv(path)
    pixels = pixel_columns(list(df.columns), path)
    if with_label and LABEL not in df.columns:
        raise DataError(f"{path}: missing column {LABEL!r}")
    numeric = df[pixels].apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any() or (numeric < 0).any().any() or (numeric > 255).any().any():
        raise DataError(f"{path}: pixel values must be numbers in 0..255")
    if with_label:
        labels = pd.to_numeric(df[LABEL], errors="coerce")
        if labels.isna().any() or not labels.isin(range(N_CLASSES)).all():
            raise DataError(f"{path}: column {LABEL!r} must hold digits 0..9")
        numeric.insert(0, LABEL, labels.astype(int))
    numeric.insert(0, ID, range(1, len(numeric) + 1))
    return numeric.reset_index(drop=True)


def load_train(path: str | Path) -> pd.DataFrame:
    """Read and check a train.csv (``label`` + pixels); ``ImageId`` numbers the rows from 1 (OOF tables use it)."""
    return _read(path, with_label=True)


def load_test(path: str | Path) -> pd.DataFrame:
    """Read and check a test.csv (pixels; a ``label`` column, if any, is ignored), with ``ImageId`` 1..n."""
    return _read(path, with_label=False)


def make_folds(df: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """``df`` with a ``fold`` column, stratified by label: each label's rows shuffled, then dealt round-robin."""
    import numpy as np

    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, not {n_folds}")
    rng = np.random.RandomState(seed)
    folds = np.zeros(len(df), dtype=int)
    offset = 0
    for label in sorted(df[LABEL].unique()):
        rows = np.flatnonzero(df[LABEL].to_numpy() == label)
        rng.shuffle(rows)
        folds[rows] = (np.arange(len(rows)) + offset) % n_folds
        offset += len(rows)
    out = df.copy()
    out["fold"] = folds
    return out


def images(df: pd.DataFrame) -> np.ndarray:
    """The pixels as float32 ``(n, 1, side, side)`` in [0, 1]."""
    import numpy as np

    pixels = pixel_columns([str(c) for c in df.columns], "data")
    side = math.isqrt(len(pixels))
    return (df[pixels].to_numpy(dtype=np.float32) / 255.0).reshape(-1, 1, side, side)
