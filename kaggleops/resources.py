"""Where the files that ship beside the code live: kernel templates (``kernels/``) and bundled competitions
(``datasets/``).

In a checkout (or an editable install) they are the top-level folders of the repository; an installed wheel
carries the same files as ``kaggleops/_kernels`` and ``kaggleops/_datasets`` (setuptools package-dir mapping in
``setup.py``), so a checkout and an installed kops read identical bytes.

Example:
    >>> (kernels_dir() / "inference_kernel.py.tmpl").is_file()
    True
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _locate(top_level: str, packaged: str) -> Path:
    checkout = _CHECKOUT / top_level
    if (checkout / "__init__.py").is_file():
        return checkout
    return _PACKAGE / packaged


def kernels_dir() -> Path:
    """The folder of kernel templates and training notebooks."""
    return _locate("kernels", "_kernels")


def datasets_dir() -> Path:
    """The folder of bundled competitions, one sub-folder per competition slug."""
    return _locate("datasets", "_datasets")


def bundled_competition(slug: str) -> Path:
    """The bundled files (train/test/sample_submission/solution) of competition ``slug``."""
    return datasets_dir() / slug


def bundled_competitions() -> list[str]:
    """Slugs of the bundled competitions (folders with a ``competition.json`` seed)."""
    return sorted(p.parent.name for p in datasets_dir().glob("*/competition.json"))


def kernel_template(name: str) -> str:
    """The text of the kernel template ``name`` (e.g. ``inference_kernel.py.tmpl``)."""
    return (kernels_dir() / name).read_text(encoding="utf-8")
