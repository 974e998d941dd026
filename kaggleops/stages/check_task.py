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

import csv
import json
import math
import numbers
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaggleops.errors import KopsError, SettingsError
from kaggleops.task import (
    HOOKS,
    REQUIRED_MEMBERS,
    FoldContext,
    Metric,
    PostProcessing,
    PredictContext,
    Submission,
    TaskBase,
    hook,
    required_members,
)

TINY_ROWS = 64  # train rows the tiny fold sees (before make_folds)
TEST_ROWS = 16  # test rows predicted
UNKNOWN_KEY = "kops_check_task_unknown_key"
TRAIN_FILE, TEST_FILE = "train.csv", "test.csv"
PREDICT_TIMEOUT_S = 600
STEPS = ("members", "settings", "data", "load_train", "load_test", "make_folds", "train_fold", "metric", "predict")
"""The checks in order; one that cannot run because an earlier one failed is reported as skipped."""


class TaskContractBroken(KopsError):
    """`kops check-task` found at least one breach (each printed on its own line)."""


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


class _Breach(Exception):
    """Stops the checks: the hook named could not give what later checks need."""


class _Recorder:
    def __init__(self, report: TaskCheck) -> None:
        self.report = report
        self.passed: dict[str, str] = {}

    @contextmanager
    def check(self, name: str) -> Iterator[Callable[[str, str | None], None]]:
        """A block checking hook ``name``: ``fail(detail, hook=None)`` records a breach (the block carries on);
        a :class:`_Breach` or an exception from the task is a breach naming it and stops the checks (as ``_Stop``
        does after the lines recorded)."""
        started, failed = time.perf_counter(), []

        def fail(detail: str, other: str | None = None) -> None:
            failed.append(Check(other or name, False, detail))

        stop = True
        try:
            yield fail
            stop = False
        except _Stop:
            pass
        except _Breach as e:
            failed.append(Check(name, False, str(e)))
        except Exception as e:  # noqa: BLE001 - the task's own error: one line naming it
            failed.append(Check(name, False, f"raised {_error_line(e)}"))
        seconds = time.perf_counter() - started
        for c in failed:
            c.seconds = seconds
        self.report.checks.extend(failed or [Check(name, True, self.passed.pop(name, "ok"), seconds)])
        if stop:
            raise _Stop(name)

    def say(self, name: str, detail: str) -> None:
        self.passed[name] = detail


class _Stop(Exception):
    """Stops the checks after the breaches already recorded."""


def _error_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


# ---- the checks ----------------------------------------------------------------------------------------------

def _members(task: Any, fail: Callable[..., None]) -> None:
    present = required_members(task)
    missing = [m for m in REQUIRED_MEMBERS if m not in present]
    for m in missing:
        fail("missing (see kaggleops.task.Task)", m)
    kinds = {"name": str, "submission": Submission, "metric": Metric}
    wrong = [m for m, kind in kinds.items() if m in present and not isinstance(present[m], kind)]
    for m in wrong:
        fail(f"is {present[m]!r} ({type(present[m]).__name__}), not a {kinds[m].__module__}.{kinds[m].__name__}", m)
    if present.get("name") == "":
        fail("is empty", "name")
    sub = present.get("submission")
    if isinstance(sub, Submission) and (not sub.columns or not all(isinstance(c, str) for c in sub.header)):
        fail(f"needs an id column and at least one column, all strings; has {sub.header}", "submission")
    if isinstance(present.get("metric"), Metric) and not callable(present["metric"].fn):
        fail("metric.fn is not callable", "metric")
    broken = [m for m in REQUIRED_MEMBERS[3:] if m in present and not callable(present[m])]
    for m in broken:
        fail("is not a method", m)
    _hooks(task, fail)
    if missing or wrong or broken:
        raise _Stop("members")


def _hooks(task: Any, fail: Callable[..., None]) -> None:
    """Every optional hook the task sets has the kind TaskBase declares (a method, a mapping, names)."""
    for name in HOOKS:
        value, default = hook(task, name), vars(TaskBase)[name]
        if callable(default):
            if not callable(value):
                fail(f"is {value!r}, not a method", name)
        elif isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                fail(f"is {type(value).__name__}, not a mapping", name)
        elif value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
            fail(f"is {value!r}: a tuple of column/module names is expected", name)


def _settings(task: Any, mapping: Mapping[str, Any], fail: Callable[..., None]) -> Any:
    task.settings({})
    try:
        task.settings({UNKNOWN_KEY: 1})
    except SettingsError:
        pass
    except Exception as e:  # noqa: BLE001 - which error it raised instead goes in the line
        fail(f"an unknown key raised {_error_line(e)}, not kaggleops.task.SettingsError")
    else:
        fail(f"accepted an unknown key `{UNKNOWN_KEY}` (raise kaggleops.task.SettingsError naming it; "
             "see check_settings)")
    try:
        return task.settings(dict(mapping))
    except Exception as e:  # noqa: BLE001
        raise _Breach(f"the kops.yaml `train:` section {dict(mapping)} raised {_error_line(e)}") from None


