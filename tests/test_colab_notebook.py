"""kernels/train_colab.ipynb as a user runs it (issue #31): the documented kops source, only the project and the
secrets filled in.

A real Jupyter kernel (nbclient + ipykernel) whose Python has no kops until the install cell runs and no package
index (``PIP_NO_INDEX``): the install cell fetches the kops wheel of the team's ``kops-runtime`` dataset through the
Kaggle API (the emulator, as ``KOPS_KAGGLE_ENDPOINT`` aims a dry run) with the Kaggle secrets of a fake
``google.colab.userdata`` (answering, like Colab's, only inside the notebook process). Then: a re-run after a
finished run reports it instead of training again; a new commit on the project's branch is fetched and trained; a
failing install stops at the install cell. (A kill mid-training and the resume: tests/test_notebooks.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import FAKE_COLAB_USERDATA, git

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "kernels" / "train_colab.ipynb"
TSE = "tweet-sentiment-extraction"
OWNER, KEY = "colabuser", "colab-key-DoNotLog"
PROJECT_YAML = f"""competition: {TSE}
owner: {OWNER}
experiment: colab-reruns
train:
  folds: [0]
  epochs: 1
  batch_size: 32
  max_steps: 8
  eval_every: 8
  checkpoint_every: 8
kernel:
  enable_gpu: false
"""
RUNNER = """import sys
import nbformat
from nbclient import NotebookClient
src, out, cwd = sys.argv[1:4]
nb = nbformat.read(src, as_version=4)
client = NotebookClient(nb, kernel_name="colabenv", timeout=600, resources={"metadata": {"path": cwd}})
try:
    client.execute()
finally:
    nbformat.write(nb, out)
"""


@pytest.fixture(scope="module")
def colab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The emulator holding the team's kops-runtime dataset, a Colab-like kernel without kops, the user's project
    (a git repository) and the secrets."""
    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.config import load_config
    from kaggleops.emulator import Emulator
    from kaggleops.emulator.seeding import seed_competition
    from kaggleops.kernel.wheel import ensure_runtime_dataset

    if os.path.isdir("/content"):
        pytest.skip("/content exists here: the notebook would clone into it (its Colab default)")
    base = tmp_path_factory.mktemp("colab")
    emulator = Emulator(base / "emu", username=OWNER, key=KEY)
    url = emulator.start()
    seed_competition(emulator, TSE)
    try:
        team = base / "team"  # what `kops train --on kaggle` / `kops push-kernel` publish from a team machine
        team.mkdir()
        (team / "kops.yaml").write_text(f"competition: {TSE}\nowner: {OWNER}\n")
        saved = {k: os.environ.get(k) for k in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
        os.environ.update({"KAGGLE_USERNAME": OWNER, "KAGGLE_KEY": KEY})
        try:
            runtime = ensure_runtime_dataset(load_config(team / "kops.yaml"), Kaggle(url))
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        store = base / "store" / "mlflow.db"
        store.parent.mkdir()
        secrets = base / "secrets"
        (secrets / "google" / "colab").mkdir(parents=True)
        (secrets / "google" / "colab" / "__init__.py").write_text("")
        (secrets / "google" / "colab" / "userdata.py").write_text(FAKE_COLAB_USERDATA)
        (secrets / "google" / "colab" / "secrets.json").write_text(json.dumps(
            {"MLFLOW_TRACKING_URI": f"sqlite:///{store}", "KAGGLE_USERNAME": OWNER, "KAGGLE_KEY": KEY}))
        yield {"base": base, "url": url, "python": _kernel_venv(base), "project": _project(base), "store": store,
               "secrets": secrets, "runtime": runtime.dataset}
    finally:
        emulator.stop()


def _kernel_venv(base: Path) -> Path:
    """A venv that sees this environment's packages (torch, mlflow, ipykernel, pip) but not kaggleops."""
    env = base / "colabenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"])
    (site / "kops-test-deps.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")  # no editable kops finder
    python = env / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import kaggleops"], cwd=base, capture_output=True, text=True)
    assert "No module named 'kaggleops'" in probe.stderr
    spec = base / "jupyter" / "kernels" / "colabenv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "colabenv", "language": "python"}))
    return python


def _project(base: Path) -> Path:
    repo = base / "user-project"
    repo.mkdir()
    (repo / "kops.yaml").write_text(PROJECT_YAML)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "project")
    return repo


