"""A fresh machine gets what CI tested: nothing in the repository shadows another distribution, and a built,
non-editable wheel finds its own files by package resources beside Hugging Face's ``kernels`` and ``datasets``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import REPO, Emulated, start_emulator_process

# Start Python where `python -m pytest` / `python -m bench…` start it: the repository root first on sys.path.
IMPORT_EVERYTHING = textwrap.dedent("""
    import importlib, pkgutil, sys
    from pathlib import Path
    repo = Path.cwd().resolve()
    import kernels, datasets
    for dist in (kernels, datasets):
        where = Path(dist.__file__).resolve()
        assert repo / dist.__name__ not in where.parents, f"{dist.__name__} is the repository's own folder: {where}"
    from transformers import AutoModel, BertModel, RobertaForQuestionAnswering, RobertaModel  # noqa: F401
    import kaggleops
    names = [m.name for m in pkgutil.walk_packages(kaggleops.__path__, "kaggleops.")
             if not m.name.endswith(".__main__")]  # __main__ runs the CLI
    for name in names:
        importlib.import_module(name)
    print(len(names))
""")


def test_repository_root_shadows_no_distribution() -> None:
    """From the repository root, ``import kernels`` / ``import datasets`` are Hugging Face's, and transformers'
    model classes and every kops module import (transformers 5.25 imports ``kernels`` when it is installed)."""
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) > 50  # every module of the package was imported
    for folder in ("kernels", "datasets"):
        assert not (REPO / folder / "__init__.py").exists(), f"{folder}/ is an importable package again"


def build_wheel(out: Path) -> Path:
    """The wheel `pip wheel .` builds from a copy of the working tree (links kept: kaggleops/_kernels …)."""
    src = out / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "kops-work*"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out / "dist"),
                            str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (out / "dist").glob("kaggleops-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fresh venv holding the built wheel (not editable). Its dependencies, Hugging Face's ``kernels`` and
    ``datasets`` among them, come from this test environment's site-packages through a .pth line, so nothing is
    downloaded; kops itself is only the wheel's copy."""
    base = tmp_path_factory.mktemp("install")
    wheel = build_wheel(base)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOPS_", "KAGGLE_", "MLFLOW_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), TMPDIR=str(home), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    env.pop("PYTHONPATH", None)
    yield {"venv": venv, "site": site, "env": env, "base": base}


def run_in(installed: dict[str, Any], *args: str, cwd: Path, env: dict[str, str] | None = None,
           timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(installed["venv"] / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True,
                          text=True, env={**installed["env"], **(env or {})}, timeout=timeout)


@pytest.mark.slow
def test_wheel_uses_its_own_files_beside_hugging_face_packages(installed: dict[str, Any]) -> None:
    where = run_in(installed, "python", "-c", "import kaggleops, kernels, datasets, transformers; "
                   "from kaggleops.resources import kernels_dir, bundled_competitions; "
                   "print(kaggleops.__file__); print(kernels_dir()); print(bundled_competitions()); "
                   "print(kernels.__file__); print(datasets.__file__)", cwd=installed["base"])
    assert where.returncode == 0, where.stderr[-2000:]
    kops_file, kernels_dir, bundled, hf_kernels, hf_datasets = where.stdout.splitlines()
    site = installed["site"].resolve()
    assert Path(kops_file).resolve().parent == site / "kaggleops"  # the wheel's copy, not the checkout
    assert Path(kernels_dir).resolve() == site / "kaggleops" / "_kernels"
    assert "tweet-sentiment-extraction" in bundled and "digit-recognizer" in bundled
    for name, other in (("kernels", hf_kernels), ("datasets", hf_datasets)):
        assert REPO / name not in Path(other).resolve().parents and site / "kaggleops" not in Path(other).parents


@pytest.mark.slow
def test_wheel_runs_demo_then_push_kernel_and_never_publishes_before_render(installed: dict[str, Any]) -> None:
    """`kops demo` from the wheel; then, against a fresh emulator, a push-kernel whose template is missing fails
    before anything is published or tagged, and once the template is back `push-kernel --no-push` renders."""
    work = installed["base"] / "demo"
    demo = run_in(installed, "kops", "demo", "--json", "--workdir", str(work), "--epochs", "1",
                  cwd=installed["base"])
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary = json.loads(demo.stdout)
    assert summary["status"] == "COMPLETE" and summary["lb_public"] is not None

    with start_emulator_process(installed["base"] / "emu", username="kopsdemo", key="kops-demo-key",
                                kops=[str(installed["venv"] / "bin" / "kops")], env=installed["env"]) as emu:
        env = {**emu.env, "KAGGLE_CONFIG_DIR": str(work / ".kaggle")}
        template = installed["site"] / "kaggleops" / "_kernels" / "inference_kernel.py.tmpl"
        saved = template.read_bytes()
        template.unlink()
        try:
            broken = run_in(installed, "kops", "push-kernel", "--run", summary["run_id"], "--no-push", cwd=work,
                            env=env, timeout=300)
        finally:
            template.write_bytes(saved)
        assert broken.returncode == 1, broken.stderr[-2000:]
        assert "inference_kernel.py.tmpl" in broken.stderr and "Traceback" not in broken.stderr
        assert published_versions(emu) == [], "a dataset was uploaded before the kernel rendered"
        assert run_tags(work, summary["run_id"])["kops.dataset.version"] == str(summary["dataset_version"])

        rendered = run_in(installed, "kops", "push-kernel", "--run", summary["run_id"], "--no-push", "--json",
                          cwd=work, env=env, timeout=600)
        assert rendered.returncode == 0, rendered.stderr[-3000:]
        folder = Path(json.loads(rendered.stdout)["folder"])
        assert (folder / "kernel.py").is_file() and (folder / "kops-kernel.json").is_file()
        assert published_versions(emu)  # the model, runtime and code datasets the plan names


def published_versions(emu: Emulated) -> list[str]:
    root = emu.root / "datasets"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*/*") if p.is_dir()) if root.is_dir() else []


def run_tags(work: Path, run_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}").get_run(run_id).data.tags
