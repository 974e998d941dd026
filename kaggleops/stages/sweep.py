"""`kops sweep`: an Optuna study over the task's ``train:`` settings, shared by every machine that joins it.

Each trial is an ordinary kops training run (:func:`kaggleops.stages.train.train` with a
:class:`~kaggleops.stages.train.Placement`): a k-fold run, child of the study's own run (``kops.kind = sweep``),
tagged with the study, the trial number and its state, so publish, kernels and scores take it like any run. Each
fold's score is the trial's intermediate value: the pruner may stop a bad trial after its first fold.

Preemption: workers beat a heartbeat into the storage. A worker that stops beating for the grace period (SIGKILL,
a recycled VM) has its trial marked FAIL by the next worker that looks, and put back as a new WAITING trial with the
same params and user attributes (Optuna's ``RetryFailedTrialCallback``). The user attribute ``mlflow_run_id`` —
written as soon as a trial's run exists — is thus inherited: the worker that takes the retried trial reopens that
run (finished folds kept, the unfinished fold resumed from its last checkpoint in its own run) instead of starting
over. Ctrl-C/SIGTERM stops at the next training step like `kops train`, marks the run KILLED and the trial FAIL, puts
the trial back the same way and exits 130.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaggleops import interrupts
from kaggleops.adapters import studies
from kaggleops.adapters.studies import ATTR_RUN, ATTR_TARGET, ATTR_WORKER
from kaggleops.adapters.tracking import Tracker, open_tracker, runs_tagged
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, Interrupted, KopsError, mask_url
from kaggleops.schema import TAG_KIND, TAG_SWEEP_STATE, TAG_SWEEP_STUDY, TAG_SWEEP_TRIAL, TAG_TASK, Kind
from kaggleops.stages.sweep_history import write_report
from kaggleops.stages.sweep_space import Param, parse_space, suggest, with_params
from kaggleops.stages.train import Placement, get_task_for, metric_tags, say, train

MAX_FAILED_IN_A_ROW = 3  # trials failing one after another (not preempted): the worker stops with the last error
POLL_S = 0.5
WAIT_S = 4.0  # a worker with nothing to start looks again after this (or one heartbeat, when shorter)


def study_name(cfg: KopsConfig, name: str | None = None) -> str:
    """``name``, else ``sweep.study``, else ``<experiment>-sweep``."""
    return name or cfg.sweep.study or f"{cfg.experiment_name}-sweep"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    running: int = 0
    waiting: int = 0
    fail: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @classmethod
    def of(cls, study: Any) -> Counts:
        counts = cls()
        for trial in study.get_trials(deepcopy=False):
            name = trial.state.name.lower()
            setattr(counts, name, getattr(counts, name, 0) + 1)
        return counts


@dataclass
class SweepResult:
    """What one `kops sweep` worker did, and where the study stands."""

    study: str
    storage: str  # masked
    ran: int
    counts: Counts
    target: int
    best: dict[str, Any] | None = None
    worker: str = field(default_factory=worker_id)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "done": self.counts.finished >= self.target}

    def summary(self) -> str:
        c = self.counts
        line = (f"study {self.study}: {c.finished}/{self.target} trials done ({c.complete} complete, {c.pruned} "
                f"pruned, {c.running} running elsewhere); this worker ran {self.ran}")
        if self.best:
            line += (f"\nbest {self.best['metric']} {self.best['value']:.6g}: trial {self.best['trial']}, run "
                     f"{self.best['run_id']}, {json.dumps(self.best['params'])}")
        return line


def open_study(cfg: KopsConfig, name: str, task: Any, on_stale: Any = None, create: bool = True) -> tuple[Any, str]:
    """(the Optuna study, the storage URL masked) of ``name``; ``create=False``: a missing study is a ConfigError."""
    url = studies.storage_url(cfg)
    storage = studies.open_storage(url, cfg.sweep.heartbeat_s, cfg.sweep.grace_s, on_stale)
    masked = mask_url(url)
    if not create and name not in studies.study_names(storage):
        raise ConfigError(f"No study {name} in {masked}.", "Start it with: kops sweep --study " + name)
    n_folds = len(cfg.train.folds or range(cfg.train.n_folds))
    study = studies.load_study(name, storage, bool(task.metric.higher_is_better),
                               studies.sampler(cfg.sweep.sampler, cfg.sweep.startup_trials),
                               studies.pruner(cfg.sweep.pruner, cfg.sweep.startup_trials, n_folds))
    return study, masked


def study_run(tracker: Tracker, name: str, task: Any, params: dict[str, Any]) -> str:
    """The study's own MLflow run (``kops.kind = sweep``), created by the first worker; set RUNNING. Workers that
    start at once may each create one: all keep the oldest, and each deletes its own other one."""
    tags = {TAG_KIND: Kind.SWEEP, TAG_SWEEP_STUDY: name}
    found = runs_tagged(tracker, tags)
    mine = None
    if not found:
        mine = tracker.start_run(f"sweep-{name}", params, {**tags, TAG_TASK: task.name, **metric_tags(task)})
        found = runs_tagged(tracker, tags)
    keep = min(found, key=lambda r: (r.start_time, r.id))
    if mine is not None and mine != keep.id:
        tracker.delete_run(mine)
    if keep.status != "RUNNING":
        tracker.reopen_run(keep.id)
    return str(keep.id)


def best_of(study: Any, metric: str) -> dict[str, Any] | None:
    """The best COMPLETE trial: its value, params, number and MLflow run; None before the first."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None
    best = study.best_trial
    return {"trial": best.number, "value": best.value, "params": best.params, "metric": f"cv_{metric}",
            "run_id": best.user_attrs.get(ATTR_RUN)}


