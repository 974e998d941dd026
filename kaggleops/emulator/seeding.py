"""Seed the emulator with a task's bundled competition (sample files + hidden solution), as Kaggle hosts it."""

from __future__ import annotations

import csv
from typing import Any

COMPETITION_FILES = ("train.csv", "test.csv", "sample_submission.csv")
SOLUTION_FILE = "solution.csv"


def seed_competition(emulator: Any, task: Any, slug: str | None = None) -> int:
    """Register ``task``'s bundled sample as a code competition (``slug``, default the task's name) with a hidden
    solution; returns the number of test rows."""
    sample = task.sample_dir()
    with (sample / SOLUTION_FILE).open(newline="", encoding="utf-8") as f:
        solution = list(csv.DictReader(f))
    files = {name: sample / name for name in COMPETITION_FILES}
    emulator.add_competition(slug or task.name, files, solution, task.id_column, task.target_column, task.metric)
    return len(solution)
