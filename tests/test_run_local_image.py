"""`kops kernel run-local` runs a kernel as Kaggle would, not with kops' own interpreter: the Kaggle image
environment (only the pinned packages; no kops, no MLflow, nothing of the task), today's /kaggle/input layout (the
legacy one on request), the session's time limit over the kernel's whole process group, and `--python PATH`.

The kernels here are hand-written scripts on a tiny competition passed with `--data`, so nothing is downloaded; the
image environment is built once per test session in a shared KOPS_CACHE_DIR (harness.shared_cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import image_python, kops, shared_cache, write_config

COMPETITION = "tiny-image-check"
IMAGE_MODULES = ("numpy", "pandas", "polars", "sklearn", "scipy", "torch", "transformers", "tokenizers", "lightgbm",
                 "xgboost", "catboost", "yaml", "joblib", "requests")
OUTSIDE_MODULES = ("kaggleops", "sqlparse", "mlflow", "kaggle", "sqlalchemy", "gcp_storage_emulator")

PROBE = '''import importlib.util, json, os, pathlib, sys
inp, work = pathlib.Path(os.environ["KOPS_KAGGLE_INPUT"]), pathlib.Path(os.environ["KOPS_KAGGLE_WORKING"])
comp = next(p.parent for p in inp.rglob("sample_submission.csv"))
(work / "submission.csv").write_text((comp / "sample_submission.csv").read_text())
names = json.loads(sys.argv[1]) if len(sys.argv) > 1 else @NAMES@
(work / "probe.json").write_text(json.dumps({
    "python": sys.executable, "prefix": sys.prefix, "path": sys.path,
    "found": {n: importlib.util.find_spec(n) is not None for n in names},
    "competition": comp.relative_to(inp).as_posix(), "home": os.environ.get("HOME"),
    "pythonpath": os.environ.get("PYTHONPATH"), "virtual_env": os.environ.get("VIRTUAL_ENV"),
    "which_python": __import__("shutil").which("python")}))
print("probe done")
'''.replace("@NAMES@", json.dumps([*IMAGE_MODULES, *OUTSIDE_MODULES]))


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache(tmp_path_factory)


def kernel_folder(root: Path, script: str) -> Path:
    """A kernel folder as push-kernel renders one (kernel.py, kernel-metadata.json, kops-kernel.json) around
    ``script``, in a project with kops.yaml, plus the competition's files in ``root/data``."""
    write_config(root, competition=COMPETITION)
    data = root / "data"
    data.mkdir()
    (data / "test.csv").write_text("id,x\n1,0.5\n2,0.25\n")
    (data / "sample_submission.csv").write_text("id,target\n1,0\n2,0\n")
    folder = root / ".kops" / "kernels" / "probe"
    folder.mkdir(parents=True)
    (folder / "kernel.py").write_text(script)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": "testuser/probe", "code_file": "kernel.py", "language": "python", "kernel_type": "script",
        "enable_internet": False, "competition_sources": [COMPETITION], "dataset_sources": []}))
    (folder / "kops-kernel.json").write_text(json.dumps({
        "competition": COMPETITION, "id_column": "id", "target_column": "target", "models": []}))
    return folder


def run_local(root: Path, folder: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"KOPS_CACHE_DIR": str(cache)} if cache else None
    return kops("kernel", "run-local", str(folder), "--data", "data", *args, cwd=root, env=env)


def probe(folder: Path) -> dict[str, Any]:
    return json.loads((folder / ".run-local" / "working" / "probe.json").read_text())