def sweep(cfg: KopsConfig, name: str | None = None, trials: int | None = None, timeout_s: float | None = None,
          data_dir: Path | None = None, sample: bool = False, progress: bool = True) -> SweepResult:
    """Join (or create) the study and run trials until it has ``trials`` finished (COMPLETE or PRUNED) ones or
    ``timeout_s`` is up; any number of machines may run this at once against the same storage.

    Example:
        >>> sweep(load_config(), "lr-search", trials=40).best  # doctest: +SKIP
        {'trial': 17, 'value': 0.981, 'params': {'lr': 0.0031}, 'metric': 'cv_accuracy', 'run_id': '…'}
    """
    task = get_task_for(cfg)
    space = parse_space(cfg, task)  # before any connection: a bad parameter costs nothing
    name = study_name(cfg, name)
    worker = _Worker(cfg, task, space, name, data_dir, sample, progress)
    study, masked = open_study(cfg, name, task, worker.on_stale)
    target = int(trials or study.user_attrs.get(ATTR_TARGET) or cfg.sweep.n_trials)
    if trials or ATTR_TARGET not in study.user_attrs:
        study.set_user_attr(ATTR_TARGET, target)  # --trials N: the study's new target, for every worker
    worker.study, worker.tracker = study, open_tracker(cfg)
    worker.run_id = study_run(worker.tracker, name, task, _study_params(cfg, space, masked))
    say(f"study {name} in {masked}: {Counts.of(study).finished}/{target} trials done; worker {worker.worker}")
    deadline = time.monotonic() + timeout_s if timeout_s else None
    try:
        with interrupts.graceful():
            worker.loop(target, deadline)
    finally:
        worker.close(target)
    target = int(study.user_attrs.get(ATTR_TARGET, target))
    return SweepResult(name, masked, worker.ran, Counts.of(study), target, best_of(study, task.metric.name))


def _study_params(cfg: KopsConfig, space: list[Param], storage: str) -> dict[str, Any]:
    return {"space": "; ".join(p.describe() for p in space), "sampler": cfg.sweep.sampler,
            "pruner": cfg.sweep.pruner, "storage": storage, "n_folds": cfg.train.n_folds}