def _truncate(src: Path, dst: Path, rows: int) -> int:
    """The header and first ``rows`` records of CSV ``src`` written to ``dst``; the number of records."""
    with src.open(newline="", encoding="utf-8-sig") as f, dst.open("w", newline="", encoding="utf-8") as out:
        reader, writer = csv.reader(f), csv.writer(out)
        count = -1
        for count, record in enumerate(reader):
            if count > rows:
                break
            writer.writerow(record)
    return max(0, min(count, rows))


def tiny_copy(folder: Path, dst: Path, rows: int = TINY_ROWS, test_rows: int = TEST_ROWS) -> Path:
    """``dst`` holding the first rows of ``folder``'s train.csv/test.csv and links to everything else in it."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name == TRAIN_FILE:
            _truncate(entry, dst / entry.name, rows)
        elif entry.name == TEST_FILE:
            _truncate(entry, dst / entry.name, test_rows)
        else:
            (dst / entry.name).symlink_to(entry.resolve())
    return dst


def _table(value: Any, what: str) -> Any:
    if not (hasattr(value, "columns") and hasattr(value, "__len__")):
        raise _Breach(f"returned {type(value).__name__}, not a table (a pandas DataFrame)")
    if len(value) == 0:
        raise _Breach(f"returned no rows from {what}")
    return value


def _ids(table: Any, column: str) -> list[str]:
    return sorted(str(v) for v in table[column].tolist())


def _make_folds(task: Any, train: Any, n_folds: int, seed: int, fail: Callable[..., None]) -> Any:
    folded = _table(task.make_folds(train, n_folds, seed), "the train table")
    if "fold" not in folded.columns:
        raise _Breach(f"returned no `fold` column (columns: {', '.join(map(str, folded.columns))})")
    values = folded["fold"].tolist()
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise _Breach(f"the `fold` column holds {folded['fold'].dtype}, not ints")
    outside = sorted({int(v) for v in values if not 0 <= v < n_folds})
    if outside:
        raise _Breach(f"fold values {outside[:5]} are outside 0..{n_folds - 1} (n_folds={n_folds})")
    if len(folded) != len(train):
        fail(f"returned {len(folded)} rows for {len(train)} train rows")
    return folded


@dataclass
class _Fold:
    ctx: FoldContext
    valid: Any
    logged: list[str] = field(default_factory=list)


def _fold_context(folded: Any, out: Path, seed: int) -> _Fold:
    fold = 0 if (folded["fold"] == 0).any() else int(folded["fold"].min())
    out.mkdir(parents=True)
    holder: _Fold

    def log(metrics: dict[str, float], step: int) -> None:
        bad = {k: v for k, v in dict(metrics).items() if not isinstance(v, numbers.Real)}
        if (bad or not isinstance(step, numbers.Integral)) and not holder.logged:
            holder.logged.append(f"ctx.log got {bad or metrics} at step {step!r}: metrics must be numbers, the "
                                 "step an int")

    def checkpoint(folder: Path, step: int) -> None:
        if not Path(folder).is_dir() and not holder.logged:
            holder.logged.append(f"ctx.checkpoint got {folder}, which is not a folder")

    ctx = FoldContext(fold, out, seed, log, None, None, checkpoint)
    holder = _Fold(ctx, folded[folded["fold"] == fold])
    return holder


def _read_oof(oof: Any, id_column: str) -> Any:
    if isinstance(oof, (str, Path)):
        import pandas as pd

        if not Path(oof).is_file():
            raise _Breach(f"FoldResult.oof names {oof}, which does not exist")
        return pd.read_csv(oof, dtype={id_column: str}, keep_default_na=False)
    if not hasattr(oof, "columns"):
        raise _Breach(f"FoldResult.oof is {type(oof).__name__}: a table or the path of a CSV is expected")
    return oof


def _train_fold(task: Any, folded: Any, settings: Any, out: Path, seed: int, fail: Callable[..., None]) -> Any:
    tiny = _fold_context(folded, out, seed)
    result = task.train_fold(folded, settings, tiny.ctx)
    for line in tiny.logged:
        fail(line)
    missing = [a for a in ("model_dir", "oof", "score") if not hasattr(result, a)]
    if missing:
        raise _Breach(f"returned {type(result).__name__} without {', '.join(missing)} (return a "
                      "kaggleops.task.FoldResult)")
    if not Path(result.model_dir).is_dir() or not any(Path(result.model_dir).iterdir()):
        raise _Breach(f"FoldResult.model_dir {result.model_dir} is not a folder holding the model")
    if not isinstance(result.score, numbers.Real) or isinstance(result.score, bool):
        fail(f"FoldResult.score is {result.score!r} ({type(result.score).__name__}), not a number")
    sub = task.submission
    oof = _read_oof(result.oof, sub.id_column)
    absent = [c for c in sub.header if c not in oof.columns]
    if absent:
        raise _Breach(f"the OOF table lacks column(s) {', '.join(absent)} (it has {', '.join(map(str, oof.columns))});"
                      f" it needs {', '.join(sub.header)}")
    if sub.id_column in tiny.valid.columns and _ids(oof, sub.id_column) != _ids(tiny.valid, sub.id_column):
        raise _Breach(f"the OOF table has {len(oof)} row(s) for the {len(tiny.valid)} held-out row(s) of fold "
                      f"{tiny.ctx.fold}: it must hold exactly the held-out rows (by {sub.id_column})")
    return result, oof, tiny


def _metric(task: Any, valid: Any, oof: Any) -> str:
    value = task.metric.fn(valid, oof)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _Breach(f"{task.metric.name} returned {value!r} ({type(value).__name__}), not a float")
    if not math.isfinite(float(value)):
        raise _Breach(f"{task.metric.name} returned {value!r} on the held-out rows")
    return f"{task.metric.name} = {float(value):.4g} on the tiny fold"


# ---- the round trip: predict from a moved model folder in a fresh process -------------------------------------

CHILD = "import sys; from kaggleops.stages.check_task import predict_child; predict_child(sys.argv[1])"


def task_spec_of(task: Any) -> str | None:
    """``module:Class`` of a task instance, when a fresh process can import it (not ``__main__``, not local)."""
    cls = type(task)
    module = sys.modules.get(cls.__module__)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__ or not getattr(module, "__file__", None):
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def predict_child(request_file: str) -> None:
    """The fresh process: import the task, read test.csv, ``predict`` from the model folder, post-process; the
    tables (or the error, as hook + line) pickled where the request says."""
    request = json.loads(Path(request_file).read_text())
    out: dict[str, Any] = {}
    try:
        from kaggleops.tasks import instantiate_task

        task = instantiate_task(request["spec"])
        out = _predict(task, Path(request["test"]), [Path(d) for d in request["model_dirs"]], Path(request["scratch"]))
    except Exception as e:  # noqa: BLE001 - reported as a breach by the parent
        out = {**out, "error": ("predict", f"raised {_error_line(e)} in a fresh process")}
    with open(request["result"], "wb") as f:
        pickle.dump(out, f)


def _predict(task: Any, test_file: Path, model_dirs: list[Path], scratch: Path) -> dict[str, Any]:
    """As the kernel calls it: ``load_test``, ``predict`` (weights summing to 1, the task's kernel options),
    ``post_process`` where the task has it."""
    test = task.load_test(test_file)
    ctx = PredictContext([1.0 / len(model_dirs)] * len(model_dirs), scratch, lambda line: None,
                         dict(hook(task, "kernel_options")), [f"m{i}" for i in range(len(model_dirs))])
    out: dict[str, Any] = {"test": test}
    out["predict"] = task.predict(model_dirs, test, ctx)
    if isinstance(task, PostProcessing):
        try:
            out["post_process"] = task.post_process(test, out["predict"])
        except Exception as e:  # noqa: BLE001
            out["error"] = ("post_process", f"raised {_error_line(e)}")
    return out


def _run_predict(task: Any, test_file: Path, model_dir: Path, tmp: Path) -> tuple[dict[str, Any], str]:
    spec = task_spec_of(task)
    scratch = tmp / "scratch"
    scratch.mkdir()
    if spec is None:  # not importable by a fresh process: a fresh instance here
        try:
            return _predict(type(task)(), test_file, [model_dir], scratch), "a fresh instance (same process)"
        except Exception as e:  # noqa: BLE001
            return {"error": ("predict", f"raised {_error_line(e)}")}, "a fresh instance (same process)"
    request = tmp / "request.json"
    result = tmp / "result.pickle"
    request.write_text(json.dumps({"spec": spec, "test": str(test_file),
                                   "model_dirs": [str(model_dir)], "scratch": str(scratch), "result": str(result)}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(request)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=PREDICT_TIMEOUT_S)
    if not result.is_file():
        tail = " ".join((proc.stderr or proc.stdout).split()[-40:])
        return {"error": ("predict", f"the fresh process exited with {proc.returncode}: {tail}")}, "a fresh process"
    with result.open("rb") as f:
        return pickle.load(f), "a fresh process"


def _check_predictions(task: Any, preds: Any, test: Any, what: str) -> str:
    sub = task.submission
    if not hasattr(preds, "columns") or not hasattr(preds, "__len__"):
        raise _Breach(f"returned {type(preds).__name__}, not a table (a pandas DataFrame)")
    absent = [c for c in sub.header if c not in preds.columns]
    if absent:
        raise _Breach(f"the predictions lack column(s) {', '.join(absent)} (they have "
                      f"{', '.join(map(str, preds.columns))}); the submission's header is {', '.join(sub.header)}")
    if len(preds) != len(test):
        raise _Breach(f"returned {len(preds)} row(s) for {len(test)} test row(s)")
    if sub.id_column in test.columns and _ids(preds, sub.id_column) != _ids(test, sub.id_column):
        raise _Breach(f"the predictions' {sub.id_column} values are not the test rows' ones")
    return f"{len(preds)} row(s) with {', '.join(sub.header)} {what}"


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
        try:
            _all(task, report, _Recorder(report), data_dir, dict(settings or {}), n_folds, seed, Path(tmp), rows)
        except _Stop:
            pass
    done = {c.hook for c in report.checks}
    if not report.ok:
        report.checks.extend(Check(s, None, "skipped (an earlier check failed)") for s in STEPS if s not in done)
    report.seconds = time.perf_counter() - started
    return report


def _data(task: Any, data_dir: Path | None) -> Path:
    folder = Path(data_dir) if data_dir is not None else hook(task, "sample_dir")()
    if folder is None:
        raise _Breach("no data: pass a folder with train.csv and test.csv (kops.yaml `data_dir:` or --data), "
                      "or give the task a sample_dir()")
    folder = Path(folder)
    absent = [n for n in (TRAIN_FILE, TEST_FILE) if not (folder / n).is_file()]
    if absent:
        raise _Breach(f"{folder} has no {' or '.join(absent)}")
    return folder


def _all(task: Any, report: TaskCheck, rec: _Recorder, data_dir: Path | None, mapping: dict[str, Any],
         n_folds: int, seed: int, tmp: Path, rows: int) -> None:
    with rec.check("members") as fail:
        _members(task, fail)
        rec.say("members", "name, submission, metric and the methods of kaggleops.task.Task")
    with rec.check("settings") as fail:
        settings = _settings(task, mapping, fail)
        rec.say("settings", "settings({}) works, an unknown key raises SettingsError, kops.yaml's train: is valid")
    with rec.check("data"):
        folder = _data(task, data_dir)
        report.data = str(folder)
        tiny = tiny_copy(folder, tmp / "data", rows)
        rec.say("data", f"the first {rows} train / {TEST_ROWS} test rows of {folder}")
    with rec.check("load_train"):
        train = _table(task.load_train(tiny / TRAIN_FILE), TRAIN_FILE)
        rec.say("load_train", f"{len(train)} row(s), {len(train.columns)} column(s)")
    with rec.check("load_test"):
        test = _table(task.load_test(tiny / TEST_FILE), TEST_FILE)
        rec.say("load_test", f"{len(test)} row(s), {len(test.columns)} column(s)")
    with rec.check("make_folds") as fail:
        folded = _make_folds(task, train, n_folds, seed, fail)
        rec.say("make_folds", f"an int fold column in 0..{n_folds - 1}")
    with rec.check("train_fold") as fail:
        result, oof, fold = _train_fold(task, folded, settings, tmp / "fold", seed, fail)
        rec.say("train_fold", f"fold {fold.ctx.fold}: trained on {len(folded) - len(fold.valid)} row(s), model "
                              f"folder written, OOF holds the {len(fold.valid)} held-out row(s)")
    with rec.check("metric"):
        rec.say("metric", _metric(task, fold.valid, oof))
    with rec.check("predict"):
        moved = tmp / "moved" / "model"
        _move(Path(result.model_dir), moved, tmp)
        out, where = _run_predict(task, tiny / TEST_FILE, moved, tmp)
        if out.get("error") and out["error"][0] == "predict":
            raise _Breach(out["error"][1] + " (the model folder was moved away from where train_fold wrote it)")
        rec.say("predict", _check_predictions(task, out["predict"], test, f"from a moved model folder in {where}"))
    if "post_process" in out or out.get("error"):
        with rec.check("post_process"):
            if out.get("error"):
                raise _Breach(out["error"][1])
            rec.say("post_process", _check_predictions(task, out["post_process"], test, "after post-processing"))


def _move(model_dir: Path, dst: Path, tmp: Path) -> None:
    """The model folder moved to ``dst`` (copied when train_fold wrote it outside kops' temporary folder)."""
    dst.parent.mkdir(parents=True)
    if model_dir.resolve().is_relative_to(tmp.resolve()):
        shutil.move(str(model_dir), dst)
    else:
        shutil.copytree(model_dir, dst)


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
