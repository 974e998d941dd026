"""The emulator's metric registry: the scores a competition can be seeded with, by name.

Each metric is ``fn(truths, preds) -> float`` over values aligned row by row. With one target column the values
are strings; with several (e.g. one probability column per class) each value is a tuple of strings, one per
column. Predictions that cannot be read (not a number, NaN, a probability outside [0, 1]) raise
``SubmissionInvalid``, which the emulator reports as the submission's ``errorDescription``.

=========== ============================================================================== ======
name        definition                                                                     better
=========== ============================================================================== ======
accuracy    share of rows whose prediction equals the truth (every column, as strings)     higher
rmse        sqrt(mean((truth - pred)^2)) over every cell                                   lower
mae         mean(abs(truth - pred)) over every cell                                        lower
log_loss    one column: binary, truth 0/1, pred = P(1). Several columns: truth one-hot,    lower
            pred = one probability per class, each row rescaled to sum 1. Probabilities
            clipped to [1e-15, 1 - 1e-15]; mean over rows of -sum(truth * log(pred))
roc_auc     one column: truth 0/1, pred a score (ties count half). Several columns: the    higher
            mean of each column's AUC
macro_f1    F1 of each label seen in truth or prediction, averaged without weights         higher
jaccard     Tweet Sentiment Extraction: per row, lowercase and split on whitespace,        higher
            |A ∩ B| / |A ∪ B| of the word sets (two empty sides score 1.0); mean over rows
=========== ============================================================================== ======

Example:
    >>> get_metric("rmse").fn(["1", "3"], ["2", "3"])
    0.7071067811865476
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Metric = Callable[[list[Any], list[Any]], float]
EPS = 1e-15


class SubmissionInvalid(Exception):
    """The submission cannot be scored; the message becomes ``errorDescription``."""


@dataclass(frozen=True)
class MetricInfo:
    """A named metric and its direction."""

    name: str
    fn: Metric
    higher_is_better: bool


def _cells(values: Sequence[Any]) -> list[tuple[str, ...]]:
    return [v if isinstance(v, tuple) else (v,) for v in values]


def _number(text: str, side: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SubmissionInvalid(f"Submission has a non-numeric {side} {text!r}") from None
    if not math.isfinite(value):
        raise SubmissionInvalid(f"Submission has a missing or non-finite {side} {text!r}")
    return value


def _matrix(values: Sequence[Any], side: str) -> list[list[float]]:
    return [[_number(c, side) for c in row] for row in _cells(values)]


def _check(truths: Sequence[Any], preds: Sequence[Any]) -> None:
    if len(truths) != len(preds):
        raise ValueError(f"{len(truths)} truths but {len(preds)} predictions")
    if not truths:
        raise ValueError("no rows to score")


def accuracy(truths: Sequence[Any], preds: Sequence[Any]) -> float:
    """Share of rows predicted exactly (string comparison, surrounding spaces ignored)."""
    _check(truths, preds)
    norm = [tuple(c.strip() for c in row) for row in _cells(truths)]
    guess = [tuple(c.strip() for c in row) for row in _cells(preds)]
    return sum(a == b for a, b in zip(norm, guess, strict=True)) / len(norm)


def _errors(truths: Sequence[Any], preds: Sequence[Any]) -> list[float]:
    _check(truths, preds)
    t, p = _matrix(truths, "solution value"), _matrix(preds, "prediction")
    return [a - b for rt, rp in zip(t, p, strict=True) for a, b in zip(rt, rp, strict=True)]


def rmse(truths: Sequence[Any], preds: Sequence[Any]) -> float:
    """Root mean squared error over every cell."""
    errors = _errors(truths, preds)
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def mae(truths: Sequence[Any], preds: Sequence[Any]) -> float:
    """Mean absolute error over every cell."""
    errors = _errors(truths, preds)
    return sum(abs(e) for e in errors) / len(errors)


def _probabilities(preds: Sequence[Any]) -> list[list[float]]:
    rows = _matrix(preds, "prediction")
    for row in rows:
        if any(p < 0 or p > 1 for p in row):
            raise SubmissionInvalid(f"Submission has a probability outside [0, 1]: {row}")
    return rows


def log_loss(truths: Sequence[Any], preds: Sequence[Any]) -> float:
    """Binary (one column) or multi-class (one column per class, one-hot truth) logarithmic loss."""
    _check(truths, preds)
    t, p = _matrix(truths, "solution value"), _probabilities(preds)
    total = 0.0
    for rt, rp in zip(t, p, strict=True):
        if len(rt) == 1:
            q = min(max(rp[0], EPS), 1 - EPS)
            total -= rt[0] * math.log(q) + (1 - rt[0]) * math.log(1 - q)
            continue
        clipped = [min(max(q, EPS), 1 - EPS) for q in rp]
        norm = sum(clipped)
        total -= sum(y * math.log(q / norm) for y, q in zip(rt, clipped, strict=True))
    return total / len(t)


def _auc(labels: list[float], scores: list[float]) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; tied scores share their mean rank."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    positives = [r for r, y in zip(ranks, labels, strict=True) if y == 1]
    n_pos, n_neg = len(positives), len(labels) - len(positives)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC is undefined when the solution holds only one class")
    return (sum(positives) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_auc(truths: Sequence[Any], preds: Sequence[Any]) -> float:
    """ROC AUC of a 0/1 truth column (mean over columns when there are several)."""
    _check(truths, preds)
    t, p = _matrix(truths, "solution value"), _matrix(preds, "prediction")
    width = len(t[0])
    if any(v not in (0.0, 1.0) for row in t for v in row):
        raise ValueError("ROC AUC needs 0/1 solution values")
    aucs = [_auc([row[c] for row in t], [row[c] for row in p]) for c in range(width)]
    return sum(aucs) / width


def macro_f1(truths: Sequence[Any], preds: Sequence[Any]) -> float:
    """Unweighted mean of per-label F1 over the labels in truth or prediction."""
    _check(truths, preds)
    t = [tuple(c.strip() for c in row) for row in _cells(truths)]
    p = [tuple(c.strip() for c in row) for row in _cells(preds)]
    scores = []
    for label in set(t) | set(p):
        tp = sum(a == label and b == label for a, b in zip(t, p, strict=True))
        fp = sum(a != label and b == label for a, b in zip(t, p, strict=True))
        fn = sum(a == label and b != label for a, b in zip(t, p, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def _word_jaccard(truth: str, pred: str) -> float:
    a, b = set(str(truth).lower().split()), set(str(pred).lower().split())
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def jaccard(truths: Sequence[Any], preds: Sequence[Any]) -> float:
    """Mean word-level Jaccard (Tweet Sentiment Extraction's metric); one text column."""
    _check(truths, preds)
    if any(isinstance(v, tuple) for v in truths):
        raise ValueError("jaccard scores one text column")
    return sum(_word_jaccard(a, b) for a, b in zip(truths, preds, strict=True)) / len(truths)


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("accuracy", accuracy, True),
    MetricInfo("rmse", rmse, False),
    MetricInfo("mae", mae, False),
    MetricInfo("log_loss", log_loss, False),
    MetricInfo("roc_auc", roc_auc, True),
    MetricInfo("macro_f1", macro_f1, True),
    MetricInfo("jaccard", jaccard, True),
)}


def get_metric(name: str) -> MetricInfo:
    """The registered metric ``name``; ValueError naming the known ones otherwise."""
    info = METRICS.get(name)
    if info is None:
        raise ValueError(f"Unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    return info
