"""What runs inside the generated offline inference kernel (installed there from the kops-runtime wheel).

SELF-CONTAINED: the standard library, :mod:`kaggleops.schema` / :mod:`kaggleops.errors` /
:mod:`kaggleops.task` (standard library only), kaggleops.tasks and what the task imports (no MLflow, Kaggle
client or pydantic), because this module runs in a Kaggle image with internet off.

``main(plan, input_dir, working_dir)``:
  1. imports the task named by the plan (``task.spec``, installed from the code dataset or built in) and the
     packages it declares (``task.requires``): a missing module fails with its name;
  2. finds every input by manifest (``kops-manifest.json`` names a run id), never by a guessed path, and
     restores each model folder with :func:`restore_model_dir` (zipped sub-folders, ``archives`` in the
     manifest, unpacked into a scratch view of links, as ``/kaggle/input`` is read-only; every file listed in
     the manifest checked against its sha256);
  3. reads test.csv through the task and asks it for the ensemble's predictions (``task.predict``, or
     ``task.predict_second_stage`` with a second stage in the plan), then its optional ``post_process``;
  4. writes ``submission.csv`` in ``sample_submission.csv``'s id order with its columns, checks it, and prints
     a timing table (also written to ``kops-timing.json``).
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kaggleops.errors import KernelFailure, SchemaError
from kaggleops.files import sha256_file
from kaggleops.schema import (
    MANIFEST,
    PLAN_FILE,
    SAMPLE_SUBMISSION_FILE,
    SUBMISSION_FILE,
    TEST_FILE,
    TIMING_FILE,
    KernelPlan,
    Manifest,
    PlanModel,
)
from kaggleops.task import hook

T = TypeVar("T")
SUBMISSION = SUBMISSION_FILE
PREFIX = "kops:"


class Timings:
    """Ordered stage → seconds, printed as a table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.rows.append((name, seconds))

    def table(self) -> str:
        total = sum(s for _, s in self.rows)
        lines = [f"{PREFIX} timing {'stage':<28} {'seconds':>9}"]
        lines += [f"{PREFIX} timing {name:<28} {s:9.3f}" for name, s in self.rows]
        lines.append(f"{PREFIX} timing {'total':<28} {total:9.3f}")
        return "\n".join(lines)


def check_imports(names: tuple[str, ...] | list[str]) -> None:
    """Import each package now, so a missing one fails loudly by name rather than deep in a stack trace."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise KernelFailure(f"the kernel needs the Python package {name!r}, which this image lacks ({e}). "
                                "Pick a Kaggle image that ships it, or put its wheel in the folder named by "
                                "kops.yaml `kernel.wheels`.") from None


def import_task(plan: KernelPlan | dict[str, Any]) -> Any:
    """The plan's task (``task.spec`` = module:Class; default: the registry's task of the competition)."""
    from kaggleops.tasks import task_spec

    if isinstance(plan, dict):
        plan = KernelPlan.from_dict({"id_column": "", "target_column": "", "models": [], **plan})
    spec = plan.task_spec or task_spec(plan.competition)
    if not spec:
        raise KernelFailure(f"the plan names no task and {plan.competition} has no built-in one")
    module, _, cls = spec.rpartition(":")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        raise KernelFailure(f"importing the task {spec} failed: no module named {e.name!r} in this kernel. "
                            "Put its wheel in the folder named by kops.yaml `kernel.wheels` (or check that the "
                            "task's code dataset is attached).") from None
    except ImportError as e:
        raise KernelFailure(f"importing the task {spec} failed: {e}") from None
    except AttributeError:
        raise KernelFailure(f"the task module {module} has no {cls!r}") from None
    return factory()


def find_model_dirs(specs: list[PlanModel], input_dir: Path) -> list[Path]:
    """Each planned model's folder: the one whose manifest names its run."""
    found: dict[str, Path] = {}
    for manifest in sorted(input_dir.rglob(MANIFEST)):
        try:
            found[Manifest.read(manifest).run_id] = manifest.parent
        except SchemaError:
            continue
    missing = [m for m in specs if m.run_id not in found]
    if missing:
        names = ", ".join(m.label() for m in missing)
        attached = sorted(p.name for p in input_dir.iterdir()) if input_dir.is_dir() else []
        raise KernelFailure(f"missing input: no attached dataset carries the weights of {names}; "
                            f"attached: {attached}")
    return [found[m.run_id] for m in specs]