@dataclass
class _Worker:
    """One `kops sweep` process: asks the study for trials and trains each as a kops run."""

    cfg: KopsConfig
    task: Any
    space: list[Param]
    name: str
    data_dir: Path | None
    sample: bool
    progress: bool
    study: Any = None
    tracker: Any = None
    run_id: str = ""
    ran: int = 0
    worker: str = field(default_factory=worker_id)
    trial: Any = None  # the trial being trained
    trial_run: str | None = None

    def loop(self, target: int, deadline: float | None) -> None:
        failed_in_a_row, waiting_said = 0, False
        while deadline is None or time.monotonic() < deadline:
            target = int(self.study.user_attrs.get(ATTR_TARGET, target))  # `--trials N` of any worker moves it
            if interrupts.requested():
                raise Interrupted(f"stopped between trials of study {self.name}; continue with "
                                  f"`kops sweep --study {self.name}`")
            studies.stale_trials(self.study)
            counts = Counts.of(self.study)
            if counts.finished >= target:
                return
            if counts.waiting == 0 and counts.finished + counts.running >= target:
                if not waiting_said:
                    say(f"study {self.name}: waiting for {counts.running} trial(s) running elsewhere (a dead "
                        "worker's trial comes back here after the grace period)")
                    waiting_said = True
                self._sleep()
                continue
            waiting_said = False
            error = self._one()
            failed_in_a_row = failed_in_a_row + 1 if error else 0
            if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                raise KopsError(f"{failed_in_a_row} trials of study {self.name} failed in a row; the last: {error}",
                                "Fix the cause, then run the same command again.")
            self._summary()

    def _sleep(self) -> None:
        until = time.monotonic() + min(self.cfg.sweep.heartbeat_s, WAIT_S)
        while time.monotonic() < until and not interrupts.requested():
            time.sleep(POLL_S)

    def _one(self) -> KopsError | None:
        """Run one trial; the error when it failed (not interrupted: that stops the worker)."""
        self.trial, self.trial_run = None, None
        try:
            self.study.optimize(self.objective, n_trials=1, catch=(), gc_after_trial=False)
        except (Interrupted, KeyboardInterrupt) as e:
            self._put_back()
            if isinstance(e, Interrupted) or self.trial is None:
                raise
            raise Interrupted(f"stopped between folds of trial {self.trial.number} (run {self.trial_run}); it is "
                              f"back in study {self.name}: continue with `kops sweep --study {self.name}`") from None
        except KopsError as e:
            if self.trial is None or isinstance(e, ConfigError):
                raise
            say(f"trial {self.trial.number} failed: {e}")
            return e
        except RuntimeError as e:
            if type(e).__name__ != "UpdateFinishedTrialError" or self.trial is None:
                raise
            # this worker's heartbeat came later than the grace period (a frozen VM): another worker took the trial
            say(f"trial {self.trial.number} was put back while it ran here (heartbeat late: raise sweep.grace_s); "
                "its result here is dropped")
        finally:
            self.ran += 1 if self.trial is not None else 0
        return None

    def objective(self, trial: Any) -> float:
        import optuna

        self.trial = trial
        params = {p.name: suggest(trial, p) for p in self.space}
        trial.set_user_attr(ATTR_WORKER, self.worker)
        stored = studies.frozen(self.study, trial.number)
        was = studies.retried_from(stored)
        reopen = self._inherited_run(stored) if was is not None else None
        say(f"trial {trial.number}: {json.dumps(params)}" + (f" (trial {was} put back: continues run {reopen})"
                                                                 if reopen else ""))
        placement = Placement(self.run_id, {TAG_SWEEP_STUDY: self.name, TAG_SWEEP_TRIAL: str(trial.number),
                                            TAG_SWEEP_STATE: "RUNNING"}, reopen, self._started, self._fold_done,
                              f"kops sweep --study {self.name}")
        try:
            result = train(with_params(self.cfg, params), data_dir=self.data_dir, progress=self.progress,
                           sample=self.sample, placement=placement)
        except BaseException:
            self._tag("FAIL")
            raise
        self._tag("COMPLETE" if result.complete else "PRUNED")
        say(f"trial {trial.number}: {'cv' if result.complete else 'pruned at'} {result.metric} {result.cv:.6g}")
        if not result.complete:
            raise optuna.TrialPruned(f"after {len(result.runs)} fold(s)")
        return float(result.cv)

    def _inherited_run(self, stored: Any) -> str | None:
        """The run a put-back trial continues: the one its user attribute names, else (a worker killed between
        creating the run and naming it) the unfinished run tagged with an earlier attempt's number."""
        named = stored.user_attrs.get(ATTR_RUN)
        if named:
            return str(named) if self.tracker.exists(named) else None
        for number in reversed(studies.retry_history(stored)):
            runs = runs_tagged(self.tracker, {TAG_KIND: Kind.KFOLD, TAG_SWEEP_STUDY: self.name,
                                              TAG_SWEEP_TRIAL: str(number)})
            if runs and runs[0].status != "FINISHED":
                return str(runs[0].id)
        return None

    def _started(self, run_id: str) -> None:
        self.trial_run = run_id
        self.trial.set_user_attr(ATTR_RUN, run_id)  # before any fold trains: a retried trial finds the run

    def _fold_done(self, fold: int, score: float, done: int) -> bool:
        self.trial.report(score, done)
        return bool(self.trial.should_prune())

    def _tag(self, state: str) -> None:
        if self.trial_run is not None:
            with contextlib.suppress(KopsError):
                self.tracker.set_tags(self.trial_run, {TAG_SWEEP_STATE: state})

    def _put_back(self) -> None:
        """An interrupted trial goes back to the study as WAITING (same params and run), like a preempted one."""
        if self.trial is not None:
            studies.retry_callback(self.cfg.sweep.max_retry)(self.study, studies.frozen(self.study, self.trial.number))

    def on_stale(self, study: Any, trial: Any) -> None:
        """A dead worker's trial: put back (its run reopened by whoever takes it), or, past max_retry, its run
        ended FAILED."""
        studies.retry_callback(self.cfg.sweep.max_retry)(study, trial)
        if studies.retries(trial) + 1 > self.cfg.sweep.max_retry:
            run = trial.user_attrs.get(ATTR_RUN)
            if run and self.tracker is not None:
                with contextlib.suppress(KopsError):
                    self.tracker.set_tags(run, {TAG_SWEEP_STATE: "FAIL"})
                    self.tracker.end_run(run, "FAILED")
        say(f"trial {trial.number}: its worker stopped beating; put back for another worker")

    def _summary(self) -> None:
        counts = Counts.of(self.study)
        best = best_of(self.study, self.task.metric.name)
        metrics = {"trials_complete": float(counts.complete), "trials_pruned": float(counts.pruned)}
        if best:
            metrics[f"best_cv_{self.task.metric.name}"] = float(best["value"])
        with contextlib.suppress(KopsError):
            self.tracker.log_metrics(self.run_id, metrics, step=counts.finished)

    def close(self, target: int) -> None:
        """Leaving: the study run ends (FINISHED when the study is done, else KILLED) unless trials run elsewhere;
        the report (history plot, status) is refreshed on it."""
        if self.tracker is None or not self.run_id:
            return
        counts = Counts.of(self.study)
        target = int(self.study.user_attrs.get(ATTR_TARGET, target))
        with contextlib.suppress(KopsError):
            if self.ran or counts.finished >= target:
                write_report(self.tracker, self.run_id, self.study, self.task.metric.name, target)
            end_study_run(self.tracker, self.run_id, counts, target)


def end_study_run(tracker: Tracker, run_id: str, counts: Counts, target: int) -> None:
    """With no trial running anywhere, the study run ends: FINISHED when the study has its trials, else KILLED (a
    later worker reopens it)."""
    if counts.running == 0:
        tracker.end_run(run_id, "FINISHED" if counts.finished >= target else "KILLED")
