"""`kops train --on kaggle`: push a TRAINING kernel that runs `kops train --git <this commit>` on Kaggle's GPUs.

Credentials never enter the kernel's source or metadata: the kernel reads them from Kaggle's Secrets add-on
(names in ``SECRET_NAMES``) at run time. The kernel writes ``kops-train-result.json`` (the run ids) to its output.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaggleops import __version__
from kaggleops.adapters.git import git_info
from kaggleops.adapters.kaggle import Kaggle
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError
from kaggleops.refs import KernelRef, slugify
from kaggleops.resources import kernel_template
from kaggleops.stages.accelerators import docker_pinning, resolve_accelerator
from kaggleops.stages.gitsource import GitSpec

SECRET_NAMES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON")
TEMPLATE = "train_kernel.py.tmpl"
RESULT_FILE = "kops-train-result.json"


@dataclass
class RemoteTrainResult:
    kernel: str
    kernel_version: int
    url: str
    git: str
    status: str | None = None
    run_ids: list[str] = field(default_factory=list)
    machine_shape: str | None = None
    docker_image: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def pushed_commit(cfg: KopsConfig) -> GitSpec:
    """This folder's HEAD as a clonable ``URL@commit`` (credentials stripped from the URL)."""
    info = git_info(cfg.root)
    if info is None:
        raise KopsError(f"{cfg.root} is not a git repository with a commit.",
                        "kops train --on kaggle trains a pushed commit: git init, commit and push first.")
    return GitSpec(info.repo_url, info.commit)


def render_training_kernel(cfg: KopsConfig, ref: KernelRef, spec: GitSpec, folds: list[int] | None,
                           machine_shape: str, folder: Path, docker_image: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plan = {"kops_version": __version__, "kops_requirement": f"kaggleops=={__version__}", "git": str(spec),
            "competition": cfg.competition, "folds": folds, "secret_names": list(SECRET_NAMES)}
    template = kernel_template(TEMPLATE)
    source = template.format(kops_version=__version__, competition=cfg.competition, commit=spec.rev,
                             repo_url=spec.url, secret_names=", ".join(SECRET_NAMES),
                             plan_json=json.dumps(plan, indent=2))
    compile(source, "kernel.py", "exec")
    (folder / "kernel.py").write_text(source)
    metadata = {"id": ref.ref, "title": ref.slug.replace("-", " ").title(), "code_file": "kernel.py",
                "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
                "enable_tpu": False, "enable_internet": True, "dataset_sources": [],
                "competition_sources": [cfg.competition], "kernel_sources": [], "model_sources": [],
                "machine_shape": machine_shape,
                **({"docker_image_pinning_type": docker_image} if docker_image else {})}
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2))
    return folder


def train_on_kaggle(cfg: KopsConfig, folds: list[int] | None = None, machine_shape: str | None = None,
                    wait: bool = False, kaggle: Kaggle | None = None, allow_retired: bool = False,
                    docker_image: str | None = None, notify: Callable[[str], None] | None = None) -> RemoteTrainResult:
    """Push the training kernel for this folder's HEAD commit; with ``wait``, follow it and read its run ids.

    Example:
        >>> train_on_kaggle(load_config(), folds=[0], wait=True)  # doctest: +SKIP
    """
    shape = resolve_accelerator(cfg, machine_shape, allow_retired, notify)
    docker_image = docker_pinning(docker_image)
    kaggle = kaggle or Kaggle.from_config(cfg)
    spec = pushed_commit(cfg)
    ref = KernelRef(cfg.kaggle_owner, f"{slugify(cfg.experiment_name, 40)}-train")
    folder = render_training_kernel(cfg, ref, spec, folds, shape.name, cfg.root / ".kops" / "kernels" / ref.slug,
                                    docker_image)
    if wait and notify is not None:
        from kaggleops.stages.kernel import show_quota

        show_quota(kaggle, shape.kind, notify)
    version = kaggle.push_kernel(folder)
    result = RemoteTrainResult(ref.ref, version, ref.url(kaggle.web_base), str(spec), machine_shape=shape.name,
                               docker_image=docker_image)
    if wait:
        pinned = KernelRef(ref.owner, ref.slug, version)
        result.status = kaggle.wait_kernel(pinned)
        with tempfile.TemporaryDirectory(prefix="kops-train-out-") as tmp:
            kaggle.kernel_output(pinned, Path(tmp))
            runs = json.loads((Path(tmp) / RESULT_FILE).read_text())["runs"]
        result.run_ids = [r["run_id"] for r in runs]
    return result