def unpack_archive(archive: Path, target: Path) -> None:
    """Unzip ``archive`` into ``target``; an unreadable zip is a KernelFailure naming the dataset."""
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise KernelFailure(f"{archive.name} of {archive.parent} cannot be unpacked ({e}): "
                            "the dataset is corrupt") from None


def check_files(view: Path, folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists must be in ``view`` with its sha256 (names say where it came from)."""
    archives = {name: archive for archive, name in manifest.archives.items()}
    for rel, entry in sorted(manifest.files.items()):
        top, _, inner = rel.partition("/")
        where = (f"{archives[top]} of {folder} holds {inner}" if inner and top in archives and
                 not (folder / top).is_dir() else f"{folder} holds {rel}")
        path = view / rel
        if not path.is_file():
            raise KernelFailure(f"{where.replace(' holds ', ' lacks ')}, which {MANIFEST} lists: "
                                "the dataset is incomplete")
        if sha256_file(path) != entry.sha256:
            raise KernelFailure(f"{where} with another sha256 than {MANIFEST} lists ({entry.sha256[:12]}…): "
                                "the dataset is corrupt")


def restore_model_dir(folder: Path, scratch: Path) -> Path:
    """The model folder as it was logged, from a (read-only) published dataset folder: THE one restore.

    The kernel, ``kops kernel run-local`` (which runs the kernel on the downloaded versions) and the publish
    round-trip tests all restore through here. Sub-folders travel as ``<name>.zip`` listed under ``archives``
    in the manifest (Kaggle may or may not have unpacked them). When one still needs unpacking, a view is built
    under ``scratch``: links to the dataset's files and the archives unpacked. Otherwise ``folder`` itself (what
    the task finds inside is the task's business). Either way every file the manifest lists is checked against
    its sha256 (KernelFailure naming the first missing or differing one); ``folder`` is never written to.
    """
    manifest = Manifest.read(folder / MANIFEST)  # SchemaError: unreadable or from a newer kops
    archives = {a: n for a, n in manifest.archives.items() if (folder / a).is_file() and not (folder / n).is_dir()}
    view = folder
    if archives:
        view = scratch / (manifest.run_id or folder.name)
        shutil.rmtree(view, ignore_errors=True)
        view.mkdir(parents=True)
        for entry in sorted(folder.iterdir()):
            if entry.name not in archives:
                (view / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        for archive, name in archives.items():
            unpack_archive(folder / archive, view / name)
    check_files(view, folder, manifest)
    return view


def restore_model_dirs(folders: list[Path], scratch: Path | None = None) -> list[Path]:
    """:func:`restore_model_dir` for each folder (scratch: a temp folder outside the kernel's outputs)."""
    scratch = scratch or Path(tempfile.gettempdir()) / f"kops-models-{os.getpid()}"
    return [restore_model_dir(f, scratch) for f in folders]


def find_competition_dir(plan: KernelPlan, input_dir: Path) -> Path:
    """The competition's data folder (``input/<slug>``, else any folder holding test.csv + sample)."""
    direct = input_dir / plan.competition
    candidates = [direct] + sorted(p.parent for p in input_dir.rglob(SAMPLE_SUBMISSION_FILE))
    for folder in candidates:
        if (folder / TEST_FILE).is_file() and (folder / SAMPLE_SUBMISSION_FILE).is_file():
            return folder
    raise KernelFailure(f"missing input: the {plan.competition} competition data ({TEST_FILE}, "
                        f"{SAMPLE_SUBMISSION_FILE}) is not attached under {input_dir}")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _columns(columns: str | list[str] | tuple[str, ...]) -> list[str]:
    return [columns] if isinstance(columns, str) else list(columns)


def _cell(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return "" if value is None else str(value)


def write_submission(path: Path, id_column: str, columns: str | list[str], ids: list[str],
                     predictions: dict[str, Any]) -> None:
    """submission.csv in ``ids`` order, every cell quoted; ``predictions``: id → value (one column) or row tuple."""
    columns = _columns(columns)
    missing = [i for i in ids if i not in predictions]
    if missing:
        raise KernelFailure(f"no prediction for {len(missing)} id(s) of sample_submission.csv, e.g. {missing[:3]}")
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow([id_column, *columns])
        for i in ids:
            value = predictions[i]
            cells = list(value) if isinstance(value, (list, tuple)) else [value]
            writer.writerow([i, *(_cell(v) for v in cells)])


def check_submission(path: Path, id_column: str, columns: str | list[str], ids: list[str]) -> list[str]:
    """Problems of a written submission: columns, id order, every id once, empty (NaN) cells."""
    columns = _columns(columns)
    if not path.is_file():
        return [f"no {path.name} in the working folder"]
    rows = read_rows(path)
    problems = []
    header = list(rows[0].keys()) if rows else []
    if header != [id_column, *columns]:
        problems.append(f"columns are {header}, expected {[id_column, *columns]}")
    got = [r.get(id_column) for r in rows]
    if len(got) != len(set(got)):
        problems.append("some ids appear more than once")
    if got != ids:
        problems.append(f"ids differ from sample_submission.csv's order ({len(got)} rows vs {len(ids)})")
    for column in columns:
        empty = sum(1 for r in rows if not (r.get(column) or "").strip())
        if empty:
            problems.append(f"{empty} empty {column} cell(s) (read as NaN)")
    return problems


def _by_id(preds: Any, id_column: str, columns: list[str]) -> dict[str, Any]:
    missing = [c for c in [id_column, *columns] if c not in preds.columns]
    if missing:
        raise KernelFailure(f"the task's predictions lack column(s) {missing}; they have {list(preds.columns)}")
    ids = [_cell(v) for v in preds[id_column].tolist()]
    if len(columns) == 1:
        return dict(zip(ids, preds[columns[0]].tolist(), strict=True))
    return dict(zip(ids, preds[columns].itertuples(index=False, name=None), strict=True))


def predict(task: Any, plan: KernelPlan, test: Any, model_dirs: list[Path], reranker_dirs: list[Path],
            timings: Timings) -> Any:
    """The task's predictions table for ``test`` (its second stage when the plan has one), post-processed."""
    from kaggleops.task import PostProcessing, PredictContext

    weights = [m.weight for m in plan.models]
    total = sum(weights) or 1.0
    options = plan.task_options
    if plan.reranker:
        options.update(plan.reranker.options)
    scratch = Path(tempfile.gettempdir()) / f"kops-predict-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = PredictContext([w / total for w in weights], scratch, lambda line: print(line, flush=True), options,
                         [f"m{i}:{m.run_id[:8]}" for i, m in enumerate(plan.models)], timings.stage)
    if plan.reranker:
        preds = task.predict_second_stage(model_dirs, reranker_dirs, test, ctx)
        print(f"{PREFIX} second stage of {len(reranker_dirs)} model(s) applied", flush=True)
    else:
        preds = task.predict(model_dirs, test, ctx)
        timings.add("rerank (none attached)", 0.0)
    if isinstance(task, PostProcessing):
        with timings.stage("post-process"):
            preds = task.post_process(test, preds)
    return preds


def run(plan: KernelPlan, input_dir: Path, working_dir: Path, timings: Timings) -> int:
    """The kernel's work; returns the number of rows written."""
    with timings.stage("check imports"):
        task = import_task(plan)
        check_imports(tuple(plan.task.get("requires") or hook(task, "kernel_requires")))
    id_column = task.submission.id_column
    columns = list(task.submission.columns)
    with timings.stage("read inputs"):
        comp = find_competition_dir(plan, input_dir)
        test = task.load_test(comp / TEST_FILE)
        sample = read_rows(comp / SAMPLE_SUBMISSION_FILE)
        header = list(sample[0].keys()) if sample else []
        if header and header != [id_column, *columns]:
            raise KernelFailure(f"{SAMPLE_SUBMISSION_FILE} has columns {header}; the task {task.name} writes "
                                f"{[id_column, *columns]}")
        ids = [r[id_column] for r in sample]
        model_dirs = find_model_dirs(plan.models, input_dir)
        reranker_dirs = find_model_dirs(plan.reranker_models, input_dir) if plan.reranker_models else []
    with timings.stage("restore datasets"):
        model_dirs = restore_model_dirs(model_dirs)
        reranker_dirs = restore_model_dirs(reranker_dirs)
    if len(ids) != len(set(ids)):
        raise KernelFailure("sample_submission.csv has duplicate ids")
    if plan.code_versions:  # a blend of runs that trained different task code: one process per version
        from kaggleops.kernel.versions import predict_by_version

        preds = predict_by_version(task, plan, test, comp, model_dirs, input_dir, timings)
    else:
        preds = predict(task, plan, test, model_dirs, reranker_dirs, timings)
    with timings.stage("write + check"):
        path = working_dir / SUBMISSION
        write_submission(path, id_column, columns, ids, _by_id(preds, id_column, columns))
        problems = check_submission(path, id_column, columns, ids)
    if problems:
        raise KernelFailure(f"{SUBMISSION} failed its checks: {'; '.join(problems)}")
    return len(ids)


def run_plan(plan: KernelPlan | dict[str, Any], working_dir: Path, timings: Timings,
             work: Callable[[KernelPlan], T]) -> tuple[KernelPlan, T]:
    """The plan read and written to the working folder as ``kops-kernel.json``, then ``work(plan)``; a KernelFailure
    (or an invalid plan/manifest) prints the timing table so far and becomes ``SystemExit("kops: error: …")``."""
    try:
        plan = plan if isinstance(plan, KernelPlan) else KernelPlan.from_dict(plan)
        plan.write(working_dir / PLAN_FILE)
        return plan, work(plan)
    except (KernelFailure, SchemaError) as e:
        print(timings.table(), flush=True)
        raise SystemExit(f"{PREFIX} error: {e}") from None


def main(plan: KernelPlan | dict[str, Any], input_dir: Path, working_dir: Path, timings: Timings | None = None) -> None:
    """Entry point of the generated kernel (see :func:`run_plan` for how it fails)."""
    timings = timings or Timings()
    plan, n = run_plan(plan, working_dir, timings, lambda p: run(p, input_dir, working_dir, timings))
    rr = plan.reranker
    print(f"{PREFIX} wrote {SUBMISSION} ({n} rows) from {len(plan.models)} model(s)"
          + (f" + a second stage of {len(rr.models)} model(s)" if rr else ""))
    print(timings.table(), flush=True)
    (working_dir / TIMING_FILE).write_text(json.dumps(dict(timings.rows), indent=2))


def version_child(job_file: str) -> None:
    """One task code version's predictions in its own process (:mod:`kaggleops.kernel.versions` starts it): that
    version's task, the test data, its ``predict`` on its model folders, the table pickled; a failure exits with
    one ``kops: error:`` line on stderr."""
    import pickle

    from kaggleops.task import PredictContext

    try:
        job = json.loads(Path(job_file).read_text())
        task = import_task({"competition": job["competition"], "task": {"spec": job["spec"]}})
        check_imports(tuple(hook(task, "kernel_requires")))
        test = task.load_test(Path(job["test"]))
        scratch = Path(job["out"]).parent / f"scratch-{os.getpid()}"
        scratch.mkdir(parents=True, exist_ok=True)
        ctx = PredictContext(list(job["weights"]), scratch, lambda line: print(line, flush=True),
                             dict(hook(task, "kernel_options")), list(job["labels"]))
        preds = task.predict([Path(d) for d in job["models"]], test, ctx)
        with open(job["out"], "wb") as f:
            pickle.dump(preds, f)
    except KernelFailure as e:
        raise SystemExit(f"{PREFIX} error: {e}") from None
