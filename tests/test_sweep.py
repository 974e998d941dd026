"""`kops sweep`: an Optuna study over the task's settings whose trials are kops runs.

The team's set-up: PostgreSQL (pgserver) holding both the MLflow runs and the Optuna study (another database on the
same server), 3 `kops sweep` workers at once on one study of 8 trials of the digits task at its tiniest, one worker
SIGKILLed mid-trial: its trial is put back after the grace period and resumed into the same MLflow run from its
checkpoint; the study ends with 8 trials COMPLETE or PRUNED, no run left RUNNING, none duplicated; the best trial's
run publishes and renders a kernel like any run. Then the bad input: one line each.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_server_mode import _kops

from harness import USER, kops

PG_PASSWORD = "pg-sweep-s3cret"
TRIALS, WORKERS = 8, 3
STUDY = "team-search"
SETTINGS = """tracking_uri: sqlite:///mlflow.db
artifact_location: {artifacts}
train:
  n_folds: 3
  folds: [0, 1]
  seed: 42
  epochs: 3            # one checkpoint per epoch: a kill mid-fold leaves one to resume from
  channels: 4
  batch_size: 128
  cpu_threads: 1
sweep:
  n_trials: {trials}
  startup_trials: 2
  heartbeat_s: 1
  grace_s: 5
  storage: {storage}
  params:
    lr: {{low: 0.001, high: 0.03, log: true}}
    dropout: [0.0, 0.25]
"""


def _project(folder: Path, storage: str, trials: int = TRIALS, params: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = SETTINGS.format(artifacts=(folder / "artifacts").as_uri(), trials=trials, storage=storage)
    if params is not None:
        text = text[:text.index("  params:")] + params
    (folder / "kops.yaml").write_text(f"competition: digit-recognizer\nowner: {USER}\nexperiment: sweep\n{text}")
    return folder


def _finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The worker's JSON result, with its stderr (progress lines) under ``"stderr"``."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{proc.args}: exit {proc.returncode}\n{err[-3000:]}"
    return {**json.loads(out), "stderr": err}


def _one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode in (1, 2), (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.startswith("kops")]
    assert len(lines) == 1, out.stderr
    return lines[0]


# ---- bad input: one line each ------------------------------------------------------------------------------------


def test_unknown_parameter_name_is_one_line(tmp_path: Path) -> None:
    proj = _project(tmp_path / "p", "null", params="  params:\n    lrate: {low: 0.001, high: 0.01}\n")
    line = _one_line_error(kops("sweep", "--sample", cwd=proj))
    assert line.startswith("kops: error: kops.yaml `sweep.params.lrate`: `lrate` is not a `train:` setting of task "
                           "digit-recognizer; its settings: batch_size, channels, ")
    assert not (proj / ".kops").exists()  # refused before any storage was opened


def test_empty_range_is_one_line(tmp_path: Path) -> None:
    proj = _project(tmp_path / "p", "null", params="  params:\n    lr: {low: 0.01, high: 0.001}\n")
    assert _one_line_error(kops("sweep", "--sample", cwd=proj)) == (
        "kops: error: kops.yaml `sweep.params.lr`: empty range (low 0.01 >= high 0.001). Give low < high (a fixed "
        "value belongs in `train:`).")
    proj = _project(tmp_path / "q", "null", params="  params:\n    dropout: []\n")
    assert "`sweep.params.dropout`: no choices" in _one_line_error(kops("sweep", "--sample", cwd=proj))


def test_unreachable_storage_is_one_line_and_masks_the_password(tmp_path: Path) -> None:
    from kaggleops.emulator.stack import free_port

    proj = _project(tmp_path / "p", f"postgresql://kops:${{SWEEP_PW}}@127.0.0.1:{free_port()}/optuna")
    out = kops("sweep", "--sample", cwd=proj, env={"SWEEP_PW": "never-sh0wn"})
    line = _one_line_error(out)
    assert line.startswith("kops: error: Cannot open the sweep storage postgresql://kops:***@127.0.0.1:")
    assert "Check sweep.storage in kops.yaml (or KOPS_SWEEP_STORAGE)" in line
    assert "never-sh0wn" not in out.stdout + out.stderr
    missing = _one_line_error(kops("sweep", "--sample", cwd=proj, env={"SWEEP_PW": None}))
    assert missing == ("kops: error: sweep.storage names ${SWEEP_PW}, but that environment variable is not set. "
                       "Set SWEEP_PW (or KOPS_SWEEP_STORAGE to the whole URL).")


def test_best_params_are_written_into_kops_yaml_keeping_comments() -> None:
    from kaggleops.stages.sweep_space import apply_params

    text = "competition: c\ntrain:   # the task's\n  lr: 0.1   # learning rate\n  epochs: 3\n\nkernel:\n  slug: k\n"
    assert apply_params(text, {"lr": 0.003, "dropout": 0.25}) == (
        "competition: c\ntrain:   # the task's\n  lr: 0.003   # learning rate\n  epochs: 3\n  dropout: 0.25\n\n"
        "kernel:\n  slug: k\n")
    from kaggleops.errors import KopsError
    from kaggleops.stages.sweep_report import _check_edit

    nested = "train:\n  schedule:\n    lr: 0.5\n  lr: 0.1\n"  # the section's own key, not the nested one
    assert apply_params(nested, {"lr": 0.003}) == "train:\n  schedule:\n    lr: 0.5\n  lr: 0.003\n"
    flow = "train: {lr: 0.1, epochs: 3}\n"  # a flow mapping the line editor cannot edit: refused, nothing written
    with pytest.raises(KopsError, match=r"nothing written\. Set them under `train:` by hand: lr: 0\.003\.$"):
        _check_edit(flow, apply_params(flow, {"lr": 0.003}), {"lr": 0.003}, Path("kops.yaml"))


@pytest.mark.parametrize("name", ["train_colab.ipynb", "train_kaggle.ipynb"])
def test_notebooks_join_a_sweep_by_study_name(name: str) -> None:
    """The Colab/Kaggle notebooks' parameter SWEEP_STUDY: empty trains as before, a name runs `kops sweep`."""
    from IPython.core.inputtransformer2 import TransformerManager

    from kaggleops.resources import kernel_template

    cells = ["".join(c["source"]) for c in json.loads(kernel_template(name))["cells"]]
    assert re.search(r'^SWEEP_STUDY = ""  # join a sweep', cells[0], flags=re.M)
    run = next(c for c in cells if "kops sweep --study {SWEEP_STUDY}" in c)
    assert "kops train --resume" in run  # the plain path, when SWEEP_STUDY is empty
    compile(TransformerManager().transform_cell(run), name, "exec")  # `!` lines inside if/else are valid IPython


