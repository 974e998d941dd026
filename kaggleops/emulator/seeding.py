"""Seed the emulator with a task's bundled competition (sample files + hidden solution), as Kaggle hosts it."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMPETITION_FILES = ("train.csv", "test.csv", "sample_submission.csv")
SOLUTION_FILE = "solution.csv"


def list_metric(task: Any) -> Callable[[list[str], list[str]], float]:
    """The task's table metric (:class:`kaggleops.task.Metric`) as the emulator's ``metric(truths, preds)`` over
    aligned string lists."""
    def metric(truths: list[str], preds: list[str]) -> float:
        import pandas as pd

        sub = task.submission
        ids = [str(i) for i in range(len(truths))]
        return task.metric(pd.DataFrame({sub.id_column: ids, sub.columns[0]: truths}),
                           pd.DataFrame({sub.id_column: ids, sub.columns[0]: preds}))

    return metric


def seed_competition(emulator: Any, task: Any, slug: str | None = None, sample: Path | None = None) -> int:
    """Register a competition folder (default: ``task``'s bundled sample) as a code competition (``slug``, default
    the task's name) with a hidden solution, scored by the task's metric; returns the number of test rows."""
    sample = Path(sample) if sample else task.sample_dir()
    with (sample / SOLUTION_FILE).open(newline="", encoding="utf-8") as f:
        solution = list(csv.DictReader(f))
    files = {name: sample / name for name in COMPETITION_FILES}
    emulator.add_competition(slug or task.name, files, solution, task.submission.id_column,
                             task.submission.columns[0], list_metric(task))
    return len(solution)
