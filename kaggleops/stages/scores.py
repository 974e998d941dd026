"""`kops scores`: Kaggle's submissions → status and lb_public / lb_private on the submission runs and their sources.

Each submission run is matched by its kops key (``kops:<key>`` in the description), else by its recorded ref; a
submission made outside kops is reported, and adopted as a submission run with ``--all``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from kaggleops.adapters.kaggle import Kaggle, Submission
from kaggleops.adapters.session import Session
from kaggleops.adapters.tracking import Tracker, runs_tagged
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError, SubmissionError, TimedOut
from kaggleops.polling import poll
from kaggleops.refs import CompetitionRef, KernelRef
from kaggleops.schema import (
    TAG_COMPETITION,
    TAG_DATASETS,
    TAG_KERNEL,
    TAG_KERNEL_VERSION,
    TAG_KIND,
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
    TAG_SUBMISSION_STATUS,
    Kind,
    Origin,
    SubmissionKind,
    SubmissionStatus,
)
from kaggleops.stages.evaluation_api import ERROR_HINTS, error_type
from kaggleops.stages.submit import KEY_PATTERN, SubmitResult, datasets_of, kernel_plan

if TYPE_CHECKING:
    from kaggleops.adapters.tracking import RunRecord

SCORE_METRICS = {"lb_public": "public_score", "lb_private": "private_score"}
KERNEL_IN_TEXT = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9_-]*)/([a-z0-9][a-z0-9-]*[a-z0-9])(?:/|\s+(?i:v|version)\s*)(\d+)\b")
BARE_VERSION = re.compile(r"\b(?i:v|version)\s*(\d+)\b")


def await_result(session: Session, result: SubmitResult, timeout_s: float = 3600, poll_s: float = 1.0) -> ScoreRow:
    """Poll until the submission is scored; its scores are then on the runs (:func:`scores`). A submission that
    ends in ERROR raises SubmissionError: one line naming what failed (an evaluation API's error type) and what
    to do; its submission run is FAILED with the error tags. Nothing is resubmitted."""
    def settled() -> ScoreRow | None:
        rows = [r for r in _pull_once(session.cfg, session.tracker, session.kaggle, False)
                if r.submission_ref == result.submission_ref]
        return rows[0] if rows and rows[0].status != SubmissionStatus.PENDING else None

    row = poll(settled, timeout_s, poll_s, lambda: TimedOut(f"Submission {result.submission_ref} still PENDING after "
                                                            f"{timeout_s:.0f} s.", "Run `kops scores --wait` later."))
    if row.status == SubmissionStatus.ERROR:
        kind = error_type(row.error)
        what = f"{kind} ({row.error.split(kind, 1)[1].lstrip(': ') or 'no details'})" if kind else row.error
        what_ran = f"{result.kernel}/{result.kernel_version}" if result.kernel else result.file
        run_status = session.run(result.submission_run_id).status
        raise SubmissionError(f"Submission {result.submission_ref} of {what_ran} failed on "
                              f"Kaggle's side: {what.rstrip('.')}; submission run {result.submission_run_id} is "
                              f"{run_status}.",
                              ERROR_HINTS.get(kind, f"See the kernel's log: kaggle kernels logs {result.kernel}"))
    return row


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


def scores(session: Session, wait: bool = False, timeout_s: float = 1800, poll_s: float = 5.0,
           adopt: bool = False) -> list[ScoreRow]:
    """Pull the competition's submissions (all pages) and write status and scores back onto the runs.

    Each submission run (matched by its kops key, else by its recorded ref) gets ``kops.submission.status``
    (+ ``kops.submission.error``) and the metrics ``lb_public``/``lb_private`` (step = submission ref); every
    source run gets the same metrics and the status of its newest submission. Idempotent: only what changed
    is written, so scores arriving later (private LB after the deadline) update and a repeat writes nothing.
    Submissions made outside kops are reported (origin ``unrecorded``); with ``adopt`` each becomes a
    submission run (origin ``outside``), linked to its source runs when its description names one kernel version.

    Example:
        >>> scores(Session(load_config()), wait=True)  # doctest: +SKIP
    """
    def settled() -> list[ScoreRow] | None:
        rows = _pull_once(session.cfg, session.tracker, session.kaggle, adopt)
        return rows if not wait or all(r.status != SubmissionStatus.PENDING for r in rows) else None

    return poll(settled, timeout_s, poll_s,
                lambda: TimedOut(f"Submissions still PENDING after {timeout_s:.0f} s.", "Run `kops scores` later."))


def _pull_once(cfg: KopsConfig, tracker: Tracker, kaggle: Kaggle, adopt: bool) -> list[ScoreRow]:
    runs = runs_tagged(tracker, {TAG_KIND: Kind.SUBMISSION, TAG_COMPETITION: cfg.competition})
    subs = kaggle.list_submissions(CompetitionRef.parse(cfg.competition))
    by_key = {m.group(1): s for s in subs if (m := KEY_PATTERN.search(s.description))}
    by_ref = {s.ref: s for s in subs}
    matched: list[tuple[RunRecord, Submission]] = []
    unsent: list[ScoreRow] = []
    for run in runs:
        sub = _match(run, by_key, by_ref)
        if sub is not None:
            matched.append((run, sub))
        elif run.tags.get(TAG_SUBMISSION_STATUS) == SubmissionStatus.SUBMITTING:  # died before Kaggle took it
            unsent.append(ScoreRow(run.id, None, SubmissionStatus.SUBMITTING, None, None, _sources(run)))
    taken = {sub.ref for _, sub in matched}
    outside = [s for s in subs if s.ref not in taken]
    unrecorded = []
    if outside:
        known = {r.tags[TAG_KERNEL] for r in tracker.search(f"tags.`{TAG_KERNEL}` LIKE '%'")}
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


def _sources(run: RunRecord) -> list[str]:
    return [r for r in run.tags.get(TAG_SOURCE_RUNS, "").split(",") if r]


def _match(run: RunRecord, by_key: dict[str, Submission], by_ref: dict[int, Submission]) -> Submission | None:
    tags = run.tags
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
        ids = [r.id for r in tagged if r.tags.get(TAG_KIND) != Kind.SUBMISSION]
        return ids, datasets_of(tracker, ids)


def _adopt(cfg: KopsConfig, tracker: Tracker, kaggle: Kaggle, sub: Submission, kernel: KernelRef | None) -> RunRecord:
    """Record a submission made outside kops as a submission run (no git provenance: kops did not make it)."""
    tags = {TAG_KIND: Kind.SUBMISSION, TAG_SUBMISSION_ORIGIN: Origin.OUTSIDE, TAG_COMPETITION: cfg.competition,
            TAG_SUBMISSION_REF: str(sub.ref), TAG_SUBMISSION_DESCRIPTION: sub.description[:500],
            TAG_SUBMISSION_DATE: sub.date}
    if kernel is not None:
        sources, datasets = _plan_sources(tracker, kaggle, kernel)
        tags.update({TAG_KERNEL: kernel.ref, TAG_KERNEL_VERSION: str(kernel.version),
                     TAG_SOURCE_RUNS: ",".join(sources), TAG_DATASETS: ",".join(datasets)})
    return tracker.get_run(tracker.record_run(f"submission-{sub.ref}", tags))


def _write_back(tracker: Tracker, run: RunRecord, sub: Submission) -> ScoreRow:
    """Status, error and scores onto the submission run (and scores onto its source runs); only what changed."""
    tags, run_id = run.tags, run.id
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
    changed_scores = {m: v for m, v in scores.items() if run.metrics.get(m) != v}
    for target in [run_id, *sources, *_kfold_parents(tracker, sources)] if changed_scores else []:
        # a source run's scores land on its published model too (MLflow 3's Models tab ranks by them)
        models = tracker.models_of(target) if target in sources else []
        tracker.log_metrics(target, changed_scores, step=sub.ref, model_id=models[0] if models else None)
    finished = run.status == "RUNNING"  # the submitting process died before recording the ref
    failed = (sub.status == SubmissionStatus.ERROR and run.status != "FAILED"  # a rerun's gateway error
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
            parent = tracker.get_run(run_id).parent
        except KopsError:
            continue  # a source run that is not in this store (e.g. named by an outside plan)
        if parent and parent not in parents and tracker.get_run(parent).tags.get(TAG_KIND) == Kind.KFOLD:
            parents[parent] = None
    return list(parents)


def _kernel_text(tags: dict[str, str]) -> str:
    if TAG_KERNEL in tags:
        return f"{tags[TAG_KERNEL]}/{tags.get(TAG_KERNEL_VERSION, '')}".rstrip("/")
    return tags.get(TAG_SUBMISSION_FILE, "")


def _sync_sources(tracker: Tracker, matched: list[tuple[RunRecord, Submission]]) -> list[bool]:
    """Each source run carries the status (and ref, error) of its newest submission; returns per-pair 'changed'."""
    newest: dict[str, int] = {}
    for i, (run, _) in enumerate(matched):  # sorted by ref: later pairs are newer
        for source in _sources(run):
            newest[source] = i
    changed = [False] * len(matched)
    for source, i in newest.items():
        sub = matched[i][1]
        try:
            tags = tracker.get_run(source).tags
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
