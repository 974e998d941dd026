"""The training notebooks (kernels/train_colab.ipynb, kernels/train_kaggle.ipynb) executed top to bottom.

Each runs in a real Jupyter kernel (nbclient + ipykernel) whose Python is a fresh virtual environment without kops:
the notebook's own install cell installs it from the checkout (Colab: the path, as a git URL would be; Kaggle: a
wheel, the internet-off way), clones a local git repository standing in for the user's project, reads the
credentials from a fake secret store (``google.colab.userdata`` that, like Colab's, answers only inside the
kernel process; ``kaggle_secrets``) through kops, and runs ``kops train --resume`` against the emulator.
Parameters are injected papermill-style: the first cell (tagged ``parameters``) is replaced.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

from harness import FAKE_COLAB_USERDATA, git

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"colab": ROOT / "kernels" / "train_colab.ipynb", "kaggle": ROOT / "kernels" / "train_kaggle.ipynb"}
TSE = "tweet-sentiment-extraction"
OWNER, KEY = "nbuser", "nb-key-DoNotLog"
# One fold of the tiny model: 640 rows / batch 32 = 20 steps an epoch; 32 steps, a checkpoint every 8.
PROJECT_YAML = f"""competition: {TSE}
owner: {OWNER}
train:
  folds: [0]
  epochs: 2
  batch_size: 32
  max_steps: 32
  eval_every: 8
  checkpoint_every: 8
kernel:
  enable_gpu: false
"""
FAKE_KAGGLE = """import json
from pathlib import Path
class UserSecretsClient:
    def get_secret(self, name):
        secrets = json.loads((Path(__file__).parent / "secrets.json").read_text())
        if name not in secrets:
            raise RuntimeError("secret not attached")
        return secrets[name]
"""
# Executes a notebook in the named kernel; writes the executed notebook (outputs) even when a cell fails.
RUNNER = """import json, sys
import nbformat
from nbclient import NotebookClient
src, params, out, kernel, cwd = sys.argv[1:6]
nb = nbformat.read(src, as_version=4)
nb.cells[0].source = open(params).read()
client = NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": cwd}})
try:
    client.execute()
finally:
    nbformat.write(nb, out)
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The emulator serving the bundled TSE competition, a kernel venv without kops, a project repo."""
    from kaggleops.emulator import Emulator
    from kaggleops.emulator.seeding import seed_competition

    base = tmp_path_factory.mktemp("notebooks")
    emulator = Emulator(base / "emu", username=OWNER, key=KEY)
    url = emulator.start()
    seed_competition(emulator, TSE)
    try:
        yield {"base": base, "url": url, "python": _kernel_venv(base), "project": _project(base)}
    finally:
        emulator.stop()


def _kernel_venv(base: Path) -> Path:
    """A venv that sees this environment's packages (torch, mlflow, ipykernel) but not kaggleops itself."""
    env = base / "nbenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"])
    here = Path(sysconfig.get_paths()["purelib"])
    (site / "kops-test-deps.pth").write_text(f"{here}\n")  # a plain path: the editable kops finder is not loaded
    python = env / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import kaggleops"], cwd=base, capture_output=True, text=True)
    assert "No module named 'kaggleops'" in probe.stderr  # the notebook's install cell is what provides kops
    spec = base / "jupyter" / "kernels" / "nbenv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nbenv", "language": "python"}))
    return python


