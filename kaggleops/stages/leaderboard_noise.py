"""How much a public leaderboard score moves by chance, and which submissions' public gains are inside that noise.

Kaggle scores the public leaderboard on a random subset of the test rows (``public_fraction`` × test rows; the
fraction is printed on the competition's leaderboard page, not given by its API). The truth of those rows is
hidden, so the noise is estimated where the truth is known: the out-of-fold (OOF) predictions of the best-CV
single-model submission's source runs against the train rows (a blend keeps no OOF of its own; its best member
is as noisy to within a little). ``draws`` random subsets of the OOF of the public size are scored
with the task's own metric; their standard deviation, rescaled to an unbounded test set of ``public_rows`` rows
(``sd × sqrt(m / n / (1 − m / N))`` for subsets of ``m`` out of ``N`` OOF rows), is the public score's sampling
noise. The band is ±``Z`` of those deviations around the best-CV submission's public score; another submission is
*within noise* when its public score differs from that one's by no more than the band's half width.

That band is the noise of one public score. Two submissions scored on the same public rows are correlated, so the
noise of their difference is usually smaller: the band errs on the side of trusting CV over the public board.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops.adapters.tracking import Tracker, fold_runs
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, DataError, KopsError
from kaggleops.schema import SAMPLE_SUBMISSION_FILE, TAG_KIND, TEST_FILE, Kind

if TYPE_CHECKING:
    from kaggleops.stages.leaderboard import LeaderboardRow

Z = 1.96  # the band holds ~95% of the public scores a model of that quality gets by chance
DRAWS = 200
DEFAULT_PUBLIC_FRACTION = 0.5  # assumed when not given: the emulator's split; Kaggle's page states the real one
OOF_ARTIFACT, OOF_FILE = "oof", "oof.csv"  # where `kops train` logs each fold's OOF (kaggleops.stages.train)


@dataclass
class PublicNoise:
    """The public score's sampling noise: ``half_width`` (None when it could not be estimated, see ``reason``)."""

    public_rows: int | None
    public_fraction: float | None
    fraction_assumed: bool
    half_width: float | None = None
    sd: float | None = None
    draws: int = 0
    oof_rows: int = 0
    test_rows: int | None = None  # counted in the local test file (None: --public-rows was given)
    run_id: str = ""  # the submission run whose source runs' OOF was resampled
    of: str = ""  # that submission, as the picture names it
    centre: float | None = None  # the best-CV submission's public score: the band is centre ± half_width
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def caption(self) -> str:
        """One line: how the band was made, or why there is none."""
        if self.half_width is None:
            return f"no noise band: {self.reason}"
        size = f"{self.public_rows} public rows"
        if self.test_rows is not None and self.public_fraction is not None:
            size += f" = {self.public_fraction:.0%} of {self.test_rows} test rows"
            size += " (assumed: give --public-fraction)" if self.fraction_assumed else ""
        return (f"public noise ±{self.half_width:.4g}: {Z} sd of the metric on {self.draws} random subsets of "
                f"the {self.oof_rows} OOF rows of {self.of}, rescaled to {size}")