def _notebook(colab: dict[str, Any], **values: str) -> Path:
    """The notebook with the user's own values in its parameter cell (each NAME = … line replaced), nothing else."""
    nb = json.loads(NOTEBOOK.read_text())
    source = "".join(nb["cells"][0]["source"])
    for name, value in values.items():
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
        assert n == 1, name
    nb["cells"][0]["source"] = source
    path = colab["base"] / f"notebook-{len(list(colab['base'].glob('notebook-*')))}.ipynb"
    path.write_text(json.dumps(nb))
    return path


def run_notebook(colab: dict[str, Any], **values: str) -> tuple[int, dict[str, Any], str]:
    """Execute it as Colab's "Run all" does: (exit code of the runner, the executed notebook, the runner's output)."""
    base = colab["base"]
    src, out = _notebook(colab, **values), base / "executed.ipynb"
    runner = base / "runner.py"
    runner.write_text(RUNNER)
    workdir = base / "content"
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "JUPYTER_PATH": str(base / "jupyter"), "PYTHONPATH": str(colab["secrets"]),
           "PATH": f"{colab['python'].parent}{os.pathsep}{os.environ['PATH']}", "KOPS_KAGGLE_ENDPOINT": colab["url"],
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1",
           "JUPYTER_PLATFORM_DIRS": "1"}
    for var in ("MLFLOW_TRACKING_URI", "KAGGLE_USERNAME", "KAGGLE_KEY", "VIRTUAL_ENV"):
        env.pop(var, None)  # credentials come from the secret store only
    proc = subprocess.run([sys.executable, str(runner), str(src), str(out), str(workdir)], env=env,
                          capture_output=True, text=True, timeout=900)
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


def cell_text(executed: dict[str, Any], suffix: str) -> str:
    cell = next(c for c in executed["cells"] if c["id"].endswith(suffix))
    parts = []
    for o in cell["outputs"]:
        text = o.get("text", "")
        parts.append("".join(text) if isinstance(text, list) else text)
        if o.get("output_type") == "error":
            parts.append(f"{o['ename']}: {o['evalue']}")
    return "".join(parts)


def fold_runs(store: Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, "tags.`kops.kind` = 'fold'", order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_colab_notebook_as_documented_reruns_and_new_commits(colab: dict[str, Any]) -> None:
    repo, store = colab["project"], colab["store"]
    first_commit = git(repo, "rev-parse", "HEAD")

    # 1. the documented kops source ("kaggle": the kops-runtime dataset of the user's Kaggle account)
    code, executed, log = run_notebook(colab, PROJECT_REPO=str(repo))
    assert code == 0, log[-3000:]
    install = cell_text(executed, "-install")
    assert f"kops: kops 0.1.0 installed from kaggle\nkops: training commit {first_commit} (main of {repo})" in install
    (run,) = fold_runs(store)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.git.commit"] == first_commit
    assert KEY not in json.dumps(executed["cells"]) and KEY not in json.dumps(run.data.tags)

    # 2. "Run all" again after the finished run: reported, not trained again
    code, executed, log = run_notebook(colab, PROJECT_REPO=str(repo))
    assert code == 0, log[-3000:]
    assert [r.info.run_id for r in fold_runs(store)] == [run.info.run_id]
    train = cell_text(executed, "-train")
    assert f"kops: commit {first_commit[:12]} is already trained: run(s) {run.info.run_id} FINISHED; nothing to do." \
        in train and "fold 0" not in train

    # 3. a new commit on the project's branch: the existing clone is fetched and the new commit trained
    (repo / "NOTES.md").write_text("a later commit\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "later")
    second_commit = git(repo, "rev-parse", "HEAD")
    code, executed, log = run_notebook(colab, PROJECT_REPO=str(repo))
    assert code == 0, log[-3000:]
    assert f"kops: training commit {second_commit} (main of {repo})" in cell_text(executed, "-install")
    runs = fold_runs(store)
    assert [r.data.tags["mlflow.source.git.commit"] for r in runs] == [first_commit, second_commit]
    assert runs[1].info.status == "FINISHED"


def test_colab_notebook_stops_at_the_install_cell_when_pip_fails(colab: dict[str, Any]) -> None:
    broken = colab["base"] / "broken" / "kaggleops-0.1.0-py3-none-any.whl"
    broken.parent.mkdir(exist_ok=True)
    broken.write_text("not a wheel")
    code, executed, _ = run_notebook(colab, KOPS_SOURCE=str(broken), PROJECT_REPO=str(colab["project"]))
    assert code != 0
    install = cell_text(executed, "-install")
    assert install.startswith(f"SystemExit: kops: pip install --find-links {broken.parent} {broken} failed: ")
    later = [c for c in executed["cells"] if c["id"].endswith(("-secrets", "-train", "-push"))]
    assert all(not c["outputs"] and c["execution_count"] is None for c in later)  # nothing ran after it
