"""`kops train`: the task's training loop, wrapped in MLflow runs with provenance.

One run per fold; with more than one fold, the folds are children (``mlflow.parentRunId``) of a k-fold
parent run carrying the mean CV. The task code never sees MLflow: it gets paths and a ``log`` callback.

Under ``torchrun`` (DDP, see :mod:`kaggleops.distributed`) rank 0 alone opens, resumes and logs the runs and
tells the other ranks which run and checkpoint each fold continues; they train their shards and log nothing.
The resume key leaves the process count out: a run started on 2 GPUs resumes on 1 (tag ``kops.world_size``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from kaggleops import distributed as dist
from kaggleops import interrupts
from kaggleops.adapters.tracking import Tracker, open_tracker, runs_tagged
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, DataError, Interrupted, is_disk_full
from kaggleops.schema import (
    ARTIFACT_MODEL,
    ARTIFACT_TASK_CODE,
    TAG_FOLD,
    TAG_GPU,
    TAG_KIND,
    TAG_METRIC,
    TAG_METRIC_HIGHER,
    TAG_RESUMES,
    TAG_TASK,
    TAG_TASK_CODE,
    TAG_TRAIN_KEY,
    TAG_WORLD_SIZE,
    Kind,
)
from kaggleops.stages.data import TRAIN_FILE
from kaggleops.stages.fold_artifacts import (
    ENVIRONMENT_ARTIFACT,
    OOF_ARTIFACT,
    CheckpointSlots,
    download_checkpoint,
    oof_file,
    progress_of,
    requirements_file,
    start_line,
)
from kaggleops.sync import background_sync
from kaggleops.task import FoldContext, hook

log = logging.getLogger("kaggleops")


@dataclass
class FoldRun:
    run_id: str
    fold: int
    score: float


@dataclass
class TrainResult:
    """The fold runs, the k-fold parent (if any) and the CV: the mean fold score of the task's ``metric``."""

    runs: list[FoldRun]
    parent_run_id: str | None = None
    cv: float | None = None
    metric: str = "score"
    higher_is_better: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    complete: bool = True  # False: a Placement's on_fold stopped the job before its last fold (no CV logged)

    @property
    def run_id(self) -> str:
        """The run to publish/submit: the single fold's run, or the k-fold parent."""
        return self.parent_run_id or self.runs[0].run_id

    def as_dict(self) -> dict[str, object]:
        return {"run_id": self.run_id, "parent_run_id": self.parent_run_id, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "cv": self.cv, f"cv_{self.metric}": self.cv,
                "runs": [asdict(r) for r in self.runs]}

    def summary(self) -> str:
        lines = [f"fold {r.fold}: run {r.run_id}  val_{self.metric} {r.score:.4f}" for r in self.runs]
        if self.parent_run_id:
            lines.append(f"k-fold parent run {self.parent_run_id}  cv_{self.metric} {self.cv:.4f}")
        return "\n".join(lines)


@dataclass
class Placement:
    """Where a training job's top run goes and who hears of its folds (a sweep's trial: stages/sweep.py).

    With a Placement the job always has a k-fold run on top (also for one fold): a child of ``parent_run_id``,
    carrying ``tags``. ``reopen`` continues that top run instead of starting one (its finished folds are kept, an
    unfinished fold resumes from its checkpoint in its own run). ``on_start(run_id)`` hears the top run's id before
    the first fold trains; ``on_fold(fold, score, folds_done)`` after each fold: True stops the job there (the top
    run ends FINISHED without a CV, the result has ``complete=False``).
    """

    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    reopen: str | None = None
    on_start: Callable[[str], None] | None = None
    on_fold: Callable[[int, float, int], bool] | None = None
    resume_command: str | None = None  # what continues the job after Ctrl-C (default: the `kops train --resume` one)


def get_task_for(cfg: KopsConfig) -> Any:
    """The task of kops.yaml (see :func:`kaggleops.tasks.task_for`)."""
    from kaggleops.tasks import task_for

    return task_for(cfg)


