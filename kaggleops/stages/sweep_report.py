"""Where a study stands (`kops sweep --status`), its report on the study run (optimisation-history plot, status
JSON) and its best trial back into kops.yaml (`kops sweep --best NAME --apply`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaggleops.adapters import studies
from kaggleops.adapters.studies import ATTR_TARGET, ATTR_WORKER
from kaggleops.adapters.tracking import open_tracker, runs_tagged
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, KopsError
from kaggleops.schema import TAG_KIND, TAG_SWEEP_STUDY, Kind
from kaggleops.stages.sweep import Counts, best_of, end_study_run, open_study, study_name
from kaggleops.stages.sweep_history import HISTORY_PLOT, REPORT_FOLDER, write_report
from kaggleops.stages.sweep_space import apply_params, params_diff
from kaggleops.stages.train import get_task_for


@dataclass
class StudyStatus:
    """A study's trials by state, its best trial and how many trials each worker ran (by state)."""

    study: str
    storage: str
    direction: str
    target: int
    counts: Counts
    best: dict[str, Any] | None
    workers: dict[str, dict[str, int]] = field(default_factory=dict)
    study_run: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        c = self.counts
        lines = [f"study {self.study} ({self.direction}, {self.storage})",
                 f"trials: {c.finished}/{self.target} done — {c.complete} complete, {c.pruned} pruned, "
                 f"{c.running} running, {c.waiting} waiting, {c.fail} failed (put back or given up)"]
        if self.best:
            lines.append(f"best {self.best['metric']} {self.best['value']:.6g}: trial {self.best['trial']}, run "
                         f"{self.best['run_id']}")
            lines += [f"  {k}: {v}" for k, v in self.best["params"].items()]
        for worker, states in sorted(self.workers.items()):
            lines.append(f"worker {worker}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
        if self.study_run:
            lines.append(f"study run {self.study_run} (optimisation history: {REPORT_FOLDER}/{HISTORY_PLOT})")
        return "\n".join(lines)


def _workers(study: Any) -> dict[str, dict[str, int]]:
    per: dict[str, Counter[str]] = {}
    for t in study.get_trials(deepcopy=False):
        who = t.user_attrs.get(ATTR_WORKER)
        if who and t.state.name != "WAITING":  # a put-back trial still carries its dead worker's name
            per.setdefault(who, Counter())[t.state.name.lower()] += 1
    return {w: dict(c) for w, c in per.items()}


def status(cfg: KopsConfig, name: str | None = None, report: bool = True) -> StudyStatus:
    """Where study ``name`` stands; also marks trials whose worker died as FAIL and puts them back (as every
    worker does), and refreshes the report on the study run (``report``).

    Example:
        >>> print(status(load_config(), "lr-search").summary())  # doctest: +SKIP
        study lr-search (maximize, sqlite:////home/me/proj/.kops/sweep.db)
        trials: 8/8 done — 6 complete, 2 pruned, 0 running, 0 waiting, 0 failed (put back or given up)
    """
    task = get_task_for(cfg)
    name = study_name(cfg, name)
    study, masked = open_study(cfg, name, task, studies.retry_callback(cfg.sweep.max_retry), create=False)
    studies.stale_trials(study)
    target = int(study.user_attrs.get(ATTR_TARGET, cfg.sweep.n_trials))
    result = StudyStatus(name, masked, study.direction.name.lower(), target, Counts.of(study),
                         best_of(study, task.metric.name), _workers(study))
    tracker = open_tracker(cfg)
    found = runs_tagged(tracker, {TAG_KIND: Kind.SWEEP, TAG_SWEEP_STUDY: name})
    if found:
        run = min(found, key=lambda r: (r.start_time, r.id))
        result.study_run = str(run.id)
        if report:
            write_report(tracker, result.study_run, study, task.metric.name, target)
        if run.status == "RUNNING" and result.counts.finished >= target:  # done, but its last worker died
            end_study_run(tracker, result.study_run, result.counts, target)
    return result


@dataclass
class Applied:
    """The best trial's params, and (``--apply``) the kops.yaml diff written."""

    best: dict[str, Any]
    config: str | None = None
    diff: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def best(cfg: KopsConfig, name: str | None, config_path: Path | None = None) -> Applied:
    """The best COMPLETE trial of study ``name``; with ``config_path``, its params written into that kops.yaml's
    ``train:`` (comments and every other line kept) and the diff returned."""
    task = get_task_for(cfg)
    name = study_name(cfg, name)
    study, _ = open_study(cfg, name, task, create=False)
    found = best_of(study, task.metric.name)
    if found is None:
        raise ConfigError(f"Study {name} has no COMPLETE trial yet.", f"See: kops sweep --status {name}")
    if config_path is None:
        return Applied(found)
    try:
        before = config_path.read_text()
        after = apply_params(before, found["params"])
        _check_edit(before, after, found["params"], config_path)
        if after != before:
            config_path.write_text(after)
    except OSError as e:
        raise KopsError(f"Cannot update {config_path}: {e.strerror or e}.") from None
    return Applied(found, str(config_path), params_diff(before, after, config_path.name))


def _check_edit(before: str, after: str, params: dict[str, Any], path: Path) -> None:
    """The edited text must read as the old kops.yaml with ``train:`` holding ``params`` and nothing else changed;
    otherwise nothing is written (a line the editor misread) and the params are named to set by hand."""
    import yaml

    old, new = yaml.safe_load(before) or {}, yaml.safe_load(after) or {}
    expected = {**old, "train": {**(old.get("train") or {}), **params}}
    if new != expected:
        by_hand = ", ".join(f"{k}: {v}" for k, v in params.items())
        raise KopsError(f"Cannot write the best params into {path} without changing other lines; nothing written.",
                        f"Set them under `train:` by hand: {by_hand}.")
