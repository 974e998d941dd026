"""The team's own leaderboard, read from MLflow only: one row per submission run, CV beside LB.

CV of a submission is the mean over its source runs of their CV metric, named by the task's metric (tag
``kops.metric``, e.g. ``accuracy``): ``cv_<metric>`` (a k-fold parent), else ``best_val_<metric>`` (the fold's
saved weights), else ``val_<metric>``; a blend's submission (``kops ensemble``) takes the ensemble run's in-sample
``cv_<metric>``. Sorting follows ``kops.metric.higher_is_better`` (the source runs' tag,
else the configured task's metric): for a lower-is-better metric (RMSE, log loss) the lowest LB/CV comes first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from kaggleops.adapters.tracking import open_tracker, runs_tagged
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError, UnknownSortKey
from kaggleops.schema import (
    TAG_COMPETITION,
    TAG_DATASETS,
    TAG_GIT_COMMIT,
    TAG_KERNEL,
    TAG_KERNEL_VERSION,
    TAG_KIND,
    TAG_RUN_NAME,
    TAG_SOURCE_RUNS,
    TAG_SUBMISSION_DATE,
    TAG_SUBMISSION_ERROR,
    TAG_SUBMISSION_FILE,
    TAG_SUBMISSION_ORIGIN,
    TAG_SUBMISSION_REF,
    TAG_SUBMISSION_STATUS,
    Kind,
    Origin,
)

if TYPE_CHECKING:
    from kaggleops.adapters.tracking import RunRecord

CV_PREFIXES = ("cv_", "best_val_", "val_")
SORT_KEYS = ("lb_public", "lb_private", "cv", "date", "ref")
SHORT_COMMIT = 8


@dataclass
class LeaderboardRow:
    submission_ref: int | None
    submission_run_id: str
    date: str
    status: str
    lb_public: float | None
    lb_private: float | None
    cv: float | None
    models: list[str] = field(default_factory=list)
    source_runs: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    kernel: str = ""
    commits: list[str] = field(default_factory=list)
    origin: str = Origin.KOPS
    error: str = ""
    metric: str = ""
    higher_is_better: bool = True

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def cv_metrics(metric: str) -> tuple[str, ...]:
    """``cv_<metric>``, ``best_val_<metric>``, ``val_<metric>``: the names a run's CV is read from, in order."""
    return tuple(f"{p}{metric}" for p in CV_PREFIXES)


def cv_of(run: RunRecord) -> float | None:
    """The run's cross-validation score: the first of :func:`cv_metrics` of its ``kops.metric`` it has."""
    from kaggleops.schema import TAG_METRIC

    metric = run.tags.get(TAG_METRIC)
    if metric:
        return next((run.metrics[m] for m in cv_metrics(metric) if m in run.metrics), None)
    for prefix in CV_PREFIXES:  # a run of an older kops without the tag: any cv_* / best_val_* / val_* metric
        names = sorted(m for m in run.metrics if m.startswith(prefix) and m.count("_") == prefix.count("_"))
        if names:
            return run.metrics[names[0]]
    return None


def metric_direction(cfg: KopsConfig, sources: list[RunRecord]) -> tuple[str, bool]:
    """(metric name, higher is better) from the source runs' tags, else the configured task; else ("", True)."""
    from kaggleops.schema import TAG_METRIC, TAG_METRIC_HIGHER

    for run in sources:
        if TAG_METRIC_HIGHER in run.tags:
            return run.tags.get(TAG_METRIC, ""), run.tags[TAG_METRIC_HIGHER] == "true"
    try:
        from kaggleops.stages.train import get_task_for

        metric = get_task_for(cfg).metric
        return metric.name, bool(metric.higher_is_better)
    except KopsError:
        return "", True


def _date(run: RunRecord) -> str:
    if TAG_SUBMISSION_DATE in run.tags:
        return run.tags[TAG_SUBMISSION_DATE]
    return datetime.fromtimestamp(run.start_time / 1000, timezone.utc).isoformat(timespec="seconds")


