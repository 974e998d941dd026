"""The layer contracts in pyproject.toml hold, and a broken one fails `lint-imports` (so `make test` fails)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (pip install -e '.[dev]')")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PATH": str(LINT.parent), "PYTHONPATH": str(root)}, capture_output=True, text=True,
                          timeout=120)


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "kaggleops", tmp_path / "kaggleops", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout and out.stdout.count("KEPT") >= 4


@pytest.mark.parametrize(("module", "bad_import", "contract"), [
    ("adapters/tracking.py", "from kaggleops.stages import submit", "cli → stages"),
    ("kernel/runtime.py", "import mlflow", "the kernel runtime imports only"),
    ("tasks/tse/metric.py", "from kaggleops.adapters import tracking", "task code imports neither"),
    ("stages/kernel.py", "from kaggleops.stages import submit", "no import cycle"),
])
def test_a_deliberate_violation_fails(tmp_path: Path, module: str, bad_import: str, contract: str) -> None:
    root = copy_package(tmp_path)
    path = root / "kaggleops" / module
    path.write_text(path.read_text() + f"\n{bad_import}  # injected by tests/test_layers.py\n")
    out = lint(root)
    assert out.returncode != 0
    broken = out.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken.replace("\n", " "), out.stdout
