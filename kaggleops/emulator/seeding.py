"""Seed the emulator with a competition as Kaggle hosts it: public files, a hidden solution, a metric.

A folder with a ``competition.json`` (every bundled competition under ``datasets/``, or a user's own folder) is
served as that file says: metric by name, id/target columns, file or code competition
(:mod:`.competition_folder`). A task's sample folder without one becomes a code competition scored by the task's own
table metric.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaggleops.errors import KopsError
from kaggleops.resources import bundled_competition, bundled_competitions

from .competition_folder import SEED_FILE

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


def competition_folder(task: Any, sample: Path | None = None) -> Path:
    """The folder to seed: ``sample``; else ``task`` itself when it is a bundled slug or a folder path; else the
    task's ``sample_dir()``. An unknown slug raises KopsError listing the bundled ones."""
    if sample is not None:
        return Path(sample)
    if isinstance(task, (str, Path)):
        if (Path(task) / SEED_FILE).is_file():
            return Path(task)
        if str(task) not in bundled_competitions():
            raise KopsError(f"No bundled competition {str(task)!r} (and no folder with a {SEED_FILE} there).",
                            f"Bundled competitions: {', '.join(bundled_competitions())}.")
        return bundled_competition(str(task))
    return Path(task.sample_dir())


def seed_competition(emulator: Any, task: Any, slug: str | None = None, sample: Path | None = None) -> int:
    """Seed one competition; returns the number of hidden test rows.

    ``task``: a bundled competition's slug, a folder holding a ``competition.json``, or a task (its
    ``sample_dir()``, scored by its metric when the folder has no ``competition.json``). ``slug``: the
    competition's slug (default: the seed's, else the task's name).
    """
    folder = competition_folder(task, sample)
    if (folder / SEED_FILE).is_file():
        seed = emulator.seed_folder(folder, slug)
        return emulator.competition_rows(seed.slug)
    with (folder / SOLUTION_FILE).open(newline="", encoding="utf-8") as f:
        solution = list(csv.DictReader(f))
    files = {name: folder / name for name in COMPETITION_FILES}
    emulator.add_competition(slug or task.name, files, solution, task.submission.id_column,
                             task.submission.columns[0], list_metric(task))
    return len(solution)
