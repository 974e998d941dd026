"""`kops ensemble`: one blend of tracked runs, its weights chosen on their out-of-fold (OOF) predictions.

Members are k-fold parents (or lone fold runs) named by id or prefix, an MLflow filter string, or the top N by CV.
Each member's fold runs carry ``oof/oof.csv`` (id, ``fold``, the task's blendable columns, see
:meth:`kaggleops.task.TaskBase.combine`); the members must hold the same ids in the same folds. Weights come from
:mod:`kaggleops.stages.blend` (Caruana by default), the task's ``combine`` makes the blend and its ``metric`` scores
it; the honest figure is nested CV (weights chosen without each fold, scored on it). The result is an MLflow run
(``kops.kind=ensemble``) linked to its members, which ``kops push-kernel --run ENSEMBLE_RUN`` turns into one kernel.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggleops.adapters.tracking import Tracker, fold_runs, open_tracker
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, DataError, MissingArtifact
from kaggleops.schema import (
    TAG_ENSEMBLE_MEMBERS,
    TAG_ENSEMBLE_METHOD,
    TAG_ENSEMBLE_OF,
    TAG_ENSEMBLE_WEIGHTS,
    TAG_FOLD,
    TAG_KIND,
    TAG_PARENT,
    TAG_TASK,
    Kind,
)
from kaggleops.stages import blend
from kaggleops.stages.fold_artifacts import OOF_ARTIFACT, OOF_FILE, OOF_FOLD_COLUMN
from kaggleops.stages.train import get_task_for, metric_tags
from kaggleops.task import hook

METHODS = ("caruana", "rank", "hill")
ARTIFACT_ENSEMBLE = "ensemble"  # trajectory.json + trajectory.png on the ensemble run
KEY = "_kops_key"  # the id as text: how rows of members and truth are matched


@dataclass
class EnsembleResult:
    """The ensemble run, its weights per member, and the figures: CV in-sample and nested, best member's CV."""

    run_id: str
    method: str
    metric: str
    higher_is_better: bool
    weights: dict[str, float]
    member_cv: dict[str, float]
    cv: float
    nested_cv: float | None
    trajectory: list[float] = field(default_factory=list)
    nested_per_fold: dict[int, float] = field(default_factory=dict)
    best_step: int = 1  # the trajectory's step whose weights were kept

    @property
    def best_member(self) -> str:
        pick = max if self.higher_is_better else min
        return pick(self.member_cv, key=lambda m: self.member_cv[m])

    def gain(self, score: float | None) -> float | None:
        """How much ``score`` beats the best member's CV (positive: better, whichever way the metric sorts)."""
        if score is None:
            return None
        diff = score - self.member_cv[self.best_member]
        return diff if self.higher_is_better else -diff

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "method": self.method, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "weights": self.weights, "member_cv": self.member_cv,
                "best_member": self.best_member, f"cv_{self.metric}": self.cv,
                f"nested_cv_{self.metric}": self.nested_cv, "gain": self.gain(self.cv),
                "nested_gain": self.gain(self.nested_cv), "trajectory": self.trajectory,
                "best_step": self.best_step, "nested_per_fold": self.nested_per_fold}

    def summary(self) -> str:
        m = self.metric
        nested = ("n/a (one fold)" if self.nested_cv is None
                  else f"{self.nested_cv:.5f} (gain {self.gain(self.nested_cv):+.5f})")
        lines = [f"ensemble run {self.run_id} ({self.method}, {len(self.weights)} member(s) weighted)"]
        lines += [f"  {run_id}  weight {w:.3f}  cv_{m} {self.member_cv[run_id]:.5f}"
                  for run_id, w in sorted(self.weights.items(), key=lambda kv: -kv[1])]
        lines += [f"  best member cv_{m}: {self.member_cv[self.best_member]:.5f} ({self.best_member})",
                  f"  blend cv_{m} (in-sample, weights chosen on these rows): {self.cv:.5f} "
                  f"(gain {self.gain(self.cv):+.5f} over the best member; positive: better)",
                  f"  blend nested_cv_{m} (weights chosen without each fold): {nested}",
                  f"next: kops push-kernel --run {self.run_id} --submit"]
        return "\n".join(lines)


# ---- members and their OOF ----------------------------------------------------------------------------------

