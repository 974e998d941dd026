"""The built-in Digit Recognizer task: the bundled competition files, the task through the public interface
(settings, data checks, per-step logging, checkpoint/resume, probability-averaging ensemble) and
`kops demo --competition digit-recognizer --json` end to end through the installed `kops`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kaggleops.resources import bundled_competition
from kaggleops.task import DataError, FoldContext, PredictContext, SettingsError
from kaggleops.tasks import get_task

from harness import kops, read_csv

SLUG = "digit-recognizer"
FOLDER = bundled_competition(SLUG)
FAST = {"epochs": 3, "channels": 8}


@pytest.fixture(scope="module")
def task() -> Any:
    return get_task(SLUG)


@pytest.fixture(scope="module")
def train(task: Any) -> Any:
    return task.make_folds(task.load_train(FOLDER / "train.csv"), 5, 42)


# ---- the bundled competition -------------------------------------------------------------------------------------


def test_bundled_files_have_kaggles_shape() -> None:
    train, test = read_csv(FOLDER / "train.csv"), read_csv(FOLDER / "test.csv")
    sample, solution = read_csv(FOLDER / "sample_submission.csv"), read_csv(FOLDER / "solution.csv")
    pixels = [f"pixel{i}" for i in range(64)]
    assert list(train[0]) == ["label", *pixels] and list(test[0]) == pixels
    assert (len(train), len(test)) == (1197, 600)
    assert [r["ImageId"] for r in sample] == [str(i) for i in range(1, 601)] == [r["ImageId"] for r in solution]
    assert {r["Label"] for r in solution} == {str(d) for d in range(10)}
    assert [r["Usage"] for r in solution[:4]] == ["Public", "Private", "Public", "Private"]  # the emulator's split
    assert max(int(v) for r in train for v in list(r.values())[1:]) == 255
    assert json.loads((FOLDER / "competition.json").read_text())["metric"] == "accuracy"


def test_generator_script_rewrites_identical_files(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    subprocess.run([sys.executable, str(FOLDER / "make_competition.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=300)
    for name in ("train.csv", "test.csv", "sample_submission.csv", "solution.csv", "competition.json"):
        assert (tmp_path / name).read_bytes() == (FOLDER / name).read_bytes(), name


def test_test_rows_are_held_out_images() -> None:
    """No test image is also a train image."""
    train = {tuple(list(r.values())[1:]) for r in read_csv(FOLDER / "train.csv")}
    test = [tuple(r.values()) for r in read_csv(FOLDER / "test.csv")]
    assert not [t for t in test if t in train]


# ---- the task ----------------------------------------------------------------------------------------------------


def test_task_is_built_in_and_validates_settings(task: Any) -> None:
    assert task.submission.header == ["ImageId", "Label"]
    assert (task.metric.name, task.metric.higher_is_better) == ("accuracy", True)
    assert task.settings({"epochs": 2, "lr": 1}).epochs == 2
    with pytest.raises(SettingsError, match="unknown train setting `epoch`; known: batch_size, channels"):
        task.settings({"epoch": 2})
    with pytest.raises(SettingsError, match="train setting `channels` must be a int, not '32'"):
        task.settings({"channels": "32"})


def test_bad_files_name_the_problem(task: Any, tmp_path: Path) -> None:
    bad = tmp_path / "train.csv"
    bad.write_text("pixel0,pixel1,pixel2,pixel3\n0,1,2,3\n")
    with pytest.raises(DataError, match="missing column 'label'"):
        task.load_train(bad)
    bad.write_text("label,pixel0,pixel1,pixel2\n1,0,1,2\n")
    with pytest.raises(DataError, match="3 pixel columns do not make a square image"):
        task.load_train(bad)
    bad.write_text("label,pixel0,pixel1,pixel2,pixel3\n11,0,1,2,3\n")
    with pytest.raises(DataError, match="must hold digits 0..9"):
        task.load_train(bad)


def test_folds_are_stratified(train: Any) -> None:
    counts = train.groupby(["label", "fold"]).size().unstack()
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1
    assert sorted(train["fold"].unique()) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_train_fold_logs_every_step_checkpoints_and_resumes(task: Any, train: Any, tmp_path: Path) -> None:
    import torch

    settings = task.settings(FAST)
    logged: list[tuple[int, dict[str, float]]] = []
    checkpoints: list[tuple[Path, int]] = []
    res = task.train_fold(train, settings, FoldContext(0, tmp_path / "full", seed=7,
                                                       log=lambda m, s: logged.append((s, m)),
                                                       checkpoint=lambda f, s: checkpoints.append((f, s))))
    steps_per_epoch = -(-int((train["fold"] != 0).sum()) // settings.batch_size)
    assert res.steps == 3 * steps_per_epoch
    assert [s for s, m in logged if "train_loss" in m] == list(range(1, res.steps + 1))
    assert [s for s, m in logged if "val_accuracy" in m] == [steps_per_epoch * e for e in (1, 2, 3)]
    best = max(m["val_accuracy"] for s, m in logged if "val_accuracy" in m)
    assert res.score == best and res.best_step in [s for s, m in logged if m.get("val_accuracy") == best]
    assert [s for _, s in checkpoints] == [steps_per_epoch * e for e in (1, 2, 3)]
    assert all(task.is_checkpoint(f) for f, _ in checkpoints) and not task.is_checkpoint(tmp_path)
    oof = read_csv(Path(res.oof))
    assert len(oof) == int((train["fold"] == 0).sum()) and {"ImageId", "Label", "label", "p9"} <= set(oof[0])
    assert sum(r["Label"] == r["label"] for r in oof) / len(oof) == pytest.approx(res.score)

    resumed = task.train_fold(train, settings, FoldContext(0, tmp_path / "resumed", seed=7,
                                                           resume_from=checkpoints[0][0]))
    assert resumed.steps == res.steps and resumed.score == res.score
    full = torch.load(res.model_dir / "model.pt")
    again = torch.load(resumed.model_dir / "model.pt")
    assert all(torch.equal(full[k], again[k]) for k in full)


@pytest.mark.slow
def test_predict_averages_probabilities_over_model_folders(task: Any, train: Any, tmp_path: Path) -> None:
    import numpy as np

    test = task.load_test(FOLDER / "test.csv")
    dirs = [task.train_fold(train, task.settings(FAST), FoldContext(f, tmp_path / f"f{f}")).model_dir
            for f in (0, 1)]
    each = [task.probabilities([d], test) for d in dirs]
    weighted = task.probabilities(dirs, test, [0.25, 0.75])
    assert np.allclose(weighted, 0.25 * each[0] + 0.75 * each[1])
    preds = task.predict(dirs, test, PredictContext([0.25, 0.75], tmp_path, log=lambda line: None))
    assert list(preds.columns) == ["ImageId", "Label", *(f"p{k}" for k in range(10))]
    assert preds["ImageId"].tolist() == list(range(1, 601))
    assert preds["Label"].tolist() == weighted.argmax(axis=1).tolist()
    # the probabilities ride along: a kernel blending two code versions combines these tables as kops ensemble did
    assert np.allclose(preds[list(task.blend_columns)].to_numpy(), weighted)
    assert task.combine([preds, preds], [0.5, 0.5])["Label"].tolist() == preds["Label"].tolist()


# ---- kops demo --competition digit-recognizer --------------------------------------------------------------------


def test_demo_and_emulator_name_the_bundled_competitions(tmp_path: Path) -> None:
    expected = ("kops: error: No bundled competition 'nope' (and no folder with a competition.json there). "
                "Bundled competitions: demand-forecasting, digit-recognizer, tweet-sentiment-extraction.\n")
    for args in (["demo", "--competition", "nope", "--workdir", str(tmp_path / "w")],
                 ["emulator", "start", "--competition", "nope"]):
        out = kops(*args)
        assert (out.returncode, out.stderr) == (1, expected)
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real `kops demo --competition digit-recognizer --json` (the task's default settings, fold 0)."""
    workdir = tmp_path_factory.mktemp("digits-demo") / "work"
    home = tmp_path_factory.mktemp("home")
    unset = dict.fromkeys(("MLFLOW_TRACKING_URI", "KOPS_KAGGLE_ENDPOINT", "KAGGLE_USERNAME", "KAGGLE_KEY",
                           "KAGGLE_API_TOKEN"))
    out = kops("demo", "--competition", SLUG, "--json", "--workdir", str(workdir),
               env={"HOME": str(home), "TMPDIR": str(home), **unset}, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    summary["stderr"] = out.stderr
    return summary


@pytest.mark.slow
def test_demo_reports_the_same_keys_as_the_default_demo(demo: dict[str, Any]) -> None:
    for key in ("run_id", "dataset", "dataset_version", "kernel", "kernel_version", "submission_ref",
                "lb_public", "lb_private"):
        assert demo[key] not in (None, ""), key
    assert demo["competition"] == SLUG and demo["status"] == "COMPLETE"
    assert demo["kernel"] == "kopsdemo/dr-demo-inference"
    for stage in ("emulator", "train", "publish", "push-kernel", "submit", "scores"):
        assert f"✓ {stage}" in demo["stderr"]


@pytest.mark.slow
def test_demo_scores_are_accuracy_of_the_kernels_submission(demo: dict[str, Any]) -> None:
    """lb_public/lb_private equal accuracy recomputed from the kernel's submission.csv and the hidden solution,
    and a well-trained small CNN gets at least 0.95 of the held-out images right."""
    owner, slug = demo["kernel"].split("/")
    working = Path(demo["workdir"]) / ".emulator" / "kernels" / owner / slug / str(demo["kernel_version"]) / "working"
    preds = {r["ImageId"]: r["Label"] for r in read_csv(working / "submission.csv")}
    solution = read_csv(FOLDER / "solution.csv")
    assert len(preds) == len(solution)

    def accuracy(rows: list[dict[str, str]]) -> float:
        return sum(preds[r["ImageId"]] == r["Label"] for r in rows) / len(rows)

    assert demo["lb_public"] == pytest.approx(accuracy(solution[0::2]), abs=5e-6)
    assert demo["lb_private"] == pytest.approx(accuracy(solution[1::2]), abs=5e-6)
    assert accuracy(solution) >= 0.95


@pytest.mark.slow
def test_demo_run_carries_the_score_and_the_step_metrics(demo: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=demo["tracking_uri"])
    run = client.get_run(demo["run_id"])
    assert run.data.metrics["lb_public"] == pytest.approx(demo["lb_public"])
    assert run.data.metrics["lb_private"] == pytest.approx(demo["lb_private"])
    assert run.data.tags.get("kops.metric") == "accuracy"
    steps = {m.step for m in client.get_metric_history(demo["run_id"], "train_loss")}
    assert len(steps) > 100
    assert len(client.get_metric_history(demo["run_id"], "val_accuracy")) == 20
