"""`kops ensemble`: weights chosen on the OOF of tracked runs (Caruana, hill climbing, nested CV), refusals, and one
kernel from the blend whose LB scores land on the ensemble run, its members and their folds."""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kaggleops.emulator import Emulator
from kaggleops.errors import DataError
from kaggleops.stages import blend
from kaggleops.stages.ensemble import KEY, Blend, check_same_rows, rank_tables
from kaggleops.task import Metric, Submission, TaskBase

from harness import REPO, git, kops, kops_json

EXAMPLE = REPO / "examples" / "diabetes-regression"
USER, KEY_ = "exampleuser", "examplekey"


# ---- the selection, on synthetic OOF where the answer is known (no training) --------------------------------

def _rmse(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return float(np.sqrt(((truth["y"].to_numpy() - pred["y"].to_numpy()) ** 2).mean()))


class Regression(TaskBase):
    name = "synthetic"
    submission = Submission("id", ("y",))
    metric = Metric("rmse", higher_is_better=False, fn=_rmse)


def _problem(errors: list[np.ndarray], n_folds: int = 4) -> Blend:
    n = len(errors[0])
    truth = pd.DataFrame({"id": np.arange(n), "y": np.linspace(0, 1, n), "fold": np.arange(n) % n_folds})
    tables = [truth.assign(y=truth["y"] + e, **{KEY: truth["id"].astype(str)}) for e in errors]
    return Blend(Regression(), tables, truth)


def test_caruana_finds_the_weights_that_cancel_the_errors() -> None:
    e = np.where(np.arange(120) % 2 == 0, 1.0, -1.0)
    # A errs by +2e, B by -e: (1/3)·2e + (2/3)·(-e) = 0, reachable with replacement (1 copy of A, 2 of B);
    # C is noise that never helps
    noise = np.random.RandomState(0).normal(0, 3, 120)
    problem = _problem([2 * e, -e, noise])
    chosen = blend.caruana(3, problem.objective(problem.fold_ids))
    assert chosen.weights.tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert problem.cv(chosen.weights) == pytest.approx(0.0, abs=1e-12)
    assert chosen.trajectory[0] == pytest.approx(-1.0)  # step 1: B alone (RMSE 1), the best single member
    assert chosen.best_step == 3


def test_caruana_can_start_from_the_best_members_together() -> None:
    e = np.where(np.arange(120) % 2 == 0, 1.0, -1.0)
    problem = _problem([3 * e, -e, 5 * e])  # best alone: B, then A; together (1:1) they err by e, (1:3) by 0
    chosen = blend.caruana(3, problem.objective(problem.fold_ids), init=2)
    assert chosen.trajectory[0] == pytest.approx(-1.0)  # step 1: A and B, one copy each
    assert chosen.weights.tolist() == pytest.approx([0.25, 0.75, 0.0])


def test_hill_climbing_gets_close_to_the_same_blend() -> None:
    e = np.where(np.arange(120) % 2 == 0, 1.0, -1.0)
    problem = _problem([2 * e, -e])
    chosen = blend.hill_climb(2, problem.objective(problem.fold_ids))
    assert chosen.weights[0] == pytest.approx(1 / 3, abs=0.02)
    assert problem.cv(chosen.weights) < 0.05 < problem.cv(blend.one_hot(2, 1))


def test_nested_cv_chooses_without_the_scored_fold_and_is_no_better_than_in_sample() -> None:
    rng = np.random.RandomState(1)
    problem = _problem([rng.normal(0, 1, 200) for _ in range(4)], n_folds=5)
    seen: list[list[int]] = []

    def select(folds: list[int]) -> Any:
        seen.append(folds)
        return blend.caruana(4, problem.objective(folds)).weights

    nested, per_fold = blend.nested_cv(problem.fold_ids, select, lambda w, k: problem.score(w, [k]))
    assert seen == [[f for f in range(5) if f != k] for k in range(5)]
    assert sorted(per_fold) == list(range(5)) and nested == pytest.approx(np.mean(list(per_fold.values())))
    in_sample = problem.cv(blend.caruana(4, problem.objective(problem.fold_ids)).weights)
    assert in_sample <= nested  # weights fitted to the rows they are scored on look better than they are
    with pytest.raises(ValueError, match="two folds"):
        blend.nested_cv([0], select, lambda w, k: 0.0)


def test_members_with_other_rows_or_folds_are_refused_naming_the_first_mismatch() -> None:
    def oof(ids: list[int], folds: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"id": ids, "y": 0.0, "fold": folds, KEY: [str(i) for i in ids]}).sort_values(KEY)

    check_same_rows({"a": oof([1, 2, 3], [0, 1, 0]), "b": oof([1, 2, 3], [0, 1, 0])})
    with pytest.raises(DataError, match=r"^Members a and b differ in folds: id 2 is in fold 1 in one, fold 0"):
        check_same_rows({"a": oof([1, 2, 3], [0, 1, 0]), "b": oof([1, 2, 3], [0, 0, 0])})
    with pytest.raises(DataError, match=r"^Members a and c differ in rows: id 3 is only in a's OOF \(3 vs 2 rows\)"):
        check_same_rows({"a": oof([1, 2, 3], [0, 1, 0]), "c": oof([1, 2], [0, 1])})


