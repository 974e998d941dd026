"""Inference kernel generation and push: runs → published datasets → offline kernel → kernel version."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from kaggleops import __version__
from kaggleops.config import KopsConfig
from kaggleops.kaggle import Kaggle
from kaggleops.publish import publish
from kaggleops.refs import CompetitionRef, KernelRef, slugify
from kaggleops.tasks import get_task
from kaggleops.tracking import TAG_DATASET, TAG_DATASET_VERSION, TAG_KERNEL, TAG_KERNEL_VERSION, Tracker

KERNEL_FILE = "kernel.py"
KERNEL_METADATA = "kernel-metadata.json"
PLAN_FILE = "kops-kernel.json"
TEMPLATE = "inference_kernel.py.tmpl"


@dataclass(frozen=True)
class ModelSource:
    run_id: str
    dataset: str
    dataset_version: int
    weight: float = 1.0


@dataclass
class KernelResult:
    kernel: str
    kernel_version: int
    url: str
    folder: Path
    run_ids: list[str]
    status: str | None = None
    published: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"kernel": self.kernel, "kernel_version": self.kernel_version, "url": self.url,
                "folder": str(self.folder), "run_ids": self.run_ids, "status": self.status,
                "published": self.published}


def default_kernel_ref(cfg: KopsConfig) -> KernelRef:
    slug = cfg.kernel.slug or f"{slugify(cfg.experiment_name, 40)}-inference"
    return KernelRef(cfg.kaggle_owner, slug)


def build_plan(cfg: KopsConfig, models: list[ModelSource]) -> dict[str, object]:
    task = get_task(cfg.competition)
    return {
        "kops_version": __version__,
        "competition": cfg.competition,
        "id_column": task.id_column,
        "target_column": task.target_column,
        "models": [m.__dict__ for m in models],
    }


def kernel_metadata(cfg: KopsConfig, ref: KernelRef, models: list[ModelSource]) -> dict[str, object]:
    return {
        "id": ref.ref,
        "title": ref.slug.replace("-", " ").title(),
        "code_file": KERNEL_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": cfg.kernel.private,
        "enable_gpu": cfg.kernel.enable_gpu,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": sorted({m.dataset for m in models}),
        "competition_sources": [cfg.competition],
        "kernel_sources": [],
        "model_sources": [],
        "machine_shape": cfg.kernel.machine_shape,
    }


def render_kernel(cfg: KopsConfig, ref: KernelRef, models: list[ModelSource], folder: Path) -> Path:
    """Write kernel.py (template + embedded runtime + plan) and kernel-metadata.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = build_plan(cfg, models)
    template = resources.files("kaggleops.templates").joinpath(TEMPLATE).read_text()
    runtime = get_task(cfg.competition).kernel_runtime_source()
    source = template.format(kops_version=__version__, competition=cfg.competition,
                             plan_json=json.dumps(plan, indent=2), runtime_source=runtime)
    compile(source, KERNEL_FILE, "exec")  # a broken template fails here, not on Kaggle
    (folder / KERNEL_FILE).write_text(source)
    (folder / PLAN_FILE).write_text(json.dumps(plan, indent=2))
    (folder / KERNEL_METADATA).write_text(json.dumps(kernel_metadata(cfg, ref, models), indent=2))
    return folder


def resolve_models(cfg: KopsConfig, tracker: Tracker, run_ids: list[str], kaggle: Kaggle) -> tuple[list[ModelSource],
                                                                                                       list[str]]:
    """Each run's dataset version, publishing runs that have none yet. Returns (sources, newly published ids)."""
    models, published = [], []
    for run_id in run_ids:
        tags = tracker.get_run(run_id).data.tags
        if TAG_DATASET not in tags:
            publish(cfg, run_id, kaggle=kaggle)
            published.append(run_id)
            tags = tracker.get_run(run_id).data.tags
        models.append(ModelSource(run_id, tags[TAG_DATASET], int(tags[TAG_DATASET_VERSION])))
    return models, published


def push_kernel(cfg: KopsConfig, run_ids: list[str], wait: bool = False, kaggle: Kaggle | None = None,
                on_status: object = None) -> KernelResult:
    """Generate the offline inference kernel for ``run_ids``, push it, tag the runs; optionally wait.

    Example:
        >>> push_kernel(load_config(), ["3f2a…"], wait=True)  # doctest: +SKIP
    """
    tracker = Tracker(cfg)
    kaggle = kaggle or Kaggle(cfg.resolved_kaggle_endpoint)
    CompetitionRef.parse(cfg.competition)
    models, published = resolve_models(cfg, tracker, run_ids, kaggle)
    ref = default_kernel_ref(cfg)
    folder = render_kernel(cfg, ref, models, cfg.root / ".kops" / "kernels" / ref.slug)
    version = kaggle.push_kernel(folder)
    for run_id in run_ids:
        tracker.set_tags(run_id, {TAG_KERNEL: ref.ref, TAG_KERNEL_VERSION: str(version)})
    pinned = KernelRef(ref.owner, ref.slug, version)
    result = KernelResult(ref.ref, version, ref.url(kaggle.web_base), folder, run_ids, published=published)
    if wait:
        result.status = kaggle.wait_kernel(pinned, on_status=on_status)  # type: ignore[arg-type]
    return result

