"""`kops check-task`: a task checked against the task contract (:mod:`kaggleops.task`) in seconds.

Like scikit-learn's ``check_estimator``: the task's members and their types, ``settings`` (an unknown key must
raise SettingsError), ``load_train``/``load_test`` on a handful of rows of its data, ``make_folds``, ``train_fold`` on
a tiny fold (at most :data:`TINY_ROWS` rows, written into a temporary folder), the metric, then a save/load round
trip: the model folder moves elsewhere and ``predict`` (and ``post_process``) runs from there in a fresh process, as
the offline kernel would. Each breach is one line naming the hook and what was wrong.

Example:
    >>> report = check_task("tasks/my_task.py:MyTask", data_dir=Path("data"), settings={"epochs": 1})  # doctest: +SKIP
    >>> report.breaches                                                                             # doctest: +SKIP
    ['predict: returned 3 row(s) for 16 test row(s)']
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaggleops.stages.task_checks import (
    TEST_FILE,
    TEST_ROWS,
    TINY_ROWS,
    TRAIN_FILE,
    Breach,
    Stop,
    check_make_folds,
    check_members,
    check_metric,
    check_predictions,
    check_settings_of,
    check_table,
    check_train_fold,
    data_folder,
    error_line,
    gateway_paths,
    move_model,
    run_predict,
    task_spec_of,
    tiny_copy,
)
from kaggleops.task import hook

STEPS = ("members", "settings", "data", "load_train", "load_test", "make_folds", "train_fold", "metric", "predict")
"""The checks in order; one that cannot run because an earlier one failed is reported as skipped."""


@dataclass
class Check:
    """One check: the hook it exercised, passed (True), breached (False) or skipped (None), and one line."""

    hook: str
    ok: bool | None
    detail: str
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.hook}: {self.detail}"


@dataclass
class TaskCheck:
    """What :func:`check_task` found: every check in order; ``breaches`` holds one line per breach."""

    task: str
    checks: list[Check] = field(default_factory=list)
    data: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.breaches

    @property
    def breaches(self) -> list[str]:
        return [str(c) for c in self.checks if c.ok is False]

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "ok": self.ok, "data": self.data, "seconds": round(self.seconds, 2),
                "breaches": self.breaches, "checks": [asdict(c) for c in self.checks]}

    def render(self) -> str:
        marks = {True: "ok  ", False: "FAIL", None: "skip"}
        lines = [f"{marks[c.ok]} {c}" for c in self.checks]
        verdict = "passes" if self.ok else f"breaks the contract in {len(self.breaches)} place(s)"
        return "\n".join([*lines, f"task {self.task} {verdict} ({self.seconds:.1f} s)"])


class _Recorder:
    def __init__(self, report: TaskCheck) -> None:
        self.report = report
        self.passed: dict[str, str] = {}
        self.broken: set[str] = set()

    @contextmanager
    def check(self, name: str) -> Iterator[Callable[[str, str | None], None]]:
        """A block checking hook ``name``: ``fail(detail, hook=None)`` records a breach (the block carries on); a
        :class:`Breach` or an exception from the task is a breach naming it and ends the block, as ``Stop`` does
        after the lines recorded: the checks that need this one's result are skipped."""
        started, failed = time.perf_counter(), []

        def fail(detail: str, other: str | None = None) -> None:
            failed.append(Check(other or name, False, detail))

        try:
            yield fail
        except Stop:
            self.broken.add(name)
        except Breach as e:
            self.broken.add(name)
            failed.append(Check(name, False, str(e)))
        except Exception as e:  # noqa: BLE001 - the task's own error: one line naming it
            self.broken.add(name)
            failed.append(Check(name, False, f"raised {error_line(e)}"))
        seconds = time.perf_counter() - started
        for c in failed:
            c.seconds = seconds
        self.report.checks.extend(failed or [Check(name, True, self.passed.pop(name, "ok"), seconds)])

    def say(self, name: str, detail: str) -> None:
        self.passed[name] = detail

    def ran(self, *names: str) -> bool:
        """Whether the checks ``names`` ran and gave what the next ones need (a soft breach does not count)."""
        done = {c.hook for c in self.report.checks}
        return all(n in done and n not in self.broken for n in names)


# ---- the whole check ------------------------------------------------------------------------------------------

def check_task(task: Any, data_dir: Path | None = None, settings: Mapping[str, Any] | None = None, *,
               n_folds: int = 5, seed: int = 42, root: Path | None = None, rows: int = TINY_ROWS) -> TaskCheck:
    """Check a task against kops' task contract: a tiny fold, a save/load round trip, a kernel-side predict.

    ``task``: an instance, or a spec (``module:Class``, ``path/file.py:Class`` relative to ``root``, or a
    competition slug with a built-in task). ``data_dir``: a folder with train.csv and test.csv (default: the task's
    ``sample_dir()``); its first ``rows`` train rows form the tiny fold. ``settings``: the ``train:`` keys of the
    task (kops.yaml's section; keep them fast). Never raises for a breach: read ``.breaches`` (one line each).

    Example:
        >>> check_task("digit-recognizer", settings={"epochs": 1}).ok  # doctest: +SKIP
        True
    """
    started = time.perf_counter()
    label = task if isinstance(task, str) else None
    if isinstance(task, str):
        from kaggleops.tasks import instantiate_task, task_spec

        task = instantiate_task(task if ":" in task else task_spec(task) or task, root)
    report = TaskCheck(label or task_spec_of(task) or type(task).__name__)
    with tempfile.TemporaryDirectory(prefix="kops-check-task-") as tmp:
        _all(task, report, _Recorder(report), data_dir, dict(settings or {}), n_folds, seed, Path(tmp), rows)
    done = {c.hook for c in report.checks}
    if not report.ok:
        report.checks.extend(Check(s, None, "skipped (it needs a check that failed)") for s in STEPS
                             if s not in done)
    report.seconds = time.perf_counter() - started
    return report