def select_members(tracker: Tracker, metric: str, higher: bool, runs: list[str], filter_string: str | None,
                   top: int | None) -> list[str]:
    """Member run ids: ``runs`` (ids or prefixes), runs matching ``filter_string``, then the ``top`` best by CV."""
    ids = [tracker.resolve(r) for r in runs]
    if filter_string or top:
        found = [r for r in tracker.search(filter_string or "") if _is_member(r)]
        if top:
            key = f"cv_{metric}"
            found = sorted((r for r in found if key in r.metrics),
                           key=lambda r: r.metrics[key], reverse=higher)[:top]
        ids += [r.id for r in found]
    ids = list(dict.fromkeys(ids))
    if len(ids) < 2:
        raise ConfigError(f"An ensemble needs two member runs at least; {len(ids)} named.",
                          "Name k-fold runs: kops ensemble RUN RUN …, --filter \"params.lr = '0.1'\" or --top 5")
    return ids


def _is_member(run: Any) -> bool:
    tags = run.tags
    kind = tags.get(TAG_KIND)
    return run.status == "FINISHED" and (kind == Kind.KFOLD or (kind == Kind.FOLD and not tags.get(TAG_PARENT)))


def member_fold_runs(tracker: Tracker, run_id: str) -> list[str]:
    """A k-fold parent's fold runs (fold order), or a lone fold run itself; other kinds are refused."""
    kind = tracker.get_run(run_id).tags.get(TAG_KIND)
    if kind == Kind.FOLD:
        return [run_id]
    if kind != Kind.KFOLD:
        raise ConfigError(f"Run {run_id} is a {kind or 'untagged'} run, not a training run: an ensemble's members "
                          "are k-fold (or fold) runs of `kops train`.", "Name the k-fold runs instead.")
    return [r.id for r in fold_runs(tracker, run_id, Kind.FOLD)]


def member_oof(tracker: Tracker, run_id: str, folder: Path, id_column: str) -> Any:
    """The member's OOF: its fold runs' ``oof.csv`` stacked, with a text key and a ``fold`` column."""
    import pandas as pd

    frames = []
    for fold_run in member_fold_runs(tracker, run_id):
        if f"{OOF_ARTIFACT}/{OOF_FILE}" not in tracker.list_artifacts(fold_run, OOF_ARTIFACT):
            raise MissingArtifact(f"Run {fold_run} (of member {run_id}) has no `{OOF_ARTIFACT}/{OOF_FILE}` artifact.",
                                  "Train it again with: kops train")
        path = tracker.download(fold_run, f"{OOF_ARTIFACT}/{OOF_FILE}", folder / fold_run)
        frame = pd.read_csv(path, dtype={id_column: str}, keep_default_na=False, na_values=[""])
        if OOF_FOLD_COLUMN not in frame.columns:  # a run trained before kops recorded it
            frame[OOF_FOLD_COLUMN] = int(tracker.get_run(fold_run).tags.get(TAG_FOLD, 0))
        frames.append(frame)
    oof = pd.concat(frames, ignore_index=True)
    oof[KEY] = oof[id_column].astype(str)
    if oof[KEY].duplicated().any():
        raise DataError(f"Member {run_id}'s OOF holds id {oof.loc[oof[KEY].duplicated(), KEY].iloc[0]} twice "
                        "(two of its folds validated the same row).", "Retrain it with: kops train")
    return oof.sort_values(KEY, kind="stable").reset_index(drop=True)


def check_same_rows(oofs: dict[str, Any]) -> None:
    """Refuse members whose OOF ids or fold assignment differ, naming the first mismatch."""
    (first, ref), *others = oofs.items()
    for run_id, oof in others:
        a, b = set(ref[KEY]), set(oof[KEY])
        if a != b:
            only = sorted(a - b)[:1] or sorted(b - a)[:1]
            where = first if only[0] in a else run_id
            raise DataError(f"Members {first} and {run_id} differ in rows: id {only[0]} is only in {where}'s OOF "
                            f"({len(a)} vs {len(b)} rows).", "Blend runs trained on all folds of the same data.")
        diff = ref[OOF_FOLD_COLUMN].to_numpy() != oof[OOF_FOLD_COLUMN].to_numpy()
        if diff.any():
            i = int(diff.argmax())
            raise DataError(f"Members {first} and {run_id} differ in folds: id {ref[KEY].iloc[i]} is in fold "
                            f"{ref[OOF_FOLD_COLUMN].iloc[i]} in one, fold {oof[OOF_FOLD_COLUMN].iloc[i]} in the other.",
                            "Blend runs trained with the same n_folds and seed (the same fold assignment).")