def _project(base: Path) -> dict[str, str]:
    """A git repository standing in for the user's project; the revision trained is not its HEAD."""
    repo = base / "user-project"
    repo.mkdir()
    (repo / "kops.yaml").write_text(PROJECT_YAML)
    (repo / "requirements.txt").write_text("pyyaml\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "project")
    rev = git(repo, "rev-parse", "HEAD")
    (repo / "NOTES.md").write_text("a later commit, not trained\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "later")
    return {"repo": str(repo), "rev": rev}


def _secret_store(base: Path, kind: str, secrets: dict[str, str]) -> Path:
    root = base / f"fake-{kind}"
    folder = root / "google" / "colab" if kind == "colab" else root
    folder.mkdir(parents=True)
    if kind == "colab":
        (folder / "__init__.py").write_text("")
        (folder / "userdata.py").write_text(FAKE_COLAB_USERDATA)
    else:
        (folder / "kaggle_secrets.py").write_text(FAKE_KAGGLE)
    (folder / "secrets.json").write_text(json.dumps(secrets))
    return root


def _parameters(notebook: Path, values: dict[str, Any]) -> str:
    """The replacement parameter cell; it must set exactly the names the notebook's own cell sets."""
    cell = json.loads(notebook.read_text())["cells"][0]
    assert "parameters" in cell["metadata"].get("tags", [])
    tree = ast.parse("".join(cell["source"]))
    names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
    assert names == set(values), f"parameter cell sets {sorted(names)}"
    return "".join(f"{k} = {v!r}\n" for k, v in values.items())


class Session:
    """One notebook executed by a runner process whose whole process tree can be killed (a dropped runtime)."""

    def __init__(self, bench: dict[str, Any], name: str, params: dict[str, Any], secrets_root: Path,
                 workdir: Path) -> None:
        self.base, self.name = bench["base"], name
        self.out = self.base / f"{name}-executed-{time.monotonic_ns()}.ipynb"
        params_file = self.base / f"{name}-params.py"
        params_file.write_text(_parameters(NOTEBOOKS[name], params))
        runner = self.base / "runner.py"
        runner.write_text(RUNNER)
        venv_bin = str(bench["python"].parent)
        env = {**os.environ, "JUPYTER_PATH": str(self.base / "jupyter"), "PYTHONPATH": str(secrets_root),
               "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "KOPS_KAGGLE_ENDPOINT": bench["url"],
               "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "OMP_NUM_THREADS": "1", "JUPYTER_PLATFORM_DIRS": "1"}
        # credentials come from the secret store only; data as a user gets it (downloaded from the emulator)
        for var in ("MLFLOW_TRACKING_URI", "KAGGLE_USERNAME", "KAGGLE_KEY", "VIRTUAL_ENV"):
            env.pop(var, None)
        self.proc = subprocess.Popen(
            [sys.executable, str(runner), str(NOTEBOOKS[name]), str(params_file), str(self.out), "nbenv",
             str(workdir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)

    def wait(self) -> dict[str, Any]:
        log, _ = self.proc.communicate(timeout=900)
        assert self.proc.returncode == 0, log[-4000:] + self.outputs_text()
        return json.loads(self.out.read_text())

    def outputs_text(self) -> str:
        if not self.out.is_file():
            return ""
        cells = json.loads(self.out.read_text())["cells"]
        return "\n".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                         for c in cells for o in c.get("outputs", []))

    def kill_tree(self) -> None:
        """SIGKILL the runner, the kernel, `!kops train` and every other descendant (a runtime that is gone)."""
        pids = _descendants(self.proc.pid) + [self.proc.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.communicate(timeout=60)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cell_text(executed: dict[str, Any], suffix: str) -> str:
    cell = next(c for c in executed["cells"] if c["id"].endswith(suffix))
    return "".join("".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "")
                   for o in cell["outputs"])


def _fold_runs(store: Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments], "tags.`kops.kind` = 'fold'")


def _data_origin(run: Any) -> str:
    """Where the run's training data came from, as kops recorded it (its MLflow dataset input)."""
    (data,) = run.inputs.dataset_inputs
    return json.loads(data.dataset.profile)["origin"]


def _has_fold_run(store: Path) -> bool:
    """Whether the kernel's kops has created its fold run, read with sqlite3 (read-only): opening a store that
    kops is still creating with an MlflowClient would run MLflow's migrations a second time, at once, and break
    kops' own (SQLite: "table _alembic_tmp_… already exists")."""
    import sqlite3

    if not store.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return bool(db.execute("SELECT 1 FROM tags WHERE key = 'kops.kind' AND value = 'fold'").fetchone())
    except sqlite3.Error:  # the tables are not there yet
        return False


def _has_checkpoint(store: Path) -> bool:
    from mlflow.tracking import MlflowClient

    if not _has_fold_run(store):  # the store is complete once kops has created a run in it
        return False
    try:
        runs = _fold_runs(store)
        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        return bool(runs) and any(a.path.endswith("latest.json")
                                  for a in client.list_artifacts(runs[0].info.run_id, "checkpoint"))
    except Exception:  # noqa: BLE001 - the store is being created by the kernel's kops process
        return False


def test_notebooks_name_no_competition_and_have_parameters_first() -> None:
    for path in NOTEBOOKS.values():
        text = path.read_text()
        for word in (TSE, "digit-recognizer", "/kaggle/input", "kaggle competitions download"):
            assert word not in text, f"{path.name} names {word}"
        cells = json.loads(text)["cells"]
        assert "parameters" in cells[0]["metadata"]["tags"]
        assert any("kops train --resume" in "".join(c["source"]) for c in cells)


@pytest.mark.slow
def test_colab_notebook_killed_mid_training_resumes_the_same_run(bench: dict[str, Any]) -> None:
    base, project = bench["base"], bench["project"]
    store = base / "colab-store" / "mlflow.db"
    store.parent.mkdir()
    # the tracking URI under a secret name of the user's choosing; the Kaggle key from userdata too
    secrets = _secret_store(base, "colab", {"TEAM_MLFLOW": f"sqlite:///{store}", "KAGGLE_USERNAME": OWNER,
                                            "KAGGLE_KEY": KEY})
    workdir = base / "content"
    workdir.mkdir()
    params = {"KOPS_SOURCE": str(ROOT), "PROJECT_REPO": project["repo"], "PROJECT_REV": project["rev"],
              "TRACKING_URI_SECRET": "TEAM_MLFLOW", "PUSH_KERNEL": False, "WORKDIR": str(workdir),
              "SWEEP_STUDY": ""}

    first = Session(bench, "colab", params, secrets, workdir)
    deadline = time.monotonic() + 600
    while not _has_checkpoint(store) and first.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.proc.poll() is None, "the notebook ended before a checkpoint was stored: " + first.outputs_text()
    first.kill_tree()
    (killed,) = _fold_runs(store)
    assert killed.info.status == "RUNNING"  # the kill landed mid-training

    executed = Session(bench, "colab", params, secrets, workdir).wait()
    (run,) = _fold_runs(store)  # no second run: the same one continued
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["kops.resumes"] == "1"
    assert run.data.tags["mlflow.source.git.commit"] == project["rev"]  # PROJECT_REV, not the repo's HEAD
    assert run.data.params["data"] == TSE and _data_origin(run) == "download"  # fetched by kops from the emulator
    assert f"fold 0: run {run.info.run_id}" in _cell_text(executed, "-train")
    secrets_line = _cell_text(executed, "-secrets")
    assert "MLFLOW_TRACKING_URI (from TEAM_MLFLOW)" in secrets_line and "KAGGLE_KEY" in secrets_line
    everything = json.dumps([run.data.tags, run.data.params, executed["cells"]])
    assert KEY not in everything  # the key reached kops' environment, never the run or the notebook


@pytest.mark.slow
def test_kaggle_notebook_installs_the_wheel_trains_and_pushes_the_kernel(bench: dict[str, Any]) -> None:
    base, project = bench["base"], bench["project"]
    wheels = base / "kops-wheel"  # what a dataset attached to an internet-off notebook would hold
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("kaggleops-*.whl")
    store = base / "kaggle-store" / "mlflow.db"
    store.parent.mkdir()
    secrets = _secret_store(base, "kaggle", {"MLFLOW_TRACKING_URI": f"sqlite:///{store}",
                                             "KAGGLE_USERNAME": OWNER, "KAGGLE_KEY": KEY})
    workdir = base / "working"
    workdir.mkdir()
    params = {"KOPS_SOURCE": str(wheel), "PROJECT_REPO": project["repo"], "PROJECT_REV": project["rev"],
              "TRACKING_URI_SECRET": "MLFLOW_TRACKING_URI", "PUSH_KERNEL": True, "WORKDIR": str(workdir),
              "SWEEP_STUDY": ""}

    executed = Session(bench, "kaggle", params, secrets, workdir).wait()
    (run,) = _fold_runs(store)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.git.commit"] == project["rev"]
    assert "kops.resumes" not in run.data.tags
    assert run.data.params["data"] == TSE and _data_origin(run) == "download"
    assert run.data.tags.get("kops.kernel", "").startswith(f"{OWNER}/")  # the optional cell pushed its kernel
    assert run.data.tags.get("kops.dataset", "").startswith(f"{OWNER}/")
    assert "complete" in _cell_text(executed, "-push").lower()


def test_use_secrets_exports_names_only_and_keeps_the_environment_first(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    import types

    from kaggleops.adapters.credentials import clear_cache
    from kaggleops.errors import ConfigError
    from kaggleops.notebook import last_training_run, use_secrets

    store = {"TEAM_URI": f"sqlite:///{tmp_path / 'team.db'}", "KAGGLE_USERNAME": OWNER, "KAGGLE_KEY": KEY}
    userdata = types.ModuleType("google.colab.userdata")
    userdata.get = store.__getitem__  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    monkeypatch.setenv("KAGGLE_USERNAME", "from-env")
    for name in ("MLFLOW_TRACKING_URI", "KAGGLE_KEY"):
        monkeypatch.setenv(name, "")  # removed again after the test
    try:
        assert use_secrets("TEAM_URI") == ["KAGGLE_KEY", "MLFLOW_TRACKING_URI (from TEAM_URI)"]
    finally:
        clear_cache()  # the fake store's answers must not outlive this test
    assert os.environ["KAGGLE_USERNAME"] == "from-env" and os.environ["KAGGLE_KEY"] == KEY
    assert os.environ["MLFLOW_TRACKING_URI"] == store["TEAM_URI"]
    (tmp_path / "kops.yaml").write_text(f"competition: {TSE}\n")
    with pytest.raises(ConfigError, match="No finished training run in the tracking store of .*kops.yaml"):
        last_training_run(tmp_path)
