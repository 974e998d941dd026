"""What an evaluation-API kernel runs: the task's batch predict served through the competition's own inference server.

SELF-CONTAINED like :mod:`kaggleops.kernel.runtime` (the standard library, schema/errors/task and the task).
Only the public entry points of a competition's ``kaggle_evaluation`` package are used, so the same kernel runs
against any competition's: the module ``kaggle_evaluation.<comp>_inference_server`` (found by name in the attached
competition data), its one ``*InferenceServer`` class built as ``Server(predict)``, then ``serve()`` on the hidden
rerun (``KAGGLE_IS_COMPETITION_RERUN`` set; it blocks until the session is stopped) or ``run_local_gateway(paths)``
on a normal run (the task's ``gateway_data_paths``; the gateway writes ``submission.parquet`` into the working
folder and raises its own error type on a failure).

``predict`` (the endpoint: a named function, as the relay requires) does nothing heavy before the server starts:
on its first call (which has no deadline) it imports the task's packages, restores the model folders and calls
``task.load_models`` once; every call then runs ``task.predict_batch`` and converts its answer to the batch's frame
type. Model loading time and per-call latency (p50/p95/max) are printed and written to ``kops-timing.json`` after
every call (a rerun is stopped, not ended), under ``evaluation``; ``kops submit`` logs them on the submission run.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from kaggleops.errors import KernelFailure
from kaggleops.kernel.runtime import (
    PREFIX,
    Timings,
    check_imports,
    find_model_dirs,
    import_task,
    restore_model_dirs,
    run_plan,
)
from kaggleops.schema import (
    EVALUATION_PACKAGE,
    EVALUATION_SUBMISSION_FILE,
    RERUN_ENV,
    TIMING_FILE,
    KernelPlan,
    inference_server_module,
)

SERVER_CLASS_SUFFIX = "InferenceServer"


def find_evaluation_data(plan: KernelPlan, input_dir: Path) -> tuple[Path, str]:
    """(the competition's data folder, its inference-server module): ``input/competitions/<slug>``,
    ``input/<slug>``, else any attached folder holding ``kaggle_evaluation/*_inference_server.py``."""
    candidates = [input_dir / "competitions" / plan.competition, input_dir / plan.competition]
    candidates += sorted(p.parent for p in input_dir.rglob(EVALUATION_PACKAGE) if p.is_dir())
    for folder in candidates:
        package = folder / EVALUATION_PACKAGE
        if package.is_dir():
            module = inference_server_module(f"{EVALUATION_PACKAGE}/{p.name}" for p in package.iterdir())
            if module:
                return folder, module
    raise KernelFailure(f"missing input: the {plan.competition} competition data with its {EVALUATION_PACKAGE}/ "
                        f"package (an *_inference_server.py) is not attached under {input_dir}; a file competition? "
                        "Set `kernel.submission: file` in kops.yaml")


def server_class(folder: Path, module_name: str) -> Any:
    """The one ``*InferenceServer`` class the competition's module defines (its folder goes first on sys.path)."""
    for path in (folder / EVALUATION_PACKAGE, folder):  # modules import both `kaggle_evaluation.x` and bare `x`
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise KernelFailure(f"the competition's {module_name} cannot be imported here: {e}") from None
    found = [obj for name, obj in vars(module).items() if isinstance(obj, type) and name.endswith(SERVER_CLASS_SUFFIX)
             and obj.__module__ == module.__name__]
    if len(found) != 1:
        raise KernelFailure(f"{module_name} defines {len(found)} *{SERVER_CLASS_SUFFIX} classes, not one")
    return found[0]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _frame_module(batch: tuple[Any, ...]) -> Any:
    """The frame library (pandas or polars module) of the batch's first frame; pandas when it has none."""
    for value in batch:
        name = type(value).__module__.split(".")[0]
        if name in ("pandas", "polars"):
            return sys.modules[name]
    return importlib.import_module("pandas")  # a batch of plain values: answer with the gateway's usual frame


def to_gateway_type(result: Any, batch: tuple[Any, ...], columns: list[str]) -> Any:
    """The task's answer as the gateway expects it: a DataFrame/Series of the batch's library (pandas or polars);
    an array or list becomes a frame of the submission's columns (one column: 1-D; several: 2-D); a numpy scalar a
    Python one; a Python scalar (some gateways take one answer per batch, e.g. a label) goes as it is."""
    library = _frame_module(batch)
    name = type(result).__module__.split(".")[0]
    if name in ("pandas", "polars"):
        if name == library.__name__:
            return result
        return library.from_pandas(result) if library.__name__ == "polars" else result.to_pandas()
    if isinstance(result, (list, tuple)) or name == "numpy":
        import numpy as np

        values = np.asarray(result)
        if values.ndim == 0:  # a numpy scalar: one answer per batch (e.g. a class name), as a Python value
            return values.item()
        data = {columns[0]: values} if values.ndim == 1 else {c: values[:, i] for i, c in enumerate(columns)}
        return library.DataFrame(data)
    return result  # a scalar answer (one row per batch) goes as it is


class Endpoint:
    """The task's batch predict behind the competition's ``predict`` endpoint, timed; models load on call 1."""

    def __init__(self, task: Any, plan: KernelPlan, input_dir: Path, working_dir: Path, timings: Timings) -> None:
        self.task, self.plan, self.input_dir, self.working_dir = task, plan, input_dir, working_dir
        self.timings = timings
        self.models: Any = None
        self.loaded = False
        self.load_s = 0.0
        self.latencies: list[float] = []
        self.ctx: Any = None

    def _load(self) -> None:
        from kaggleops.task import PredictContext, hook

        t0 = time.perf_counter()
        check_imports(tuple(self.plan.task.get("requires") or hook(self.task, "kernel_requires")))
        folders = restore_model_dirs(find_model_dirs(self.plan.models, self.input_dir))
        weights = [m.weight for m in self.plan.models]
        total = sum(weights) or 1.0
        scratch = Path(tempfile.gettempdir()) / f"kops-predict-{os.getpid()}"
        scratch.mkdir(parents=True, exist_ok=True)
        self.ctx = PredictContext([w / total for w in weights], scratch, lambda line: print(line, flush=True),
                                  self.plan.task_options, [f"m{i}:{m.run_id[:8]}" for i, m in
                                                           enumerate(self.plan.models)], self.timings.stage)
        self.models = self.task.load_models(folders, self.ctx)
        self.loaded = True
        self.load_s = time.perf_counter() - t0
        print(f"{PREFIX} {len(folders)} model(s) loaded in {self.load_s:.3f} s (first call)", flush=True)

    def __call__(self, *batch: Any, **kwargs: Any) -> Any:
        try:
            if not self.loaded:
                self._load()
            t0 = time.perf_counter()
            answer = to_gateway_type(self.task.predict_batch(self.models, *batch, ctx=self.ctx, **kwargs), batch,
                                     list(self.plan.columns))
            self.latencies.append(time.perf_counter() - t0)
        except Exception:
            traceback.print_exc()  # the gateway sees SERVER_RAISED_EXCEPTION; the log shows where
            raise
        self.write_timings()
        return answer

    def summary(self) -> dict[str, float]:
        """load_models_s, calls and latency_p50_s / _p95_s / _max_s (seconds) so far."""
        out = {"load_models_s": round(self.load_s, 6), "calls": float(len(self.latencies))}
        if self.latencies:
            out.update(latency_p50_s=round(percentile(self.latencies, 50), 6),
                       latency_p95_s=round(percentile(self.latencies, 95), 6),
                       latency_max_s=round(max(self.latencies), 6))
        return out

    def write_timings(self) -> None:
        data = {**dict(self.timings.rows), "evaluation": self.summary()}
        (self.working_dir / TIMING_FILE).write_text(json.dumps(data, indent=2))


def serve(plan: KernelPlan, input_dir: Path, working_dir: Path, timings: Timings) -> Endpoint:
    """Build the competition's server around the task; serve (rerun) or run the local gateway. Returns the endpoint."""
    from kaggleops.task import BatchPredict

    with timings.stage("import inference server"):
        folder, module = find_evaluation_data(plan, input_dir)
        cls = server_class(folder, module)
    task = import_task(plan)
    if not isinstance(task, BatchPredict):
        raise KernelFailure(f"the task {task.name} has no load_models / predict_batch / gateway_data_paths "
                            "(kaggleops.task.BatchPredict), which an evaluation-API competition needs")
    endpoint = Endpoint(task, plan, input_dir, working_dir, timings)

    def predict(*batch: Any, **kwargs: Any) -> Any:  # the endpoint's name is the function's
        return endpoint(*batch, **kwargs)

    server = cls(predict)
    os.chdir(working_dir)  # the gateway writes submission.parquet into its current folder
    if os.getenv(RERUN_ENV) is not None:
        print(f"{PREFIX} serving {module}.{cls.__name__} for the competition's gateway (rerun)", flush=True)
        server.serve()
        return endpoint
    paths = task.gateway_data_paths(folder)
    print(f"{PREFIX} running {module}'s local gateway on {[Path(p).name for p in paths or []] or 'its defaults'}",
          flush=True)
    t0 = time.perf_counter()
    try:
        server.run_local_gateway(tuple(str(p) for p in paths)) if paths else server.run_local_gateway()
    except Exception as e:  # noqa: BLE001 - the competition's own error type, whatever its class
        kind = getattr(getattr(e, "error_type", None), "name", None) or type(e).__name__
        details = getattr(e, "error_details", None) or str(e)
        raise KernelFailure(f"the competition's local gateway failed: {kind}: {str(details).strip()[-500:]}") from None
    timings.add("local gateway", time.perf_counter() - t0)
    if not (working_dir / EVALUATION_SUBMISSION_FILE).is_file():
        raise KernelFailure(f"the local gateway ended without writing {EVALUATION_SUBMISSION_FILE}")
    return endpoint


def main(plan: KernelPlan | dict[str, Any], input_dir: Path, working_dir: Path, timings: Timings | None = None) -> None:
    """Entry point of an evaluation-API kernel (see :func:`kaggleops.kernel.runtime.run_plan` for how it fails)."""
    timings = timings or Timings()
    _, endpoint = run_plan(plan, working_dir, timings, lambda p: serve(p, input_dir, working_dir, timings))
    stats = endpoint.summary()
    print(f"{PREFIX} local gateway wrote {EVALUATION_SUBMISSION_FILE}: {int(stats['calls'])} call(s), models loaded in "
          f"{stats['load_models_s']:.3f} s, latency p50 {stats.get('latency_p50_s', 0) * 1000:.1f} ms / p95 "
          f"{stats.get('latency_p95_s', 0) * 1000:.1f} ms / max {stats.get('latency_max_s', 0) * 1000:.1f} ms",
          flush=True)
    print(timings.table(), flush=True)
    endpoint.write_timings()