def _row(run: RunRecord, sources: list[RunRecord]) -> LeaderboardRow:
    tags, metrics = run.tags, run.metrics
    blends = [s for s in sources if s.tags.get(TAG_KIND) == Kind.ENSEMBLE]  # a blend's CV is its own
    cvs = [c for c in (cv_of(s) for s in blends or sources) if c is not None]
    kernel = (f"{tags[TAG_KERNEL]}/{tags.get(TAG_KERNEL_VERSION, '')}" if TAG_KERNEL in tags
              else tags.get(TAG_SUBMISSION_FILE, ""))
    commits = sorted({s.tags[TAG_GIT_COMMIT][:SHORT_COMMIT] for s in sources if TAG_GIT_COMMIT in s.tags})
    ref = tags.get(TAG_SUBMISSION_REF, "")
    return LeaderboardRow(
        submission_ref=int(ref) if ref.isdigit() else None, submission_run_id=run.id, date=_date(run),
        status=tags.get(TAG_SUBMISSION_STATUS, ""), lb_public=metrics.get("lb_public"),
        lb_private=metrics.get("lb_private"),
        cv=sum(cvs) / len(cvs) if cvs else None,
        models=[s.tags.get(TAG_RUN_NAME, s.name or "") for s in sources],
        source_runs=[s.id for s in sources],
        datasets=[d for d in tags.get(TAG_DATASETS, "").split(",") if d], kernel=kernel, commits=commits,
        origin=tags.get(TAG_SUBMISSION_ORIGIN, Origin.KOPS), error=tags.get(TAG_SUBMISSION_ERROR, ""),
    )


def _sort(rows: list[LeaderboardRow], key: str, higher_is_better: bool = True) -> list[LeaderboardRow]:
    """Best first for scores (by the metric's direction), newest first for date/ref; missing values last."""
    if key not in SORT_KEYS:
        raise UnknownSortKey(f"Cannot sort the leaderboard by {key!r}.", f"Use --sort one of: {', '.join(SORT_KEYS)}.")
    attr = {"cv": "cv", "date": "date", "ref": "submission_ref"}.get(key, key)
    present = [r for r in rows if getattr(r, attr) is not None]
    missing = [r for r in rows if getattr(r, attr) is None]
    descending = higher_is_better if key in ("lb_public", "lb_private", "cv") else True
    return sorted(present, key=lambda r: getattr(r, attr), reverse=descending) + missing


def leaderboard(cfg: KopsConfig, sort: str = "lb_public") -> list[LeaderboardRow]:
    """Every submission run of the competition with its source runs' CV, best first by ``sort``.

    Scores come from MLflow (``kops scores`` puts them there); nothing is asked of Kaggle.

    Example:
        >>> rows = leaderboard(load_config(), sort="cv")  # doctest: +SKIP
    """
    if sort not in SORT_KEYS:
        _sort([], sort)
    tracker = open_tracker(cfg)
    subs = runs_tagged(tracker, {TAG_KIND: Kind.SUBMISSION, TAG_COMPETITION: cfg.competition})
    cache: dict[str, RunRecord | None] = {}

    def source(run_id: str) -> RunRecord | None:
        if run_id not in cache:
            try:
                cache[run_id] = tracker.get_run(run_id)
            except KopsError:
                cache[run_id] = None  # deleted since; the row still shows the rest
        return cache[run_id]

    rows, all_sources = [], []
    for run in subs:
        ids = [r for r in run.tags.get(TAG_SOURCE_RUNS, "").split(",") if r]
        sources = [s for s in map(source, ids) if s is not None]
        all_sources += sources
        rows.append(_row(run, sources))
    metric, higher = metric_direction(cfg, all_sources)
    for row in rows:
        row.metric, row.higher_is_better = metric, higher
    return _sort(rows, sort, higher)
