"""Submissions: a kernel version (code competition) or a CSV file (file competition), recorded first.

A *submission run* is created in MLflow before anything is sent to Kaggle; its key travels in the
submission's description (``kops:<key>``), so ``kops scores`` can always match a Kaggle
submission to its run, even if the submitting process died right after submitting. ``scores`` writes the
leaderboard results back onto the submission run and its source runs.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from kaggleops.adapters.kaggle import Kaggle, Submission
from kaggleops.adapters.tracking import Tracker, open_tracker, runs_tagged
from kaggleops.config import KopsConfig
from kaggleops.errors import KernelError, KopsError, QuotaExceeded, SubmissionError, TimedOut
from kaggleops.files import sha256_file
from kaggleops.polling import poll
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
    TAG_PARENT,
    TAG_SOURCE_RUNS,
    TAG_SUBMISSION_DATE,
    TAG_SUBMISSION_DESCRIPTION,
    TAG_SUBMISSION_ERROR,
    TAG_SUBMISSION_ERROR_TYPE,
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
from kaggleops.stages.evaluation_api import ERROR_HINTS, error_type, kernel_timings
from kaggleops.stages.kernel import default_kernel_ref, expand_runs

if TYPE_CHECKING:
    from mlflow.entities import Run

KEY_PATTERN = re.compile(r"kops:([0-9a-f]{12})")
SCORE_METRICS = {"lb_public": "public_score", "lb_private": "private_score"}
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
    versions = [int(r.data.tags[TAG_KERNEL_VERSION]) for r in runs_tagged(tracker, {TAG_KERNEL: kernel.ref})]
    if not versions:
        raise KernelError(f"No run of this experiment was pushed in kernel {kernel.ref}.",
                          "Push one with: kops push-kernel --run RUN_ID (or pass --version N).")
    return max(versions)


def kernel_output(cfg: KopsConfig, kernel: str | None = None, version: int | None = None,
                  out: Path | None = None, kaggle: Kaggle | None = None) -> tuple[KernelRef, list[Path]]:
    """Download a kernel version's output files (e.g. the submission.csv a file competition needs) into ``out``
    (default ``.kops/output/<slug>/v<N>/``). Default kernel and version: the ones ``kops push-kernel`` pushed last.

    Example:
        >>> kernel_output(load_config())  # doctest: +SKIP
        (then: kops submit --file .kops/output/<slug>/v3/submission.csv)
    """
    kaggle = kaggle or Kaggle.from_config(cfg)
    base = KernelRef.parse(kernel) if kernel else default_kernel_ref(cfg)
    number = version or base.version or latest_kernel_version(open_tracker(cfg), base)
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


def _datasets_of(tracker: Tracker, run_ids: list[str]) -> list[str]:
    out = []
    for run_id in run_ids:
        tags = tracker.get_run(run_id).data.tags
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
        run_tags, metrics = run.data.tags, run.data.metrics
        status = run_tags.get(TAG_SUBMISSION_STATUS, "")
        if status in (SubmissionStatus.PENDING, SubmissionStatus.COMPLETE):
            score = f", public {metrics['lb_public']:g}" if "lb_public" in metrics else ""
            raise SubmissionError(
                f"{what} was already submitted: submission {run_tags.get(TAG_SUBMISSION_REF, '?')} ({status}{score}) "
                f"on {run_tags.get(TAG_SUBMISSION_DATE, '?')[:10]}, submission run {run.info.run_id}.",
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


def submit(cfg: KopsConfig, kernel: str | None = None, version: int | None = None, message: str = "",
           kaggle: Kaggle | None = None, file: Path | None = None, runs: list[str] | None = None,
           plan: KernelPlan | None = None, check: bool = True, again: bool = False,
           wait: bool = False, timeout_s: float = 3600) -> SubmitResult:
    """Submit a kernel version (code competition) or ``file`` (file competition), recording a submission run first.

    The day's remaining submissions are checked first (QuotaExceeded names the reset time). ``plan``: the
    kernel version's plan when the caller has it (``push-kernel --submit``), else read from the kernel's output.
    A file is checked against the competition's sample_submission.csv first (``check``); a kernel version or a
    file (by sha256) that was already submitted and taken by Kaggle is refused unless ``again``.
    An evaluation-API kernel (``plan.submission_kind``) is submitted by its ``submission.parquet``; its timings (model
    loading, per-call latency on the local gateway) go on the submission run as ``kernel_*`` metrics.
    With ``wait`` the scores are awaited (:func:`await_result`): a failed submission raises a one-line
    SubmissionError naming its error type, after its run is marked FAILED.

    Example:
        >>> submit(load_config())  # the latest kernel version pushed by kops  # doctest: +SKIP
        >>> submit(load_config(), file=Path("submission.csv"), runs=["3f2a…"])  # doctest: +SKIP
    """
    tracker = open_tracker(cfg)
    kaggle = kaggle or Kaggle.from_config(cfg)
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
    if wait:
        await_result(cfg, result, kaggle, timeout_s)
    return result


def await_result(cfg: KopsConfig, result: SubmitResult, kaggle: Kaggle | None = None, timeout_s: float = 3600,
                 poll_s: float = 1.0) -> ScoreRow:
    """Poll until the submission is scored; its scores are then on the runs (:func:`scores`). A submission that
    ends in ERROR raises SubmissionError: one line naming what failed (an evaluation API's error type) and what
    to do; its submission run is FAILED with the error tags. Nothing is resubmitted."""
    kaggle = kaggle or Kaggle.from_config(cfg)

    def settled() -> ScoreRow | None:
        rows = [r for r in _pull_once(cfg, open_tracker(cfg), kaggle, False)
                if r.submission_ref == result.submission_ref]
        return rows[0] if rows and rows[0].status != SubmissionStatus.PENDING else None

    row = poll(settled, timeout_s, poll_s, lambda: TimedOut(f"Submission {result.submission_ref} still PENDING after "
                                                            f"{timeout_s:.0f} s.", "Run `kops scores --wait` later."))
    if row.status == SubmissionStatus.ERROR:
        kind = error_type(row.error)
        what = f"{kind} ({row.error.split(kind, 1)[1].lstrip(': ') or 'no details'})" if kind else row.error
        what_ran = f"{result.kernel}/{result.kernel_version}" if result.kernel else result.file
        run_status = open_tracker(cfg).get_run(result.submission_run_id).info.status
        raise SubmissionError(f"Submission {result.submission_ref} of {what_ran} failed on "
                              f"Kaggle's side: {what.rstrip('.')}; submission run {result.submission_run_id} is "
                              f"{run_status}.",
                              ERROR_HINTS.get(kind, f"See the kernel's log: kaggle kernels logs {result.kernel}"))
    return row


def _submit_file(cfg: KopsConfig, tracker: Tracker, kaggle: Kaggle, competition: CompetitionRef, path: Path,
                 runs: list[str], message: str, again: bool = False) -> SubmitResult:
    if not path.is_file():
        raise SubmissionError(f"Submission file {path} not found.", "Pass the CSV to submit: --file PATH")
    sha = sha256_file(path)
    if not again:
        _already_submitted(tracker, f"{path.name} (sha256 {sha[:12]}…)", {TAG_SUBMISSION_SHA256: sha})
    datasets = _datasets_of(tracker, runs)  # also checks that every run exists
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


# ---- scores: Kaggle submissions → status and lb_public / lb_private on the runs ------------------------

KERNEL_IN_TEXT = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9_-]*)/([a-z0-9][a-z0-9-]*[a-z0-9])(?:/|\s+(?i:v|version)\s*)(\d+)\b")
BARE_VERSION = re.compile(r"\b(?i:v|version)\s*(\d+)\b")


@dataclass
class ScoreRow:
    submission_run_id: str  # "" for a submission made outside kops and not recorded (see ``adopt``)
    submission_ref: int | None
    status: str
    lb_public: float | None
    lb_private: float | None
    source_runs: list[str] = field(default_factory=list)
    error: str = ""
    changed: bool = False
    origin: str = Origin.KOPS
    kernel: str = ""
    description: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def identify_kernel(description: str, known_kernels: set[str]) -> KernelRef | None:
    """The one kernel version a submission description names, or None when it names none or several.

    Recognised: ``owner/slug/N``, ``owner/slug vN``, ``owner/slug version N``; a bare ``vN`` / ``Version N``
    only when the experiment has exactly one kops kernel (``known_kernels``).
    """
    found = {KernelRef(o, s, int(v)) for o, s, v in KERNEL_IN_TEXT.findall(description)}
    if not found and len(known_kernels) == 1:
        owner, slug = next(iter(known_kernels)).split("/")
        found = {KernelRef(owner, slug, int(v)) for v in BARE_VERSION.findall(description)}
    return found.pop() if len(found) == 1 else None


def scores(cfg: KopsConfig, wait: bool = False, timeout_s: float = 1800, poll_s: float = 5.0,
           kaggle: Kaggle | None = None, adopt: bool = False) -> list[ScoreRow]:
    """Pull the competition's submissions (all pages) and write status and scores back onto the runs.

    Each submission run (matched by its kops key, else by its recorded ref) gets ``kops.submission.status``
    (+ ``kops.submission.error``) and the metrics ``lb_public``/``lb_private`` (step = submission ref); every
    source run gets the same metrics and the status of its newest submission. Idempotent: only what changed
    is written, so scores arriving later (private LB after the deadline) update and a repeat writes nothing.
    Submissions made outside kops are reported (origin ``unrecorded``); with ``adopt`` each becomes a
    submission run (origin ``outside``), linked to its source runs when its description names one kernel version.

    Example:
        >>> scores(load_config(), wait=True)  # doctest: +SKIP
    """
    tracker = open_tracker(cfg)
    kaggle = kaggle or Kaggle.from_config(cfg)

    def settled() -> list[ScoreRow] | None:
        rows = _pull_once(cfg, tracker, kaggle, adopt)
        return rows if not wait or all(r.status != SubmissionStatus.PENDING for r in rows) else None

    return poll(settled, timeout_s, poll_s,
                lambda: TimedOut(f"Submissions still PENDING after {timeout_s:.0f} s.", "Run `kops scores` later."))


def _pull_once(cfg: KopsConfig, tracker: Tracker, kaggle: Kaggle, adopt: bool) -> list[ScoreRow]:
    runs = runs_tagged(tracker, {TAG_KIND: Kind.SUBMISSION, TAG_COMPETITION: cfg.competition})
    subs = kaggle.list_submissions(CompetitionRef.parse(cfg.competition))
    by_key = {m.group(1): s for s in subs if (m := KEY_PATTERN.search(s.description))}
    by_ref = {s.ref: s for s in subs}
    matched: list[tuple[Run, Submission]] = []
    unsent: list[ScoreRow] = []
    for run in runs:
        sub = _match(run, by_key, by_ref)
        if sub is not None:
            matched.append((run, sub))
        elif run.data.tags.get(TAG_SUBMISSION_STATUS) == SubmissionStatus.SUBMITTING:  # died before Kaggle took it
            unsent.append(ScoreRow(run.info.run_id, None, SubmissionStatus.SUBMITTING, None, None, _sources(run)))
    taken = {sub.ref for _, sub in matched}
    outside = [s for s in subs if s.ref not in taken]
    unrecorded = []
    if outside:
        known = {r.data.tags[TAG_KERNEL] for r in tracker.search(f"tags.`{TAG_KERNEL}` LIKE '%'")}
        for sub in sorted(outside, key=lambda s: s.ref):
            kernel = identify_kernel(sub.description, known)
            if adopt:
                matched.append((_adopt(cfg, tracker, kaggle, sub, kernel), sub))
            else:
                unrecorded.append(ScoreRow("", sub.ref, sub.status, sub.public_score, sub.private_score, [],
                                           sub.error, False, Origin.UNRECORDED, str(kernel or ""), sub.description))
    matched.sort(key=lambda pair: pair[1].ref)
    rows = [_write_back(tracker, run, sub) for run, sub in matched]
    for row, changed in zip(rows, _sync_sources(tracker, matched), strict=True):
        row.changed = row.changed or changed
    return rows + unrecorded + unsent


def _sources(run: Run) -> list[str]:
    return [r for r in run.data.tags.get(TAG_SOURCE_RUNS, "").split(",") if r]


def _match(run: Run, by_key: dict[str, Submission], by_ref: dict[int, Submission]) -> Submission | None:
    tags = run.data.tags
    if tags.get(TAG_SUBMISSION_KEY) in by_key:
        return by_key[tags[TAG_SUBMISSION_KEY]]
    ref = tags.get(TAG_SUBMISSION_REF)
    sub = by_ref.get(int(ref)) if ref and ref.isdigit() else None
    other = KEY_PATTERN.search(sub.description) if sub is not None else None
    if other is not None and other.group(1) != tags.get(TAG_SUBMISSION_KEY):
        return None  # the ref now names a submission of another kops run (e.g. refs reused by another server)
    return sub


def _plan_sources(tracker: Tracker, kaggle: Kaggle, kernel: KernelRef) -> tuple[list[str], list[str]]:
    """(source run ids, dataset versions) of a kernel version: its kops plan, else runs tagged with it."""
    try:
        plan = kernel_plan(kaggle, kernel)
        return plan.source_runs, plan.dataset_versions
    except KopsError:
        tagged = runs_tagged(tracker, {TAG_KERNEL: kernel.ref, TAG_KERNEL_VERSION: str(kernel.version)})
        ids = [r.info.run_id for r in tagged if r.data.tags.get(TAG_KIND) != Kind.SUBMISSION]
        return ids, _datasets_of(tracker, ids)


def _adopt(cfg: KopsConfig, tracker: Tracker, kaggle: Kaggle, sub: Submission, kernel: KernelRef | None) -> Run:
    """Record a submission made outside kops as a submission run (no git provenance: kops did not make it)."""
    tags = {TAG_KIND: Kind.SUBMISSION, TAG_SUBMISSION_ORIGIN: Origin.OUTSIDE, TAG_COMPETITION: cfg.competition,
            TAG_SUBMISSION_REF: str(sub.ref), TAG_SUBMISSION_DESCRIPTION: sub.description[:500],
            TAG_SUBMISSION_DATE: sub.date}
    if kernel is not None:
        sources, datasets = _plan_sources(tracker, kaggle, kernel)
        tags.update({TAG_KERNEL: kernel.ref, TAG_KERNEL_VERSION: str(kernel.version),
                     TAG_SOURCE_RUNS: ",".join(sources), TAG_DATASETS: ",".join(datasets)})
    return tracker.get_run(tracker.record_run(f"submission-{sub.ref}", tags))


def _write_back(tracker: Tracker, run: Run, sub: Submission) -> ScoreRow:
    """Status, error and scores onto the submission run (and scores onto its source runs); only what changed."""
    tags, run_id = run.data.tags, run.info.run_id
    sources = _sources(run)
    row = ScoreRow(run_id, sub.ref, sub.status, sub.public_score, sub.private_score, sources, sub.error,
                   origin=tags.get(TAG_SUBMISSION_ORIGIN, Origin.KOPS), kernel=_kernel_text(tags),
                   description=sub.description)
    wanted = {TAG_SUBMISSION_REF: str(sub.ref), TAG_SUBMISSION_STATUS: sub.status}
    if sub.error or TAG_SUBMISSION_ERROR in tags:
        wanted[TAG_SUBMISSION_ERROR] = sub.error[:500]
    if error_type(sub.error):
        wanted[TAG_SUBMISSION_ERROR_TYPE] = error_type(sub.error)
    changed_tags = {k: v for k, v in wanted.items() if tags.get(k) != v}
    if changed_tags:
        tracker.set_tags(run_id, changed_tags)
    scores = {m: getattr(sub, attr) for m, attr in SCORE_METRICS.items() if getattr(sub, attr) is not None}
    changed_scores = {m: v for m, v in scores.items() if run.data.metrics.get(m) != v}
    for target in [run_id, *sources, *_kfold_parents(tracker, sources)] if changed_scores else []:
        # a source run's scores land on its published model too (MLflow 3's Models tab ranks by them)
        models = tracker.models_of(target) if target in sources else []
        tracker.log_metrics(target, changed_scores, step=sub.ref, model_id=models[0] if models else None)
    finished = run.info.status == "RUNNING"  # the submitting process died before recording the ref
    failed = (sub.status == SubmissionStatus.ERROR and run.info.status != "FAILED"  # a rerun's gateway error
              and tags.get(TAG_SUBMISSION_KIND) == SubmissionKind.EVALUATION_API)
    if finished or failed:
        tracker.end_run(run_id, "FAILED" if sub.status == SubmissionStatus.ERROR else "FINISHED")
    row.changed = bool(changed_tags or changed_scores or finished or failed)
    return row


def _kfold_parents(tracker: Tracker, sources: list[str]) -> list[str]:
    """The k-fold parents (holding the CV) of the source fold runs: they get the LB scores too."""
    parents: dict[str, None] = {}
    for run_id in sources:
        try:
            parent = tracker.get_run(run_id).data.tags.get(TAG_PARENT)
        except KopsError:
            continue  # a source run that is not in this store (e.g. named by an outside plan)
        if parent and parent not in parents and tracker.get_run(parent).data.tags.get(TAG_KIND) == Kind.KFOLD:
            parents[parent] = None
    return list(parents)


def _kernel_text(tags: dict[str, str]) -> str:
    if TAG_KERNEL in tags:
        return f"{tags[TAG_KERNEL]}/{tags.get(TAG_KERNEL_VERSION, '')}".rstrip("/")
    return tags.get(TAG_SUBMISSION_FILE, "")


def _sync_sources(tracker: Tracker, matched: list[tuple[Run, Submission]]) -> list[bool]:
    """Each source run carries the status (and ref, error) of its newest submission; returns per-pair 'changed'."""
    newest: dict[str, int] = {}
    for i, (run, _) in enumerate(matched):  # sorted by ref: later pairs are newer
        for source in _sources(run):
            newest[source] = i
    changed = [False] * len(matched)
    for source, i in newest.items():
        sub = matched[i][1]
        try:
            tags = tracker.get_run(source).data.tags
        except KopsError:
            continue  # a deleted source run does not stop the others
        wanted = {TAG_SUBMISSION_STATUS: sub.status, TAG_SUBMISSION_REF: str(sub.ref)}
        if sub.error or TAG_SUBMISSION_ERROR in tags:
            wanted[TAG_SUBMISSION_ERROR] = sub.error[:500]
        if error_type(sub.error) or TAG_SUBMISSION_ERROR_TYPE in tags:
            wanted[TAG_SUBMISSION_ERROR_TYPE] = error_type(sub.error)
        diff = {k: v for k, v in wanted.items() if tags.get(k) != v}
        if diff:
            tracker.set_tags(source, diff)
            changed[i] = True
    return changed
