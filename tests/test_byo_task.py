"""Bring your own competition: a task written in a temporary folder outside kaggleops/ (importable only once kops
loads it from kops.yaml) goes train → publish → push-kernel --no-push → kops kernel run-local → push-kernel --wait
→ submit → scores against the emulator, with the installed `kops` as a subprocess. run-local runs the kernel in
the Kaggle image environment (not kops' interpreter): the task imports sqlparse, which kops' environment has and
the image lacks, so the first run-local fails with the kernel's own error and passes once its wheel is in
`kernel.wheels`. The emulator then really executes the kernel, which installs the task's code from the code
dataset with `pip install --no-index` under a socket guard that refuses every non-loopback connection; the score
on the run equals RMSE recomputed here from the hidden solution and the kernel's file. The same plan with
`publish: {to: model}` stages Kaggle Model sources under input/models/ and runs there too."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import git, kops, kops_json, read_csv, shared_cache, wheel_of_installed

pytestmark = pytest.mark.slow

SLUG = "kops-byo-regression"
OWNER, KEY = "alice", "alice-key"
TASK_MODULE = "byo_reg_task_k12"
FEATURES_MODULE = "byo_features_k12"
EXTRA = "sqlparse"  # in kops' environment (MLflow needs it), not in the Kaggle image

FEATURES = '''import numpy as np


def design(df):
    """Intercept, x1, x2 and their product."""
    x1, x2 = df["x1"].to_numpy(float), df["x2"].to_numpy(float)
    return np.column_stack([np.ones(len(df)), x1, x2, x1 * x2])
'''

TASK = f'''"""A least-squares regression task, written only against kaggleops.task."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import {EXTRA}

from {FEATURES_MODULE} import design
from kaggleops.task import FoldResult, Metric, Submission, check_columns, check_settings


def rmse(truth, prediction):
    pred = dict(zip(prediction["id"].astype(str), pd.to_numeric(prediction["target"])))
    ids = truth["id"].astype(str)
    diff = pd.to_numeric(truth["target"]).to_numpy(float) - np.array([pred[i] for i in ids], float)
    return float(np.sqrt(np.mean(diff ** 2)))


class RegressionTask:
    name = "{SLUG}"
    submission = Submission("id", ("target",))
    metric = Metric("rmse", higher_is_better=False, fn=rmse)

    def load_train(self, path):
        return check_columns(pd.read_csv(path), ("id", "x1", "x2", "target"), path)

    def load_test(self, path):
        return check_columns(pd.read_csv(path), ("id", "x1", "x2"), path)

    def make_folds(self, df, n_folds, seed):
        order = np.random.default_rng(seed).permutation(len(df))
        return df.assign(fold=order % n_folds)

    def settings(self, mapping):
        return check_settings(mapping, {{"ridge": 0.0}})

    def train_fold(self, train, settings, ctx):
        fit, valid = train[train.fold != ctx.fold], train[train.fold == ctx.fold]
        x = design(fit)
        coef = np.linalg.solve(x.T @ x + settings["ridge"] * np.eye(x.shape[1]), x.T @ fit["target"].to_numpy(float))
        model = ctx.out_dir / "model"
        model.mkdir()
        (model / "coef.json").write_text(json.dumps(coef.tolist()))
        oof = pd.DataFrame({{"id": valid["id"], "target": design(valid) @ coef}})
        score = rmse(valid, oof)
        ctx.log({{"val_rmse": score}}, 1)
        return FoldResult(model, oof, score, steps=1)

    def predict(self, model_dirs, test, ctx):
        x, total = design(test), np.zeros(len(test))
        for folder, weight in zip(model_dirs, ctx.weights):
            total += weight * (x @ np.array(json.loads((Path(folder) / "coef.json").read_text())))
        ctx.log(f"{TASK_MODULE}: {{len(model_dirs)}} model(s) averaged ({EXTRA} {{{EXTRA}.__version__}})")
        return pd.DataFrame({{"id": test["id"], "target": total}})
