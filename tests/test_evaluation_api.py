"""Evaluation-API competitions (issue 22): the bundled demand-forecasting competition and its kaggle_evaluation
package, the kernel that serves a task's batch predict through a competition's own inference server (checked against
a second, differently shaped package), `kops demo` end to end with scores recomputed from the rerun's
submission.parquet, and the three gateway failures a rerun can end in."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaggleops.resources import bundled_competition
from kaggleops.schema import inference_server_module

from harness import KEY, USER, kops, kops_json, read_csv, shared_cache

SLUG = "demand-forecasting"
FOLDER = bundled_competition(SLUG)
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rmse(truth: list[float], pred: list[float]) -> float:
    return math.sqrt(sum((t - p) ** 2 for t, p in zip(truth, pred, strict=True)) / len(truth))


# ---- the bundled competition and its package -----------------------------------------------------------------------


def test_bundled_competition_ships_an_evaluation_api_and_hides_its_test_set(tmp_path: Path) -> None:
    seed = json.loads((FOLDER / "competition.json").read_text())
    assert seed["evaluation"] == {"gateway": "kaggle_evaluation.demand_gateway:DemandGateway",
                                  "data_paths": ["hidden/test.csv", "hidden/lags.csv"]}
    assert seed["output_file"] == "submission.parquet" and "hidden" not in str(seed["files"])
    names = [p.relative_to(FOLDER).as_posix() for p in FOLDER.rglob("*.py")]
    assert inference_server_module(names) == "kaggle_evaluation.demand_inference_server"
    assert inference_server_module(["train.csv", "test.csv", "sample_submission.csv"]) is None
    hidden, solution = read_csv(FOLDER / "hidden" / "test.csv"), read_csv(FOLDER / "solution.csv")
    assert [r["row_id"] for r in hidden] == [r["row_id"] for r in solution]
    assert {r["series_id"] for r in hidden} - {r["series_id"] for r in read_csv(FOLDER / "train.csv")} == {"6"}
    subprocess.run([sys.executable, str(FOLDER / "make_competition.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=120)
    for name in ("train.csv", "test.csv", "lags.csv", "hidden/test.csv", "hidden/lags.csv", "solution.csv",
                 "competition.json"):
        assert (tmp_path / name).read_bytes() == (FOLDER / name).read_bytes(), name


def test_a_bad_evaluation_section_is_one_seed_error_naming_it(tmp_path: Path) -> None:
    import shutil

    from kaggleops.emulator import SeedError, read_seed

    folder = tmp_path / "comp"
    shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("__pycache__"))
    seed = json.loads((folder / "competition.json").read_text())
    assert read_seed(folder).evaluation == seed["evaluation"]
    for evaluation, message in (({"gateway": "no_class_here"}, "evaluation must be an object with keys gateway and "
                                 "data_paths"),
                                ({"gateway": "m", "data_paths": []}, "evaluation.gateway must be `module:Class`"),
                                ({"gateway": "m:G", "data_paths": ["hidden/nope.csv"]}, "names hidden/nope.csv, which "
                                 "is not in")):
        (folder / "competition.json").write_text(json.dumps({**seed, "evaluation": evaluation}))
        with pytest.raises(SeedError, match=re.escape(message)):
            read_seed(folder)


def test_relay_frames_carry_values_without_pickle() -> None:
    code = """
import io, sys, numpy as np, pandas as pd
sys.path.insert(0, sys.argv[1])
from kaggle_evaluation.core.relay import serialize, deserialize
value = {"a": [1, 2.5, "x", None, True], "t": (np.float32(1.5), np.arange(4)), "b": io.BytesIO(b"raw"),
         "df": pd.DataFrame({"k": ["p", "q"], "v": [1.0, 2.0]}), "s": pd.Series([3, 4], name="n")}
back = deserialize(serialize(value))
assert back["a"] == value["a"] and isinstance(back["t"], tuple) and back["t"][0].dtype == np.float32
assert (back["t"][1] == np.arange(4)).all() and back["b"].getvalue() == b"raw"
assert back["df"].equals(value["df"]) and back["s"].equals(value["s"])
try:
    serialize(object())
