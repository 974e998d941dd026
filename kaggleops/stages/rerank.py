"""`kops train --stage rerank`: a task's second stage (:class:`kaggleops.task.SecondStage`) over base k-fold
runs' OOF, as linked MLflow runs.

Reads each base fold run's ``oof/oof.csv`` (its fold is the run's ``kops.fold`` tag), asks the task for the
candidate rows, trains one second-stage run per base fold (children of a parent run, ``mlflow.parentRunId``),
lets the task tune its combination on the OOF and logs the task's OOF metrics on the parent. Links: the parent's
``kops.rerank.base_runs`` lists every base fold run used and ``kops.rerank.from`` the runs named on the
command line; each fold run's ``kops.rerank.base_runs`` lists the base runs of its own fold. Each fold run
logs ``model/`` (publishable like a base fold) and ``rerank/train_ids.json`` (the rows it trained on); the
parent logs ``rerank/oof_scored.csv`` (which fold scored which candidate) and ``rerank/tuning.json``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops.adapters.tracking import Tracker, fold_runs, open_tracker
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, DataError, MissingArtifact
from kaggleops.schema import (
    ARTIFACT_MODEL,
    ARTIFACT_RERANK,
    TAG_FOLD,
    TAG_KIND,
    TAG_RERANK_BASE_RUNS,
    TAG_RERANK_FROM,
    TAG_RERANK_OPTIONS,
    TAG_STAGE,
    TAG_TASK,
    Kind,
)
from kaggleops.stages.fold_artifacts import OOF_ARTIFACT, OOF_FILE
from kaggleops.stages.train import get_task_for
from kaggleops.task import hook

if TYPE_CHECKING:
    import pandas as pd

    from kaggleops.adapters.tracking import RunRecord



@dataclass
class RerankFoldRun:
    run_id: str
    fold: int
    base_run_ids: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RerankResult:
    parent_run_id: str
    runs: list[RerankFoldRun]
    options: dict[str, Any]
    metrics: dict[str, float]
    summary_line: str = ""

    @property
    def run_id(self) -> str:
        return self.parent_run_id

    def as_dict(self) -> dict[str, object]:
        return {"run_id": self.parent_run_id, "options": self.options, "metrics": self.metrics,
                "runs": [asdict(r) for r in self.runs]}

    def summary(self) -> str:
        m = self.metrics
        lines = [f"rerank fold {r.fold}: run {r.run_id}  (base runs {', '.join(r.base_run_ids)})" for r in self.runs]
        chosen = "  ".join(f"{k} {v}" for k, v in self.options.items())
        lines.append(f"second-stage parent run {self.parent_run_id}  {chosen}".rstrip())
        lines.append(self.summary_line or "  ".join(f"{k} {v:.4f}" for k, v in sorted(m.items())))
        return "\n".join(lines)


def _fold_of(run: RunRecord) -> int | None:
    raw = run.tags.get(TAG_FOLD)
    return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None


def resolve_base_runs(tracker: Tracker, run_ids: list[str]) -> dict[str, dict[int, RunRecord]]:
    """Base model key → fold → fold run, from k-fold parent and/or fold run ids.

    A k-fold parent stands for its fold children; fold runs named directly are grouped by their parent
    (or stand alone). Raises ConfigError when none is named or a run is neither kind.
    """
    if not run_ids:
        raise ConfigError("No base runs to rerank.", "Name them: kops train --stage rerank --from KFOLD_RUN_ID")
    models: dict[str, dict[int, RunRecord]] = {}
    for run_id in run_ids:
        run = tracker.get_run(run_id)
        if _fold_of(run) is not None:
            children = [run]
            key = run.parent or run_id
        elif run.tags.get(TAG_KIND) == Kind.KFOLD:
            children = [r for r in fold_runs(tracker, run_id) if _fold_of(r) is not None]
            key = run_id
        else:
            raise ConfigError(f"Run {run_id} is neither a k-fold parent nor a fold run of `kops train`.",
                              "Pass the k-fold parent run id that `kops train` printed.")
        for child in children:
            models.setdefault(key, {})[_fold_of(child)] = child  # type: ignore[index]
    return models


def _download_oof(tracker: Tracker, run: RunRecord, dst: Path, id_column: str) -> pd.DataFrame:
    import pandas as pd

    run_id = run.id
    if f"{OOF_ARTIFACT}/{OOF_FILE}" not in tracker.list_artifacts(run_id, OOF_ARTIFACT):
        raise MissingArtifact(f"Run {run_id} has no `{OOF_ARTIFACT}/{OOF_FILE}` artifact to rerank.",
                              "Retrain the base with a kops version that logs OOF candidates: kops train")
    path = tracker.download(run_id, f"{OOF_ARTIFACT}/{OOF_FILE}", dst / run_id)
    df = pd.read_csv(path, dtype={id_column: str}, keep_default_na=False)
    df["fold"] = _fold_of(run)
    return df


def load_base_oof(tracker: Tracker, models: dict[str, dict[int, RunRecord]], dst: Path,
                  id_column: str) -> list[list[pd.DataFrame]]:
    """Each base model's OOF tables, one per fold in fold order (each with its ``fold`` column)."""
    fold_sets = {key: sorted(folds) for key, folds in models.items()}
    if len({tuple(f) for f in fold_sets.values()}) > 1:
        raise DataError(f"Base models cover different folds: {fold_sets}.", "Rerank models trained on the same folds.")
    return [[_download_oof(tracker, run, dst, id_column) for _, run in sorted(folds.items())]
            for folds in models.values()]


