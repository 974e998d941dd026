"""The whole loop: `kops demo --json` end to end, read back through MlflowClient; and bad input per stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaggleops.tasks import get_task
from kaggleops.tasks.tse.metric import mean_jaccard

from harness import git, kops, read_csv

TSE = "tweet-sentiment-extraction"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real `kops demo --json` run, shared by the assertions below."""
    workdir = tmp_path_factory.mktemp("demo") / "work"
    home = tmp_path_factory.mktemp("home")
    out = kops("demo", "--json", "--workdir", str(workdir), "--epochs", "2",
               env={"HOME": str(home), "TMPDIR": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    summary["stderr"] = out.stderr
    return summary


@pytest.mark.slow
def test_demo_reports_every_id(demo: dict[str, Any]) -> None:
    for key in ("run_id", "dataset", "dataset_version", "kernel", "kernel_version", "submission_ref",
                "submission_run_id", "lb_public", "lb_private"):
        assert demo[key] not in (None, ""), key
    assert demo["dataset_version"] == 1 and demo["kernel_version"] == 1
    assert demo["status"] == "COMPLETE"
    for stage in ("emulator", "train", "publish", "push-kernel", "submit", "scores"):
        assert f"✓ {stage}" in demo["stderr"]


@pytest.mark.slow
def test_demo_scores_equal_hidden_solution(demo: dict[str, Any]) -> None:
    """lb_public/lb_private are the competition metric of the kernel's own submission.csv on the hidden split."""
    workdir = Path(demo["workdir"])
    owner, slug = demo["kernel"].split("/")
    submission = workdir / ".emulator" / "kernels" / owner / slug / str(demo["kernel_version"]) / "working"
    preds = {r["textID"]: r["selected_text"] for r in read_csv(submission / "submission.csv")}
    solution = read_csv(get_task(TSE).sample_dir() / "solution.csv")
    public, private = solution[0::2], solution[1::2]  # the emulator's documented split
    assert len(preds) == len(solution)
    expected_public = mean_jaccard([r["selected_text"] for r in public], [preds[r["textID"]] for r in public])
    expected_private = mean_jaccard([r["selected_text"] for r in private], [preds[r["textID"]] for r in private])
    assert demo["lb_public"] == pytest.approx(expected_public, abs=5e-6)
    assert demo["lb_private"] == pytest.approx(expected_private, abs=5e-6)


@pytest.mark.slow
def test_demo_runs_read_back_with_mlflow_client(demo: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    workdir = Path(demo["workdir"])
    client = MlflowClient(tracking_uri=demo["tracking_uri"])
    run = client.get_run(demo["run_id"])
    head = git(workdir, "rev-parse", "HEAD")
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.source.git.repoURL"] == workdir.as_uri()
    assert tags["kops.git.dirty"] == "false" and tags["kops.env"] == "local"
    assert tags["kops.dataset"] == demo["dataset"] and tags["kops.dataset.version"] == str(demo["dataset_version"])
    assert tags["kops.kernel"] == demo["kernel"] and tags["kops.kernel.version"] == str(demo["kernel_version"])
    assert run.data.params["epochs"] == "2"
    assert run.data.metrics["lb_public"] == pytest.approx(demo["lb_public"])
    assert run.data.metrics["lb_private"] == pytest.approx(demo["lb_private"])
    losses = client.get_metric_history(demo["run_id"], "train_loss")
    assert len({m.step for m in losses}) > 5
    assert "val_jaccard" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(demo["run_id"], "model")}
    assert {"model/config.json", "model/tokenizer.json"} <= artifacts
    oof = read_csv(Path(client.download_artifacts(demo["run_id"], "oof", str(workdir / "dl"))) / "oof.csv")
    assert {"textID", "sentiment", "text", "selected_text", "pred", "jaccard"} <= set(oof[0])
    sub = client.get_run(demo["submission_run_id"])
    assert sub.data.tags["kops.source_runs"] == demo["run_id"]
    assert sub.data.tags["kops.submission.status"] == "COMPLETE"
    assert sub.data.metrics["lb_public"] == pytest.approx(demo["lb_public"])


@pytest.mark.slow
def test_published_dataset_carries_manifest(demo: dict[str, Any]) -> None:
    workdir = Path(demo["workdir"])
    owner, slug = demo["dataset"].split("/")
    manifests = list((workdir / ".emulator").rglob("kops-manifest.json"))
    assert manifests, "no manifest in any stored dataset version"
    manifest = json.loads(manifests[0].read_text())
    assert manifest["run_id"] == demo["run_id"]
    assert manifest["experiment"] == "tse-demo"
    assert "model.safetensors" in manifest["files"] and len(manifest["files"]["model.safetensors"]["sha256"]) == 64
    plan = json.loads((workdir / ".kops" / "kernels" / demo["kernel"].split("/")[1] / "kops-kernel.json").read_text())
    assert plan["models"] == [{"run_id": demo["run_id"], "dataset": demo["dataset"],
                               "dataset_version": demo["dataset_version"], "weight": 1.0}]
    metadata = json.loads((workdir / ".kops" / "kernels" / demo["kernel"].split("/")[1] /
                           "kernel-metadata.json").read_text())
    assert metadata["enable_internet"] is False and metadata["enable_gpu"] is True
    assert metadata["competition_sources"] == [TSE]
    assert sorted(metadata["dataset_sources"]) == sorted([demo["dataset"], "kopsdemo/kops-runtime"])
    assert owner == "kopsdemo" and slug


@pytest.mark.slow
def test_mlflow3_sees_the_published_model_with_its_lb_scores(demo: dict[str, Any]) -> None:
    """Issue 30 through the MLflow client: the experiment is custom-model development, the runs carry source and
    user, the published dataset version is a LoggedModel of its run with the Kaggle reference and the LB scores,
    and the submission run lists it as an input."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=demo["tracking_uri"])
    exp = client.get_experiment_by_name("tse-demo")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(demo["run_id"])
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"].startswith("kops")
    assert run.data.tags["mlflow.user"]
    (model,) = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id = '{demo['run_id']}'")
    assert model.tags["kops.published.ref"] == demo["dataset"]
    assert model.tags["kops.published.version"] == str(demo["dataset_version"])
    assert model.tags["kops.published.kind"] == "dataset" and model.status.to_proto() == 2  # READY
    assert {m.key: m.value for m in model.metrics} == {"lb_public": demo["lb_public"], "lb_private": demo["lb_private"]}
    assert any(k.startswith("sha256/") for k in model.params)
    sub = client.get_run(demo["submission_run_id"])
    assert [m.model_id for m in sub.inputs.model_inputs] == [model.model_id]
