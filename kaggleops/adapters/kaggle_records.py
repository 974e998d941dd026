"""What the Kaggle adapter returns about a competition submission, read from the official client's objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Submission:
    ref: int
    status: str  # PENDING | COMPLETE | ERROR
    description: str
    public_score: float | None
    private_score: float | None
    error: str
    date: str


def _score(text: Any) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None


def enum_name(value: Any) -> str:
    return getattr(value, "name", str(value)).rsplit(".", 1)[-1]


def submission_of(s: Any) -> Submission:
    return Submission(
        ref=int(s.ref), status=enum_name(s.status), description=s.description or "",
        public_score=_score(s.public_score), private_score=_score(s.private_score),
        error=s.error_description or "", date=str(s.date or ""),
    )
