"""What runs inside the generated offline inference kernel (installed there from the kops-runtime wheel).

SELF-CONTAINED: the standard library, :mod:`kaggleops.schema` / :mod:`kaggleops.errors` (standard library
only), torch, transformers and kaggleops.tasks only (no MLflow, Kaggle client, pydantic or pandas), because
this module runs in a Kaggle image with internet off (the layer contract in pyproject.toml checks it).

``main(plan, input_dir, working_dir)``:
  1. finds every input by manifest (``kops-manifest.json`` names a run id), never by a guessed path, and
     restores a dataset's zipped sub-folders (``archives`` in the manifest; ``/kaggle/input`` is read-only,
     so into a scratch view of links + unpacked folders, checked against the manifest's sha256s);
  2. predicts with each planned model in turn (GPU in bf16 where supported, else fp16; CPU in fp32),
     sequences sorted by length and padded per batch, under ``torch.inference_mode``; one model in memory
     at a time; the ensemble is the weighted mean of per-character start/end probabilities;
  3. with a reranker in the plan: the ensemble's top-``n`` character spans per row
     (``rerank_infer.top_k_char_spans``) are rescored by the reranker's fold models
     (``rerank_infer.rerank_candidates``, one model in memory at a time); else the best span;
  4. writes ``submission.csv`` in ``sample_submission.csv``'s id order, checks it, and prints a timing table
     (also written to ``kops-timing.json``).
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

SUBMISSION = SUBMISSION_FILE
REQUIRED_PACKAGES = ("torch", "transformers", "tokenizers")
PREFIX = "kops:"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_MARKERS = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json")


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


def check_imports(names: tuple[str, ...] = REQUIRED_PACKAGES) -> None:
    """Import each package now, so a missing one fails loudly by name rather than deep in a stack trace."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise KernelFailure(f"the kernel needs the Python package {name!r}, which this image lacks ({e}). "
                                "Pick a Kaggle image that ships it, or attach a dataset with its wheel.") from None


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


def unpack_archive(archive: Path, target: Path, manifest: Manifest, prefix: str) -> None:
    """Unzip ``archive`` into ``target``; each member listed in ``files`` as ``prefix/member`` must match its sha256."""
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(target)
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        entry = manifest.files.get(f"{prefix}/{path.relative_to(target).as_posix()}")
        if entry and sha256_file(path) != entry.sha256:
            raise KernelFailure(f"{archive.name} of {archive.parent} holds {path.relative_to(target)} with another "
                                f"sha256 than {MANIFEST} lists ({entry.sha256[:12]}…): the dataset is corrupt")


def _needs_tokenizer_links(folder: Path) -> bool:
    return (folder / TOKENIZER_DIR).is_dir() and not any((folder / m).is_file() for m in TOKENIZER_MARKERS)


def restore_model_dir(folder: Path, scratch: Path) -> Path:
    """The model folder as it was logged, from a (read-only) dataset folder.

    Sub-folders travel as ``<name>.zip`` listed under ``archives`` in the manifest (Kaggle may or may not
    have unpacked them). When one still needs unpacking, or a tokenizer sits only in ``tokenizer/``, a view
    is built under ``scratch``: links to the dataset's files, the archives unpacked (sha256-checked), and the
    tokenizer's files linked at the top where ``from_pretrained`` looks. Otherwise ``folder`` itself.
    """
    manifest = Manifest.read(folder / MANIFEST)
    archives = {a: n for a, n in manifest.archives.items() if (folder / a).is_file() and not (folder / n).is_dir()}
    if not archives and not _needs_tokenizer_links(folder):
        return folder
    view = scratch / (manifest.run_id or folder.name)
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for entry in sorted(folder.iterdir()):
        if entry.name not in archives:
            (view / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    for archive, name in archives.items():
        unpack_archive(folder / archive, view / name, manifest, name)
    if _needs_tokenizer_links(view):
        for entry in sorted((view / TOKENIZER_DIR).iterdir()):
            if not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry.resolve())
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


