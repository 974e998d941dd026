"""Server mode: `tracking_uri: http://…` against a real `mlflow server` subprocess.

train → publish → push-kernel → submit → scores all land on the server (Kaggle is the loopback emulator), with
the server's own artifact root, and the MLFLOW_TRACKING_PASSWORD never reaches a log, tag, param or dataset
(SQLite backend). The team's scale set-up (README): PostgreSQL (pgserver) as backend store and a gs:// bucket
(gcp-storage-emulator) as artifact destination, 8 `kops train` processes at once (3 SIGKILLed and resumed), then
push-kernel/submit/scores/leaderboard and `kops sync pull` from other processes.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "kops-server-s3cret-pw"



@pytest.mark.slow
def test_train_publish_scores_land_on_mlflow_server(tmp_path: Path, mlflow_server: str, capsys: pytest.CaptureFixture,
                                                    caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from kaggleops.adapters.session import Session
    from kaggleops.config import CONFIG_FILE, load_config, render_template
    from kaggleops.emulator import Emulator
    from kaggleops.emulator.seeding import seed_competition
    from kaggleops.stages.demo import (
        COMPETITION,
        DEMO_KEY,
        DEMO_USER,
        _chdir,
        demo_environment,
        init_workdir,
    )
    from kaggleops.stages.kernel import push_kernel
    from kaggleops.stages.publish import publish
    from kaggleops.stages.scores import scores
    from kaggleops.stages.submit import submit
    from kaggleops.stages.train import get_task_for, train

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "kops-user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    workdir = tmp_path / "work"
    workdir.mkdir()
    emulator = Emulator(workdir / ".emulator", username=DEMO_USER, key=DEMO_KEY, score_delay_polls=1)
    try:
        endpoint = emulator.start()
        init_workdir(workdir, epochs=1, folds=[0])
        (workdir / CONFIG_FILE).write_text(render_template(
            competition=COMPETITION, owner=DEMO_USER, experiment="tse-server", tracking_uri=mlflow_server,
            folds=[0], epochs=1))
        with demo_environment(workdir, endpoint), _chdir(workdir):
            cfg = load_config(workdir / CONFIG_FILE)
            assert cfg.resolved_tracking_uri == mlflow_server
            seed_competition(emulator, get_task_for(cfg))
            run_id = train(cfg, progress=False, sample=True).runs[0].run_id
            pub = publish(Session(cfg), run_id)
            kern = push_kernel(Session(cfg), [run_id], wait=True)
            sub = submit(Session(cfg), kern.kernel, kern.kernel_version, "server mode")
            row = next(r for r in scores(Session(cfg), wait=True, poll_s=0.5, timeout_s=120)
                       if r.submission_ref == sub.submission_ref)
    finally:
        emulator.stop()

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # the server's artifact root, not a client folder
    assert {"model/config.json", "model/tokenizer.json"} <= {a.path for a in client.list_artifacts(run_id, "model")}
    assert run.data.params["epochs"] == "1" and "val_jaccard" in run.data.metrics
    assert run.data.tags["kops.dataset"] == pub.dataset and run.data.tags["kops.kernel"] == kern.kernel
    assert run.data.metrics["lb_public"] == pytest.approx(row.lb_public)
    sub_run = client.get_run(sub.submission_run_id)
    assert sub_run.data.tags["kops.source_runs"] == run_id
    assert sub_run.data.metrics["lb_private"] == pytest.approx(row.lb_private)
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlartifacts").exists()

    # the password MLflow read from the environment reached no log, tag, param, dataset or kernel
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err + caplog.text
    for r in client.search_runs([run.info.experiment_id]):
        assert PASSWORD not in repr(r.data.tags) + repr(r.data.params)
    for path in (workdir / ".emulator").rglob("*"):
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path


# ---- the team's scale set-up: PostgreSQL + gs:// bucket, many trainers at once --------------------------------

TRAINERS = 8
KILLED = (1, 4, 6)  # trainers SIGKILLed once their first checkpoint is on the server, then resumed
STEPS = 6  # optimizer steps per trainer (the killed ones: KILLED_STEPS, so a kill lands before the end)
KILLED_STEPS = 16
TEAM_BUCKET = "kops-team"
PG_PASSWORD = "pg-s3cret-pw"


@pytest.fixture
def team_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """PostgreSQL on 127.0.0.1 (password auth), gcp-storage-emulator, and `mlflow server --workers 2
    --backend-store-uri postgresql://mlflow:…@127.0.0.1:PORT/mlflow --artifacts-destination gs://…` on them.
    Yields (server URL, emulator URL)."""
    import os

    from kaggleops.adapters.mlflow_server import serve_mlflow
    from kaggleops.adapters.storage import gcs_client
    from kaggleops.emulator.stack import start_gcs, start_postgres

    before = os.environ.get("STORAGE_EMULATOR_HOST")
    gcs = start_gcs()
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    pg = server = None
    try:
        gcs_client().create_bucket(TEAM_BUCKET)
        pg = start_postgres(PG_PASSWORD)
        server = serve_mlflow(pg.url, ["--artifacts-destination", f"gs://{TEAM_BUCKET}/mlflow-artifacts"], tmp_path,
                              tmp_path / "mlflow-server.log", workers=2, timeout_s=180)
        yield server.base, gcs.url
    finally:
        for service in (server, pg, gcs):
            if service is not None:
                service.stop()
        if before is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = before


def _trainer_dir(root: Path, i: int, server: str) -> Path:
    import re

    from kaggleops.config import CONFIG_FILE, render_template
    from kaggleops.stages.demo import COMPETITION, DEMO_USER

    folder = root / f"trainer-{i}"
    folder.mkdir(parents=True)
    steps = KILLED_STEPS if i in KILLED else STEPS
    text = render_template(competition=COMPETITION, owner=DEMO_USER, experiment="team", tracking_uri=server,
                           folds=[0], epochs=1)
    text = re.sub(r"  seed: 42\n", f"  seed: {100 + i}\n  max_steps: {steps}\n  checkpoint_every: 2\n"
                  f"  eval_every: {steps // 2}\n  oof_top_k: 2\n  batch_size: 16\n", text)
    assert f"max_steps: {steps}" in text and "batch_size: 16" in text, "kops.yaml template changed"
    (folder / CONFIG_FILE).write_text(text)
    return folder


def _kops(args: list[str], cwd: Path, env: dict[str, str], stream: bool = False) -> Any:
    """``kops ARGS`` in the background (:func:`harness.kops_process`: forked from the warm server where it can be);
    ``stream``: the installed console script under :class:`subprocess.Popen`, for a test reading stderr as it comes."""
    import shutil
    import sys

    from harness import kops_process

    if not stream:
        return kops_process(args, cwd, env)
    exe = shutil.which("kops", path=str(Path(sys.executable).parent))
    assert exe, "the installed kops entry point"
    return subprocess.Popen([exe, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 900) -> Any:
    import json

    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{proc.args}: exit {proc.returncode}\n{err[-3000:]}"
    try:
        return json.loads(out)  # stdout holds the JSON alone (MLflow's "View run" lines would break it)
    except ValueError:
        raise AssertionError(f"{proc.args}: stdout is not JSON: {out[:500]!r}") from None


def _kill_after_first_checkpoint(client: Any, procs: dict[int, subprocess.Popen[str]], timeout: float = 600) -> None:
    """SIGKILL each KILLED trainer as soon as its run has a checkpoint pointer on the server (mid-training)."""
    import time

    deadline, pending = time.monotonic() + timeout, set(KILLED)
    while pending and time.monotonic() < deadline:
        exps = client.search_experiments(filter_string="name = 'team'")
        runs = client.search_runs([exps[0].experiment_id]) if exps else []
        for run in runs:
            i = int(run.data.params.get("seed", 0)) - 100
            if i in pending and "checkpoint/latest.json" in {a.path for a in client.list_artifacts(
                    run.info.run_id, "checkpoint")}:
                assert procs[i].poll() is None, f"trainer {i} ended before it could be killed; raise KILLED_STEPS"
                procs[i].kill()
                procs[i].wait()
                pending.discard(i)
        time.sleep(0.5)
    assert not pending, f"no checkpoint appeared for trainers {sorted(pending)}"


@pytest.mark.slow
def test_team_server_on_postgres_and_bucket_many_trainers(tmp_path: Path, team_server: tuple[str, str]) -> None:
    import os

    from mlflow.tracking import MlflowClient

    from kaggleops.adapters.storage import gcs_client
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.config import CONFIG_FILE, load_config, render_template
    from kaggleops.emulator import Emulator
    from kaggleops.emulator.seeding import seed_competition
    from kaggleops.schema import TAG_ORIGIN_RUN
    from kaggleops.stages.demo import COMPETITION, DEMO_KEY, DEMO_USER, init_workdir
    from kaggleops.stages.train import get_task_for
    from kaggleops.sync import push

    server, gcs_url = team_server
    emulator = Emulator(tmp_path / ".emulator", username=DEMO_USER, key=DEMO_KEY, score_delay_polls=1)
    endpoint = emulator.start()
    env = {**os.environ, "KOPS_KAGGLE_ENDPOINT": endpoint, "KAGGLE_USERNAME": DEMO_USER, "KAGGLE_KEY": DEMO_KEY,
           "STORAGE_EMULATOR_HOST": gcs_url, "OMP_NUM_THREADS": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
    try:
        # 8 trainers start at once against a fresh experiment; 3 are killed mid-training and resumed
        dirs = {i: _trainer_dir(tmp_path, i, server) for i in range(TRAINERS)}
        procs = {i: _kops(["train", "--fold", "0", "--sample", "--json"], d, env) for i, d in dirs.items()}
        client = MlflowClient(tracking_uri=server)
        _kill_after_first_checkpoint(client, procs)
        resumed = {i: _kops(["train", "--fold", "0", "--resume", "--sample", "--json"], dirs[i], env) for i in KILLED}
        results = {i: _finish(p) for i, p in procs.items() if i not in KILLED}
        results.update({i: _finish(p) for i, p in resumed.items()})

        # another process (the lead's folder, a git repository) ensembles two runs, submits, reads the scores
        lead = tmp_path / "lead"
        lead.mkdir()
        init_workdir(lead, epochs=1, folds=[0])
        (lead / CONFIG_FILE).write_text(render_template(competition=COMPETITION, owner=DEMO_USER, experiment="team",
                                                        tracking_uri=server, folds=[0], epochs=1))
        seed_competition(emulator, get_task_for(load_config(lead / CONFIG_FILE)))
        chosen = [results[1]["runs"][0]["run_id"], results[2]["runs"][0]["run_id"]]
        kern = _finish(_kops(["push-kernel", "--run", chosen[0], "--run", chosen[1], "--submit", "--json"],
                             lead, env))
        rows = _finish(_kops(["scores", "--wait", "--json"], lead, env))
        board = _finish(_kops(["leaderboard", "--json"], lead, env))
    finally:
        emulator.stop()

    exp = client.get_experiment_by_name("team")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    folds = [r for r in runs if r.data.tags.get("kops.kind") == "fold"]
    # every trainer's run exactly once; the killed ones continued in their own run
    assert sorted(int(r.data.params["seed"]) - 100 for r in folds) == list(range(TRAINERS))
    by_trainer = {int(r.data.params["seed"]) - 100: r for r in folds}
    for i, run in by_trainer.items():
        assert run.info.run_id == results[i]["runs"][0]["run_id"] and run.info.status == "FINISHED"
        assert run.data.tags.get("kops.resumes") == ("1" if i in KILLED else None)
        steps = KILLED_STEPS if i in KILLED else STEPS
        for key in ("train_loss", "best_val_jaccard", "val_jaccard"):
            points = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            assert len({s for s, _ in points}) == len(points), (i, key, "a step logged twice")
            if key == "train_loss":
                assert len(points) == steps, (i, sorted(points))
            if key == "best_val_jaccard":
                assert len(points) == 1
        assert run.data.tags["kops.fold"] == "0" and run.data.tags["kops.kind"] == "fold"
        # artifacts went through the server into the bucket, each once, under the run's own prefix
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        prefix = f"mlflow-artifacts/{exp.experiment_id}/{run.info.run_id}/artifacts/"
        blobs = [b.name[len(prefix):] for b in gcs_client().bucket(TEAM_BUCKET).list_blobs(prefix=prefix)]
        assert {"model/config.json", "model/tokenizer.json", "oof/oof.csv"} <= set(blobs)
        assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {
            f"model/{b.split('/', 1)[1]}" for b in blobs if b.startswith("model/")}
    # the submission: one submission run, scores on it and on both source runs, one leaderboard row
    subs = [r for r in runs if r.data.tags.get("kops.kind") == "submission"]
    assert len(subs) == 1 and len(rows) == 1 and rows[0]["status"] == "COMPLETE"
    assert set(subs[0].data.tags["kops.source_runs"].split(",")) == set(chosen)
    for run_id in chosen:
        assert client.get_run(run_id).data.metrics["lb_public"] == pytest.approx(rows[0]["lb_public"])
    assert len(board) == 1 and board[0]["lb_public"] == pytest.approx(rows[0]["lb_public"])
    assert kern["kernel_version"] == 1

    # runs a notebook pushed to the bucket join the server with `MLFLOW_TRACKING_URI=… kops sync pull`, once
    nb = tmp_path / "notebook"
    nb.mkdir()
    bucket = f"gs://{TEAM_BUCKET}/sync"
    (nb / CONFIG_FILE).write_text(render_template(owner=DEMO_USER, experiment="team")
                                  + f"\nstorage:\n  bucket: {bucket}\n")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_url
    tracker = Tracker(load_config(nb / CONFIG_FILE))
    origins = []
    for n in range(2):
        origins.append(tracker.start_run(f"nb-{n}", {"n": n}, {"kops.kind": "fold"}))
        tracker.log_bulk(origins[-1], [("train_loss", s, 1000 + s, 1.0 / (s + 1)) for s in range(1500)])
        tracker.end_run(origins[-1])
    push(load_config(nb / CONFIG_FILE))
    viewer = tmp_path / "viewer"
    viewer.mkdir()
    (viewer / CONFIG_FILE).write_text(render_template(owner=DEMO_USER, experiment="team")
                                      + f"\nstorage:\n  bucket: {bucket}\n")
    pull_env = {**env, "MLFLOW_TRACKING_URI": server}
    first = _finish(_kops(["sync", "pull", "--json"], viewer, pull_env))
    again = _finish(_kops(["sync", "pull", "--json"], viewer, pull_env))
    assert len(first["created"]) == 2 and first["points_added"] == 3000
    assert (again["created"], again["updated"], again["unchanged"]) == ([], [], 2)
    pulled = [r for r in client.search_runs([exp.experiment_id], max_results=1000) if TAG_ORIGIN_RUN in r.data.tags]
    assert sorted(r.data.tags[TAG_ORIGIN_RUN] for r in pulled) == sorted(origins)
    for r in pulled:
        assert len(client.get_metric_history(r.info.run_id, "train_loss")) == 1500
