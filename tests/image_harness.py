"""Helpers for tests of `kops kernel run-local` in the Kaggle image environment (candidates for harness.py).

- :func:`shared_cache` — one ``KOPS_CACHE_DIR`` for the whole test session (every xdist worker), so the Kaggle
  image environment is built once per session (about 20 s) and every run-local after that reuses it, exactly as
  a user's machine builds it once in ``~/.cache/kops``.
- :func:`wheel_of_installed` — a wheel of a pure-Python distribution installed in kops' environment, made
  offline from its installed files (what a user would put in ``kernel.wheels``).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import os
import zipfile
from pathlib import Path

import pytest

SKIPPED = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


def shared_cache(factory: pytest.TempPathFactory) -> Path:
    """``<session temp>/kops-cache``: shared by the session's tests (and its xdist workers)."""
    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "kops-cache"
    path.mkdir(exist_ok=True)
    return path


def image_python(cache: Path) -> Path:
    """The interpreter of the one Kaggle image environment built under ``cache``."""
    found = sorted((cache / "kaggle-image").glob("*/kops-image.json"))
    assert len(found) == 1, found
    return found[0].parent / "bin" / "python"


def wheel_of_installed(name: str, dst: Path) -> Path:
    """``dst/<name>-<version>-py3-none-any.whl`` from the installed files of ``name`` (pure Python only)."""
    dist = md.distribution(name)
    files = [f for f in dist.files or [] if not f.as_posix().startswith("..") and "__pycache__" not in f.parts
             and not (f.parent.name.endswith(".dist-info") and f.name in SKIPPED)]
    info = next(f.parent.as_posix() for f in files if f.parent.name.endswith(".dist-info"))
    assert "Root-Is-Purelib: true" in (dist.read_text("WHEEL") or ""), f"{name} is not pure Python"
    dst.mkdir(parents=True, exist_ok=True)
    wheel = dst / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(files, key=lambda f: f.as_posix()):
            data = Path(str(dist.locate_file(rel))).read_bytes()
            zf.writestr(rel.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel.as_posix()},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def report(stdout: str) -> dict:
    """The JSON report `kops kernel run-local --json` printed."""
    return json.loads(stdout)
