"""Where are we running: colab | kaggle-interactive | kaggle-batch | local; which GPU; library versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from kaggleops.schema import TAG_SOURCE_NAME, TAG_SOURCE_TYPE, TAG_USER

LIBRARIES = ("torch", "transformers", "tokenizers", "mlflow", "kaggle")


def detect_env() -> str:
    """``colab``, ``kaggle-interactive``, ``kaggle-batch`` or ``local``."""
    run_type = os.environ.get("KAGGLE_KERNEL_RUN_TYPE")
    if run_type:
        return "kaggle-batch" if run_type.lower() == "batch" else "kaggle-interactive"
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG") or os.environ.get("COLAB_GPU"):
        return "colab"
    return "local"


def gpu_info() -> dict[str, str]:
    """Name and memory of the first CUDA device, or ``{"name": "none"}``. Imports torch."""
    import torch

    if not torch.cuda.is_available():
        return {"name": "none"}
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": str(torch.cuda.device_count()),
        "memory_gb": f"{props.total_memory / 2**30:.1f}",
    }


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return versions


def imported_distributions() -> dict[str, str]:
    """Every installed distribution (name → version) that a module imported in this process belongs to: what the
    run actually used, the task's own libraries (scikit-learn, joblib, …) included. The standard library is not."""
    top = {name.split(".")[0] for name in list(sys.modules)} - set(sys.stdlib_module_names)
    owners = metadata.packages_distributions()
    found: dict[str, str] = {}
    for module in sorted(top):
        for dist in owners.get(module, []):
            try:
                found.setdefault(dist, metadata.version(dist))
            except metadata.PackageNotFoundError:
                continue
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def requirements_text() -> str:
    """``name==version`` lines of :func:`imported_distributions` (pip's requirements format, as MLflow models log)."""
    return "".join(f"{name}=={version}\n" for name, version in imported_distributions().items())


def run_source_tags(env: str) -> dict[str, str]:
    """MLflow's own "Source" and "User" columns: the kops command that made the run, as a notebook in Colab/Kaggle
    (``mlflow.source.type`` NOTEBOOK) or a local command (LOCAL), and the OS user."""
    import getpass

    command = " ".join(["kops", *[a for a in sys.argv[1:2] if not a.startswith("-")]]) if sys.argv else "kops"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    kind = "NOTEBOOK" if env.startswith(("colab", "kaggle")) else "LOCAL"
    return {TAG_SOURCE_NAME: command, TAG_SOURCE_TYPE: kind, TAG_USER: user}
