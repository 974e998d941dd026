"""The single checks of `kops check-task` (:mod:`kaggleops.stages.check_task`), each over one hook of a task.

A check returns a line saying what passed, calls ``fail(detail, hook)`` for a breach after which the checks can go
on, and raises :class:`Breach` for one after which they cannot. The round trip runs ``predict`` in a fresh process
(:func:`predict_child`) from the model folder moved away from where ``train_fold`` wrote it.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import numbers
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggleops.errors import SettingsError
from kaggleops.errors import TaskCheckBreach as Breach
from kaggleops.errors import TaskCheckStop as Stop
from kaggleops.task import (
    HOOKS,
    REQUIRED_MEMBERS,
    BatchPredict,
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


def error_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


# ---- the checks ----------------------------------------------------------------------------------------------

def check_members(task: Any, fail: Callable[..., None]) -> None:
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
        raise Stop("members")


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


def check_settings_of(task: Any, mapping: Mapping[str, Any], fail: Callable[..., None]) -> Any:
    """settings({}) works, an unknown key raises SettingsError; the settings of kops.yaml's ``train:`` section."""
    try:
        task.settings({})
    except Exception as e:  # noqa: BLE001
        raise Breach(f"settings({{}}) raised {error_line(e)}: the defaults must be valid settings") from None
    try:
        task.settings({UNKNOWN_KEY: 1})
    except SettingsError:
        pass
    except Exception as e:  # noqa: BLE001 - which error it raised instead goes in the line
        fail(f"an unknown key raised {error_line(e)}, not kaggleops.task.SettingsError")
    else:
        fail(f"accepted an unknown key `{UNKNOWN_KEY}` (raise kaggleops.task.SettingsError naming it; "
             "see check_settings)")
    try:
        return task.settings(dict(mapping))
    except Exception as e:  # noqa: BLE001
        raise Breach(f"the kops.yaml `train:` section {dict(mapping)} raised {error_line(e)}") from None


def _truncate(src: Path, dst: Path, rows: int) -> None:
    """The header and first ``rows`` records of CSV ``src`` written to ``dst`` (quoted fields kept whole)."""
    with src.open(newline="", encoding="utf-8-sig") as f, dst.open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows(itertools.islice(csv.reader(f), rows + 1))


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


def check_table(value: Any, what: str) -> Any:
    if not (hasattr(value, "columns") and hasattr(value, "__len__")):
        raise Breach(f"returned {type(value).__name__}, not a table (a pandas DataFrame)")
    if len(value) == 0:
        raise Breach(f"returned no rows from {what}")
    return value