def test_rank_averaging_blends_percentile_ranks_not_raw_scales() -> None:
    a = pd.DataFrame({"id": [1, 2, 3], "y": [10.0, 30.0, 20.0]})
    b = pd.DataFrame({"id": [1, 2, 3], "y": [0.3, 0.1, 0.2]})
    ranked = rank_tables(Regression(), [a, b])
    assert ranked[0]["y"].tolist() == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert Regression().combine(ranked, [0.5, 0.5])["y"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])


def test_the_default_combine_averages_numbers_and_names_a_column_it_cannot() -> None:
    a = pd.DataFrame({"id": [1, 2], "y": [0.0, 4.0]})
    assert Regression().combine([a, a.assign(y=[2.0, 0.0])], [0.5, 0.5])["y"].tolist() == [1.0, 2.0]
    with pytest.raises(DataError, match="column 'y' is not numeric"):
        Regression().combine([a.assign(y=["x", "y"]), a], [0.5, 0.5])


def test_digits_blends_probabilities_then_takes_the_argmax() -> None:
    from kaggleops.tasks.digits import DigitRecognizer as DigitsTask

    probs = {f"p{k}": 0.0 for k in range(10)}
    a = pd.DataFrame([{"ImageId": 1, "Label": 3, **probs, "p3": 0.6, "p5": 0.4}])
    b = pd.DataFrame([{"ImageId": 1, "Label": 5, **probs, "p3": 0.1, "p5": 0.9}])
    assert DigitsTask().combine([a, b], [0.5, 0.5])["Label"].tolist() == [5]
    assert DigitsTask().combine([a, b], [0.9, 0.1])["Label"].tolist() == [3]


def test_tse_combine_picks_the_span_the_weighted_runs_agree_on() -> None:
    from kaggleops.tasks.tse import TweetSentimentExtraction as TSETask

    row = {"textID": "t1", "text": "so very happy today", "sentiment": "positive", "selected_text": "happy"}
    tables = [pd.DataFrame([{**row, "pred": p}]) for p in ("very happy", "happy", "happy today")]
    assert TSETask().combine(tables, [0.3, 0.4, 0.3])["selected_text"].tolist() == ["happy"]
    assert TSETask().combine(tables, [0.8, 0.1, 0.1])["selected_text"].tolist() == ["very happy"]


# ---- the loop: three runs → kops ensemble → one kernel → scores on every run -------------------------------

@pytest.fixture
def project(tmp_path: Path, start_emulator: Callable[..., Emulator]) -> Any:
    work = tmp_path / "diabetes"
    shutil.copytree(EXAMPLE, work)
    _set(work, seed="3")  # the fold assignment every member shares
    git(work, "init", "-q")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "example")
    emu = start_emulator(username=USER, key=KEY_, score_delay_polls=0)
    emu.seed_folder(work / "competition")
    env = {"PYTHONPATH": None, "MLFLOW_TRACKING_URI": None}
    return work, functools.partial(kops_json, cwd=work, env=env), functools.partial(kops, cwd=work, env=env)


def _set(work: Path, **values: str) -> None:
    """Set ``train:`` keys of the project's kops.yaml (a key it lacks is added under ``train:``)."""
    text = (work / "kops.yaml").read_text()
    for key, value in values.items():
        line = re.compile(rf"^  {key}: .*$", re.MULTILINE)
        text = line.sub(f"  {key}: {value}", text) if line.search(text) else text.replace(
            "train:", f"train:\n  {key}: {value}", 1)
    (work / "kops.yaml").write_text(text)


def _train(work: Path, kops: Any, **values: str) -> dict[str, Any]:
    if values:
        _set(work, **values)
        git(work, "commit", "-q", "-am", f"train {values}")
    return kops("train")


