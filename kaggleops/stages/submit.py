"""Submissions: a kernel version (code competition) or a CSV file (file competition), recorded first.

A *submission run* is created in MLflow before anything is sent to Kaggle; its key travels in the
submission's description (``kops:<key>``), so ``kops scores`` can always match a Kaggle
submission to its run, even if the submitting process died right after submitting. ``kops scores``
(:mod:`kaggleops.stages.scores`) writes the leaderboard results back onto the submission run and its source runs.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.adapters.session import Session
from kaggleops.adapters.tracking import Tracker, runs_tagged
from kaggleops.config import KopsConfig
from kaggleops.errors import KernelError, KopsError, QuotaExceeded, SubmissionError
from kaggleops.files import sha256_file
from kaggleops.refs import CompetitionRef, KernelRef
from kaggleops.schema import (
    ARTIFACT_SUBMISSION,
    EVALUATION_SUBMISSION_FILE,
    PLAN_FILE,
    SUBMISSION_FILE,
    TAG_COMPETITION,
    TAG_DATASET,
    TAG_DATASET_VERSION,
    TAG_DATASETS,
    TAG_KERNEL,
    TAG_KERNEL_VERSION,
    TAG_KIND,
    TAG_SOURCE_RUNS,
    TAG_SUBMISSION_DATE,
    TAG_SUBMISSION_ERROR,
    TAG_SUBMISSION_FILE,
    TAG_SUBMISSION_KEY,
    TAG_SUBMISSION_KIND,
    TAG_SUBMISSION_ORIGIN,
    TAG_SUBMISSION_REF,
    TAG_SUBMISSION_SHA256,
    TAG_SUBMISSION_STATUS,
    KernelPlan,
    Kind,
    Origin,
    SubmissionKind,
    SubmissionStatus,
)
from kaggleops.stages.evaluation_api import kernel_timings
from kaggleops.stages.kernel import default_kernel_ref, expand_runs

if TYPE_CHECKING:
    pass

KEY_PATTERN = re.compile(r"kops:([0-9a-f]{12})")
MAX_DESCRIPTION = 250
SAMPLE_SUBMISSION = "sample_submission.csv"


@dataclass(frozen=True)
class SubmitResult:
    submission_ref: int
    submission_run_id: str
    key: str
    kernel: str
    kernel_version: int
    source_runs: list[str]
    file: str = ""
    remaining_today: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def latest_kernel_version(tracker: Tracker, kernel: KernelRef) -> int:
    versions = [int(r.tags[TAG_KERNEL_VERSION]) for r in runs_tagged(tracker, {TAG_KERNEL: kernel.ref})]
    if not versions:
        raise KernelError(f"No run of this experiment was pushed in kernel {kernel.ref}.",
                          "Push one with: kops push-kernel --run RUN_ID (or pass --version N).")
    return max(versions)


def kernel_output(session: Session, kernel: str | None = None, version: int | None = None,
                  out: Path | None = None) -> tuple[KernelRef, list[Path]]:
    """Download a kernel version's output files (e.g. the submission.csv a file competition needs) into ``out``
    (default ``.kops/output/<slug>/v<N>/``). Default kernel and version: the ones ``kops push-kernel`` pushed last.

    Example:
        >>> kernel_output(Session(load_config()))  # doctest: +SKIP
        (then: kops submit --file .kops/output/<slug>/v3/submission.csv)
    """
    cfg, kaggle = session.cfg, session.kaggle
    base = KernelRef.parse(kernel) if kernel else default_kernel_ref(cfg)
    number = version or base.version or latest_kernel_version(session.tracker, base)
    ref = KernelRef(base.owner, base.slug, number)
    folder = out or cfg.root / ".kops" / "output" / ref.slug / f"v{number}"
    return ref, kaggle.kernel_output(ref, folder)


def kernel_plan(kaggle: Kaggle, kernel: KernelRef) -> KernelPlan:
    """The plan (kops-kernel.json) a kernel version wrote to its output: its models and dataset versions."""
    with tempfile.TemporaryDirectory(prefix="kops-kout-") as tmp:
        kaggle.kernel_output(kernel, Path(tmp))
        plan = Path(tmp) / PLAN_FILE
        if not plan.is_file():
            raise KernelError(f"Kernel {kernel} has no {PLAN_FILE} in its output; it was not made by kops "
                              "or did not finish.", f"Check it with: kaggle kernels status {kernel}")
        return KernelPlan.read(plan)


def next_reset(now: datetime | None = None) -> datetime:
    """Kaggle's daily submission counter resets at 00:00 UTC."""
    now = now or datetime.now(timezone.utc)
    return datetime(now.year, now.month, now.day, tzinfo=timezone.utc) + timedelta(days=1)