def _number(value: Any) -> bool:
    """Whether kops can log ``value`` as a metric (a float, a numpy or 0-d tensor number; no str, no bool)."""
    if isinstance(value, (str, bytes, bool)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _ids(table: Any, column: str) -> list[str]:
    return sorted(str(v) for v in table[column].tolist())


def check_make_folds(task: Any, train: Any, n_folds: int, seed: int, fail: Callable[..., None]) -> Any:
    folded = check_table(task.make_folds(train, n_folds, seed), "the train table")
    if "fold" not in folded.columns:
        raise Breach(f"returned no `fold` column (columns: {', '.join(map(str, folded.columns))})")
    values = folded["fold"].tolist()
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise Breach(f"the `fold` column holds {folded['fold'].dtype}, not ints")
    outside = sorted({int(v) for v in values if not 0 <= v < n_folds})
    if outside:
        raise Breach(f"fold values {outside[:5]} are outside 0..{n_folds - 1} (n_folds={n_folds})")
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
        bad = {k: v for k, v in dict(metrics).items() if not _number(v)}
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
            raise Breach(f"FoldResult.oof names {oof}, which does not exist")
        return pd.read_csv(oof, dtype={id_column: str}, keep_default_na=False)
    if not hasattr(oof, "columns"):
        raise Breach(f"FoldResult.oof is {type(oof).__name__}: a table or the path of a CSV is expected")
    return oof


def check_train_fold(task: Any, folded: Any, settings: Any, out: Path, seed: int, fail: Callable[..., None]) -> Any:
    tiny = _fold_context(folded, out, seed)
    result = task.train_fold(folded, settings, tiny.ctx)
    for line in tiny.logged:
        fail(line)
    missing = [a for a in ("model_dir", "oof", "score") if not hasattr(result, a)]
    if missing:
        raise Breach(f"returned {type(result).__name__} without {', '.join(missing)} (return a "
                     "kaggleops.task.FoldResult)")
    if not Path(result.model_dir).is_dir() or not any(Path(result.model_dir).iterdir()):
        raise Breach(f"FoldResult.model_dir {result.model_dir} is not a folder holding the model")
    if not _number(result.score):
        fail(f"FoldResult.score is {result.score!r} ({type(result.score).__name__}), not a number")
    sub = task.submission
    oof = _read_oof(result.oof, sub.id_column)
    absent = [c for c in sub.header if c not in oof.columns]
    if absent:
        raise Breach(f"the OOF table lacks column(s) {', '.join(absent)} (it has {', '.join(map(str, oof.columns))});"
                     f" it needs {', '.join(sub.header)}")
    if sub.id_column in tiny.valid.columns and _ids(oof, sub.id_column) != _ids(tiny.valid, sub.id_column):
        raise Breach(f"the OOF table has {len(oof)} row(s) for the {len(tiny.valid)} held-out row(s) of fold "
                     f"{tiny.ctx.fold}: it must hold exactly the held-out rows (by {sub.id_column})")
    return result, oof, tiny


def check_metric(task: Any, valid: Any, oof: Any) -> str:
    value = task.metric.fn(valid, oof)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise Breach(f"{task.metric.name} returned {value!r} ({type(value).__name__}), not a float")
    if not math.isfinite(float(value)):
        raise Breach(f"{task.metric.name} returned {value!r} on the held-out rows")
    return f"{task.metric.name} = {float(value):.4g} on the tiny fold; {check_combine(task, valid, oof)}"


def check_combine(task: Any, valid: Any, oof: Any) -> str:
    """The OOF blended with itself (the task's ``combine``, as `kops ensemble` calls it) scores as the OOF alone."""
    from kaggleops.task import hook

    combine = hook(task, "combine")
    try:
        alone = task.metric.fn(valid, combine([oof], [1.0]))
        twice = task.metric.fn(valid, combine([oof, oof.copy()], [0.5, 0.5]))
    except (ValueError, TypeError, KeyError) as e:
        raise Breach(f"combine(tables, weights) cannot blend the OOF: {error_line(e)}") from None
    if not math.isclose(float(twice), float(alone), rel_tol=1e-6, abs_tol=1e-9):
        raise Breach(f"combine of the OOF with itself scores {float(twice):.6g}, the OOF alone {float(alone):.6g}: "
                     "a blend of one run's predictions must be those predictions")
    return f"combine scores a blend ({float(alone):.4g} for the OOF alone)"


# ---- the round trip: predict from a moved model folder in a fresh process -------------------------------------

CHILD = "import sys; from kaggleops.stages.task_checks import predict_child; predict_child(sys.argv[1])"


def task_spec_of(task: Any) -> str | None:
    """``module:Class`` of a task instance, when a fresh process can import it (not ``__main__``, not local)."""
    cls = type(task)
    module = sys.modules.get(cls.__module__)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__ or not getattr(module, "__file__", None):
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def predict_child(request_file: str) -> None:
    """The fresh process: import the task, predict from the model folder as the kernel would (see :func:`_predict`);
    the tables (or the error, as hook + line) pickled where the request says."""
    request = json.loads(Path(request_file).read_text())
    out: dict[str, Any] = {}
    try:
        from kaggleops.tasks import instantiate_task

        task = instantiate_task(request["spec"])
        out = _predict(task, Path(request["folder"]), [Path(d) for d in request["model_dirs"]],
                       Path(request["scratch"]))
    except Exception as e:  # noqa: BLE001 - reported as a breach by the parent
        out = {**out, "error": (request["hook"], f"raised {error_line(e)} in a fresh process")}
    with open(request["result"], "wb") as f:
        pickle.dump(out, f)


def gateway_paths(task: Any, folder: Path) -> list[Path] | None:
    """An evaluation-API task's public batch files in ``folder`` (its ``gateway_data_paths``), else None."""
    if not isinstance(task, BatchPredict):
        return None
    paths = task.gateway_data_paths(folder)
    return [Path(p) for p in paths] if paths else None


def _read(path: Path) -> Any:
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _predict(task: Any, folder: Path, model_dirs: list[Path], scratch: Path) -> dict[str, Any]:
    """As the kernel calls it (weights summing to 1, the task's kernel options): ``load_test``, ``predict`` and
    ``post_process`` where the task has it; for an evaluation-API task ``load_models`` and one ``predict_batch``
    over its whole public batch data (``rows``: the first table, the rows asked)."""
    ctx = PredictContext([1.0 / len(model_dirs)] * len(model_dirs), scratch, lambda line: None,
                         dict(hook(task, "kernel_options")), [f"m{i}" for i in range(len(model_dirs))])
    batch = gateway_paths(task, folder)
    if batch is not None:
        models = task.load_models(model_dirs, ctx)
        tables = [_read(p) for p in batch]
        return {"predict_batch": task.predict_batch(models, *tables, ctx=ctx), "rows": tables[0]}
    test = task.load_test(folder / TEST_FILE)
    out: dict[str, Any] = {"predict": task.predict(model_dirs, test, ctx)}
    if isinstance(task, PostProcessing):
        try:
            out["post_process"] = task.post_process(test, out["predict"])
        except Exception as e:  # noqa: BLE001
            out["error"] = ("post_process", f"raised {error_line(e)}")
    return out


def run_predict(task: Any, folder: Path, model_dir: Path, tmp: Path, name: str) -> tuple[dict[str, Any], str]:
    """:func:`_predict` in a fresh process (a fresh instance here when the class cannot be imported there)."""
    spec = task_spec_of(task)
    scratch = tmp / "scratch"
    scratch.mkdir()
    if spec is None:
        try:
            return _predict(type(task)(), folder, [model_dir], scratch), "a fresh instance (same process)"
        except Exception as e:  # noqa: BLE001
            return {"error": (name, f"raised {error_line(e)}")}, "a fresh instance (same process)"
    request = tmp / "request.json"
    result = tmp / "result.pickle"
    request.write_text(json.dumps({"spec": spec, "folder": str(folder), "model_dirs": [str(model_dir)], "hook": name,
                                   "scratch": str(scratch), "result": str(result)}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(request)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=PREDICT_TIMEOUT_S)
    if not result.is_file():
        tail = " ".join((proc.stderr or proc.stdout).split()[-40:])
        return {"error": (name, f"the fresh process exited with {proc.returncode}: {tail}")}, "a fresh process"
    with result.open("rb") as f:
        return pickle.load(f), "a fresh process"


def check_predictions(task: Any, preds: Any, test: Any, what: str, arrays: bool = False) -> str:
    """One row per row of ``test`` with the submission's columns (``arrays``: an array of rows passes too, as an
    evaluation-API kernel converts it)."""
    sub = task.submission
    if arrays and not hasattr(preds, "columns") and hasattr(preds, "__len__"):
        if len(preds) != len(test):
            raise Breach(f"returned {len(preds)} row(s) for the {len(test)} row(s) of the batch")
        return f"{len(preds)} row(s) {what}"
    if not hasattr(preds, "columns") or not hasattr(preds, "__len__"):
        raise Breach(f"returned {type(preds).__name__}, not a table (a pandas DataFrame)")
    absent = [c for c in sub.header if c not in preds.columns]
    if absent:
        raise Breach(f"the predictions lack column(s) {', '.join(absent)} (they have "
                     f"{', '.join(map(str, preds.columns))}); the submission's header is {', '.join(sub.header)}")
    if len(preds) != len(test):
        raise Breach(f"returned {len(preds)} row(s) for {len(test)} test row(s)")
    if sub.id_column in test.columns and _ids(preds, sub.id_column) != _ids(test, sub.id_column):
        raise Breach(f"the predictions' {sub.id_column} values are not the test rows' ones")
    return f"{len(preds)} row(s) with {', '.join(sub.header)} {what}"


def data_folder(task: Any, data_dir: Path | None) -> Path:
    folder = Path(data_dir) if data_dir is not None else hook(task, "sample_dir")()
    if folder is None:
        raise Breach("no data: pass a folder with train.csv and test.csv (kops.yaml `data_dir:` or --data), "
                     "or give the task a sample_dir()")
    folder = Path(folder)
    absent = [n for n in (TRAIN_FILE, TEST_FILE) if not (folder / n).is_file()]
    if absent:
        raise Breach(f"{folder} has no {' or '.join(absent)}")
    return folder


def move_model(model_dir: Path, dst: Path, tmp: Path) -> None:
    """The model folder moved to ``dst`` (copied when train_fold wrote it outside kops' temporary folder)."""
    dst.parent.mkdir(parents=True)
    if model_dir.resolve().is_relative_to(tmp.resolve()):
        shutil.move(str(model_dir), dst)
    else:
        shutil.copytree(model_dir, dst)