def code_tags(cfg: KopsConfig, folder: Path | None = None) -> dict[str, str]:
    """``kops.task.code``: the version of the project task's code a run trains with (none for a built-in task).

    With ``folder`` that code is also staged there as the kernel ships it (code wheel, dependency wheels, marker:
    :func:`kaggleops.kernel.code.stage_code`), at launch, so the run can keep what it ran (``task-code/``)."""
    from kaggleops.kernel.code import stage_code, task_code_version, task_kernel_spec

    try:
        if folder is None:
            version = task_code_version(cfg)
        else:
            staged = stage_code(cfg, task_kernel_spec(cfg), folder)
            version = staged[0] if staged else None
    except (ConfigError, OSError):
        return {}
    return {TAG_TASK_CODE: version} if version else {}


def metric_tags(task: Any) -> dict[str, str]:
    """``kops.metric`` (the task's metric name) and ``kops.metric.higher_is_better`` (true/false)."""
    return {TAG_METRIC: task.metric.name, TAG_METRIC_HIGHER: str(bool(task.metric.higher_is_better)).lower()}


def task_settings(cfg: KopsConfig, task: Any) -> Any:
    """The task's settings from kops.yaml's ``train:`` keys; a bad key is a ConfigError naming it."""
    from kaggleops.task import SettingsError

    try:
        return task.settings(cfg.train.task_settings())
    except NotImplementedError as e:
        raise ConfigError(f"Task {task.name}: {e}") from None
    except (SettingsError, ValueError, TypeError) as e:
        raise ConfigError(f"kops.yaml `train:`: {e}.", "Fix the key, or see the task's settings().") from None


def settings_params(settings: Any) -> dict[str, Any]:
    """The settings as flat MLflow params (a dataclass's fields, a mapping's items)."""
    if is_dataclass(settings) and not isinstance(settings, type):
        params = asdict(settings)
    elif isinstance(settings, dict):
        params = dict(settings)
    else:
        params = {k: v for k, v in vars(settings).items() if not k.startswith("_")} if hasattr(settings, "__dict__") \
            else {"settings": repr(settings)}
    params.pop("progress", None)
    return params


def load_training_data(cfg: KopsConfig, task: Any, data_dir: Path | None, sample: bool = False) -> tuple[Any, Any]:
    """(train rows, :class:`~kaggleops.stages.data.DataSource`): the data step (see :mod:`kaggleops.stages.data`)."""
    from kaggleops.stages.data import resolve

    source = resolve(cfg, task, data_dir, sample=sample, fetch=dist.is_main())
    try:
        df = task.load_train(source.train_file)
    except NotImplementedError as e:
        raise ConfigError(f"Task {task.name}: {e}") from None
    except ValueError as e:
        raise DataError(str(e)) from None
    if hasattr(df, "__len__") and len(df) < cfg.train.n_folds:
        raise DataError(f"{source.train_file} has {len(df)} row(s): too few for {cfg.train.n_folds} folds.",
                        "Point --data / data_dir at the competition's full train.csv (or lower train.n_folds).")
    warn_incomplete(df, tuple(hook(task, "complete_columns")), source.train_file)
    return df, source


def warn_incomplete(df: Any, columns: tuple[str, ...], path: Path) -> None:
    """One warning line per column the task needs complete (its ``complete_columns``, e.g. the target) that has
    empty or NaN cells, with the count: such rows train silently on nothing."""
    for column in columns:
        if not hasattr(df, "columns") or column not in df.columns:
            continue
        cells = df[column]
        missing = int((cells.isna() | (cells.astype(str).str.strip() == "")).sum())
        if missing:
            log.warning("kops: warning: %s of %s rows of %s have no %s (empty or NaN); they are trained on as they "
                        "are: drop or fill them if they are not meant to be there", f"{missing:,}", f"{len(df):,}",
                        path, column)


