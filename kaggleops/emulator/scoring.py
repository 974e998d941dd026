"""Submission validation and scoring, the way a Kaggle competition scores a CSV.

Public/private split (deterministic, documented): rows of the solution are taken in the order they
were given to ``Emulator.add_competition``; rows at **even** positions (0, 2, 4, ...) form the public
leaderboard subset, rows at **odd** positions the private one. The metric receives
``(truths, preds)`` aligned row by row in that order: strings when the competition has one target column, tuples
of strings (one per target column) when it has several. Named metrics: ``metrics.py``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .metrics import Metric, SubmissionInvalid

__all__ = ["CompetitionSpec", "Metric", "SubmissionInvalid", "format_score", "score_bytes", "score_rows",
           "split_solution"]


@dataclass
class CompetitionSpec:
    """What is needed to score a submission for one competition."""

    solution: list[dict[str, str]]
    id_column: str
    target_columns: tuple[str, ...]
    metric: Metric
    higher_is_better: bool = True

    def target(self, row: dict[str, str]) -> Any:
        """The row's target value: a string for one target column, a tuple of strings for several."""
        values = tuple("" if row[c] is None else str(row[c]) for c in self.target_columns)
        return values[0] if len(values) == 1 else values


def format_score(value: float) -> str:
    """Format a score like Kaggle does in ``publicScore``/``privateScore`` (5 decimals)."""
    return f"{float(value):.5f}"


def parse_csv_bytes(data: bytes) -> list[dict[str, str]]:
    """Parse submission bytes into rows, raising ``SubmissionInvalid`` for unreadable CSV."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SubmissionInvalid(f"Submission is not valid UTF-8 CSV: {e}") from None
    if not text.strip():
        raise SubmissionInvalid("Submission file is empty")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        rows = [dict(r) for r in reader]
        header = reader.fieldnames or []
    except csv.Error as e:
        raise SubmissionInvalid(f"Could not parse submission CSV: {e}") from None
    for i, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise SubmissionInvalid(f"Could not parse submission CSV: line {i} has the wrong number of fields")
    if not header:
        raise SubmissionInvalid("Submission CSV has no header row")
    return rows


def _predictions(spec: CompetitionSpec, rows: Iterable[dict[str, str]]) -> dict[str, Any]:
    """Map id -> prediction, checking columns and duplicate/missing/unexpected ids."""
    rows = list(rows)
    if not rows:
        raise SubmissionInvalid("Submission has no data rows")
    header = set(rows[0].keys())
    missing_cols = [c for c in (spec.id_column, *spec.target_columns) if c not in header]
    if missing_cols:
        raise SubmissionInvalid(f"Submission is missing required column(s): {', '.join(missing_cols)}")
    preds: dict[str, Any] = {}
    for row in rows:
        key = str(row[spec.id_column])
        if key in preds:
            raise SubmissionInvalid(f"Submission has duplicate id {key!r} in column {spec.id_column!r}")
        preds[key] = spec.target(row)
    expected = [str(r[spec.id_column]) for r in spec.solution]
    missing = [k for k in expected if k not in preds]
    if missing:
        raise SubmissionInvalid(f"Submission is missing {len(missing)} id(s), e.g. {missing[0]!r}")
    extra = sorted(set(preds) - set(expected))
    if extra:
        raise SubmissionInvalid(f"Submission has {len(extra)} unexpected id(s), e.g. {extra[0]!r}")
    return preds


def _subset_score(spec: CompetitionSpec, subset: list[dict[str, str]], preds: dict[str, Any]) -> float:
    truths = [spec.target(r) for r in subset]
    guesses = [preds[str(r[spec.id_column])] for r in subset]
    try:
        return float(spec.metric(truths, guesses))
    except SubmissionInvalid:
        raise
    except Exception as e:  # noqa: BLE001 - any metric failure is a scoring error
        raise SubmissionInvalid(f"Metric failed: {type(e).__name__}: {e}") from None


def split_solution(solution: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Split solution rows into (public, private): even positions public, odd positions private."""
    return solution[0::2], solution[1::2]


def score_rows(spec: CompetitionSpec, rows: Iterable[dict[str, str]]) -> tuple[str, str]:
    """Validate submission rows and return (publicScore, privateScore) as Kaggle-formatted strings."""
    preds = _predictions(spec, rows)
    public, private = split_solution(spec.solution)
    pub = _subset_score(spec, public, preds) if public else 0.0
    priv = _subset_score(spec, private, preds) if private else pub
    return format_score(pub), format_score(priv)


def score_bytes(spec: CompetitionSpec, data: bytes) -> tuple[str, str]:
    """Parse a submitted CSV file and score it (see ``score_rows``)."""
    return score_rows(spec, parse_csv_bytes(data))