def choose_device() -> tuple[Any, Any]:
    """(device, dtype): CUDA with bf16 where supported else fp16; CPU with fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


def predict_ensemble(plan: KernelPlan, model_dirs: list[Path], rows: list[dict[str, str]],
                     timings: Timings, batch_size: int = 64) -> list[tuple[list[float], list[float]]]:
    """Weighted mean of each model's per-character start/end probabilities, one model in memory at a time."""
    import torch

    infer = importlib.import_module(plan.runtime_module)
    device, dtype = choose_device()
    max_len = plan.max_len
    totals = [([0.0] * len(r["text"]), [0.0] * len(r["text"])) for r in rows]
    weight_sum = sum(m.weight for m in plan.models) or 1.0
    for i, (spec, folder) in enumerate(zip(plan.models, model_dirs, strict=True)):
        name, w = f"m{i}:{spec.run_id[:8]}", spec.weight / weight_sum
        with timings.stage(f"load {name}"):
            model, tokenizer = infer.load_model(folder, device)
            model.to(dtype=dtype)
        with timings.stage(f"tokenize {name}"):
            features = infer.encode_rows(tokenizer, rows, max_len)
        with timings.stage(f"forward {name}"):
            logits = infer.predict_logits(model, features, tokenizer.pad_token_id, batch_size)
        with timings.stage(f"ensemble {name}"):
            for total, row, feature, (s, e) in zip(totals, rows, features, logits, strict=True):
                ps, pe = infer.char_scores(row["text"], feature, s, e)
                for k in range(len(ps)):
                    total[0][k] += w * ps[k]
                    total[1][k] += w * pe[k]
        del model, logits, features
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{PREFIX} {len(model_dirs)} model(s) on {device.type} ({str(dtype).replace('torch.', '')})")
    return totals


def rerank(plan: KernelPlan, rows: list[dict[str, str]], totals: list[tuple[list[float], list[float]]],
           reranker_dirs: list[Path], timings: Timings) -> list[str]:
    """The reranker's answer per row: the ensemble's top-``n`` character spans rescored by its fold models."""
    spec = plan.reranker
    assert spec is not None
    rr = importlib.import_module(spec.module)
    n = spec.n
    with timings.stage("candidates"):
        cands = [rr.top_k_char_spans(row["text"], ps, pe, k=n) for row, (ps, pe) in zip(rows, totals, strict=True)]
    with timings.stage("rerank"):
        answers = rr.rerank_candidates([str(d) for d in reranker_dirs], rows, cands, w=spec.w, n=n,
                                       batch_size=plan.rerank_batch_size)
    print(f"{PREFIX} reranked {len(rows)} row(s) with {len(reranker_dirs)} reranker model(s), "
          f"w {spec.w:g}, n {n}")
    return [a if a.strip() else row["text"] for row, a in zip(rows, answers, strict=True)]


def decode(plan: KernelPlan, rows: list[dict[str, str]], totals: list[tuple[list[float], list[float]]],
           timings: Timings) -> list[str]:
    """Best character span per row (neutral → whole tweet when the plan says so), without a reranker."""
    infer = importlib.import_module(plan.runtime_module)
    neutral_full = plan.neutral_full_text
    out = []
    for row, (ps, pe) in zip(rows, totals, strict=True):
        text = row["text"]
        if (neutral_full and row["sentiment"] == "neutral") or not any(ps):
            out.append(text)
            continue
        start, stop = infer.best_char_span(ps, pe)
        out.append(text[start:stop] if text[start:stop].strip() else text)
    return out


def write_submission(path: Path, id_column: str, target_column: str, ids: list[str],
                     predictions: dict[str, str]) -> None:
    """submission.csv in ``ids`` order, every cell quoted."""
    missing = [i for i in ids if i not in predictions]
    if missing:
        raise KernelFailure(f"no prediction for {len(missing)} id(s) of sample_submission.csv, e.g. {missing[:3]}")
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow([id_column, target_column])
        writer.writerows([i, predictions[i]] for i in ids)


