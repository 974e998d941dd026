"""Where the files that ship beside the code live: kernel templates and notebooks, and bundled competitions.

They are read as package resources of kops' own package (``importlib.resources.files("kaggleops")``), never found
by probing folder names: ``kaggleops/_kernels`` and ``kaggleops/_datasets``. In a checkout (and an editable install)
those two are links to the repository's top-level ``kernels/`` and ``datasets/`` folders; a built wheel carries the
files themselves there (package data in ``setup.py``). Neither top-level folder is an importable package, so neither
shadows Hugging Face's ``kernels`` or ``datasets`` when Python starts from the repository root.

Example:
    >>> (kernels_dir() / "inference_kernel.py.tmpl").is_file()
    True
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from kaggleops.errors import KopsError

PACKAGE = "kaggleops"
KERNELS = "_kernels"
DATASETS = "_datasets"


def _resource_dir(name: str) -> Path:
    return Path(os.fspath(files(PACKAGE).joinpath(name)))


def kernels_dir() -> Path:
    """The folder of kernel templates and training notebooks."""
    return _resource_dir(KERNELS)


def datasets_dir() -> Path:
    """The folder of bundled competitions, one sub-folder per competition slug."""
    return _resource_dir(DATASETS)


def bundled_competition(slug: str) -> Path:
    """The bundled files (train/test/sample_submission/solution) of competition ``slug``."""
    return datasets_dir() / slug


def bundled_competitions() -> list[str]:
    """Slugs of the bundled competitions (folders with a ``competition.json`` seed)."""
    return sorted(p.parent.name for p in datasets_dir().glob("*/competition.json"))


def kernel_template(name: str) -> str:
    """The text of the kernel template ``name`` (e.g. ``inference_kernel.py.tmpl``)."""
    path = kernels_dir() / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KopsError(f"This kops installation lacks its kernel template {name} (looked in {path.parent}).",
                        "Reinstall kops: pip install --force-reinstall --no-deps kaggleops") from None