def check_quota(kaggle: Kaggle, competition: CompetitionRef) -> int | None:
    """Submissions left today; QuotaExceeded (with the reset time) when none are left.

    All-zero limits mean "not on a team yet" (rules not accepted): then Kaggle itself answers the submit.
    """
    limits = kaggle.submission_limits(competition)
    if limits["num_allowed_now"] > 0:
        return int(limits["num_allowed_now"])
    if limits["num_today"] == 0 and limits["num_total"] == 0:
        return None
    if limits["limited_by_total"]:
        raise QuotaExceeded(f"No submissions left for {competition}: the lifetime cap is reached "
                            f"({limits['num_total']} made).", "Nothing to wait for; see kops leaderboard.")
    reset = next_reset()
    left = reset - datetime.now(timezone.utc)
    hours, minutes = divmod(int(left.total_seconds()) // 60, 60)
    raise QuotaExceeded(f"No submissions left today for {competition} ({limits['num_today']} used); the limit "
                        f"resets at {reset:%Y-%m-%d %H:%M} UTC (in {hours}h{minutes:02d}m).",
                        "Submit again after the reset with the same kops submit command.")


def datasets_of(tracker: Tracker, run_ids: list[str]) -> list[str]:
    out = []
    for run_id in run_ids:
        tags = tracker.get_run(run_id).tags
        if TAG_DATASET in tags:
            out.append(f"{tags[TAG_DATASET]}/{tags.get(TAG_DATASET_VERSION, '')}".rstrip("/"))
    return out


def _description(key: str, what: str, message: str) -> str:
    return f"kops:{key} {what} {message}".strip()[:MAX_DESCRIPTION]


def _start_submission_run(tracker: Tracker, cfg: KopsConfig, name: str, message: str,
                          tags: dict[str, str]) -> tuple[str, str]:
    key = uuid.uuid4().hex[:12]
    run_id = tracker.start_run(name, {"message": message or "-"}, {
        TAG_KIND: Kind.SUBMISSION, TAG_SUBMISSION_ORIGIN: Origin.KOPS, TAG_SUBMISSION_KEY: key,
        TAG_COMPETITION: cfg.competition, TAG_SUBMISSION_STATUS: SubmissionStatus.SUBMITTING,
        TAG_SUBMISSION_DATE: datetime.now(timezone.utc).isoformat(timespec="seconds"), **tags,
    })
    # the published models it scores, as MLflow 3 inputs (the run page links them; the Models tab lists the run)
    sources = [r for r in tags.get(TAG_SOURCE_RUNS, "").split(",") if r]
    tracker.link_models(run_id, [models[0] for source in sources if (models := tracker.models_of(source))])
    return run_id, key


def _send(tracker: Tracker, run_id: str, send: Callable[[], int]) -> int:
    """Call ``send()``; record the ref (PENDING) or the failure on the submission run."""
    try:
        sub_ref = int(send())
    except Exception as e:
        tracker.set_tags(run_id, {TAG_SUBMISSION_STATUS: SubmissionStatus.FAILED, TAG_SUBMISSION_ERROR: str(e)[:500]})
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.set_tags(run_id, {TAG_SUBMISSION_REF: str(sub_ref), TAG_SUBMISSION_STATUS: SubmissionStatus.PENDING})
    tracker.end_run(run_id)
    return sub_ref


def _already_submitted(tracker: Tracker, what: str, tags: dict[str, str]) -> None:
    """Refuse a second submission of the same thing (a kernel version, a file's sha256) that Kaggle took."""
    for run in runs_tagged(tracker, {TAG_KIND: Kind.SUBMISSION, **tags}):
        run_tags, metrics = run.tags, run.metrics
        status = run_tags.get(TAG_SUBMISSION_STATUS, "")
        if status in (SubmissionStatus.PENDING, SubmissionStatus.COMPLETE):
            score = f", public {metrics['lb_public']:g}" if "lb_public" in metrics else ""
            raise SubmissionError(
                f"{what} was already submitted: submission {run_tags.get(TAG_SUBMISSION_REF, '?')} ({status}{score}) "
                f"on {run_tags.get(TAG_SUBMISSION_DATE, '?')[:10]}, submission run {run.id}.",
                "A second copy spends one of the day's submissions for the same score; to do it anyway: --again")


def sample_submission(cfg: KopsConfig, kaggle: Kaggle, scratch: Path) -> Path:
    """The competition's sample_submission.csv: from ``data_dir``, the attached Kaggle input or the download
    cache when one holds it, else downloaded alone into ``scratch``."""
    from kaggleops.stages.data import attached_competition_dir, cache_dir

    for folder in (cfg.resolved_data_dir(), attached_competition_dir(cfg.competition),
                   cache_dir(cfg.competition, cfg.resolved_kaggle_endpoint)):
        if folder is not None and (folder / SAMPLE_SUBMISSION).is_file():
            return folder / SAMPLE_SUBMISSION
    try:
        path = kaggle.download_competition_file(CompetitionRef.parse(cfg.competition), SAMPLE_SUBMISSION, scratch)
    except KopsError as e:
        if "not found" in e.message:  # Kaggle answers 404 for a file the competition does not have
            raise SubmissionError(f"Competition {cfg.competition} has no {SAMPLE_SUBMISSION} on {kaggle.web_base} to "
                                  "check the file against.", "Skip the check with --no-check") from None
        raise SubmissionError(f"Cannot check the file against {cfg.competition}'s {SAMPLE_SUBMISSION}: {e.message}",
                              "Fetch the competition's files with: kops data (or skip the check: --no-check)") from None
    if not path.is_file():
        raise SubmissionError(f"Competition {cfg.competition} has no {SAMPLE_SUBMISSION} to check the file against.",
                              "Skip the check with --no-check")
    return path


def check_file(cfg: KopsConfig, kaggle: Kaggle, path: Path) -> None:
    """Refuse ``path`` before upload when Kaggle would refuse it (see :mod:`kaggleops.stages.submission_file`)."""
    from kaggleops.stages.submission_file import first_problem

    if not path.is_file():
        raise SubmissionError(f"Submission file {path} not found.", "Pass the CSV to submit: --file PATH")
    with tempfile.TemporaryDirectory(prefix="kops-sample-") as scratch:
        problem = first_problem(path, sample_submission(cfg, kaggle, Path(scratch)))
    if problem:
        raise SubmissionError(f"{path.name} would be refused by Kaggle: {problem}.",
                              "Fix the file (nothing was uploaded), or skip this check with --no-check")


def submit(session: Session, kernel: str | None = None, version: int | None = None, message: str = "",
           file: Path | None = None, runs: list[str] | None = None,
           plan: KernelPlan | None = None, check: bool = True, again: bool = False) -> SubmitResult:
    """Submit a kernel version (code competition) or ``file`` (file competition), recording a submission run first.

    The day's remaining submissions are checked first (QuotaExceeded names the reset time). ``plan``: the
    kernel version's plan when the caller has it (``push-kernel --submit``), else read from the kernel's output.
    A file is checked against the competition's sample_submission.csv first (``check``); a kernel version or a
    file (by sha256) that was already submitted and taken by Kaggle is refused unless ``again``.
    An evaluation-API kernel (``plan.submission_kind``) is submitted by its ``submission.parquet``; its timings (model
    loading, per-call latency on the local gateway) go on the submission run as ``kernel_*`` metrics.
    The scores come later: :func:`kaggleops.stages.scores.await_result` (``kops submit --wait``) or
    :func:`kaggleops.stages.scores.scores`.

    Example:
        >>> submit(Session(load_config()))  # the latest kernel version pushed by kops  # doctest: +SKIP
        >>> submit(Session(load_config()), file=Path("submission.csv"), runs=["3f2a…"])  # doctest: +SKIP
    """
    cfg, tracker, kaggle = session.cfg, session.tracker, session.kaggle
    competition = CompetitionRef.parse(cfg.competition)
    if file is not None:
        # prefixes or pulled origin ids resolved; a k-fold parent stands for its folds (each gets the LB scores,
        # and the parent through them), as in a kernel submission
        runs = expand_runs(tracker, runs or [])[0]
        if check:
            check_file(cfg, kaggle, Path(file))
        return _submit_file(cfg, tracker, kaggle, competition, Path(file), runs or [], message, again)
    base = KernelRef.parse(kernel) if kernel else default_kernel_ref(cfg)
    ref = KernelRef(base.owner, base.slug, version or base.version or latest_kernel_version(tracker, base))
    if not again:
        _already_submitted(tracker, f"Kernel {ref}", {TAG_KERNEL: ref.ref, TAG_KERNEL_VERSION: str(ref.version)})
    plan = plan or kernel_plan(kaggle, ref)
    source_runs = plan.source_runs
    remaining = check_quota(kaggle, competition)
    evaluation = plan.submission_kind == SubmissionKind.EVALUATION_API
    run_id, key = _start_submission_run(tracker, cfg, f"submission-{ref.slug}-v{ref.version}", message, {
        TAG_KERNEL: ref.ref, TAG_KERNEL_VERSION: str(ref.version), TAG_SOURCE_RUNS: ",".join(source_runs),
        TAG_DATASETS: ",".join(plan.dataset_versions),
        **({TAG_SUBMISSION_KIND: SubmissionKind.EVALUATION_API} if evaluation else {}),
    })
    if evaluation:
        timings = kernel_timings(kaggle, ref)
        if timings:
            tracker.log_metrics(run_id, timings)
    output = EVALUATION_SUBMISSION_FILE if evaluation else SUBMISSION_FILE
    sub_ref = _send(tracker, run_id, lambda: kaggle.submit_code(competition, ref, output,
                                                                _description(key, str(ref), message)))
    result = SubmitResult(sub_ref, run_id, key, ref.ref, int(ref.version or 0), source_runs,
                          remaining_today=None if remaining is None else remaining - 1)
    return result


def _submit_file(cfg: KopsConfig, tracker: Tracker, kaggle: Kaggle, competition: CompetitionRef, path: Path,
                 runs: list[str], message: str, again: bool = False) -> SubmitResult:
    if not path.is_file():
        raise SubmissionError(f"Submission file {path} not found.", "Pass the CSV to submit: --file PATH")
    sha = sha256_file(path)
    if not again:
        _already_submitted(tracker, f"{path.name} (sha256 {sha[:12]}…)", {TAG_SUBMISSION_SHA256: sha})
    datasets = datasets_of(tracker, runs)  # also checks that every run exists
    remaining = check_quota(kaggle, competition)
    run_id, key = _start_submission_run(tracker, cfg, f"submission-{path.stem}", message, {
        TAG_SUBMISSION_FILE: path.name, TAG_SUBMISSION_SHA256: sha, TAG_SOURCE_RUNS: ",".join(runs),
        TAG_DATASETS: ",".join(datasets),
    })
    tracker.log_artifact(run_id, path, ARTIFACT_SUBMISSION)
    sub_ref = _send(tracker, run_id, lambda: kaggle.submit_file(competition, path,
                                                                _description(key, path.name, message)))
    return SubmitResult(sub_ref, run_id, key, "", 0, runs, file=str(path),
                        remaining_today=None if remaining is None else remaining - 1)