except TypeError as e:
    print("refused:", e)
"""
    out = subprocess.run([sys.executable, "-c", code, str(FOLDER)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused: Type <class 'object'> cannot cross the relay"


def test_the_builtin_task_predicts_batch_by_batch_and_file_tasks_do_not() -> None:
    from kaggleops.task import BatchPredict, Task
    from kaggleops.tasks import get_task

    task = get_task(SLUG)
    assert isinstance(task, Task) and isinstance(task, BatchPredict)
    assert not isinstance(get_task("digit-recognizer"), BatchPredict)
    assert task.gateway_data_paths(FOLDER) == (FOLDER / "test.csv", FOLDER / "lags.csv")


def test_the_gateway_stops_waiting_when_the_notebook_is_gone(tmp_path: Path) -> None:
    """On the rerun a notebook that died before serving ends the wait at once (not after the 15-minute limit)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    env = {**os.environ, "KAGGLE_IS_COMPETITION_RERUN": "True", "KAGGLE_EVALUATION_SERVER_PID": str(dead.pid),
           "KAGGLE_EVALUATION_PORT": str(_free_port())}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from kaggle_evaluation.demand_gateway import DemandGateway; "
            "DemandGateway().run()")
    out = subprocess.run([sys.executable, "-c", code, str(FOLDER)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "result.json").read_text()) == {
        "Succeeded": False, "ErrorType": 1, "ErrorName": "SERVER_NEVER_STARTED",
        "ErrorDetails": "Failed to connect to server: its process exited before it answered"}


# ---- the kernel against ANOTHER competition's package: only the public entry points -------------------------------

OTHER_GATEWAY = '''"""Another competition: one argument per call (a few rows), answers in a `prediction` column."""
from pathlib import Path
from kaggle_evaluation.core import templates
from kaggle_evaluation.core.base_gateway import GatewayRuntimeError, GatewayRuntimeErrorType


class OtherGateway(templates.Gateway):
    def __init__(self, data_paths=None):
        super().__init__(data_paths, target_column_name="prediction", row_id_column_name="id")
        self.set_response_timeout_seconds(60)

    def unpack_data_paths(self):
        self.path = Path(self.data_paths[0]) if self.data_paths else Path(__file__).parents[1] / "rows.csv"

    def generate_data_batches(self):
        import pandas as pd
        rows = pd.read_csv(self.path)
        for start in range(0, len(rows), 4):
            batch = rows.iloc[start:start + 4].reset_index(drop=True)
            yield (batch,), batch["id"]

    def competition_specific_validation(self, prediction_batch, row_ids, data_batch):
        if "prediction" not in prediction_batch.columns:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION, "no prediction column")
'''
OTHER_SERVER = '''import other_gateway
from kaggle_evaluation.core import templates


class OtherCompInferenceServer(templates.InferenceServer):
    def _get_gateway_for_test(self, data_paths=None, file_share_dir=None, *args, **kwargs):
        return other_gateway.OtherGateway(data_paths)
'''
OTHER_TASK = '''from kaggleops.task import Metric, Submission


class Doubler:  # answers with a bare numpy array: kops makes it a frame of the submission's columns
    name = "other-comp"
    submission = Submission("id", ("prediction",))
    metric = Metric("mae", False, lambda t, p: 0.0)
    kernel_requires = ("numpy",)

    def load_models(self, model_dirs, ctx):
        return {"factor": 2.0, "calls": 0}

    def predict_batch(self, models, batch, ctx):
        models["calls"] += 1
        return batch["x"].to_numpy() * models["factor"]

    def gateway_data_paths(self, competition_dir):
        return None  # the gateway's own default: rows.csv beside its package


class Broken(Doubler):
    def predict_batch(self, models, batch, ctx):
        raise ValueError("no model for x")
'''