@pytest.mark.slow
def test_a_blend_of_three_runs_beats_the_best_one_on_the_private_board(project: Any) -> None:
    work, kops, kops_raw = project
    ridge = _train(work, kops)
    squares = _train(work, kops, squares="true")
    knn = _train(work, kops, squares="false", model="knn", k="20", features="[bmi, bp, s5]")
    other_folds = _train(work, kops, seed="4")
    members = [ridge["run_id"], squares["run_id"], knn["run_id"]]

    refused = kops_raw("ensemble", *members, other_folds["run_id"])
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert re.match(rf"kops: error: Members {ridge['run_id']} and {other_folds['run_id']} differ in folds: id \d+ is "
                    r"in fold \d in one, fold \d in the other\.", refused.stderr)

    ens = kops("ensemble", *[m[:10] for m in members])  # prefixes name runs too
    cv = {m: ens["member_cv"][m] for m in members}
    assert cv[squares["run_id"]] == pytest.approx(squares["cv_rmse"])  # kops' own CV of a member = train's
    assert ens["best_member"] == squares["run_id"] and sorted(ens["weights"]) == sorted(members)
    assert ens["cv_rmse"] < ens["nested_cv_rmse"] < cv[squares["run_id"]]  # nested CV predicts a (smaller) gain
    print(f"\nbest member cv_rmse {cv[squares['run_id']]:.4f}; blend cv_rmse {ens['cv_rmse']:.4f} (in-sample), "
          f"nested_cv_rmse {ens['nested_cv_rmse']:.4f} (nested gain {ens['nested_gain']:+.4f}); "
          f"weights {json.dumps({k[:8]: round(v, 3) for k, v in ens['weights'].items()})}")

    top = kops("ensemble", "--filter", "params.seed = '3'", "--top", "2", "--method", "hill", "--no-nested")
    assert sorted(top["member_cv"]) == sorted([ridge["run_id"], squares["run_id"]])  # the two best CVs of seed 3
    assert top["nested_cv_rmse"] is None and top["cv_rmse"] <= cv[squares["run_id"]]

    no_publish = kops_raw("push-kernel", "--run", ens["run_id"], "--no-publish")
    assert no_publish.returncode == 1
    assert no_publish.stderr.strip().splitlines()[-1] == (
        f"kops: error: Member {ridge['run_id']} of ensemble {ens['run_id']} has 5 fold run(s) never published (and "
        f"--no-publish was given). Publish it with: kops publish {ridge['run_id']} (or push without --no-publish: "
        "kops publishes it)")

    push = kops("push-kernel", "--run", ens["run_id"], "--submit", "-m", "blend of 3")
    assert push["status"] == "COMPLETE" and len(push["run_ids"]) == 15
    single = kops("push-kernel", "--run", squares["run_id"], "--submit", "-m", "the best member alone")
    private = {r["submission_ref"]: r["lb_private"] for r in kops("scores", "--wait")}
    blend_ref, best_ref = push["submission"]["submission_ref"], single["submission"]["submission_ref"]
    print(f"private RMSE on the emulator: blend {private[blend_ref]:.4f}, best member alone {private[best_ref]:.4f}")
    assert private[blend_ref] < private[best_ref]
    board = {r["submission_ref"]: r for r in kops("leaderboard")}
    assert board[blend_ref]["cv"] == pytest.approx(ens["cv_rmse"])  # the blend's CV, not its folds' mean

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    run = client.get_run(ens["run_id"])
    assert run.data.tags["kops.kind"] == "ensemble" and run.data.metrics["lb_private"] == private[blend_ref]
    history = sorted(client.get_metric_history(ens["run_id"], "selection_rmse"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx(ens["trajectory"])  # the selection's score per step
    assert min(ens["trajectory"]) == ens["trajectory"][ens["best_step"] - 1]  # the best prefix was kept
    assert {a.path for a in client.list_artifacts(ens["run_id"], "ensemble")} == {
        "ensemble/trajectory.json", "ensemble/trajectory.png"}
    for member in members:  # the knn member only ever ran inside the blend: its scores are the blend's
        tags = client.get_run(member).data.tags
        assert ens["run_id"] in tags["kops.ensemble.of"]
    assert client.get_run(knn["run_id"]).data.metrics["lb_private"] == private[blend_ref]
    for fold_run in push["run_ids"]:
        fold = client.get_run(fold_run).data
        assert "lb_private" in fold.metrics and fold.metrics["kernel_seconds_per_model"] > 0

    over = kops_raw("push-kernel", "--run", ens["run_id"], "--time-limit", "0.001")
    assert over.returncode == 1
    assert re.match(r"kops: error: The blend's kernel would take about \d+ s \(15 model\(s\), 15 timed by earlier "
                    r"kernels\), over the session limit of 0 s\. .*--ignore-time-limit$",
                    over.stderr.strip().splitlines()[-1])