def subset_spread(score: Any, n_rows: int, n_public: int, draws: int = DRAWS, seed: int = 0) -> float:
    """The sd of ``score(indices)`` over random subsets, rescaled to ``n_public`` rows of an unbounded test set.

    Subsets hold ``m = min(n_public, n_rows // 2)`` distinct rows (no row twice: metrics align by id).

    Example:
        >>> import numpy as np
        >>> hits = np.random.default_rng(1).random(4000) < 0.8  # a model right on 80% of rows
        >>> sd = subset_spread(lambda ix: hits[ix].mean(), 4000, 400, draws=1000)
        >>> abs(sd - (0.8 * 0.2 / 400) ** 0.5) < 0.002  # the binomial sd at 400 rows: 0.02
        True
    """
    import numpy as np

    m = min(n_public, n_rows // 2)
    if m < 2:
        raise DataError(f"{n_rows} OOF row(s) are too few to resample.")
    rng = np.random.default_rng(seed)
    values = np.array([score(rng.choice(n_rows, size=m, replace=False)) for _ in range(draws)], dtype=float)
    return float(values.std(ddof=1) * math.sqrt(m / n_public / (1 - m / n_rows)))


def count_rows(path: Path) -> int:
    """Data records of a CSV file (a quoted cell may run over several lines)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def check_size(public_rows: int | None, fraction: float | None) -> None:
    """ConfigError naming the option when ``--public-rows`` / ``--public-fraction`` cannot be a public test size."""
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"--public-fraction {fraction} is not in (0, 1].", "Give the share of the test set the "
                          "public leaderboard scores, e.g. --public-fraction 0.3")
    if public_rows is not None and public_rows < 2:
        raise ConfigError(f"--public-rows {public_rows} is too few.", "Give the public test rows, e.g. 3000")


def public_size(folder: Path | None, public_rows: int | None,
                fraction: float | None) -> tuple[int, float | None, int | None]:
    """(public rows, fraction, test rows): ``public_rows`` as given, else fraction × the local test file's rows."""
    if public_rows is not None:
        return public_rows, fraction, None
    files = [folder / n for n in (SAMPLE_SUBMISSION_FILE, TEST_FILE)] if folder else []
    found = next((p for p in files if p.is_file()), None)
    if found is None:
        raise DataError("no local test file to count the test rows", "give --public-rows N")
    frac = DEFAULT_PUBLIC_FRACTION if fraction is None else fraction
    test_rows = count_rows(found)
    return max(2, round(frac * test_rows)), frac, test_rows


def _oof_runs(tracker: Tracker, run_ids: list[str]) -> list[str]:
    """The runs holding OOF files among ``run_ids``: a k-fold parent stands for its folds."""
    out = []
    for run_id in run_ids:
        run = tracker.get_run(run_id)
        out += ([f.id for f in fold_runs(tracker, run_id)] if run.tags.get(TAG_KIND) == Kind.KFOLD
                else [run_id])
    return out


def load_oof(tracker: Tracker, run_ids: list[str]) -> Any:
    """The source runs' OOF tables, one table (the folds hold disjoint rows); DataError when none has one."""
    import pandas as pd

    tables = []
    with tempfile.TemporaryDirectory(prefix="kops-oof-") as tmp:
        for i, run_id in enumerate(_oof_runs(tracker, run_ids)):
            if f"{OOF_ARTIFACT}/{OOF_FILE}" not in tracker.list_artifacts(run_id, OOF_ARTIFACT):
                continue
            folder = tracker.download(run_id, OOF_ARTIFACT, Path(tmp) / str(i))
            tables.append(pd.read_csv(folder / OOF_FILE))
    if not tables:
        raise DataError("its source runs logged no OOF predictions")
    return pd.concat(tables, ignore_index=True)


def _score_subsets(task: Any, truth: Any, oof: Any, n_public: int, draws: int, seed: int) -> tuple[float, int]:
    id_col = task.submission.id_column
    oof = oof.drop_duplicates(id_col, keep="last")
    oof = oof[oof[id_col].isin(truth[id_col])].reset_index(drop=True)
    truth = truth.set_index(id_col, drop=False).loc[oof[id_col]].reset_index(drop=True)
    if len(oof) < 4:
        raise DataError(f"only {len(oof)} OOF row(s) match the train rows")
    sd = subset_spread(lambda ix: task.metric(truth.iloc[ix], oof.iloc[ix]), len(oof), n_public, draws, seed)
    return sd, len(oof)


def public_noise(cfg: KopsConfig, tracker: Tracker, rows: list[LeaderboardRow], public_rows: int | None = None,
                 public_fraction: float | None = None, draws: int = DRAWS, seed: int = 0) -> PublicNoise:
    """The public score's noise, resampling the OOF of the first of ``rows`` (best CV first) whose source runs
    logged one. Nothing is downloaded from Kaggle: the test rows and the train truth come from the local data folder.
    """
    from kaggleops.stages.data import resolve
    from kaggleops.stages.train import get_task_for

    check_size(public_rows, public_fraction)
    noise = PublicNoise(public_rows, public_fraction, public_rows is None and public_fraction is None)
    try:
        task = get_task_for(cfg)
        source = resolve(cfg, task, fetch=False)
        noise.public_rows, noise.public_fraction, noise.test_rows = public_size(source.folder, public_rows,
                                                                                public_fraction)
    except KopsError as e:
        noise.reason = f"{e.message.rstrip('.')} (the band scores OOF against the local train rows)" + (
            f". {e.hint}" if e.hint else "")
        return noise
    truth = task.load_train(source.train_file)
    reasons = []
    for row in rows:
        try:
            oof = load_oof(tracker, row.source_runs)
            noise.sd, noise.oof_rows = _score_subsets(task, truth, oof, noise.public_rows, draws, seed)
        except DataError as e:
            reasons.append(f"submission {row.submission_ref or row.submission_run_id[:8]}: {e.message}")
            continue
        noise.half_width, noise.draws, noise.run_id = Z * noise.sd, draws, row.submission_run_id
        noise.of = f"submission {row.submission_ref or row.submission_run_id[:8]}"
        return noise
    noise.reason = "; ".join(reasons[:2]) or "no scored submission"
    return noise


def within_noise(rows: list[LeaderboardRow], best: LeaderboardRow | None, noise: PublicNoise) -> set[str]:
    """Submission run ids whose public score is within the band of ``best``'s (``best`` itself excluded)."""
    if best is None or best.lb_public is None or noise.half_width is None:
        return set()
    return {r.submission_run_id for r in rows if r is not best and r.lb_public is not None
            and abs(r.lb_public - best.lb_public) <= noise.half_width}