def test_kernel_runs_unchanged_against_another_competitions_package(tmp_path: Path) -> None:
    """The kernel's evaluation side finds the server module by name, builds its one *InferenceServer class around
    `predict` and calls run_local_gateway: against a package of another name, shape (one argument per call, a bare
    module import of its gateway) and answer column, with a task answering a numpy array."""
    comp = tmp_path / "input" / "competitions" / "other-comp"
    (comp / "kaggle_evaluation").mkdir(parents=True)
    for name in ("__init__.py", "core/__init__.py", "core/relay.py", "core/base_gateway.py", "core/templates.py"):
        (comp / "kaggle_evaluation" / name).parent.mkdir(parents=True, exist_ok=True)
        (comp / "kaggle_evaluation" / name).write_bytes((FOLDER / "kaggle_evaluation" / name).read_bytes())
    (comp / "kaggle_evaluation" / "other_gateway.py").write_text(OTHER_GATEWAY)
    (comp / "kaggle_evaluation" / "othercomp_inference_server.py").write_text(OTHER_SERVER)
    (comp / "rows.csv").write_text("id,x\n" + "".join(f"r{i},{i}\n" for i in range(10)))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "other_task_x22.py").write_text(OTHER_TASK)
    working = tmp_path / "working"
    working.mkdir()
    plan = {"competition": "other-comp", "id_column": "id", "target_column": "prediction", "columns": ["prediction"],
            "models": [], "task": {"spec": "other_task_x22:Doubler", "requires": ["numpy"]},
            "submission": {"kind": "evaluation-api"}}
    code = ("import json, sys; from pathlib import Path; from kaggleops.kernel import evaluation_api; "
            "evaluation_api.main(json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "code"), "KAGGLE_EVALUATION_PORT": str(_free_port())}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(plan), str(tmp_path / "input"), str(working)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "running kaggle_evaluation.othercomp_inference_server's local gateway on its defaults" in out.stdout
    import pandas as pd

    sub = pd.read_parquet(working / "submission.parquet")
    assert list(sub.columns) == ["id", "prediction"]
    assert sub["id"].tolist() == [f"r{i}" for i in range(10)] and sub["prediction"].tolist() == [2.0 * i for i in
                                                                                                    range(10)]
    timing = json.loads((working / "kops-timing.json").read_text())["evaluation"]
    assert timing["calls"] == 3 and timing["latency_max_s"] >= timing["latency_p95_s"] >= timing["latency_p50_s"] > 0
    plan["task"]["spec"] = "other_task_x22:Broken"  # the local gateway's own error type, in one line
    out = subprocess.run([sys.executable, "-c", code, json.dumps(plan), str(tmp_path / "input"), str(working)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == ("kops: error: the competition's local gateway failed: "
                                           "SERVER_RAISED_EXCEPTION: no model for x")


def test_answers_become_what_the_gateway_takes() -> None:
    """Arrays become a frame of the submission's columns in the batch's library; frames and scalars pass (a gateway
    may take one label per batch); a numpy scalar becomes a Python one."""
    import numpy as np
    import pandas as pd

    from kaggleops.kernel.evaluation_api import to_gateway_type

    batch = (pd.DataFrame({"x": [1, 2]}), {"meta": 1})
    assert to_gateway_type(np.array([0.5, 1.5]), batch, ["target"]).to_dict("list") == {"target": [0.5, 1.5]}
    assert to_gateway_type([[1, 2], [3, 4]], batch, ["p", "q"]).to_dict("list") == {"p": [1, 3], "q": [2, 4]}
    frame = pd.DataFrame({"row_id": ["a", "b"], "target": [1.0, 2.0]})
    assert to_gateway_type(frame, batch, ["target"]) is frame
    assert to_gateway_type(np.str_("Wave hello"), batch, ["gesture"]) == "Wave hello"
    assert to_gateway_type("Wave hello", batch, ["gesture"]) == "Wave hello"


def test_kernel_source_calls_no_private_part_of_the_package() -> None:
    """The only attributes the kernel takes from a competition's server are the public entry points."""
    source = (REPO / "kaggleops" / "kernel" / "evaluation_api.py").read_text()
    assert set(re.findall(r"\bserver\.(\w+)", source)) == {"serve", "run_local_gateway"}
    assert "kaggle_evaluation.core" not in source and "_get_gateway_for_test" not in source


# ---- kops demo on the evaluation-API competition --------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real `kops demo --competition demand-forecasting --json`."""
    workdir = tmp_path_factory.mktemp("demand-demo") / "work"
    home = tmp_path_factory.mktemp("home")
    out = kops("demo", "--competition", SLUG, "--json", "--workdir", str(workdir),
               env={"HOME": str(home), "TMPDIR": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    return {**json.loads(out.stdout), "stderr": out.stderr}


@pytest.mark.slow
def test_demo_scores_equal_a_recomputation_from_the_reruns_submission_parquet(demo: dict[str, Any]) -> None:
    import pandas as pd

    assert demo["status"] == "COMPLETE", demo
    assert "takes an evaluation API (kaggle_evaluation/demand_inference_server.py)" in demo["stderr"]
    gateway = Path(demo["workdir"]) / ".emulator" / "reruns" / str(demo["submission_ref"]) / "gateway"
    assert json.loads((gateway / "result.json").read_text()) == {"Succeeded": True}
    parquet = pd.read_parquet(gateway / "submission.parquet")
    preds = dict(zip(parquet["row_id"], parquet["target"], strict=True))
    solution = read_csv(FOLDER / "solution.csv")
    assert len(preds) == len(solution) == 130
    public, private = solution[0::2], solution[1::2]  # the emulator's documented split
    expected = [rmse([float(r["target"]) for r in part], [preds[r["row_id"]] for r in part])
                for part in (public, private)]
    # Kaggle (and the emulator) report 5 decimals: the scores ARE the recomputation, as Kaggle would print it
    assert (demo["lb_public"], demo["lb_private"]) == (float(f"{expected[0]:.5f}"), float(f"{expected[1]:.5f}"))
    assert demo["lb_public"] < 1.0  # far better than the series' spread: the model learned the lag


@pytest.mark.slow
def test_demo_runs_carry_scores_and_the_kernels_timings(demo: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=demo["tracking_uri"])
    sub = client.get_run(demo["submission_run_id"])
    assert sub.data.tags["kops.submission.kind"] == "evaluation-api" and sub.info.status == "FINISHED"
    assert sub.data.metrics["lb_public"] == pytest.approx(demo["lb_public"])
    assert client.get_run(demo["run_id"]).data.metrics["lb_private"] == pytest.approx(demo["lb_private"])
    timings = {k: v for k, v in sub.data.metrics.items() if k.startswith("kernel_")}
    assert set(timings) == {"kernel_load_models_s", "kernel_calls", "kernel_latency_p50_s", "kernel_latency_p95_s",
                            "kernel_latency_max_s"}
    assert timings["kernel_calls"] == 3  # the public mock test: three dates
    assert timings["kernel_latency_max_s"] >= timings["kernel_latency_p95_s"] >= timings["kernel_latency_p50_s"] > 0
    plan = json.loads((Path(demo["workdir"]) / ".kops" / "kernels" / demo["kernel"].split("/")[1] /
                       "kops-kernel.json").read_text())
    assert plan["submission"] == {"kind": "evaluation-api",
                                  "server_module": "kaggle_evaluation.demand_inference_server"}


# ---- failures on the hidden rerun: one line naming the error type, a FAILED run, nothing else spent ---------------

SLOW_TASK = '''import time
from kaggleops.tasks.demand import DemandForecast


class SlowDemand(DemandForecast):  # 1 s per call after the first: fine locally, too slow for a 0.3 s rerun limit
    def predict_batch(self, models, test, lags, ctx):
        if models.setdefault("calls", 0):
            time.sleep(1.0)
        models["calls"] += 1
        return super().predict_batch(models, test, lags, ctx)
'''
SEEN_ONLY_TASK = '''from kaggleops.tasks.demand import DemandForecast


class SeenSeriesOnly(DemandForecast):  # drops the rows of a series it never trained on (the hidden test opens one)
    def predict_batch(self, models, test, lags, ctx):
        return super().predict_batch(models, test[test["series_id"].isin(models["series"])], lags, ctx)
'''


@pytest.fixture(scope="module")
def rerun_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An in-process emulator with the competition, a project trained on it (one fold) and pushed once."""
    from kaggleops.emulator import Emulator

    base = tmp_path_factory.mktemp("rerun")
    emu = Emulator(base / "emu", username=USER, key=KEY, score_delay_polls=0, daily_submission_limit=20)
    url = emu.start()
    try:
        emu.seed_folder(FOLDER)
        root = base / "proj"
        (root / "tasks").mkdir(parents=True)
        (root / "tasks" / "slow_demand.py").write_text(SLOW_TASK)
        (root / "tasks" / "seen_only.py").write_text(SEEN_ONLY_TASK)
        env = {"KOPS_KAGGLE_ENDPOINT": url, "KAGGLE_USERNAME": USER, "KAGGLE_KEY": KEY,
               "NO_PROXY": "127.0.0.1,localhost", "HOME": str(base / "home"), "TMPDIR": str(base)}
        (base / "home").mkdir()
        config = (f"competition: {SLUG}\nowner: {USER}\nexperiment: df-test\n"
                  "train:\n  folds: [0]\nkernel:\n  enable_gpu: false\n")
        (root / "kops.yaml").write_text(config)
        run_id = kops_json("train", "--sample", cwd=root, env=env)["run_id"]
        pushed = kops("push-kernel", "--run", run_id, "--wait", "--json", cwd=root, env=env)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        yield {"emu": emu, "root": root, "env": env, "run_id": run_id, "config": config,
               "version": json.loads(pushed.stdout)["kernel_version"], "push_stderr": pushed.stderr}
    finally:
        emu.stop()


def _failed_submission(p: dict[str, Any], error_type: str, task: str | None = None, **limits: float) -> str:
    """Push (with ``task``, else submit the first version), submit --wait under ``limits``; check the one-line error,
    the FAILED submission run and that exactly one submission was spent. Returns the error line."""
    from mlflow.tracking import MlflowClient

    emu, root, env = p["emu"], p["root"], p["env"]
    (root / "kops.yaml").write_text(p["config"] + (f"task: {task}\n" if task else ""))
    version = p["version"]
    if task:
        pushed = kops("push-kernel", "--run", p["run_id"], "--wait", "--json", cwd=root, env=env)
        assert pushed.returncode == 0, pushed.stderr[-3000:]  # the public mock test passes: the hidden one will not
        version = json.loads(pushed.stdout)["kernel_version"]
    before = len(emu.store.submissions)
    for key, value in limits.items():
        setattr(emu.config, key, value)
    try:
        out = kops("submit", "--version", str(version), "--wait", "--timeout", "120", cwd=root, env=env)
    finally:
        emu.config.evaluation_startup_s = emu.config.evaluation_timeout_s = None
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("kops: error: Submission "), out.stderr
    assert f" of {USER}/df-test-inference/{version} failed on Kaggle's side: {error_type} (" in out.stderr
    assert " is FAILED. " in out.stderr
    assert len(emu.store.submissions) == before + 1  # nothing resubmitted
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("df-test").experiment_id],
                              f"tags.`kops.kernel.version` = '{version}' AND tags.`kops.kind` = 'submission'")
    assert len(runs) == 1
    sub = runs[0]
    assert sub.info.status == "FAILED"
    assert sub.data.tags["kops.submission.status"] == "ERROR"
    assert sub.data.tags["kops.submission.error_type"] == error_type
    assert error_type in sub.data.tags["kops.submission.error"] and "lb_public" not in sub.data.metrics
    source = client.get_run(p["run_id"]).data.tags  # the model's run: the status of its newest submission
    assert (source["kops.submission.status"], source["kops.submission.error_type"]) == ("ERROR", error_type)
    return out.stderr.strip()


@pytest.mark.slow
def test_detection_is_printed_and_kops_yaml_overrides_it(rerun_project: dict[str, Any]) -> None:
    p = rerun_project
    assert (f"competition {SLUG} takes an evaluation API (kaggle_evaluation/demand_inference_server.py): from the "
            "competition's data (its file list on Kaggle)") in p["push_stderr"]
    root = p["root"]
    (root / "kops.yaml").write_text(p["config"].replace("kernel:\n", "kernel:\n  submission: file\n"))
    out = kops("push-kernel", "--run", p["run_id"], "--no-push", "--json", cwd=root, env=p["env"])
    (root / "kops.yaml").write_text(p["config"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"competition {SLUG} takes a submission file (no kaggle_evaluation/ inference server in its data): from " \
           "kops.yaml kernel.submission" in out.stderr
    plan = json.loads((Path(json.loads(out.stdout)["folder"]) / "kops-kernel.json").read_text())
    assert plan["submission"] == {"kind": "file", "server_module": "kaggle_evaluation.demand_inference_server"}


@pytest.mark.slow
def test_the_readme_evaluation_api_task_runs_through_the_competitions_gateway(rerun_project: dict[str, Any]) -> None:
    """README's complete minimal evaluation-API task (a file task): trained by kops, its kernel version COMPLETE after
    the competition's local gateway served it every date of the public test (the rerun path: the demo's test)."""
    import pandas as pd

    p = rerun_project
    readme = (REPO / "README.md").read_text()
    source = readme.split("```python\n# tasks/forecast.py", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    (p["root"] / "tasks" / "forecast.py").write_text(source)
    (p["root"] / "kops.yaml").write_text(p["config"] + "task: tasks/forecast.py:Forecast\n")
    try:
        run_id = kops_json("train", "--data", str(FOLDER), cwd=p["root"], env=p["env"])["run_id"]
        pushed = kops_json("push-kernel", "--run", run_id, "--wait", cwd=p["root"], env=p["env"])
    finally:
        (p["root"] / "kops.yaml").write_text(p["config"])
    assert pushed["status"] == "COMPLETE"
    kv = p["emu"].store.kernel(USER, "df-test-inference").version(pushed["kernel_version"])
    sub = pd.read_parquet(kv.working / "submission.parquet")
    assert list(sub.columns) == ["row_id", "target"] and len(sub) == 18 and sub["target"].notna().all()


@pytest.mark.slow
def test_run_local_runs_the_competitions_local_gateway_before_anything_is_pushed(
        rerun_project: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    """In run-local's Kaggle image environment (built once per test session): grpcio and pyarrow are there."""
    p = rerun_project
    rendered = kops_json("push-kernel", "--run", p["run_id"], "--no-push", cwd=p["root"], env=p["env"])
    out = kops("kernel", "run-local", rendered["folder"], "--json", cwd=p["root"],
               env={**p["env"], "KOPS_CACHE_DIR": str(shared_cache(tmp_path_factory))})
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"], out.stdout[-3000:] + out.stderr[-2000:]
    assert report["rows"] == 18 and "submission.parquet" in report["outputs"]
    assert report["evaluation"]["calls"] == 3 and report["evaluation"]["latency_p50_s"] > 0


@pytest.mark.slow
def test_a_predict_too_slow_for_the_per_call_timeout_is_grpc_deadline_exceeded(rerun_project: dict[str, Any]) -> None:
    line = _failed_submission(rerun_project, "GRPC_DEADLINE_EXCEEDED", "tasks/slow_demand.py:SlowDemand",
                              evaluation_timeout_s=0.3)
    assert "no answer within 0.3 seconds" in line and "make it faster" in line


@pytest.mark.slow
def test_a_batch_answered_with_too_few_rows_is_invalid_submission(rerun_project: dict[str, Any]) -> None:
    line = _failed_submission(rerun_project, "INVALID_SUBMISSION", "tasks/seen_only.py:SeenSeriesOnly")
    assert "expected 7 rows but received 6" in line


@pytest.mark.slow
def test_a_server_that_never_starts_within_the_limit_is_server_never_started(rerun_project: dict[str, Any]) -> None:
    """A 0.2 s startup limit: the notebook cannot even install its runtime in time."""
    line = _failed_submission(rerun_project, "SERVER_NEVER_STARTED", evaluation_startup_s=0.2)
    assert "Failed to connect to server after waiting 0.2 seconds" in line