'''


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_competition(folder: Path) -> None:
    rng = random.Random(7)
    rows = []
    for i in range(260):
        x1, x2 = rng.uniform(-2, 2), rng.uniform(-2, 2)
        rows.append([i, round(x1, 4), round(x2, 4), round(1 + 2 * x1 - 3 * x2 + 0.5 * x1 * x2 + rng.gauss(0, 0.3), 4)])
    train, test = rows[:200], rows[200:]
    folder.mkdir(parents=True)
    write_csv(folder / "train.csv", ["id", "x1", "x2", "target"], train)
    write_csv(folder / "test.csv", ["id", "x1", "x2"], [r[:3] for r in test])
    write_csv(folder / "sample_submission.csv", ["id", "target"], [[r[0], 0.0] for r in test])
    write_csv(folder / "solution.csv", ["id", "target"], [[r[0], r[3]] for r in test])


def list_rmse(truths: list[str], preds: list[str]) -> float:
    return math.sqrt(sum((float(t) - float(p)) ** 2 for t, p in zip(truths, preds, strict=True)) / len(truths))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from kaggleops.emulator import Emulator
    from kaggleops.kernel.local import BLOCKED_MARK, GUARD

    base = tmp_path_factory.mktemp("byo")
    work = base / "project"
    (work / "tasks").mkdir(parents=True)
    (work / "tasks" / f"{TASK_MODULE}.py").write_text(TASK)
    (work / "tasks" / f"{FEATURES_MODULE}.py").write_text(FEATURES)
    make_competition(work / "data")
    (work / "kops.yaml").write_text(
        f"competition: {SLUG}\ntask: tasks/{TASK_MODULE}.py:RegressionTask\nowner: {OWNER}\ndata_dir: data\n"
        "train:\n  n_folds: 2\n  ridge: 0.01\nkernel:\n  enable_gpu: false\n")
    git(work, "init", "-q")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "task")
    guard = base / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD.replace("@MARK@", BLOCKED_MARK))
    emulator = Emulator(base / "emu", username=OWNER, key=KEY, score_delay_polls=1)
    url = emulator.start()
    solution = read_csv(work / "data" / "solution.csv")
    files = {n: work / "data" / n for n in ("train.csv", "test.csv", "sample_submission.csv")}
    emulator.add_competition(SLUG, files, solution, "id", "target", list_rmse)
    saved = dict(os.environ)
    # The emulator runs kernels as children of this process: they (and the pip they start) get the guard.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(guard), saved.get("PYTHONPATH", "")) if p)
    env = {**saved, "KOPS_KAGGLE_ENDPOINT": url, "KAGGLE_USERNAME": OWNER, "KAGGLE_KEY": KEY,
           "KAGGLE_CONFIG_DIR": str(base / ".kaggle")}
    # kops itself runs in exactly `env`: harness.kops adds it to this process' environment, whose PYTHONPATH now
    # carries the guard and whose TMPDIR is (in a test) the test's own
    kops_env = {**env, "PYTHONPATH": saved.get("PYTHONPATH"), "TMPDIR": saved.get("TMPDIR"),
                "KOPS_CACHE_DIR": str(shared_cache(tmp_path_factory))}  # the Kaggle image, built once per session
    try:
        yield {"work": work, "env": env, "kops_env": kops_env, "emu": base / "emu", "emulator": emulator,
               "solution": solution}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        emulator.stop()


def run_local(work: Path, env: dict[str, str], folder: str, *args: str) -> subprocess.CompletedProcess[str]:
    return kops("kernel", "run-local", folder, *args, cwd=work, env={**env, "PYTHONPATH": None})


@pytest.fixture(scope="module")
def loop(project: dict[str, Any]) -> dict[str, Any]:
    work, env = project["work"], project["kops_env"]
    before = subprocess.run([sys.executable, "-c", f"import {TASK_MODULE}"], cwd=work.parent, env=project["env"],
                            capture_output=True, text=True)
    trained = kops_json("train", cwd=work, env=env)
    published = [kops_json("publish", r["run_id"], cwd=work, env=env) for r in trained["runs"]]
    # run-local before any push: without the wheel the image lacks the task's import; with it, the kernel passes
    rendered = kops_json("push-kernel", "--run", trained["run_id"], "--no-push", cwd=work, env=env)
    no_wheel = run_local(work, env, rendered["folder"])
    own_python = run_local(work, env, rendered["folder"], "--python", sys.executable)
    wheel = wheel_of_installed(EXTRA, work / "wheels")
    with (work / "kops.yaml").open("a") as f:
        f.write("  wheels: wheels\n")  # under `kernel:`, the file's last section
    git(work, "add", "-A")
    git(work, "commit", "-qm", f"kernel.wheels: {wheel.name}")
    rendered = kops_json("push-kernel", "--run", trained["run_id"], "--no-push", cwd=work, env=env)
    local = run_local(work, env, rendered["folder"], "--json")
    code_dir = Path(rendered["folder"]) / ".run-local" / "input" / "datasets" / rendered["code"]["dataset"]
    staged_code = sorted(p.name for p in code_dir.iterdir()) if code_dir.is_dir() else []
    legacy = run_local(work, env, rendered["folder"], "--json", "--input-layout", "legacy")
    pushed = kops_json("push-kernel", "--run", trained["run_id"], "--wait", cwd=work, env=env)
    submitted = kops_json("submit", "--kernel", pushed["kernel"], "--version", str(pushed["kernel_version"]),
                          cwd=work, env=env)
    scored = kops_json("scores", "--wait", cwd=work, env=env)
    pushed_again = kops_json("push-kernel", "--run", trained["run_id"], cwd=work, env=env)
    return {"before": before, "trained": trained, "published": published, "no_wheel": no_wheel,
            "own_python": own_python, "wheel": wheel, "rendered": rendered, "local": local, "staged_code": staged_code,
            "legacy": legacy,
            "pushed": pushed, "submitted": submitted, "scored": scored, "pushed_again": pushed_again}


def test_the_task_is_not_importable_before_kops_loads_it(loop: dict[str, Any]) -> None:
    assert loop["before"].returncode != 0 and f"No module named '{TASK_MODULE}'" in loop["before"].stderr


def test_train_logs_the_task_metric_lower_is_better(project: dict[str, Any], loop: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    trained = loop["trained"]
    assert trained["metric"] == "rmse" and trained["higher_is_better"] is False and len(trained["runs"]) == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{project['work'] / 'mlflow.db'}")
    parent = client.get_run(trained["run_id"])
    assert parent.data.metrics["cv_rmse"] == pytest.approx(trained["cv"]) and trained["cv"] < 0.5
    assert parent.data.tags["kops.metric"] == "rmse" and parent.data.tags["kops.metric.higher_is_better"] == "false"
    assert parent.data.params["ridge"] == "0.01"
    fold = client.get_run(trained["runs"][0]["run_id"])
    assert {"val_rmse", "best_val_rmse"} <= set(fold.data.metrics)
    oof = client.download_artifacts(fold.info.run_id, "oof/oof.csv", str(project["work"].parent / "oof"))
    assert list(read_csv(Path(oof))[0]) == ["id", "target", "fold"]  # kops adds the held-out fold (the blendable OOF)


def test_the_kernel_installs_the_task_code_offline_and_scores_match(project: dict[str, Any],
                                                                    loop: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.refs import KernelRef

    pushed = loop["pushed"]
    assert pushed["status"] == "COMPLETE" and pushed["code"]["module"] == f"{TASK_MODULE}:RegressionTask"
    rendered = loop["rendered"]["code"]  # run-local's render made the version (with the wheel); the push reuses it
    assert rendered["created"] is True and rendered["version"] == 2 and pushed["code"]["created"] is False
    assert pushed["code"]["version"] == 2 and pushed["code"]["dataset"] == f"{OWNER}/{SLUG}-code"
    version_dir = project["emu"] / "kernels" / OWNER / f"{SLUG}-inference" / str(pushed["kernel_version"])
    saved = dict(os.environ)
    os.environ.update(project["env"])  # the adapter reads the credentials from the environment
    try:
        lines = Kaggle(project["env"]["KOPS_KAGGLE_ENDPOINT"]).kernel_log(
            KernelRef(OWNER, f"{SLUG}-inference", pushed["kernel_version"]))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    log = "\n".join(lines)
    assert "task code" in log and "pip --no-index" in log and f"{TASK_MODULE}: 2 model(s) averaged" in log, log[-3000:]
    meta = json.loads((Path(pushed["folder"]) / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and f"{OWNER}/{SLUG}-code" in meta["dataset_sources"]
    plan = json.loads((Path(pushed["folder"]) / "kops-kernel.json").read_text())
    assert plan["task"]["spec"] == f"{TASK_MODULE}:RegressionTask" and plan["metric"]["name"] == "rmse"
    submission = read_csv(version_dir / "working" / "submission.csv")
    preds = {r["id"]: float(r["target"]) for r in submission}
    solution = project["solution"]
    assert [r["id"] for r in submission] == [r["id"] for r in solution]
    public, private = solution[0::2], solution[1::2]  # the emulator's documented split
    expected = {name: math.sqrt(sum((float(r["target"]) - preds[r["id"]]) ** 2 for r in rows) / len(rows))
                for name, rows in (("lb_public", public), ("lb_private", private))}
    client = MlflowClient(tracking_uri=f"sqlite:///{project['work'] / 'mlflow.db'}")
    for run in [loop["submitted"]["submission_run_id"], *(r["run_id"] for r in loop["trained"]["runs"])]:
        metrics = client.get_run(run).data.metrics
        assert metrics["lb_public"] == pytest.approx(expected["lb_public"], abs=1e-5)
        assert metrics["lb_private"] == pytest.approx(expected["lb_private"], abs=1e-5)
    assert expected["lb_public"] < 0.5  # a real fit, not a constant


def test_unchanged_code_reuses_the_code_dataset_version(loop: dict[str, Any]) -> None:
    first, again = loop["pushed"]["code"], loop["pushed_again"]["code"]
    assert again["created"] is False and again["version"] == first["version"]
    assert again["content_sha256"] == first["content_sha256"]


def test_run_local_fails_in_the_kaggle_image_without_the_wheel_of_a_task_import(loop: dict[str, Any]) -> None:
    """kops' own interpreter has sqlparse, so the old run-local passed; the image lacks it, as Kaggle does."""
    folder = loop["rendered"]["folder"]
    out = loop["no_wheel"]
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        f"kops: error: run-local: the kernel in {folder} would fail on Kaggle: importing the task "
        f"{TASK_MODULE}:RegressionTask failed: no module named '{EXTRA}' in this kernel. Put its wheel in the folder "
        "named by kops.yaml `kernel.wheels` (or check that the task's code dataset is attached). "
        f"Fix it, then run: kops kernel run-local {folder}")
    assert out.stdout.splitlines()[1].startswith("  python: Kaggle image ")
    assert loop["own_python"].returncode == 0, loop["own_python"].stdout[-2000:]  # kops' interpreter: a false pass


def test_run_local_installs_the_task_code_and_its_wheels_and_runs_it_with_the_network_blocked(
        project: dict[str, Any], loop: dict[str, Any]) -> None:
    local = loop["local"]
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-2000:]
    report = json.loads(local.stdout)
    assert report["ok"] and report["rows"] == 60 and "submission.csv" in report["outputs"]
    assert report["image"].startswith("Kaggle image ") and report["input_layout"] == "current"
    assert f"{TASK_MODULE}: 2 model(s) averaged ({EXTRA} " in "\n".join(report["log_tail"])
    code = loop["rendered"]["code"]
    assert loop["wheel"].name in code["wheels"]
    assert f"dataset {code['dataset']}/{code['version']} → input/datasets/{code['dataset']} (downloaded)" \
        in report["inputs"]
    staged = loop["staged_code"]  # input/datasets/<owner>/<slug>-code/ as the kernel saw it
    assert [n for n in staged if n.startswith("kops-code-")] and [n for n in staged if n.startswith("kops_task_code-")]
    assert loop["wheel"].name in staged
    assert f"competition {SLUG} → input/competitions/{SLUG} (cached)" in report["inputs"]  # the no-wheel run got it


def test_run_local_legacy_layout_runs_the_same_kernel(loop: dict[str, Any]) -> None:
    legacy = loop["legacy"]
    assert legacy.returncode == 0, legacy.stdout[-3000:]
    report = json.loads(legacy.stdout)
    assert report["ok"] and report["input_layout"] == "legacy" and report["rows"] == 60
    input_dir = Path(loop["rendered"]["folder"]) / ".run-local" / "input"
    assert sorted(p.name for p in input_dir.iterdir()) == sorted(
        [SLUG, f"{SLUG}-code", "kops-runtime", *(p["dataset"].split("/")[1] for p in loop["published"])])


def test_run_local_stages_kaggle_model_sources_and_the_push_runs_the_same_plan(project: dict[str, Any],
                                                                               loop: dict[str, Any]) -> None:
    """`publish: {to: model}`: the plan's models are Kaggle Model instance versions (kind "model"); run-local
    downloads them into input/models/<owner>/<model>/<framework>/<variation>/<version>/ and the kernel finds them
    by manifest, as the emulator's session does once the same plan is pushed."""
    work, env = project["work"], project["kops_env"]
    settings = yaml.safe_load((work / "kops.yaml").read_text())
    settings["publish"] = {"to": "model"}
    settings["kernel"]["slug"] = f"{SLUG}-models"
    (work / "kops-models.yaml").write_text(yaml.safe_dump(settings))
    parent = loop["trained"]["run_id"]
    rendered = kops_json("push-kernel", "--run", parent, "--no-push", "--config", "kops-models.yaml", cwd=work,
                         env=env)
    plan = json.loads((Path(rendered["folder"]) / "kops-kernel.json").read_text())
    refs = [f"{m['dataset']}/{m['dataset_version']}" for m in plan["models"]]
    assert [m["kind"] for m in plan["models"]] == ["model", "model"] and len(set(refs)) == 2
    out = run_local(work, env, rendered["folder"], "--config", "kops-models.yaml", "--json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["ok"] and report["rows"] == 60
    for ref in refs:
        owner, model, framework, variation, version = ref.split("/")
        where = f"models/{owner}/{model}/{framework}/{variation}/{version}"
        assert f"model {ref} → input/{where} (downloaded)" in report["inputs"]
        assert (Path(rendered["folder"]) / ".run-local" / "input" / where / "kops-manifest.json").is_file()
    legacy = run_local(work, env, rendered["folder"], "--config", "kops-models.yaml", "--input-layout", "legacy")
    assert legacy.returncode == 0, legacy.stdout[-3000:]
    assert f"  input: model {refs[0]} → input/{'/'.join(refs[0].split('/')[1:])} (cached)" in legacy.stdout
    pushed = kops_json("push-kernel", "--run", parent, "--wait", "--config", "kops-models.yaml", cwd=work, env=env)
    assert pushed["status"] == "COMPLETE"
    version_dir = project["emu"] / "kernels" / OWNER / f"{SLUG}-models" / str(pushed["kernel_version"])
    assert (version_dir / "working" / "submission.csv").read_bytes() == \
        (Path(rendered["folder"]) / ".run-local" / "working" / "submission.csv").read_bytes()


def test_scores_and_leaderboard_use_the_task_metric(project: dict[str, Any], loop: dict[str, Any]) -> None:
    out = kops("scores", cwd=project["work"], env=project["kops_env"])
    assert out.returncode == 0 and "Scores are the competition's rmse (lower is better)." in out.stderr, out.stderr
    rows = kops_json("leaderboard", cwd=project["work"], env=project["kops_env"])
    assert rows[0]["metric"] == "rmse" and rows[0]["higher_is_better"] is False
    assert rows[0]["cv"] == pytest.approx(loop["trained"]["cv"])
