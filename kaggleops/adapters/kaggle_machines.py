"""Accelerators (machine shapes) and Docker image pinning as the installed ``kaggle`` client knows them.

The client (2.2.5) lists retired shapes in ``kaggle_api_extended._RETIRED_ACCELERATORS`` with the substitute
the server silently runs instead ("Sessions run on the default GPU (NvidiaTeslaT4) instead."), and names the
current ones in its ``--accelerator`` help and in kagglesdk's docstrings. kops reads those from the installed
client's source (importing ``kaggle`` would authenticate), so a newer client that retires or adds a shape is
followed without a kops release. Shapes named in Kaggle's documentation but not (yet) in the client are added
from :data:`DOCUMENTED`.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kaggleops.errors import ConfigError

DOCUMENTED = ("NvidiaTeslaT4", "NvidiaL4", "TpuV5E8")  # Kaggle's docs (kernels_metadata.md), 2026
RETIRED_SPELLING = ("TpuV38", "TpuV232", "TpuV2256")  # how Kaggle writes the retired shapes the client lower-cases
DOCKER_PINNING = ("original", "latest")
_SHAPE = re.compile(r"\b((?:Nvidia|Tpu)[A-Za-z0-9]+)\b")
_SUBSTITUTE = re.compile(r"\(((?:Nvidia|Tpu)[A-Za-z0-9]+)\)")


@dataclass(frozen=True)
class Accelerator:
    """A machine shape as Kaggle spells it; ``retired`` ones name what the server runs instead."""

    name: str
    retired: bool = False
    substitute: str | None = None  # None with retired=True: the session runs on CPU
    detail: str = ""

    @property
    def kind(self) -> str:
        return "tpu" if self.name.lower().startswith("tpu") else "gpu"


def _client_files() -> list[Path]:
    out = []
    for package, rel in (("kaggle", "api/kaggle_api_extended.py"), ("kaggle", "cli.py"),
                         ("kagglesdk", "kernels/types/kernels_api_service.py")):
        spec = importlib.util.find_spec(package)  # top-level lookup only: nothing is imported
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / rel
            if path.is_file():
                out.append(path)
    return out


def _retired_table(source: str) -> dict[str, str]:
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_RETIRED_ACCELERATORS"
                                                 for t in node.targets)):
            value = ast.literal_eval(node.value)
            return {str(k).lower(): str(v) for k, v in value.items()}
    return {}


@lru_cache(maxsize=1)
def known_accelerators() -> dict[str, Accelerator]:
    """Every shape the installed client (plus :data:`DOCUMENTED`) knows, keyed by lower-case name."""
    names: dict[str, str] = {n.lower(): n for n in DOCUMENTED}
    retired: dict[str, str] = {}
    for path in _client_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        names.update({m.lower(): m for m in _SHAPE.findall(text) if m.lower() not in names})
        if path.name == "kaggle_api_extended.py":
            retired = _retired_table(text)
    spelled = {n.lower(): n for n in RETIRED_SPELLING}
    for key in retired:
        names.setdefault(key, spelled.get(key, key))
    out = {}
    for key, name in names.items():
        detail = retired.get(key, "")
        sub = _SUBSTITUTE.search(detail)
        out[key] = Accelerator(name, key in retired, sub.group(1) if sub else None, detail)
    return out


def check_accelerator(shape: str, allow_retired: bool = False) -> tuple[Accelerator, str | None]:
    """The accelerator ``shape`` names (any case), and a warning for a retired one when ``allow_retired``.

    Raises ConfigError for an unknown shape (listing the current ones) and for a retired one (naming the
    substitute) unless ``allow_retired``.

    Example:
        >>> check_accelerator("nvidiateslat4")[0].name
        'NvidiaTeslaT4'
    """
    known = known_accelerators()
    found = known.get(shape.strip().lower())
    current = sorted(a.name for a in known.values() if not a.retired)
    if found is None:
        raise ConfigError(f"Unknown accelerator {shape!r}; the installed kaggle client knows: {', '.join(current)}.",
                          "Pass one of them with --machine-shape (kernel.machine_shape in kops.yaml).")
    if not found.retired:
        return found, None
    instead = f"Kaggle runs {found.substitute} instead" if found.substitute else "Kaggle runs it on CPU, no accelerator"
    message = f"Accelerator {found.name} is retired: {instead}."
    if not allow_retired:
        raise ConfigError(message, f"Pass --machine-shape {found.substitute or current[0]} (or --allow-retired "
                                   "to push it anyway).")
    return found, message


def check_docker_pinning(value: str | None) -> str | None:
    """``original`` | ``latest`` | None (Kaggle's default); anything else is a ConfigError."""
    if value is None:
        return None
    if value not in DOCKER_PINNING:
        raise ConfigError(f"Docker image pinning {value!r} is not one of {', '.join(DOCKER_PINNING)}.",
                          "Pass --docker-image original (the image the notebook was created with) or latest.")
    return value
