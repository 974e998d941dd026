"""One kernel from a blend: an ensemble run → its members' fold runs with their weights, and the time budget.

``kops push-kernel --run ENSEMBLE_RUN`` attaches every member's folds; a member of weight ``w`` with ``k`` folds gives
each fold ``w / k``, and the task's ``predict`` blends its model folders with those ``ctx.weights`` (the same blend
its ``combine`` scored on the OOF). Before anything is published, the kernel's time is estimated from the members'
measured kernel timings (``kernel_seconds_per_model`` on a fold run, logged when a kernel that ran it finished)
and refused when it would exceed the session's limit.

Members may have trained different versions of the project task's code (``kops.task.code``): each other version
comes from a member's ``task-code/`` artifact (else from its recorded git commit, when that gives the same hash),
and the kernel predicts each version's models in its own process (:mod:`kaggleops.kernel.versions`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggleops.adapters.tracking import Tracker
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, KopsError
from kaggleops.schema import (
    ARTIFACT_TASK_CODE,
    TAG_DATASET,
    TAG_ENSEMBLE_METHOD,
    TAG_ENSEMBLE_WEIGHTS,
    TAG_GIT_COMMIT,
    TAG_KIND,
    TAG_TASK_CODE,
    TIMING_FILE,
    Kind,
    SubmissionKind,
)

METRIC_KERNEL_S = "kernel_seconds"  # on each model run of a finished kernel: the kernel's total seconds
METRIC_PER_MODEL_S = "kernel_seconds_per_model"  # … divided by the model folders it loaded


@dataclass
class EnsemblePlan:
    """An ensemble run expanded: fold run → weight (summing to 1), and its members (k-fold runs)."""

    run_id: str
    method: str
    members: list[str]
    fold_weights: dict[str, float] = field(default_factory=dict)

    def as_plan(self) -> dict[str, Any]:
        """The ``ensemble`` entry of the kernel plan (its run gets the scores, as the models' runs do)."""
        return {"run_id": self.run_id, "method": self.method, "members": self.members}


def is_ensemble(tracker: Tracker, run_id: str) -> bool:
    return tracker.get_run(tracker.resolve(run_id)).tags.get(TAG_KIND) == Kind.ENSEMBLE


def expand_ensemble(tracker: Tracker, run_id: str) -> EnsemblePlan:
    """The ensemble's fold runs and their weights; refused for a rank-averaged blend (its kernel would average
    raw predictions, not the ranks it was chosen on)."""
    from kaggleops.stages.ensemble import member_fold_runs

    run_id = tracker.resolve(run_id)
    tags = tracker.get_run(run_id).tags
    method = tags.get(TAG_ENSEMBLE_METHOD, "")
    if method == "rank":
        raise ConfigError(f"Ensemble {run_id} was chosen on ranks (--method rank); a kernel blends the members' "
                          "predictions themselves, which those weights were not chosen for.",
                          "Make a kernel-ready blend with: kops ensemble … --method caruana (or hill)")
    try:
        weights = {str(k): float(v) for k, v in json.loads(tags.get(TAG_ENSEMBLE_WEIGHTS, "")).items()}
    except (ValueError, AttributeError):
        raise ConfigError(f"Ensemble run {run_id} carries no readable {TAG_ENSEMBLE_WEIGHTS} tag.",
                          "Make it again with: kops ensemble") from None
    plan = EnsemblePlan(run_id, method, list(weights))
    total = sum(weights.values()) or 1.0
    for member, w in weights.items():
        folds = member_fold_runs(tracker, member)
        for fold_run in folds:
            plan.fold_weights[fold_run] = plan.fold_weights.get(fold_run, 0.0) + w / total / len(folds)
    return plan


def fold_code_versions(tracker: Tracker, ensemble: EnsemblePlan, current: str | None) -> dict[str, str]:
    """Fold run → the task code version it trained (``kops.task.code``; a run without the tag counts as ``current``,
    as does every run of a built-in task); empty when every member ran ``current``: the kernel ships one version."""
    from kaggleops.stages.ensemble import member_fold_runs

    versions = {fold_run: tracker.get_run(fold_run).tags.get(TAG_TASK_CODE) or current or ""
                for member in ensemble.members for fold_run in member_fold_runs(tracker, member)}
    return versions if set(versions.values()) - {current or ""} else {}


def check_mixed_code(ensemble: EnsemblePlan, versions: dict[str, str], reranker: str | None,
                     submission_kind: str | None) -> None:
    """A blend of several code versions runs each in its own process and combines their tables: refused with a
    second stage or an evaluation-API competition (neither combines per-version tables)."""
    if not versions:
        return
    what = ("a second stage (--reranker)" if reranker else
            "an evaluation-API competition" if submission_kind == SubmissionKind.EVALUATION_API else None)
    if what:
        raise KopsError(f"Ensemble {ensemble.run_id} blends runs of {len(set(versions.values()))} task code "
                        f"versions, which a kernel with {what} cannot run (each version predicts in its own process).",
                        "Retrain the members on the current code (kops train), or blend runs of one version")


def fetch_code_versions(cfg: KopsConfig, tracker: Tracker, ensemble: EnsemblePlan, versions: dict[str, str],
                        current: str | None, dst: Path) -> dict[str, Path]:
    """Every version but ``current``, staged as the kernel ships it (content sha256 → folder): from the ``task-code/``
    artifact of a member that trained it (its marker checked against the tag), else rebuilt from the member's
    recorded git commit when that gives the same hash; a member with neither is refused in one line."""
    from kaggleops.kernel.code import read_code_marker
    from kaggleops.stages.ensemble import member_fold_runs

    found: dict[str, Path] = {}
    for member in ensemble.members:
        version = next((versions[r] for r in member_fold_runs(tracker, member) if r in versions), None)
        if not version or version == current or version in found:
            continue
        what = f"Member {member} of ensemble {ensemble.run_id} (task code {version[:12]})"
        (dst / version[:16]).mkdir(parents=True, exist_ok=True)
        if ARTIFACT_TASK_CODE in {Path(a).name for a in tracker.list_artifacts(member)}:
            folder = tracker.download(member, ARTIFACT_TASK_CODE, dst / version[:16])
            read_code_marker(folder, version, f"{what}: its {ARTIFACT_TASK_CODE}/ artifact")
        else:
            commit = tracker.get_run(member).tags.get(TAG_GIT_COMMIT, "")
            folder = rebuild_from_git(cfg, commit, version, dst / version[:16]) if commit else None
            if folder is None:
                raise KopsError(f"{what} has no {ARTIFACT_TASK_CODE}/ artifact (trained before kops kept the code a "
                                "run ran) and its recorded git commit " + (f"{commit[:12]} does not hold that code"
                                                                           if commit else "is unknown") + ".",
                                "Retrain it with: kops train (or blend runs of one task code version)")
        found[version] = folder
    return found


def rebuild_from_git(cfg: KopsConfig, commit: str, version: str, dst: Path) -> Path | None:
    """The task code of ``commit`` (``git archive`` of the project's repository into ``dst``), staged as the kernel
    ships it, when its hash is ``version``; None when git cannot give it or the hash differs (e.g. a dirty tree)."""
    import io
    import subprocess
    import tarfile

    from kaggleops.adapters.git import run_git
    from kaggleops.kernel.code import stage_code, task_code_version, task_kernel_spec

    try:
        top = run_git(["rev-parse", "--show-toplevel"], cfg.root).stdout.strip()
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=top or None, capture_output=True,
                                 timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not top or archive.returncode != 0:
        return None
    tree = dst / "git"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python ≥ 3.11.4: no links or paths out of ``tree``
            tar.extractall(tree, filter="data")
        else:
            tar.extractall(tree)  # noqa: S202 (our own repository's archive)
    old = cfg.model_copy(update={"root": tree / cfg.root.resolve().relative_to(Path(top).resolve())})
    try:
        if task_code_version(old) != version:
            return None
        staged = stage_code(old, task_kernel_spec(old), dst / "staged")
    except (ConfigError, OSError, ValueError):
        return None
    return dst / "staged" if staged else None


def check_published(tracker: Tracker, ensemble: EnsemblePlan) -> None:
    """--no-publish: name the first member with a fold run never published, and the command that publishes it."""
    from kaggleops.stages.ensemble import member_fold_runs

    for member in ensemble.members:
        bare = [r for r in member_fold_runs(tracker, member) if TAG_DATASET not in tracker.get_run(r).tags]
        if bare:
            raise KopsError(f"Member {member} of ensemble {ensemble.run_id} has {len(bare)} fold run(s) never "
                            "published (and --no-publish was given).",
                            f"Publish it with: kops publish {member} (or push without --no-publish: kops publishes it)")


def estimate_seconds(tracker: Tracker, fold_runs: list[str]) -> tuple[float | None, int]:
    """(estimated kernel seconds, how many fold runs had a measured timing): the measured per-model seconds summed,
    a fold run never timed counted as the mean of those measured; None when none was measured."""
    known = [tracker.get_run(r).metrics.get(METRIC_PER_MODEL_S) for r in fold_runs]
    measured = [s for s in known if s is not None]
    if not measured:
        return None, 0
    mean = sum(measured) / len(measured)
    return sum(mean if s is None else s for s in known), len(measured)


def check_budget(tracker: Tracker, fold_runs: list[str], limit_s: float, ignore: bool) -> float | None:
    """The estimate; refused (one line) when it exceeds ``limit_s`` unless ``ignore``."""
    estimate, measured = estimate_seconds(tracker, fold_runs)
    if estimate is not None and estimate > limit_s and not ignore:
        raise KopsError(f"The blend's kernel would take about {estimate:.0f} s ({len(fold_runs)} model(s), "
                        f"{measured} timed by earlier kernels), over the session limit of {limit_s:.0f} s.",
                        "Blend fewer members, raise --time-limit, or push anyway with --ignore-time-limit")
    return estimate


def record_timings(tracker: Tracker, kaggle: Any, kernel: Any, fold_runs: list[str]) -> float | None:
    """A finished kernel's total seconds (its ``kops-timing.json``) onto each model run it loaded; None when the
    output has no timings."""
    with tempfile.TemporaryDirectory(prefix="kops-kout-") as tmp:
        try:
            kaggle.kernel_output(kernel, Path(tmp))
            rows = json.loads((Path(tmp) / TIMING_FILE).read_text())
        except (KopsError, OSError, ValueError):
            return None
    if not isinstance(rows, dict):
        return None
    total = float(sum(v for v in rows.values() if isinstance(v, (int, float))))
    for run_id in fold_runs:
        tracker.log_metrics(run_id, {METRIC_KERNEL_S: total, METRIC_PER_MODEL_S: total / max(len(fold_runs), 1)})
    return total
