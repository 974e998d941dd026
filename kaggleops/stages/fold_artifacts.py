"""What a fold run leaves in MLflow besides its metrics: the OOF table (``oof/oof.csv``, with its ``fold`` column),
the environment it ran in (``environment/requirements.txt``) and its checkpoints (``checkpoint/a|b`` + ``latest.json``,
alternating slots, so a kill mid-upload never loses the last whole one), read back by ``kops train --resume``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kaggleops.adapters.tracking import Tracker
from kaggleops.errors import DataError
from kaggleops.task import TaskBase, hook

OOF_ARTIFACT = "oof"
OOF_FILE = "oof.csv"
OOF_FOLD_COLUMN = "fold"  # in every fold run's oof.csv: the fold that held the row out
CHECKPOINT_ARTIFACT = "checkpoint"
LATEST_FILE = "latest.json"
ENVIRONMENT_ARTIFACT = "environment"  # environment/requirements.txt: the distributions a fold imported
REQUIREMENTS_FILE = "requirements.txt"
CHECKPOINT_PROGRESS = "progress.json"  # optional in a task's checkpoint folder: {"step": N, "total": M}


def oof_file(oof: Any, task: Any, folder: Path, fold: int | None = None) -> Path:
    """The OOF predictions as ``oof.csv`` (a path the task wrote, or a table written here), with a ``fold`` column
    (``fold`` added where the task's table has none): the blendable record ``kops ensemble`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / OOF_FILE
    if isinstance(oof, (str, Path)):
        return _with_fold_column(Path(oof), target, fold)
    missing = [c for c in task.submission.header if c not in oof.columns]
    if missing:
        raise DataError(f"Task {task.name}: the OOF table of train_fold lacks column(s) {', '.join(missing)}.",
                        "Return the id column and the submission columns (see kaggleops.task.FoldResult).")
    if fold is not None and OOF_FOLD_COLUMN not in oof.columns:
        oof = oof.assign(**{OOF_FOLD_COLUMN: fold})
    oof.to_csv(target, index=False)
    return target


def _with_fold_column(source: Path, target: Path, fold: int | None) -> Path:
    """``source`` copied to ``target`` with a ``fold`` column appended when it has none (cells kept as text)."""
    import csv

    with source.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if fold is None or OOF_FOLD_COLUMN in header:
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        return target
    with source.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([rows[0] + [OOF_FOLD_COLUMN], *(r + [str(fold)] for r in rows[1:])])
    tmp.replace(target)
    return target


def requirements_file(folder: Path) -> Path:
    """``requirements.txt``: every distribution the fold imported (the task's own libraries too), pinned."""
    from kaggleops.environment import requirements_text

    path = folder / REQUIREMENTS_FILE
    path.write_text(requirements_text())
    return path


def progress_of(checkpoint: Path | None) -> dict[str, int]:
    """``{"step", "total"}`` from a checkpoint's ``progress.json``, where the task wrote one; else ``{"step"}``
    from the ``latest.json`` kops wrote beside the slot the checkpoint came from (empty when neither says)."""
    if checkpoint is None:
        return {}
    try:
        path = Path(checkpoint) / CHECKPOINT_PROGRESS
        if path.is_file():
            return json.loads(path.read_text())
        pointer = Path(checkpoint).parent / LATEST_FILE  # put there by download_checkpoint
        latest = json.loads(pointer.read_text()) if pointer.is_file() else {}
        if latest.get("slot") == Path(checkpoint).name and latest.get("step") is not None:
            return {"step": int(latest["step"])}
    except (OSError, ValueError):
        pass
    return {}


def start_line(label: str, run_id: str, resume_run: str | None, resume_from: Path | None) -> str:
    """``fold 0 (1/5): run ID`` and, on --resume, from which step of how many it continues (or why from 0)."""
    if resume_run is None:
        return f"{label}: run {run_id}"
    if resume_from is None:
        return f"{label}: resuming run {run_id}: it has no checkpoint yet, so training starts over from step 0"
    at = progress_of(resume_from)
    of = f" of {at['total']}" if "total" in at else ""
    return f"{label}: resuming run {run_id} from step {at.get('step', '?')}{of}"


class CheckpointSlots:
    """``on_checkpoint``: upload each checkpoint into slot ``a`` or ``b`` (alternating) of ``checkpoint/``, then
    ``checkpoint/latest.json`` naming it, behind the metrics logged before it. A kill mid-upload leaves the
    other slot whole, so a checkpoint in the store always has its metrics stored too. ``step``: the step of the
    last checkpoint handed over (or resumed from)."""

    def __init__(self, logger: Any, step: int | None = None) -> None:
        self.logger = logger
        self.slot = "b"
        self.step = step

    def __call__(self, folder: Path, step: int) -> None:
        self.step = step
        self.slot = "a" if self.slot == "b" else "b"
        pointer = folder.parent / f"latest-{step}"
        pointer.mkdir(exist_ok=True)
        (pointer / LATEST_FILE).write_text(json.dumps({"slot": self.slot, "step": step}))
        self.logger.upload(folder, f"{CHECKPOINT_ARTIFACT}/{self.slot}")
        self.logger.upload(pointer, CHECKPOINT_ARTIFACT, on_done=lambda: _remove(folder, pointer))


def _remove(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def download_checkpoint(tracker: Tracker, run_id: str, dst: Path, task: Any = None) -> Path | None:
    """The run's last complete checkpoint folder, downloaded under ``dst``; None when it has none.

    A slot counts as complete when the task's ``is_checkpoint(folder)`` hook says so (default: non-empty).
    """
    def is_checkpoint(folder: Path) -> bool:  # no task: TaskBase's default
        return bool(hook(TaskBase() if task is None else task, "is_checkpoint")(folder))

    names = set(tracker.list_artifacts(run_id, CHECKPOINT_ARTIFACT))
    if f"{CHECKPOINT_ARTIFACT}/{LATEST_FILE}" not in names:
        return None
    latest = json.loads((tracker.download(run_id, f"{CHECKPOINT_ARTIFACT}/{LATEST_FILE}", dst)).read_text())
    other = "b" if latest["slot"] == "a" else "a"
    for slot in (latest["slot"], other):
        if f"{CHECKPOINT_ARTIFACT}/{slot}" in names:
            folder = tracker.download(run_id, f"{CHECKPOINT_ARTIFACT}/{slot}", dst / slot)
            if is_checkpoint(folder):
                if slot == latest["slot"]:  # its step, for a task whose checkpoint has no progress.json
                    (folder.parent / LATEST_FILE).write_text(json.dumps(latest))
                return folder
    return None