def _all(task: Any, report: TaskCheck, rec: _Recorder, data_dir: Path | None, mapping: dict[str, Any],
         n_folds: int, seed: int, tmp: Path, rows: int) -> None:
    """Every check whose inputs the earlier ones gave, in :data:`STEPS` order."""
    with rec.check("members") as fail:
        check_members(task, fail)
        rec.say("members", "name, submission, metric and the methods of kaggleops.task.Task")
    if not rec.ran("members"):
        return
    with rec.check("settings") as fail:
        settings = check_settings_of(task, mapping, fail)
        rec.say("settings", "settings({}) works, an unknown key raises SettingsError, kops.yaml's train: is valid")
    with rec.check("data"):
        folder = data_folder(task, data_dir)
        report.data = str(folder)
        tiny = tiny_copy(folder, tmp / "data", rows)
        rec.say("data", f"the first {rows} train / {TEST_ROWS} test rows of {folder}")
    if not rec.ran("data"):
        return
    with rec.check("load_train"):
        train = check_table(task.load_train(tiny / TRAIN_FILE), TRAIN_FILE)
        rec.say("load_train", f"{len(train)} row(s), {len(train.columns)} column(s)")
    with rec.check("load_test"):
        test = check_table(task.load_test(tiny / TEST_FILE), TEST_FILE)
        rec.say("load_test", f"{len(test)} row(s), {len(test.columns)} column(s)")
    if rec.ran("load_train"):
        with rec.check("make_folds") as fail:
            folded = check_make_folds(task, train, n_folds, seed, fail)
            rec.say("make_folds", f"an int fold column in 0..{n_folds - 1}")
    if not rec.ran("settings", "make_folds"):
        return
    with rec.check("train_fold") as fail:
        result, oof, fold = check_train_fold(task, folded, settings, tmp / "fold", seed, fail)
        rec.say("train_fold", f"fold {fold.ctx.fold}: trained on {len(folded) - len(fold.valid)} row(s), model "
                              f"folder written, OOF holds the {len(fold.valid)} held-out row(s)")
    if not rec.ran("train_fold"):
        return
    with rec.check("metric"):
        rec.say("metric", check_metric(task, fold.valid, oof))
    if rec.ran("load_test"):
        _round_trip(task, rec, Path(result.model_dir), tiny, test, tmp)


def _round_trip(task: Any, rec: _Recorder, model_dir: Path, tiny: Path, test: Any, tmp: Path) -> None:
    """The model folder moved away; the kernel's predict (and post-processing) from there in a fresh process."""
    name = "predict" if gateway_paths(task, tiny) is None else "predict_batch"  # how the kernel predicts
    out: dict[str, Any] = {}
    with rec.check(name):
        moved = tmp / "moved" / "model"
        move_model(model_dir, moved, tmp)
        out, where = run_predict(task, tiny, moved, tmp, name)
        if out.get("error") and out["error"][0] == name:
            raise Breach(out["error"][1] + " (the model folder was moved away from where train_fold wrote it)")
        rec.say(name, check_predictions(task, out[name], out.get("rows", test), f"from a moved model folder in "
                                        f"{where}", arrays=name == "predict_batch"))
    if "post_process" in out or (out.get("error") or ("",))[0] == "post_process":
        with rec.check("post_process"):
            if out.get("error"):
                raise Breach(out["error"][1])
            rec.say("post_process", check_predictions(task, out["post_process"], test, "after post-processing"))


def check_project(config: str | None = None, task: str | None = None, data_dir: Path | None = None) -> TaskCheck:
    """`kops check-task`: the task of kops.yaml (or ``task``, a spec relative to this folder), checked with kops.yaml's
    ``train:`` section, on ``data_dir``, else kops.yaml's ``data_dir``, the task's sample, the cached download.

    Example:
        >>> print(check_project(task="tasks/my_task.py:MyTask", data_dir=Path("data")).render())  # doctest: +SKIP
    """
    from kaggleops.config import find_config, load_config
    from kaggleops.tasks import instantiate_task, task_spec

    cfg = load_config(config) if config or task is None or find_config() is not None else None
    if task is not None:
        spec, root = task, Path.cwd()
    elif cfg.task:
        spec, root = cfg.task, cfg.root
    else:
        from kaggleops.tasks import task_for

        task_for(cfg)  # a competition without a task: its one line
        spec, root = task_spec(cfg.competition) or cfg.competition, cfg.root
    instance = instantiate_task(spec, root)
    folder = data_dir or (cfg.resolved_data_dir() if cfg else None)
    if folder is None and cfg is not None and hook(instance, "sample_dir")() is None:
        from kaggleops.stages.data import cached

        hit = cached(cfg.competition, cfg.resolved_kaggle_endpoint)
        folder = hit.folder if hit else None
    report = check_task(instance, folder, cfg.train.task_settings() if cfg else {},
                        n_folds=cfg.train.n_folds if cfg else 5, seed=cfg.train.seed if cfg else 42)
    report.task = spec
    return report
