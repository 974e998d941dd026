"""CV against LB, submission by submission, and the final submissions a careful competitor would choose.

A blend's CV is its nested CV (weights chosen on K−1 folds, scored on the held-out one: ``nested_cv_<metric>`` of
its ``kops ensemble`` run) where the run has it: its in-sample ``cv_<metric>`` was fitted to the very OOF it is
scored on. The picks (:func:`pick`), in order, each skipping a submission already picked:

1. the best CV: the score least fitted to the public part of the test;
2. the best nested-CV blend: the honest estimate of a blend's gain;
3. the best public score outside the noise band of the best-CV submission's: a public gain chance hardly explains;
4. the next best CV among submissions of other source runs: a hedge on different models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kaggleops.adapters.tracking import Tracker, open_tracker
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError
from kaggleops.schema import TAG_KIND, Kind, SubmissionStatus
from kaggleops.stages.leaderboard import LeaderboardRow, cv_of, leaderboard
from kaggleops.stages.leaderboard_noise import DRAWS, PublicNoise, public_noise, within_noise

if TYPE_CHECKING:
    from kaggleops.adapters.tracking import RunRecord

NESTED = "nested_cv_"


@dataclass
class Point:
    """One scored submission on the CV-vs-LB picture."""

    row: LeaderboardRow
    cv: float
    blend: bool = False
    cv_kind: str = "cv"  # cv | nested cv | in-sample cv (a blend without nested CV)
    within_noise: bool = False
    source: str = ""  # what was submitted, as ids to type: "k-fold 3f2a9c1d", "blend 77aa0b12", "3f2a9c1d, 0b…"

    @property
    def name(self) -> str:
        """``submission 3`` (or the run id's start for one without a Kaggle ref)."""
        return f"submission {self.row.submission_ref or self.row.submission_run_id[:8]}"

    def describe(self) -> str:
        """The point's tooltip: what it is and its three scores."""
        private = "-" if self.row.lb_private is None else f"{self.row.lb_private:.5f}"
        noise = "; public score within noise of the best CV's" if self.within_noise else ""
        return (f"{self.name} (run {self.row.submission_run_id[:8]}{', blend' if self.blend else ''}): "
                f"{self.cv_kind} {self.cv:.5f}, public {self.row.lb_public:.5f}, private {private}; "
                f"{self.source or '-'}, {self.row.kernel or '-'}{noise}")


@dataclass
class BoardView:
    """Every scored submission with its CV, the best-CV one and the public noise band around its score."""

    points: list[Point]
    best: Point | None
    noise: PublicNoise
    metric: str
    higher_is_better: bool
    competition: str = ""
    unscored: int = 0  # submissions without a public score or a CV, left off the picture
    blends: dict[str, float] = field(default_factory=dict)  # ensemble run id -> nested CV (those submitted)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def ranked(self) -> list[Point]:
        """Best CV first."""
        return sorted(self.points, key=lambda p: p.cv, reverse=self.higher_is_better)


def _honest_cv(row: LeaderboardRow, sources: list[RunRecord]) -> tuple[float | None, bool, str]:
    """(CV, is a blend, which CV): the nested CV of blend sources, else the row's CV."""
    blends = [s for s in sources if s.tags.get(TAG_KIND) == Kind.ENSEMBLE]
    nested = [s.metrics[f"{NESTED}{row.metric}"] for s in blends if f"{NESTED}{row.metric}" in s.metrics]
    if nested:
        return sum(nested) / len(nested), True, "nested cv"
    if blends:
        cvs = [c for c in map(cv_of, blends) if c is not None]
        return (sum(cvs) / len(cvs) if cvs else row.cv), True, "in-sample cv"
    return row.cv, False, "cv"


def _source_label(sources: list[RunRecord], blend: bool) -> str:
    parents = {s.parent or "" for s in sources}
    if blend:  # a blend's submission names its members' fold runs and the ensemble run
        return "blend " + ", ".join(s.id[:8] for s in sources if s.tags.get(TAG_KIND) == Kind.ENSEMBLE)
    if len(parents) == 1 and "" not in parents:
        return f"k-fold {parents.pop()[:8]}"
    return ", ".join(s.id[:8] for s in sources)


def _sources(tracker: Tracker, row: LeaderboardRow) -> list[RunRecord]:
    out = []
    for run_id in row.source_runs:
        try:
            out.append(tracker.get_run(run_id))
        except KopsError:
            continue
    return out


def board_view(cfg: KopsConfig, public_rows: int | None = None, public_fraction: float | None = None,
               draws: int = DRAWS) -> BoardView:
    """The scored submissions of ``kops leaderboard`` as points, the best-CV one, the noise band and its marks.

    Example:
        >>> view = board_view(load_config(), public_fraction=0.3)  # doctest: +SKIP
    """
    rows = leaderboard(cfg, sort="cv")
    tracker = open_tracker(cfg)
    points, blends = [], {}
    for row in rows:
        sources = _sources(tracker, row)
        cv, blend, kind = _honest_cv(row, sources)
        if cv is None or row.lb_public is None or row.status not in ("", SubmissionStatus.COMPLETE):
            continue
        points.append(Point(row, cv, blend, kind, source=_source_label(sources, blend)))
        blends.update({s.id: cv for s in sources if blend and kind == "nested cv"})
    metric, higher = (rows[0].metric, rows[0].higher_is_better) if rows else ("", True)
    view = BoardView(points, None, PublicNoise(public_rows, public_fraction, False), metric, higher,
                     cfg.competition, len(rows) - len(points), blends)
    view.best = view.ranked()[0] if points else None
    singles = [p.row for p in view.ranked() if not p.blend]  # kops keeps no blended OOF: a member's stands in
    view.noise = public_noise(cfg, tracker, singles, public_rows, public_fraction, draws)
    marked = within_noise([p.row for p in points], view.best.row if view.best else None, view.noise)
    view.noise.centre = view.best.row.lb_public if view.best else None
    for p in points:
        p.within_noise = p.row.submission_run_id in marked
    return view


@dataclass
class Pick:
    point: Point
    why: str

    def line(self) -> str:
        return f"{self.point.name} (run {self.point.row.submission_run_id[:8]}): {self.why}"


def _gain(view: BoardView, p: Point) -> float:
    """How much better ``p``'s public score is than the best-CV submission's (negative: worse)."""
    assert view.best is not None and view.best.row.lb_public is not None and p.row.lb_public is not None
    sign = 1 if view.higher_is_better else -1
    return sign * (p.row.lb_public - view.best.row.lb_public)


def _candidates(view: BoardView) -> list[tuple[Point, str]]:
    """Every submission worth a final slot, best reason first (see the module docstring)."""
    ranked = view.ranked()
    if not ranked:
        return []
    best, m, h = ranked[0], view.metric or "metric", view.noise.half_width
    out = [(best, f"best CV ({best.cv_kind} {m} {best.cv:.5f}): the score least fitted to the public test rows")]
    out += [(p, f"best nested-CV blend ({m} {p.cv:.5f}): a blend's gain measured on folds its weights never saw")
            for p in ranked if p.blend and p.cv_kind == "nested cv"]
    if h is not None:
        by_public = sorted(ranked, key=lambda p: _gain(view, p), reverse=True)
        out += [(p, f"public {m} {p.row.lb_public:.5f} beats the best-CV submission's by {_gain(view, p):.5f}, "
                    f"beyond the ±{h:.5f} public noise") for p in by_public if _gain(view, p) > h]
    other = [p for p in ranked[1:] if set(p.row.source_runs) != set(best.row.source_runs)]
    out += [(p, f"next best CV ({p.cv_kind} {m} {p.cv:.5f}) on other models: a hedge"
                + (" (its public score is within noise of the best CV's)" if p.within_noise else "")) for p in other]
    return out


def pick(view: BoardView, n: int = 2) -> list[Pick]:
    """Up to ``n`` final submissions, each with a one-line reason (see the module docstring for the order)."""
    chosen: list[Pick] = []
    for point, why in _candidates(view):
        if len(chosen) < n and all(c.point is not point for c in chosen):
            chosen.append(Pick(point, why))
    return chosen
