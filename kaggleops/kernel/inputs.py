"""The inputs of a kernel run here as Kaggle attaches them (``kops kernel run-local``): the competition's data and
every dataset / Kaggle Model version the plan names, downloaded once into a cache (by ref + version: versions never
change), linked into ``input/`` in Kaggle's layout (``current`` or ``legacy``) and made read-only.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError
from kaggleops.refs import CompetitionRef, DatasetRef, ModelRef
from kaggleops.schema import KernelPlan, SubmissionKind

CACHE_DIR = Path(".kops") / "cache" / "kaggle"
COMPETITION_FILES = ("train.csv", "test.csv", "sample_submission.csv")
LAYOUTS = ("current", "legacy")


def planned_datasets(plan: KernelPlan) -> list[DatasetRef]:
    """The exact dataset versions the plan attaches (models, reranker folds, runtime, task code), one per ref.

    Kaggle mounts one version per attached dataset; two runs planned at two versions of one dataset cannot
    both be there, and :func:`static_checks` reports it. The newest planned version is staged. Kaggle Model
    sources are :func:`planned_models`.
    """
    pinned: dict[str, int] = {}
    for m in plan.all_models:
        if m.kind != "model":
            pinned[m.dataset] = max(m.dataset_version, pinned.get(m.dataset, 0))
    for extra in (plan.runtime, plan.code or {}):
        if extra.get("dataset"):
            pinned[str(extra["dataset"])] = int(extra["version"])
    return [DatasetRef.parse(f"{ref}/{version}") for ref, version in pinned.items()]


def planned_models(plan: KernelPlan) -> list[ModelRef]:
    """The Kaggle Model instance versions the plan attaches (``kind: model``: ``owner/model/framework/variation``
    at ``dataset_version``), each once."""
    refs = [ModelRef.parse(f"{m.dataset}/{m.dataset_version}") for m in plan.all_models if m.kind == "model"]
    return list(dict.fromkeys(refs))


def input_path(source: DatasetRef | ModelRef | CompetitionRef, layout: str = "current") -> str:
    """Where Kaggle mounts a source under ``/kaggle/input`` (``current``: today's layout; ``legacy``: the older one).

    >>> input_path(DatasetRef("alice", "tse-f0", 3))
    'datasets/alice/tse-f0'
    >>> input_path(ModelRef("alice", "tse", "transformers", "fold-0", 2), "legacy")
    'tse/transformers/fold-0/2'
    """
    if isinstance(source, CompetitionRef):
        return source.slug if layout == "legacy" else f"competitions/{source.slug}"
    if isinstance(source, ModelRef):
        tail = f"{source.slug}/{source.framework}/{source.variation}/{source.version}"
        return tail if layout == "legacy" else f"models/{source.owner}/{tail}"
    return source.slug if layout == "legacy" else f"datasets/{source.owner}/{source.slug}"


def cache_root(cfg: KopsConfig, kaggle: Kaggle) -> Path:
    """``.kops/cache/kaggle/<endpoint>/``: kaggle.com, or the emulator's host and port (another server)."""
    where = re.sub(r"[^A-Za-z0-9.-]+", "_", (kaggle.endpoint or "kaggle.com").split("://", 1)[-1]).strip("_")
    return cfg.root / CACHE_DIR / where


def cached_download(target: Path, fetch: Callable[[Path], Path]) -> bool:
    """``fetch`` into ``target`` once (into a partial folder, renamed when whole). Returns True on a cache hit."""
    if target.is_dir():
        return True
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    fetch(partial)
    partial.rename(target)
    return False


def link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a tree of hard links to ``src``'s files (copies where links cannot be made)."""
    shutil.copytree(src, dst, copy_function=_link_or_copy, dirs_exist_ok=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def set_read_only(folder: Path, read_only: bool = True) -> None:
    """Files 0444 / folders 0555 (``read_only``), or writable again so the folder can be removed."""
    if not folder.exists():
        return
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = (0o555 if path.is_dir() else 0o444) if read_only else (0o755 if path.is_dir() else 0o644)
        path.chmod(mode)


def stage_competition(kaggle: Kaggle, cache: Path, slug: str, input_dir: Path, data_dir: Path | None,
                      layout: str = "current", whole: bool = False) -> str:
    """``input/competitions/<slug>/``: ``data_dir``'s files, else the competition's data downloaded (cached).
    ``whole``: all of ``data_dir`` (an evaluation-API competition: its ``kaggle_evaluation/`` and test files)."""
    ref = CompetitionRef.parse(slug)
    where = input_path(ref, layout)
    target = input_dir / where
    if data_dir is not None and whole:
        shutil.copytree(data_dir, target, ignore=shutil.ignore_patterns("__pycache__"))
        return f"competition {slug} → input/{where} ← {data_dir} (--data, whole folder)"
    if data_dir is not None:
        target.mkdir(parents=True)
        for name in COMPETITION_FILES:
            if (Path(data_dir) / name).is_file():
                shutil.copyfile(Path(data_dir) / name, target / name)
        return f"competition {slug} → input/{where} ← {data_dir} (--data)"
    try:
        hit = cached_download(cache / "competitions" / slug, lambda d: kaggle.download_competition(ref, d))
    except KopsError as e:
        raise KopsError(f"run-local could not download the data of competition {slug}: {e.message}",
                        "Accept its rules on Kaggle, or pass the data with: kops kernel run-local DIR --data "
                        "FOLDER (test.csv + sample_submission.csv).") from None
    link_tree(cache / "competitions" / slug, target)
    return f"competition {slug} → input/{where} ({'cached' if hit else 'downloaded'})"


def stage_inputs(cfg: KopsConfig, plan: KernelPlan, input_dir: Path, data_dir: Path | None,
                 kaggle: Kaggle | None = None, layout: str = "current") -> tuple[list[str], list[str]]:
    """Populate ``input/`` as Kaggle would (``layout``: current or legacy); returns (what was staged, problems: a
    version that cannot be had)."""
    kaggle = kaggle or Kaggle.from_config(cfg)
    cache = cache_root(cfg, kaggle)
    input_dir.mkdir(parents=True)
    staged = [stage_competition(kaggle, cache, plan.competition, input_dir, data_dir, layout,
                                whole=plan.submission_kind == SubmissionKind.EVALUATION_API)]
    problems = []
    sources: list[tuple[str, DatasetRef | ModelRef, Path, Callable[[Path], Path]]] = [
        ("dataset", ref, cache / "datasets" / ref.owner / ref.slug / str(ref.version),
         lambda d, r=ref: kaggle.download_dataset(r, d)) for ref in planned_datasets(plan)]
    sources += [("model", ref, cache / "models" / ref.owner / ref.slug / ref.framework / ref.variation /
                 str(ref.version), lambda d, r=ref: kaggle.download_model(r, d)) for ref in planned_models(plan)]
    for kind, ref, where, fetch in sources:
        try:
            hit = cached_download(where, fetch)
        except KopsError as e:
            problems.append(f"missing input: {kind} {ref} cannot be downloaded ({e.message})")
            continue
        link_tree(where, input_dir / input_path(ref, layout))
        staged.append(f"{kind} {ref} → input/{input_path(ref, layout)} ({'cached' if hit else 'downloaded'})")
    set_read_only(input_dir)
    return staged, problems
