"""Server mode: `tracking_uri: http://…` against a real `mlflow server` subprocess (SQLite backend).

train → publish → push-kernel → submit → scores all land on the server (Kaggle is the loopback emulator), with
the server's own artifact root, and the MLFLOW_TRACKING_PASSWORD never reaches a log, tag, param or dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

PASSWORD = "kops-server-s3cret-pw"



@pytest.mark.slow
def test_train_publish_scores_land_on_mlflow_server(tmp_path: Path, mlflow_server: str, capsys: pytest.CaptureFixture,
                                                    caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

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
    from kaggleops.stages.submit import scores, submit
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
            run_id = train(cfg, progress=False).runs[0].run_id
            pub = publish(cfg, run_id)
            kern = push_kernel(cfg, [run_id], wait=True)
            sub = submit(cfg, kern.kernel, kern.kernel_version, "server mode")
            row = next(r for r in scores(cfg, wait=True, poll_s=0.5, timeout_s=120)
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