# ---- scoring a blend --------------------------------------------------------------------------------------

class Blend:
    """Members' aligned OOF tables, the truth rows and the folds: what a weight vector scores."""

    def __init__(self, task: Any, tables: list[Any], truth: Any) -> None:
        self.task, self.tables, self.truth = task, tables, truth
        self.folds = tables[0][OOF_FOLD_COLUMN].to_numpy()
        self._rows: dict[tuple[int, ...], tuple[list[Any], Any]] = {}

    @property
    def fold_ids(self) -> list[int]:
        return sorted({int(f) for f in self.folds})

    def _subset(self, folds: list[int]) -> tuple[list[Any], Any]:
        key = tuple(sorted(folds))
        if key not in self._rows:
            import numpy as np

            mask = np.isin(self.folds, key)
            self._rows[key] = ([t[mask].reset_index(drop=True) for t in self.tables],
                               self.truth[mask].reset_index(drop=True))
        return self._rows[key]

    def score(self, weights: Any, folds: list[int]) -> float:
        """The task's metric of the blend on the rows of ``folds`` (pooled)."""
        tables, truth = self._subset(folds)
        return self.task.metric(truth, hook(self.task, "combine")(tables, [float(w) for w in weights]))

    def cv(self, weights: Any) -> float:
        """Mean of the per-fold scores (as ``kops train`` logs ``cv_<metric>``)."""
        return sum(self.score(weights, [k]) for k in self.fold_ids) / len(self.fold_ids)

    def objective(self, folds: list[int]) -> blend.Objective:
        sign = 1.0 if self.task.metric.higher_is_better else -1.0
        return lambda w: sign * self.score(w, folds)


def rank_tables(task: Any, tables: list[Any]) -> list[Any]:
    """Each member's blend columns replaced by their percentile ranks (rank averaging: scale-free blends)."""
    columns = hook(task, "blend_columns")
    columns = list(task.submission.columns if columns is None else columns)
    return [t.assign(**{c: t[c].rank(pct=True) for c in columns}) for t in tables]


def choose(method: str, problem: Blend, folds: list[int], steps: int, init: int = 1) -> blend.Selection:
    n = len(problem.tables)
    if method == "hill":
        return blend.hill_climb(n, problem.objective(folds))
    return blend.caruana(n, problem.objective(folds), steps=steps, init=init)


def truth_rows(cfg: KopsConfig, task: Any, keys: Any, data_dir: Path | None) -> Any:
    """The train rows of the OOF ids, in their order (the metric's ``truth``)."""
    from kaggleops.stages.train import load_training_data

    train, _ = load_training_data(cfg, task, data_dir)
    train = train.assign(**{KEY: train[task.submission.id_column].astype(str)}).drop_duplicates(KEY).set_index(KEY)
    missing = [k for k in keys if k not in train.index]
    if missing:
        raise DataError(f"OOF id {missing[0]} is not in the training data ({len(missing)} such id(s)).",
                        "Point kops at the data the members trained on: --data FOLDER")
    return train.loc[list(keys)].reset_index()


# ---- the stage ---------------------------------------------------------------------------------------------