@pytest.mark.slow
def test_the_kernel_runs_in_the_kaggle_image_environment_not_kops_own(tmp_path: Path, image_cache: Path) -> None:
    """Every pinned library imports there; kops, MLflow, the Kaggle client and every other package of kops'
    environment do not; nothing of kops' virtualenv is on sys.path, PATH or in the environment."""
    folder = kernel_folder(tmp_path, PROBE)
    out = run_local(tmp_path, folder, "--json", cache=image_cache)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    python = image_python(image_cache)
    assert report["ok"] and report["python"] == str(python) and report["image"].startswith("Kaggle image ")
    seen = probe(folder)
    assert seen["prefix"] == str(python.parent.parent)
    assert seen["found"] == {**dict.fromkeys(IMAGE_MODULES, True), **dict.fromkeys(OUTSIDE_MODULES, False)}
    own = (sys.prefix, str(Path(__file__).resolve().parents[1]))
    assert not [p for p in seen["path"] if p.startswith(own)], seen["path"]
    assert seen["which_python"] == str(python) and seen["virtual_env"] is None
    assert seen["pythonpath"] == str(folder / ".run-local" / "guard")
    assert seen["home"] == str(folder / ".run-local" / "home")
    assert seen["competition"] == f"competitions/{COMPETITION}"
    human = run_local(tmp_path, folder, cache=image_cache)  # the image is reused, and the report says so
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith("run-local OK: exit 0, ")
    assert lines[1].startswith(f"  python: Kaggle image {python.parent.parent.name} (")
    assert lines[1].endswith(" packages, cached)") and "building" not in human.stderr
    assert lines[2] == "  input layout: current, session limit 10800 s"
    assert (f"  input: competition {COMPETITION} → input/competitions/{COMPETITION} ← data (--data)" in lines)


@pytest.mark.slow
def test_a_library_outside_the_image_fails_with_the_kernels_own_error(tmp_path: Path, image_cache: Path) -> None:
    """sqlparse is in kops' environment (MLflow needs it), not in the Kaggle image: with kops' own interpreter
    (`--python`, what run-local used to do) the kernel passes; in the image it fails with its own error line."""
    folder = kernel_folder(tmp_path, "import sqlparse\n\n" + PROBE)
    out = run_local(tmp_path, folder, cache=image_cache)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        f"kops: error: run-local: the kernel in {folder} would fail on Kaggle: ModuleNotFoundError: No module "
        f"named 'sqlparse' Fix it, then run: kops kernel run-local {folder}")
    assert "  would fail on Kaggle: ModuleNotFoundError: No module named 'sqlparse'" in out.stdout.splitlines()
    own = run_local(tmp_path, folder, "--python", sys.executable, "--json")
    assert own.returncode == 0, own.stdout[-2000:]
    assert json.loads(own.stdout)["image"] == f"{sys.executable} (--python)"
    assert probe(folder)["found"]["kaggleops"] is True  # kops' interpreter sees kops: why the image exists


def test_legacy_input_layout(tmp_path: Path) -> None:
    folder = kernel_folder(tmp_path, PROBE)
    out = run_local(tmp_path, folder, "--input-layout", "legacy", "--python", sys.executable, "--json")
    assert out.returncode == 0, out.stdout[-2000:]
    assert json.loads(out.stdout)["input_layout"] == "legacy"
    assert probe(folder)["competition"] == COMPETITION
    bad = run_local(tmp_path, folder, "--input-layout", "flat")
    assert bad.returncode == 2 and "'flat' is not one of current, legacy." in bad.stderr


def test_python_option_names_a_missing_interpreter(tmp_path: Path) -> None:
    folder = kernel_folder(tmp_path, PROBE)
    out = run_local(tmp_path, folder, "--python", str(tmp_path / "nope" / "python"))
    assert out.returncode == 1
    assert out.stderr == (f"kops: error: --python {tmp_path / 'nope' / 'python'}: no such interpreter. Pass the path "
                          "of a python executable, or leave --python out to use the Kaggle image environment.\n")