# ---- many workers on PostgreSQL, one killed -----------------------------------------------------------------------


@pytest.fixture
def postgres() -> Any:
    """PostgreSQL on 127.0.0.1 with two databases of one role: ``mlflow`` (runs) and ``optuna`` (studies)."""
    from kaggleops.emulator.stack import start_postgres

    pg = start_postgres(PG_PASSWORD, more_databases=("optuna",))
    try:
        yield pg.url
    finally:
        pg.stop()


def _kill_mid_trial(storage: str, client: Any, procs: dict[int, subprocess.Popen[str]],
                    timeout: float = 120) -> tuple[int, str]:
    """SIGKILL the worker of the first trial whose first fold has a checkpoint and is still training: (the trial's
    number, its run)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pids = {p.pid: i for i, p in procs.items()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _quiet():
            trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials() if _has_study(storage) else []
        for t in trials:
            run, worker = t.user_attrs.get("mlflow_run_id"), t.user_attrs.get("worker", ":0")
            pid = int(worker.rsplit(":", 1)[1])
            if t.state.name != "RUNNING" or not run or pid not in pids:
                continue
            folds = [r for r in client.search_runs([client.get_run(run).info.experiment_id],
                                                   f"tags.`mlflow.parentRunId` = '{run}'")]
            first = [r for r in folds if r.data.tags.get("kops.fold") == "0" and r.info.status == "RUNNING"]
            if first and len(folds) == 1 and _has_checkpoint(first[0]):
                procs[pids[pid]].kill()
                procs[pids[pid]].wait()
                return t.number, run
        time.sleep(0.1)
    raise AssertionError("no trial reached a checkpoint in its first fold")


def _quiet() -> Any:
    import contextlib
    import warnings

    @contextlib.contextmanager
    def block() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield

    return block()


def _has_study(storage: str) -> bool:
    import optuna

    try:
        return STUDY in [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except Exception:  # noqa: BLE001 - tables not created yet
        return False


def _has_checkpoint(run: Any) -> bool:
    from urllib.parse import urlparse

    return (Path(urlparse(run.info.artifact_uri).path) / "checkpoint" / "latest.json").is_file()


@pytest.mark.slow
def test_three_workers_on_postgres_one_killed(tmp_path: Path, postgres: str, emulator: Any) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    from kaggleops.emulator.seeding import seed_competition
    from kaggleops.tasks import get_task

    optuna_url = postgres.rsplit("/", 1)[0] + "/optuna"
    proj = _project(tmp_path / "team", "tracking")  # the tracking database's server, database `optuna`
    env = {**os.environ, "MLFLOW_TRACKING_URI": postgres, "PG_PW": PG_PASSWORD, "OMP_NUM_THREADS": "1"}
    client = MlflowClient(tracking_uri=postgres)
    client.create_experiment("sweep", artifact_location=(proj / "artifacts").as_uri())  # tables made once, here
    procs = {i: _kops(["sweep", "--study", STUDY, "--sample", "--json"], proj, env) for i in range(WORKERS)}
    try:
        killed, killed_run = _kill_mid_trial(optuna_url, client, procs)
        finished_procs = [p for p in procs.values() if p.returncode is None]
        results = [_finish(p, timeout=240) for p in finished_procs]
        killed_err = next(p for p in procs.values() if p.returncode == -9).communicate()[1]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert len(results) == WORKERS - 1 and all(r["done"] for r in results)
    outputs = killed_err + "".join(json.dumps(r) for r in results)

    with _quiet():
        trials = optuna.load_study(study_name=STUDY, storage=optuna_url).get_trials()
    states = Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    # every trial COMPLETE or PRUNED once: 8 of them (one more if two workers started the last at once), and FAIL
    # only for the killed trial, whose retry — the same params and MLflow run — finished
    assert TRIALS <= len(finished) <= TRIALS + 1 and set(states) <= {"COMPLETE", "PRUNED", "FAIL"}, states
    assert [t.number for t in trials if t.state.name == "FAIL"] == [killed]
    retry = [t for t in finished if t.user_attrs["mlflow_run_id"] == killed_run]
    assert len(retry) == 1 and retry[0].number > killed
    assert retry[0].params == next(t for t in trials if t.number == killed).params
    run_ids = [t.user_attrs["mlflow_run_id"] for t in finished]
    assert len(set(run_ids)) == len(run_ids)  # no trial run shared, none duplicated

    exp = client.get_experiment_by_name("sweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert [r.info.run_id for r in runs if r.info.status != "FINISHED"] == []  # nothing left RUNNING
    study_run = [r for r in runs if r.data.tags.get("kops.kind") == "sweep"]
    assert len(study_run) == 1
    trial_runs = [r for r in runs if r.data.tags.get("kops.sweep.study") == STUDY and r.data.tags["kops.kind"] ==
                  "kfold"]
    assert sorted(r.info.run_id for r in trial_runs) == sorted(run_ids)
    by_number = {t.number: t for t in finished}
    for r in trial_runs:
        trial = by_number[int(r.data.tags["kops.sweep.trial"])]
        assert r.data.tags["mlflow.parentRunId"] == study_run[0].info.run_id
        assert r.data.tags["kops.sweep.state"] == trial.state.name
        assert ("cv_accuracy" in r.data.metrics) == (trial.state.name == "COMPLETE")
    # the killed trial: the fold it was training (fold 0, with a checkpoint, unless that fold ended in the
    # milliseconds between the look and the kill: then fold 1) continued in its own run; one run per fold
    folds = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{killed_run}'")
    assert sorted(r.data.tags["kops.fold"] for r in folds) in (["0"], ["0", "1"])  # ["0"]: pruned after it
    resumed = [r for r in folds if r.data.tags.get("kops.resumes") == "1"]
    assert len(resumed) == 1
    line = f"resuming run {resumed[0].info.run_id} from step "  # its checkpoint's step, not "starts over"
    assert resumed[0].data.tags["kops.fold"] == "1" or any(line in r["stderr"] for r in results), line
    steps = [m.step for m in client.get_metric_history(resumed[0].info.run_id, "train_loss")]
    assert len(steps) == len(set(steps))  # no step logged twice across the kill
    assert {a.path for a in client.list_artifacts(study_run[0].info.run_id, "sweep")} >= {"sweep/history.png"}
    assert PG_PASSWORD not in outputs + repr([(r.data.tags, r.data.params) for r in runs])

    status = kops("sweep", "--status", STUDY, "--json", cwd=proj, env={"MLFLOW_TRACKING_URI": postgres,
                                                                       "PG_PW": PG_PASSWORD})
    assert status.returncode == 0, status.stderr
    assert PG_PASSWORD not in status.stdout + status.stderr
    shown = json.loads(status.stdout)
    assert shown["counts"]["complete"] + shown["counts"]["pruned"] == len(finished)
    assert sum(sum(s.values()) for s in shown["workers"].values()) == len(trials) and len(shown["workers"]) == 3

    # the best trial's run is a run like any other: published, its kernel rendered
    seed_competition(emulator, get_task("digit-recognizer"))
    best = shown["best"]["run_id"]
    env_kops = {"MLFLOW_TRACKING_URI": postgres, "PG_PW": PG_PASSWORD}
    published = kops("publish", best, "--json", cwd=proj, env=env_kops)
    assert published.returncode == 0, published.stderr
    best_folds = [f["run_id"] for f in json.loads(published.stdout)["folds"]]
    assert json.loads(published.stdout)["parent_run_id"] == best and len(best_folds) == 2
    rendered = kops("push-kernel", "--run", best, "--no-push", "--json", cwd=proj, env=env_kops)
    assert rendered.returncode == 0, rendered.stderr
    assert json.loads(rendered.stdout)["run_ids"] == best_folds

    # and its params go into kops.yaml's train: section, the comments kept
    applied = kops("sweep", "--best", STUDY, "--apply", cwd=proj, env=env_kops)
    assert applied.returncode == 0, applied.stderr
    text = (proj / "kops.yaml").read_text()
    assert "  epochs: 3            # one checkpoint per epoch" in text and "+  lr: " in applied.stdout
    from kaggleops.config import load_config

    assert load_config(proj / "kops.yaml").train.task_settings()["lr"] == pytest.approx(shown["best"]["params"]["lr"])


@pytest.mark.slow
def test_ctrl_c_puts_the_trial_back_and_the_next_worker_finishes_its_run(tmp_path: Path) -> None:
    """Ctrl-C stops at the next safe point as `kops train` does (exit 130): the run KILLED, the trial FAIL and put
    back; the next `kops sweep` continues that run (its finished fold kept) instead of starting another."""
    import signal

    import optuna
    from mlflow.tracking import MlflowClient

    proj = _project(tmp_path / "p", "null", trials=1)
    text = (proj / "kops.yaml").read_text().replace("folds: [0, 1]", "folds: [0, 1, 2]")
    (proj / "kops.yaml").write_text(text.replace("epochs: 3 ", "epochs: 1 "))
    worker = _kops(["sweep", "--study", "ctrl-c", "--sample"], proj, {**os.environ, "OMP_NUM_THREADS": "1"},
                   stream=True)
    seen = []
    while not seen or "fold 0 (1/3): run" not in seen[-1]:
        seen.append(worker.stderr.readline())
        assert seen[-1], "".join(seen)
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err
    line = err.strip().splitlines()[-1]
    run_id = re.search(r"\(run (\w+)\)", line)[1]  # type: ignore[index]
    assert re.fullmatch(r"kops: stopped between folds of trial 0 \(run \w+\); it is back in study ctrl-c: "
                        r"continue with `kops sweep --study ctrl-c`", line), line

    storage = f"sqlite:///{proj / '.kops' / 'sweep.db'}"
    with _quiet():
        trials = optuna.load_study(study_name="ctrl-c", storage=storage).get_trials()
    assert [(t.state.name, t.user_attrs["mlflow_run_id"]) for t in trials] == [("FAIL", run_id), ("WAITING", run_id)]
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["kops.sweep.state"]) == ("KILLED", "FAIL")

    again = kops("sweep", "--study", "ctrl-c", "--sample", "--json", cwd=proj)
    assert again.returncode == 0, again.stderr
    assert f"trial 1: {json.dumps(trials[0].params)} (trial 0 put back: continues run {run_id})" in again.stderr
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["kops.sweep.state"], run.data.tags["kops.sweep.trial"]) == (
        "FINISHED", "COMPLETE", "1")
    folds = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert sorted(r.data.tags["kops.fold"] for r in folds) == ["0", "1", "2"]  # fold 0 of the first attempt kept