def ensemble(cfg: KopsConfig, runs: list[str] | None = None, filter_string: str | None = None, top: int | None = None,
             method: str = "caruana", steps: int = blend.DEFAULT_STEPS, data_dir: Path | None = None,
             nested: bool = True, init: int = 1) -> EnsembleResult:
    """Choose weights over the member runs on their OOF, estimate the blend by nested CV, log an ensemble run.

    Example:
        >>> ensemble(load_config(), top=3).summary()  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ConfigError(f"--method {method}: unknown.", f"Use one of {', '.join(METHODS)}.")
    tracker, task = open_tracker(cfg), get_task_for(cfg)
    members = select_members(tracker, task.metric.name, task.metric.higher_is_better, runs or [], filter_string, top)
    with tempfile.TemporaryDirectory(prefix="kops-ensemble-") as tmp:
        oofs = {m: member_oof(tracker, m, Path(tmp), task.submission.id_column) for m in members}
    check_same_rows(oofs)
    tables = [oofs[m] for m in members]
    truth = truth_rows(cfg, task, tables[0][KEY], data_dir)
    id_column = task.submission.id_column  # the ids as the task reads them (the OOF's were read as text)
    tables = [t.assign(**{id_column: truth[id_column].to_numpy()}) for t in tables]
    problem = Blend(task, rank_tables(task, tables) if method == "rank" else tables, truth)
    folds = problem.fold_ids
    chosen = choose(method, problem, folds, steps, init)
    member_cv = {m: problem.cv(blend.one_hot(len(members), i)) for i, m in enumerate(members)}
    nested_cv, per_fold = None, {}
    if nested and len(folds) > 1:
        nested_cv, per_fold = blend.nested_cv(folds, lambda f: choose(method, problem, f, steps, init).weights,
                                              lambda w, k: problem.score(w, [k]))
    sign = 1.0 if task.metric.higher_is_better else -1.0
    result = EnsembleResult("", method, task.metric.name, task.metric.higher_is_better,
                            {m: float(w) for m, w in zip(members, chosen.weights, strict=True) if w > 0},
                            member_cv, problem.cv(chosen.weights), nested_cv,
                            [sign * s for s in chosen.trajectory], per_fold, chosen.best_step)
    result.run_id = log_ensemble(cfg, tracker, task, result, members, steps, init)
    return result


def log_ensemble(cfg: KopsConfig, tracker: Tracker, task: Any, result: EnsembleResult, members: list[str],
                 steps: int, init: int = 1) -> str:
    """The ensemble run: tags linking members (and members back), weights, both CV figures, the trajectory."""
    m = result.metric
    tags = {TAG_KIND: Kind.ENSEMBLE, TAG_TASK: task.name, TAG_ENSEMBLE_METHOD: result.method,
            TAG_ENSEMBLE_MEMBERS: json.dumps(members), TAG_ENSEMBLE_WEIGHTS: json.dumps(result.weights),
            **metric_tags(task)}
    run_id = tracker.start_run(f"ensemble-{result.method}-{len(result.weights)}of{len(members)}",
                               {"method": result.method, "members": len(members), "steps": steps, "init": init},
                               tags)
    metrics = {f"cv_{m}": result.cv, f"best_member_cv_{m}": result.member_cv[result.best_member],
               "members_weighted": float(len(result.weights))}
    if result.nested_cv is not None:
        metrics[f"nested_cv_{m}"] = result.nested_cv
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if math.isfinite(v)})
    for step, score in enumerate(result.trajectory, 1):
        tracker.log_metrics(run_id, {f"selection_{m}": score}, step=step)
    with tempfile.TemporaryDirectory(prefix="kops-ensemble-") as tmp:
        folder = Path(tmp) / ARTIFACT_ENSEMBLE
        folder.mkdir()
        (folder / "trajectory.json").write_text(json.dumps(result.as_dict(), indent=2))
        plot_trajectory(result, folder / "trajectory.png")
        tracker.log_artifacts(run_id, folder, ARTIFACT_ENSEMBLE)
    tracker.end_run(run_id)
    for member in members:
        before = tracker.get_run(member).tags.get(TAG_ENSEMBLE_OF, "")
        tracker.set_tags(member, {TAG_ENSEMBLE_OF: ",".join(filter(None, [*before.split(","), run_id]))})
    return run_id


def plot_trajectory(result: EnsembleResult, path: Path) -> Path:
    """A small PNG: the blend's pooled OOF score after each selection step, the step kept, and the CV figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    steps = list(range(1, len(result.trajectory) + 1))
    ax.plot(steps, result.trajectory, marker="o", ms=3, label="blend, pooled OOF")
    ax.axvline(result.best_step, color="tab:green", lw=0.8, label=f"weights kept (step {result.best_step})")
    m = result.metric
    nested = "n/a" if result.nested_cv is None else f"{result.nested_cv:.4f}"
    ax.text(0.98, 0.5, f"cv_{m} (mean of folds)\nbest member {result.member_cv[result.best_member]:.4f}\n"
            f"blend in-sample {result.cv:.4f}\nblend nested {nested}", transform=ax.transAxes, ha="right",
            va="center", fontsize=7, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0.5})
    ax.set_xlabel(f"selection step ({result.method})")
    ax.set_ylabel(f"{m} (pooled OOF)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