def test_the_session_limit_stops_the_kernel_and_everything_it_started(tmp_path: Path) -> None:
    """A kernel that starts a child holding its output and then hangs: both end at the limit, as on Kaggle."""
    script = ("import os, subprocess, sys, time\n"
              "child = subprocess.Popen(['sleep', '600'])\n"
              "open(os.path.join(os.environ['KOPS_KAGGLE_WORKING'], 'child.pid'), 'w').write(str(child.pid))\n"
              "print('started', flush=True)\n"
              "time.sleep(600)\n")
    folder = kernel_folder(tmp_path, script)
    start = time.monotonic()
    out = run_local(tmp_path, folder, "--timeout", "3", "--python", sys.executable)
    assert time.monotonic() - start < 60
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        f"kops: error: run-local: the kernel in {folder} would fail on Kaggle: kops run-local: the kernel ran past "
        f"its session limit of 3 s and was stopped Fix it, then run: kops kernel run-local {folder}")
    assert "  input layout: current, session limit 3 s" in out.stdout.splitlines()
    pid = int((folder / ".run-local" / "working" / "child.pid").read_text())
    assert not alive(pid), f"the kernel's child {pid} outlived the session"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


# ---- the environment itself --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_image_is_the_pinned_list_closed_and_cannot_touch_kops_environment(image_cache: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops.kernel.image import ensure_image, read_pins

    monkeypatch.setenv("KOPS_CACHE_DIR", str(image_cache))
    image = ensure_image()
    assert image.python == image_python(image_cache) and image.packages == len(read_pins())
    python = str(image.python)
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.stdout.splitlines() == ["xgboost 3.2.0 requires nvidia-nccl-cu12, which is not installed."]
    frozen = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    listed = {p["name"].lower().replace("_", "-"): p["version"].split("+")[0] for p in json.loads(frozen.stdout)}
    assert listed == read_pins()
    # a linked distribution has no RECORD in the image: pip there cannot remove kops' own files
    six = Path(__import__("six").__file__)
    refused = subprocess.run([python, "-m", "pip", "uninstall", "-y", "six"], capture_output=True, text=True)
    assert refused.returncode != 0 and six.is_file()


def test_the_pinned_list_and_its_key() -> None:
    from kaggleops.kernel.image import IMAGE_LIST, image_key, read_pins

    pins = read_pins()
    assert pins["torch"] == "2.13.0"  # the CPU wheel on local disk; any other torch pulls a CUDA build
    wanted = {"numpy", "pandas", "polars", "scikit-learn", "scipy", "torch", "transformers", "tokenizers",
              "lightgbm", "xgboost", "catboost", "pip"}
    assert wanted <= set(pins) and not {"kops", "mlflow", "kaggle", "sqlparse", "nvidia-nccl-cu12"} & set(pins)
    text = IMAGE_LIST.read_text()
    assert image_key(text) == image_key(text) != image_key(text.replace("pandas==", "pandas==0"))
    assert image_key(text, "3.12.1") != image_key(text)


def test_an_unpinned_line_is_refused(tmp_path: Path) -> None:
    from kaggleops.kernel.image import ImageError, read_pins

    path = tmp_path / "image.txt"
    path.write_text("# comment\nnumpy==2.4.6\npandas>=2\n")
    with pytest.raises(ImageError) as err:
        read_pins(path)
    assert str(err.value) == (f"{path}:3: 'pandas>=2' is not a pinned `name==version` line. Pin every package of the "
                              "Kaggle image list to one version.")


def test_run_local_env_keeps_credentials_and_kops_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops.kernel.local import kernel_env

    for name, value in {"KAGGLE_KEY": "k", "MLFLOW_TRACKING_PASSWORD": "p", "PYTHONPATH": "/src", "PIP_INDEX_URL":
                        "http://x", "VIRTUAL_ENV": sys.prefix, "HF_HOME": "/hf", "KOPS_BUCKET": "b"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin"]))
    env = kernel_env(tmp_path, tmp_path / "guard", Path("/img/bin/python"))
    assert not {"KAGGLE_KEY", "MLFLOW_TRACKING_PASSWORD", "PIP_INDEX_URL", "VIRTUAL_ENV", "HF_HOME",
                "KOPS_BUCKET"} & set(env)
    assert env["PYTHONPATH"] == str(tmp_path / "guard") and env["PATH"] == os.pathsep.join(["/img/bin", "/usr/bin"])