def check_submission(path: Path, id_column: str, target_column: str, ids: list[str]) -> list[str]:
    """Problems of a written submission: columns, id order, every id once, empty (NaN) cells."""
    if not path.is_file():
        return [f"no {path.name} in the working folder"]
    rows = read_rows(path)
    problems = []
    header = list(rows[0].keys()) if rows else []
    if header != [id_column, target_column]:
        problems.append(f"columns are {header}, expected {[id_column, target_column]}")
    got = [r.get(id_column) for r in rows]
    if len(got) != len(set(got)):
        problems.append("some ids appear more than once")
    if got != ids:
        problems.append(f"ids differ from sample_submission.csv's order ({len(got)} rows vs {len(ids)})")
    empty = sum(1 for r in rows if not (r.get(target_column) or "").strip())
    if empty:
        problems.append(f"{empty} empty {target_column} cell(s) (read as NaN)")
    return problems


def run(plan: KernelPlan, input_dir: Path, working_dir: Path, timings: Timings) -> int:
    """The kernel's work; returns the number of rows written."""
    with timings.stage("check imports"):
        check_imports()
    with timings.stage("read inputs"):
        comp = find_competition_dir(plan, input_dir)
        test = read_rows(comp / TEST_FILE)
        ids = [r[plan.id_column] for r in read_rows(comp / SAMPLE_SUBMISSION_FILE)]
        model_dirs = find_model_dirs(plan.models, input_dir)
        reranker_dirs = find_model_dirs(plan.reranker_models, input_dir) if plan.reranker_models else []
    with timings.stage("restore datasets"):
        model_dirs = restore_model_dirs(model_dirs)
        reranker_dirs = restore_model_dirs(reranker_dirs)
    if len(ids) != len(set(ids)):
        raise KernelFailure("sample_submission.csv has duplicate ids")
    totals = predict_ensemble(plan, model_dirs, test, timings, plan.batch_size)
    if plan.reranker:
        preds = rerank(plan, test, totals, reranker_dirs, timings)
    else:
        timings.add("rerank (none attached)", 0.0)
        with timings.stage("decode"):
            preds = decode(plan, test, totals, timings)
    with timings.stage("write + check"):
        by_id = {row[plan.id_column]: p for row, p in zip(test, preds, strict=True)}
        path = working_dir / SUBMISSION
        write_submission(path, plan.id_column, plan.target_column, ids, by_id)
        problems = check_submission(path, plan.id_column, plan.target_column, ids)
    if problems:
        raise KernelFailure(f"{SUBMISSION} failed its checks: {'; '.join(problems)}")
    return len(ids)


def main(plan: KernelPlan | dict[str, Any], input_dir: Path, working_dir: Path, timings: Timings | None = None) -> None:
    """Entry point of the generated kernel; a KernelFailure (or an invalid plan/manifest) becomes
    ``SystemExit("kops: error: …")``."""
    timings = timings or Timings()
    try:
        plan = plan if isinstance(plan, KernelPlan) else KernelPlan.from_dict(plan)
        plan.write(working_dir / PLAN_FILE)
        n = run(plan, input_dir, working_dir, timings)
    except (KernelFailure, SchemaError) as e:
        print(timings.table(), flush=True)
        raise SystemExit(f"{PREFIX} error: {e}") from None
    rr = plan.reranker
    print(f"{PREFIX} wrote {SUBMISSION} ({n} rows) from {len(plan.models)} model(s)"
          + (f" + a reranker of {len(rr.models)} model(s)" if rr else ""))
    print(timings.table(), flush=True)
    (working_dir / TIMING_FILE).write_text(json.dumps(dict(timings.rows), indent=2))
