"""Weights for a blend of runs, chosen on their out-of-fold (OOF) predictions: the algorithms behind `kops ensemble`.

No MLflow, no task: an *objective* maps a weight vector (one weight per member, summing to 1) to a score where
higher is better (the caller negates a lower-is-better metric). Everything here is deterministic.

- :func:`caruana`: greedy forward selection with replacement (Caruana et al., 2004): start from the best single
  member, add one copy of whichever member improves the blend most, keep the best prefix of the trajectory.
- :func:`hill_climb`: coordinate hill climbing on the weights, from the best single member, halving the step when
  no move helps (a derivative-free cousin of non-negative least squares that works for any metric).
- :func:`nested_cv`: the honest estimate: weights chosen on K-1 folds, scored on the held-out fold, for each fold.

Example:
    >>> import numpy as np
    >>> truth = np.array([1.0, 2.0, 3.0, 4.0])
    >>> preds = [truth + [1, 1, 1, 1], truth - [1, 1, 1, 1]]   # biased up, biased down: the mean is exact
    >>> obj = lambda w: -float(np.abs(sum(wi * p for wi, p in zip(w, preds)) - truth).mean())
    >>> caruana(2, obj).weights.tolist()
    [0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Objective = Callable[[Any], float]  # weights (numpy array summing to 1) -> score, higher is better

DEFAULT_STEPS = 40  # Caruana: copies added at most
DEFAULT_PATIENCE = 10  # Caruana: stop after this many additions without a better blend
HILL_START_STEP = 0.25
HILL_MIN_STEP = 1 / 64
HILL_MAX_MOVES = 200


@dataclass
class Selection:
    """Chosen weights (summing to 1) and the trajectory: the objective after each step (step 1 = one member)."""

    weights: Any
    trajectory: list[float] = field(default_factory=list)
    best_step: int = 1


def _cached(objective: Objective) -> Objective:
    seen: dict[tuple[float, ...], float] = {}

    def call(weights: Any) -> float:
        key = tuple(round(float(w), 12) for w in weights)
        if key not in seen:
            seen[key] = float(objective(weights))
        return seen[key]

    return call


def one_hot(n: int, i: int) -> Any:
    import numpy as np

    w = np.zeros(n)
    w[i] = 1.0
    return w


def best_single(n: int, objective: Objective) -> tuple[int, float]:
    """(index, score) of the best member alone (the first of equals)."""
    scores = [objective(one_hot(n, i)) for i in range(n)]
    best = max(range(n), key=lambda i: (scores[i], -i))
    return best, scores[best]


def caruana(n: int, objective: Objective, steps: int = DEFAULT_STEPS, patience: int = DEFAULT_PATIENCE,
            init: int = 1) -> Selection:
    """Greedy forward selection with replacement over ``n`` members; the weights of the best prefix.

    ``init``: start from the ``init`` best members alone, one copy each (Caruana's sorted initialisation; it helps
    a blend that only changes once several runs vote, e.g. a choice among the runs' answers).
    """
    import numpy as np

    objective = _cached(objective)
    alone = [objective(one_hot(n, i)) for i in range(n)]
    ranked = sorted(range(n), key=lambda i: (-alone[i], i))
    counts = sum((one_hot(n, i) for i in ranked[:max(1, min(init, n))]), np.zeros(n))
    trajectory, history = [objective(counts / counts.sum())], [counts.copy()]
    for _ in range(steps - 1):
        tries = [objective((counts + one_hot(n, i)) / (counts.sum() + 1)) for i in range(n)]
        pick = max(range(n), key=lambda i: (tries[i], -i))
        counts = counts + one_hot(n, pick)
        trajectory.append(tries[pick])
        history.append(counts.copy())
        if len(trajectory) - 1 - int(np.argmax(trajectory)) >= patience:
            break
    best = int(np.argmax(trajectory))  # the first of equal scores: fewer copies
    return Selection(history[best] / history[best].sum(), trajectory, best + 1)


def hill_climb(n: int, objective: Objective, step: float = HILL_START_STEP, min_step: float = HILL_MIN_STEP,
               max_moves: int = HILL_MAX_MOVES) -> Selection:
    """Move ``step`` of weight onto (or off) one member at a time while the blend improves; halve ``step`` when
    no move helps, down to ``min_step``."""
    import numpy as np

    objective = _cached(objective)
    first, score = best_single(n, objective)
    weights, trajectory = one_hot(n, first), [score]
    while step >= min_step and len(trajectory) < max_moves:
        moves = []
        for i in range(n):
            for sign in (1.0, -1.0):
                w = np.clip(weights + sign * step * one_hot(n, i), 0.0, None)
                if w.sum() > 0:
                    moves.append(w / w.sum())
        scores = [objective(w) for w in moves]
        best = int(np.argmax(scores))
        if scores[best] > trajectory[-1] + 1e-12:
            weights = moves[best]
            trajectory.append(scores[best])
        else:
            step /= 2
    return Selection(weights, trajectory, len(trajectory))


def nested_cv(folds: Sequence[int], select: Callable[[list[int]], Any],
              score_fold: Callable[[Any, int], float]) -> tuple[float, dict[int, float]]:
    """For each fold ``k``: weights ``select(other folds)`` scored by ``score_fold(weights, k)``; (mean, per fold).

    Needs two folds at least (one to choose on, one to score on).
    """
    folds = sorted(set(folds))
    if len(folds) < 2:
        raise ValueError("nested CV needs at least two folds")
    per_fold = {k: float(score_fold(select([f for f in folds if f != k]), k)) for k in folds}
    return sum(per_fold.values()) / len(per_fold), per_fold


METHODS: dict[str, Callable[[int, Objective], Selection]] = {"caruana": caruana, "hill": hill_climb}