def _train_key(params: dict[str, Any]) -> str:
    """Fingerprint of everything that decides a run's numbers: only a run with the same key is resumed."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(cfg: KopsConfig, folds: list[int] | None = None, data_dir: Path | None = None,
          progress: bool = True, resume: bool = False, sample: bool = False,
          placement: Placement | None = None) -> TrainResult:
    """Train the configured task on the chosen folds; one MLflow run per fold.

    With ``resume``, each fold continues the latest unfinished run (RUNNING after a kill, FAILED or KILLED)
    of the same settings and data, from its last checkpoint, in the SAME MLflow run; finished folds of a
    resumed k-fold job are kept as they are. Without it a new run starts (and a warning names the
    unfinished one). Data: ``data_dir``, else kops.yaml / an attached Kaggle input / the download cache
    (downloaded when absent); the bundled sample only with ``sample`` (see :mod:`kaggleops.stages.data`).
    ``placement``: where the top run goes and a per-fold hook (see :class:`Placement`; `kops sweep` uses it).

    Example:
        >>> train(load_config(), folds=[0])  # doctest: +SKIP
        TrainResult(runs=[FoldRun(run_id='…', fold=0, score=0.61)], cv=0.61, metric='accuracy', ...)
    """
    joined = dist.init()
    # One process: the first Ctrl-C/SIGTERM stops training at the next step, after a checkpoint (a second one stops
    # at once). Under torchrun every rank would stop at a different step, so there a signal stops at once.
    stopper = interrupts.graceful() if dist.world_size() == 1 else contextlib.nullcontext()
    try:
        with stopper:
            result = _train(cfg, folds, data_dir, progress, resume, sample, placement)
    except BaseException:
        if joined:
            dist.destroy()
        raise
    if joined:
        dist.destroy(together=True)
    return result


def _train(cfg: KopsConfig, folds: list[int] | None, data_dir: Path | None, progress: bool,
           resume: bool, sample: bool = False, placement: Placement | None = None) -> TrainResult:
    task = get_task_for(cfg)
    df, source = load_training_data(cfg, task, data_dir, sample)
    settings = task_settings(cfg, task)
    chosen = list(dict.fromkeys(folds)) if folds else (cfg.train.folds or list(range(cfg.train.n_folds)))
    bad = [f for f in chosen if not 0 <= f < cfg.train.n_folds]
    if bad:
        raise DataError(f"Fold(s) {bad} out of range for n_folds={cfg.train.n_folds}.", "Use --fold 0..n_folds-1.")
    try:
        df = task.make_folds(df, cfg.train.n_folds, cfg.train.seed)
    except NotImplementedError as e:
        raise ConfigError(f"Task {task.name}: {e}") from None
    if not dist.is_main():
        return _follow(task, df, settings, chosen, cfg.train.seed)
    result = _lead(cfg, task, df, settings, chosen, source, progress, resume,
                   resume_command(folds, sample, data_dir), placement)
    return dist.broadcast(result)


def resume_command(folds: list[int] | None, sample: bool, data_dir: Path | None) -> str:
    """The command that continues the runs of this `kops train` (the same folds and data), quoted for a shell."""
    import shlex

    args = ["kops", "train", "--resume", *(a for f in dict.fromkeys(folds or []) for a in ("--fold", str(f)))]
    args += ["--sample"] if sample else (["--data", str(data_dir)] if data_dir is not None else [])
    return shlex.join(args)


def _lead(cfg: KopsConfig, task: Any, df: Any, settings: Any, chosen: list[int], source: Any, progress: bool,
          resume: bool, resume_cmd: str = "kops train --resume", placement: Placement | None = None) -> TrainResult:
    tracker = open_tracker(cfg)
    params = {**settings_params(settings), "n_folds": cfg.train.n_folds, "seed": cfg.train.seed, "data": source.name,
              "data_sha256": source.files[TRAIN_FILE][:16], "rows": len(df)}
    place = placement or Placement()
    with tempfile.TemporaryDirectory(prefix="kops-task-code-") as code_dir:  # staged now: files may change later
        tags = code_tags(cfg, Path(code_dir))
        job = _Job(tracker, task, df, settings, params, progress, resume or place.reopen is not None,
                   cfg.train.seed, chosen, source.as_input(), place.resume_command or resume_cmd, tags,
                   Path(code_dir) if tags else None)
        return _run_job(job, tracker, task, chosen, place, placement is not None, cfg)


def _run_job(job: _Job, tracker: Tracker, task: Any, chosen: list[int], place: Placement, placed: bool,
             cfg: KopsConfig) -> TrainResult:
    parent = None
    if len(chosen) > 1 or placed:
        parent = job.open_parent(chosen, place)
    try:
        # `kops sync push` every storage.sync_minutes and once at the end (no-op without a bucket); the parent is
        # closed inside, so that last push carries its final status and CV.
        with background_sync(cfg):
            runs = _folds(job, chosen, parent, place.on_fold)
            return _close_parent(tracker, task, runs, parent, complete=len(runs) == len(chosen))
    except BaseException as e:
        if parent and not is_disk_full(e):
            tracker.end_run(parent, "KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt)) else "FAILED")
        raise


def say(text: str) -> None:
    """A progress line on stderr (stdout stays for the result)."""
    print(text, file=sys.stderr, flush=True)


def _folds(job: _Job, chosen: list[int], parent: str | None,
           on_fold: Callable[[int, float, int], bool] | None) -> list[FoldRun]:
    """Train the chosen folds in order; ``on_fold`` (a Placement's) hears each score and may stop the job."""
    runs: list[FoldRun] = []
    for fold in chosen:
        runs.append(job.fold(fold, parent))
        if on_fold is not None and on_fold(fold, runs[-1].score, len(runs)) and len(runs) < len(chosen):
            break
    return runs


def _close_parent(tracker: Tracker, task: Any, runs: list[FoldRun], parent: str | None,
                  complete: bool = True) -> TrainResult:
    result = TrainResult(runs, parent, cv=sum(r.score for r in runs) / len(runs), metric=task.metric.name,
                         higher_is_better=bool(task.metric.higher_is_better), complete=complete)
    if parent:
        if complete:
            tracker.log_metrics(parent, {f"cv_{task.metric.name}": result.cv})
        tracker.end_run(parent)
    return result


def _follow(task: Any, df: Any, settings: Any, chosen: list[int], seed: int) -> TrainResult:
    """A rank other than 0: train each fold as rank 0 says (no tracking store touched); rank 0's result."""
    for fold in chosen:
        plan = dist.broadcast()
        if plan["done"]:
            continue
        with tempfile.TemporaryDirectory(prefix=f"kops-train-rank{dist.rank()}-") as tmp:
            out = Path(tmp) / "out"
            out.mkdir()
            task.train_fold(df, settings, fold_context(fold, out, seed, resume_from=Path(plan["resume_from"])
                                                       if plan["resume_from"] else None))
    return dist.broadcast()


def fold_context(fold: int, out: Path, seed: int, log: Any = None, progress: str | None = None,
                 resume_from: Path | None = None, checkpoint: Any = None) -> FoldContext:
    """The :class:`FoldContext` of one fold on this process: its DDP rank and world size, and kops' graceful Ctrl-C
    flag behind ``ctx.should_stop()``."""
    return FoldContext(fold, out, seed, log or (lambda metrics, step: None), progress, resume_from, checkpoint,
                       rank=dist.rank(), world_size=dist.world_size(),
                       stop_requested=lambda: interrupts.requested() is not None)


def machine_tags() -> dict[str, str]:
    """``kops.gpu`` (name and memory, or ``none``) and ``kops.gpu.count`` of this machine."""
    from kaggleops.environment import gpu_info

    gpu = gpu_info()
    name = gpu["name"] if gpu["name"] == "none" else f"{gpu['name']} ({gpu['memory_gb']} GB)"
    return {TAG_GPU: name, f"{TAG_GPU}.count": gpu.get("count", "0"), TAG_WORLD_SIZE: str(dist.world_size())}


UNFINISHED = ("RUNNING", "FAILED", "KILLED")


@dataclass
class _Job:
    """One `kops train` invocation: opens (or reopens) runs and trains folds in them."""

    tracker: Tracker
    task: Any
    df: Any
    settings: Any
    params: dict[str, Any]
    progress: bool
    resume: bool
    seed: int = 42
    chosen: list[int] = field(default_factory=list)
    data_input: dict[str, str] = field(default_factory=dict)
    resume_command: str = "kops train --resume"  # what continues this job's runs (its --fold/--sample/--data)
    code_tags: dict[str, str] = field(default_factory=dict)  # kops.task.code: the task code version it runs
    code_dir: Path | None = None  # that code, staged at launch: logged as task-code/ on the run the user names

    def log_code(self, run_id: str) -> None:
        """The task code this job runs as ``task-code/`` on ``run_id`` (what `push-kernel` ships for a blend of
        runs that trained different code); once per run: the k-fold parent, or the single fold run."""
        if self.code_dir is not None:
            self.tracker.log_artifacts(run_id, self.code_dir, ARTIFACT_TASK_CODE)

    @property
    def best_metric(self) -> str:
        return f"best_val_{self.task.metric.name}"

    def label(self, fold: int) -> str:
        """``fold 3 (2/5)``: the fold and its place among this job's folds."""
        return f"fold {fold} ({self.chosen.index(fold) + 1}/{len(self.chosen)})" if fold in self.chosen else \
            f"fold {fold}"

    def log_data(self, run_id: str) -> None:
        """Record the training data on the run as an MLflow dataset input (once per run)."""
        if self.data_input:
            self.tracker.log_data_input(run_id, **self.data_input)

    def _find(self, kind: str, key: str, extra: dict[str, str]) -> list[Any]:
        return runs_tagged(self.tracker, {TAG_KIND: kind, TAG_TRAIN_KEY: key, **extra})

    def _unfinished(self, runs: list[Any], what: str) -> Any | None:
        open_runs = [r for r in runs if r.status in UNFINISHED]
        if open_runs and not self.resume:
            log.warning("kops: %s has an unfinished run %s; continue it with: %s",
                        what, open_runs[0].id, self.resume_command)
        return open_runs[0] if open_runs and self.resume else None

    def open_parent(self, chosen: list[int], place: Placement | None = None) -> str:
        place = place or Placement()
        run_id = self._reopen_parent(chosen, place)
        if run_id is None:
            params = {**self.params, "folds": chosen}
            name = hook(self.task, "run_label")(self.settings)
            run_id = self.tracker.start_run(f"kfold-{name}", params,
                                            {TAG_TASK: self.task.name, TAG_KIND: Kind.KFOLD,
                                             TAG_TRAIN_KEY: _train_key(params), **metric_tags(self.task),
                                             **machine_tags(), **self.code_tags, **place.tags},
                                            parent_run_id=place.parent_run_id)
            self.log_data(run_id)
            self.log_code(run_id)
        if place.on_start is not None:
            place.on_start(run_id)
        return run_id

    def _reopen_parent(self, chosen: list[int], place: Placement) -> str | None:
        """The k-fold run to continue: the Placement's, else (not placed) the unfinished one of the same key."""
        if place.reopen is not None:
            self.tracker.reopen_run(place.reopen)
            if place.tags:
                self.tracker.set_tags(place.reopen, place.tags)
            return place.reopen
        if place.parent_run_id is not None:
            return None  # a placed job (a sweep trial) never takes over another job's run by its key
        found = self._unfinished(self._find(Kind.KFOLD, _train_key({**self.params, "folds": chosen}), {}),
                                 "this k-fold job")
        if found is None:
            return None
        self.tracker.reopen_run(found.id)
        return str(found.id)

    def fold(self, fold: int, parent: str | None) -> FoldRun:
        if interrupts.requested():
            raise KeyboardInterrupt  # asked to stop between folds: the next fold does not start
        params = {**self.params, "fold": fold}
        key = _train_key(params)
        same = [r for r in self._find(Kind.FOLD, key, {TAG_FOLD: str(fold)}) if r.parent == parent]
        if self.resume and parent:
            done = [r for r in same if r.status == "FINISHED" and self.best_metric in r.metrics]
            if done:
                dist.broadcast({"done": True})
                say(f"{self.label(fold)}: run {done[0].id} already finished; kept")
                return FoldRun(done[0].id, fold, done[0].metrics[self.best_metric])
        found = self._unfinished(same, f"fold {fold}")
        if self.resume and found is None:
            say(f"{self.label(fold)}: nothing to resume ({self._why_not(fold, params)}); starting a new run")
        return _train_fold(self, fold, params, parent, key, str(found.id) if found is not None else None)

    def _why_not(self, fold: int, params: dict[str, Any]) -> str:
        """Why no run of ``fold`` can be resumed: none unfinished, or the unfinished one differs (which params)."""
        others = [r for r in runs_tagged(self.tracker, {TAG_KIND: Kind.FOLD, TAG_FOLD: str(fold)})
                  if r.status in UNFINISHED]
        if not others:
            return "no unfinished run of this fold"
        changed = sorted(k for k, v in params.items() if others[0].params.get(k) != str(v))
        what = f"changed: {', '.join(changed[:4])}" if changed else "other k-fold job"
        return f"unfinished run {others[0].id} has other settings or data ({what})"


def _start_or_reopen(job: _Job, fold: int, params: dict[str, Any], parent: str | None, key: str,
                     resume_run: str | None) -> tuple[str, dict[str, int]]:
    tags = {TAG_FOLD: str(fold), TAG_TASK: job.task.name, TAG_KIND: Kind.FOLD, TAG_TRAIN_KEY: key,
            **metric_tags(job.task), **machine_tags(), **job.code_tags}
    if resume_run is None:
        run_id = job.tracker.start_run(f"fold-{fold}", params, tags, parent_run_id=parent)
        job.log_data(run_id)
        if parent is None:
            job.log_code(run_id)
        return run_id, {}
    run = job.tracker.get_run(resume_run)
    resumes = int(run.tags.get(TAG_RESUMES, "0")) + 1
    job.tracker.reopen_run(resume_run)
    job.tracker.set_tags(resume_run, {**{k: v for k, v in tags.items() if k.startswith((TAG_GPU, TAG_WORLD_SIZE))},
                                      TAG_RESUMES: str(resumes)})
    return resume_run, job.tracker.last_steps(resume_run)


def _train_fold(job: _Job, fold: int, params: dict[str, Any], parent: str | None, key: str,
                resume_run: str | None = None) -> FoldRun:
    tracker = job.tracker
    run_id, skip = _start_or_reopen(job, fold, params, parent, key, resume_run)
    slots: CheckpointSlots | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="kops-train-") as tmp:
            resume_from = download_checkpoint(tracker, run_id, Path(tmp) / "resume", job.task) if resume_run else None
            say(start_line(job.label(fold), run_id, resume_run, resume_from))
            dist.broadcast({"done": False, "resume_from": str(resume_from) if resume_from else None})
            out = Path(tmp) / "out"
            out.mkdir()
            with tracker.metric_logger(run_id, skip=skip, resume_command=job.resume_command) as log_fn:
                slots = CheckpointSlots(log_fn, progress_of(resume_from).get("step"))
                label = job.label(fold) if job.progress else None  # a task's bar may show it (e.g. "fold 0 (1/5)")
                ctx = fold_context(fold, out, job.seed, log_fn, label, resume_from, slots)
                try:
                    result = job.task.train_fold(job.df, job.settings, ctx)
                except NotImplementedError as e:
                    raise ConfigError(f"Task {job.task.name}: {e}") from None
                log_fn({job.best_metric: float(result.score), **(result.metrics or {}),
                        **({"best_step": result.best_step} if result.best_step is not None else {})}, result.steps)
            tracker.log_artifacts(run_id, result.model_dir, ARTIFACT_MODEL)
            tracker.log_artifact(run_id, oof_file(result.oof, job.task, Path(tmp) / "oof", fold), OOF_ARTIFACT)
            tracker.log_artifact(run_id, requirements_file(Path(tmp)), ENVIRONMENT_ARTIFACT)
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED")
        step = slots.step if slots is not None else None
        if step is None:
            raise Interrupted(f"interrupted before the first checkpoint of run {run_id} — `{job.resume_command}` "
                              "trains it again from step 0") from None
        raise Interrupted(f"interrupted at step {step} of run {run_id} — resume with `{job.resume_command}`") from None
    except BaseException as e:
        if not is_disk_full(e):
            tracker.end_run(run_id, "FAILED")
        # a full disk cannot store the status either; the run stays RUNNING, which `--resume` continues
        raise
    tracker.end_run(run_id)
    return FoldRun(run_id, fold, float(result.score))
