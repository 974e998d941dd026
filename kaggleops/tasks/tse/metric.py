"""The Tweet Sentiment Extraction metric: mean word-level Jaccard, exactly as the competition scored it.

Per row: lowercase both strings, split on whitespace, take the two word *sets* A and B, score
|A ∩ B| / (|A| + |B| - |A ∩ B|); the competition score is the mean over rows.

Two empty strings (no words on either side) score 1.0: the prediction is exactly right. The
competition's published kernel divided by zero there; kops decides "identical → 1.0" so that an
empty gold span (one training row has empty text) does not crash scoring and is not punished
for an exact match. One empty and one non-empty side score 0.0.
"""

from __future__ import annotations

from collections.abc import Iterable


def jaccard(truth: str, pred: str) -> float:
    """Word-level Jaccard of two strings.

    Example:
        >>> jaccard("Sooo SAD", "sooo sad i will miss you")
        0.3333333333333333
    """
    a = set(str(truth).lower().split())
    b = set(str(pred).lower().split())
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def mean_jaccard(truths: Iterable[str], preds: Iterable[str]) -> float:
    """Mean word-level Jaccard over aligned rows; raises ValueError on length mismatch or no rows."""
    t, p = list(truths), list(preds)
    if len(t) != len(p):
        raise ValueError(f"mean_jaccard: {len(t)} truths but {len(p)} predictions")
    if not t:
        raise ValueError("mean_jaccard: no rows to score")
    return sum(jaccard(a, b) for a, b in zip(t, p, strict=True)) / len(t)