def second_stage_task(cfg: KopsConfig) -> Any:
    """The configured task, which must implement :class:`kaggleops.task.SecondStage`."""
    from kaggleops.task import SecondStage

    task = get_task_for(cfg)
    if not isinstance(task, SecondStage):
        raise ConfigError(f"Task {task.name} has no second stage (kaggleops.task.SecondStage).",
                          "Train the base only: kops train")
    return task


def _rerank_settings(cfg: KopsConfig, overrides: dict[str, Any] | None, task: Any) -> Any:
    from kaggleops.task import SettingsError

    values = {**(getattr(cfg, "rerank", None) or {}), **(overrides or {})}
    try:
        return task.second_stage_settings(values)
    except (SettingsError, ValueError, TypeError) as e:
        raise ConfigError(f"kops.yaml `rerank:`: {e}.") from None


def train_stage(cfg: KopsConfig, stage: str, from_runs: list[str], progress: bool = True) -> RerankResult:
    """The ``kops train --stage STAGE`` entry for stages after the base: only ``rerank`` so far."""
    if stage != Kind.RERANK:
        raise ConfigError(f"Unknown training stage {stage!r}; known: base, rerank.",
                          "Use: kops train --stage rerank --from KFOLD_RUN_ID")
    return train_reranker(cfg, from_runs, progress=progress)


def train_reranker(cfg: KopsConfig, from_runs: list[str], overrides: dict[str, Any] | None = None,
                   progress: bool = True) -> RerankResult:
    """Train the candidate reranker on the OOF of base runs; one MLflow run per base fold under a parent.

    Example:
        >>> train_reranker(load_config(), ["<k-fold parent run id>"], {"model": "tiny", "top_n": 5})  # doctest: +SKIP
        RerankResult(parent_run_id='…', w=0.5, n=5, metrics={...})
    """
    task = second_stage_task(cfg)
    settings = _rerank_settings(cfg, overrides, task)
    tracker = open_tracker(cfg)
    from_runs = [tracker.resolve(r) for r in from_runs]  # prefixes, or origin ids of pulled runs
    models = resolve_base_runs(tracker, from_runs)
    with tempfile.TemporaryDirectory(prefix="kops-rerank-") as tmp:
        oofs = load_base_oof(tracker, models, Path(tmp) / "oof", task.submission.id_column)
        rows, cands = task.candidates(oofs, settings)
        folds = sorted(rows["fold"].unique().tolist())
        if len(folds) < 2 or cands.empty:
            raise DataError(f"Reranking needs OOF candidates of at least 2 base folds; got folds {folds}.",
                            "Train the base on every fold: kops train (without --fold)")
        base_ids = {f: [m[f].id for m in models.values()] for f in folds}
        params = {**asdict(settings), "from": ",".join(from_runs), "base_folds": folds, "oof_rows": len(rows)}
        tags = {TAG_TASK: task.name, TAG_KIND: Kind.RERANK, TAG_STAGE: Kind.RERANK,
                TAG_RERANK_FROM: ",".join(from_runs),
                TAG_RERANK_BASE_RUNS: ",".join(i for f in folds for i in base_ids[f])}
        parent = tracker.start_run(f"rerank-{Path(hook(task, 'run_label')(settings)).name}", params, tags)
        started: list[str] = [parent]
        try:
            result = _train_all(task, tracker, settings, parent, rows, cands, base_ids, Path(tmp), started, progress)
        except KeyboardInterrupt:
            for run_id in started:
                tracker.end_run(run_id, "KILLED")
            raise
        except BaseException:
            for run_id in started:
                tracker.end_run(run_id, "FAILED")
            raise
    return result


