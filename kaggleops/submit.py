"""Submissions and score write-back.

A *submission run* is created in MLflow before anything is sent to Kaggle; its key travels in the
submission's description (``kops:<key>``), so ``kops scores`` can always match a Kaggle submission to the
run, even if the submitting process died right after submitting.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kaggleops.config import KopsConfig
from kaggleops.errors import KernelError, TimedOut
from kaggleops.kaggle import Kaggle, Submission
from kaggleops.kernels import PLAN_FILE, default_kernel_ref
from kaggleops.refs import CompetitionRef, KernelRef
from kaggleops.tracking import TAG_KERNEL, TAG_KERNEL_VERSION, Tracker, runs_tagged

if TYPE_CHECKING:
    from mlflow.entities import Run

TAG_KIND = "kops.kind"
TAG_KEY = "kops.submission.key"
TAG_REF = "kops.submission.ref"
TAG_STATUS = "kops.submission.status"
TAG_ERROR = "kops.submission.error"
TAG_SOURCE_RUNS = "kops.source_runs"
TAG_DATASETS = "kops.datasets"
TAG_COMPETITION = "kops.competition"
KEY_PATTERN = re.compile(r"kops:([0-9a-f]{12})")
SCORE_METRICS = {"lb_public": "public_score", "lb_private": "private_score"}
DEFAULT_OUTPUT_FILE = "submission.csv"


@dataclass(frozen=True)
class SubmitResult:
    submission_ref: int
    submission_run_id: str
    key: str
    kernel: str
    kernel_version: int
    source_runs: list[str]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ScoreRow:
    submission_run_id: str
    submission_ref: int | None
    status: str
    lb_public: float | None
    lb_private: float | None
    source_runs: list[str] = field(default_factory=list)
    error: str = ""
    changed: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def latest_kernel_version(tracker: Tracker, kernel: KernelRef) -> int:
    versions = [int(r.data.tags[TAG_KERNEL_VERSION]) for r in runs_tagged(tracker, {TAG_KERNEL: kernel.ref})]
    if not versions:
        raise KernelError(f"No run of this experiment was pushed in kernel {kernel.ref}.",
                          "Push one with: kops push-kernel --run RUN_ID (or pass --version N).")
    return max(versions)


def kernel_plan(kaggle: Kaggle, kernel: KernelRef) -> dict[str, object]:
    """The plan (kops-kernel.json) a kernel version wrote to its output: its models and dataset versions."""
    with tempfile.TemporaryDirectory(prefix="kops-kout-") as tmp:
        kaggle.kernel_output(kernel, Path(tmp))
        plan = Path(tmp) / PLAN_FILE
        if not plan.is_file():
            raise KernelError(f"Kernel {kernel} has no {PLAN_FILE} in its output; it was not made by kops "
                              "or did not finish.", f"Check it with: kaggle kernels status {kernel}")
        return json.loads(plan.read_text())


def submit(cfg: KopsConfig, kernel: str | None = None, version: int | None = None, message: str = "",
           kaggle: Kaggle | None = None) -> SubmitResult:
    """Submit a kernel version to the code competition, recording a submission run first.

    Example:
        >>> submit(load_config())  # the latest kernel version pushed by kops  # doctest: +SKIP
    """
    tracker = Tracker(cfg)
    kaggle = kaggle or Kaggle(cfg.resolved_kaggle_endpoint)
    base = KernelRef.parse(kernel) if kernel else default_kernel_ref(cfg)
    ref = KernelRef(base.owner, base.slug, version or base.version or latest_kernel_version(tracker, base))
    plan = kernel_plan(kaggle, ref)
    models = plan["models"]
    source_runs = [m["run_id"] for m in models]  # type: ignore[index]
    key = uuid.uuid4().hex[:12]
    run_id = tracker.start_run(f"submission-{ref.slug}-v{ref.version}", {"message": message or "-"}, {
        TAG_KIND: "submission", TAG_KEY: key, TAG_COMPETITION: cfg.competition, TAG_STATUS: "SUBMITTING",
        TAG_KERNEL: ref.ref, TAG_KERNEL_VERSION: str(ref.version), TAG_SOURCE_RUNS: ",".join(source_runs),
        TAG_DATASETS: ",".join(f"{m['dataset']}/{m['dataset_version']}" for m in models),  # type: ignore[index]
    })
    description = f"kops:{key} {ref} {message}".strip()
    try:
        sub_ref = kaggle.submit_code(CompetitionRef.parse(cfg.competition), ref, DEFAULT_OUTPUT_FILE, description)
    except Exception as e:
        tracker.set_tags(run_id, {TAG_STATUS: "FAILED", TAG_ERROR: str(e)[:500]})
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.set_tags(run_id, {TAG_REF: str(sub_ref), TAG_STATUS: "PENDING"})
    tracker.end_run(run_id)
    return SubmitResult(sub_ref, run_id, key, ref.ref, int(ref.version or 0), source_runs)


def _match(run: Run, by_key: dict[str, Submission], by_ref: dict[int, Submission]) -> Submission | None:
    tags = run.data.tags
    if tags.get(TAG_KEY) in by_key:
        return by_key[tags[TAG_KEY]]
    ref = tags.get(TAG_REF)
    return by_ref.get(int(ref)) if ref and ref.isdigit() else None


def _write_back(tracker: Tracker, run: Run, sub: Submission) -> ScoreRow:
    """Put status and scores on the submission run and its source runs; only what changed is written."""
    tags = run.data.tags
    sources = [r for r in tags.get(TAG_SOURCE_RUNS, "").split(",") if r]
    row = ScoreRow(run.info.run_id, sub.ref, sub.status, sub.public_score, sub.private_score, sources, sub.error)
    new_tags = {TAG_REF: str(sub.ref), TAG_STATUS: sub.status}
    if sub.error:
        new_tags[TAG_ERROR] = sub.error[:500]
    changed_tags = {k: v for k, v in new_tags.items() if tags.get(k) != v}
    if changed_tags:
        tracker.set_tags(run.info.run_id, changed_tags)
    scores = {m: getattr(sub, attr) for m, attr in SCORE_METRICS.items() if getattr(sub, attr) is not None}
    changed_scores = {m: v for m, v in scores.items() if run.data.metrics.get(m) != v}
    for target in [run.info.run_id, *sources] if changed_scores else []:
        tracker.log_metrics(target, changed_scores)
    row.changed = bool(changed_tags or changed_scores)
    return row


def scores(cfg: KopsConfig, wait: bool = False, timeout_s: float = 1800, poll_s: float = 5.0,
           kaggle: Kaggle | None = None) -> list[ScoreRow]:
    """Pull the competition's submissions and write ``lb_public``/``lb_private`` back onto the runs.

    Idempotent: a second call with nothing new on Kaggle writes nothing. With ``wait``, polls until no
    submission is PENDING.
    """
    tracker = Tracker(cfg)
    kaggle = kaggle or Kaggle(cfg.resolved_kaggle_endpoint)
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _pull_once(cfg, tracker, kaggle)
        if not wait or all(r.status != "PENDING" for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise TimedOut(f"Submissions still PENDING after {timeout_s:.0f} s.", "Run `kops scores` later.")
        time.sleep(poll_s)


def _pull_once(cfg: KopsConfig, tracker: Tracker, kaggle: Kaggle) -> list[ScoreRow]:
    runs = runs_tagged(tracker, {TAG_KIND: "submission", TAG_COMPETITION: cfg.competition})
    if not runs:
        return []
    subs = kaggle.list_submissions(CompetitionRef.parse(cfg.competition))
    by_key = {m.group(1): s for s in subs if (m := KEY_PATTERN.search(s.description))}
    by_ref = {s.ref: s for s in subs}
    rows = []
    for run in runs:
        sub = _match(run, by_key, by_ref)
        if sub is not None:
            rows.append(_write_back(tracker, run, sub))
    return rows