def _train_all(task: Any, tracker: Tracker, settings: Any, parent: str, rows: pd.DataFrame, cands: pd.DataFrame,
               base_ids: dict[int, list[str]], tmp: Path, started: list[str], progress: bool) -> RerankResult:
    import pandas as pd

    fold_runs, results = [], []
    for fold, ids in base_ids.items():
        run_id = tracker.start_run(f"rerank-fold-{fold}", {**asdict(settings), "fold": fold},
                                   {TAG_FOLD: str(fold), TAG_KIND: Kind.RERANK_FOLD, TAG_STAGE: Kind.RERANK,
                                    TAG_RERANK_BASE_RUNS: ",".join(ids)}, parent_run_id=parent)
        started.append(run_id)
        if progress:
            print(f"kops: rerank fold {fold}: training on {int((cands['fold'] != fold).sum())} candidates", flush=True)
        with tracker.metric_logger(run_id) as log:
            res = task.train_second_stage_fold(cands, settings, fold, tmp / f"fold{fold}", log)
        tracker.log_json(run_id, {"fold": fold, "train_ids": res.train_ids}, f"{ARTIFACT_RERANK}/train_ids.json")
        fold_runs.append(RerankFoldRun(run_id, fold, ids))
        results.append(res)
    scored = pd.concat([r.scored for r in results], ignore_index=True)
    tuned = task.tune_second_stage(rows, scored, settings)
    for fold_run, res in zip(fold_runs, results, strict=True):
        fold_run.metrics = task.finish_second_stage_fold(res.model_dir, settings, tuned, rows, scored, fold_run.fold)
        tracker.log_artifacts(fold_run.run_id, res.model_dir, ARTIFACT_MODEL)
        tracker.log_metrics(fold_run.run_id, {**fold_run.metrics, "seconds": res.seconds}, res.steps)
        tracker.set_tags(fold_run.run_id, {TAG_RERANK_OPTIONS: json.dumps(tuned.options, sort_keys=True)})
        tracker.end_run(fold_run.run_id)
    _log_parent(tracker, parent, scored, tuned, list(hook(task, "scored_columns") or scored.columns))
    summary = hook(task, "second_stage_summary")(tuned.metrics)
    return RerankResult(parent, fold_runs, dict(tuned.options), tuned.metrics, summary)


def _log_parent(tracker: Tracker, parent: str, scored: pd.DataFrame, tuned: Any, columns: list[str]) -> None:
    tracker.log_metrics(parent, tuned.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "oof_scored.csv"
        scored[columns].to_csv(path, index=False)
        tracker.log_artifact(parent, path, ARTIFACT_RERANK)
    tracker.log_json(parent, {"options": tuned.options, "grid": tuned.grid}, f"{ARTIFACT_RERANK}/tuning.json")
    tracker.set_tags(parent, {TAG_RERANK_OPTIONS: json.dumps(tuned.options, sort_keys=True)})
    tracker.end_run(parent)
