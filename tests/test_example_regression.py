"""examples/diabetes-regression: a user project outside the package (its own task file + a local module, RMSE)
runs the whole loop through the installed `kops` against the emulator, and `kops leaderboard` ranks its
lower-is-better scores lowest first."""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggleops.emulator import Emulator

from harness import REPO, git, kops_json, read_csv

EXAMPLE = REPO / "examples" / "diabetes-regression"
USER, KEY = "exampleuser", "examplekey"
SLUG = "diabetes-progression"


@pytest.fixture
def project(tmp_path: Path, start_emulator: Callable[..., Emulator]) -> Any:
    """The example copied into a fresh git repository, aimed at a running emulator seeded from its own folder;
    ``kops(*args)`` runs the installed `kops ARGS --json` there (asserted to succeed) and returns what it printed."""
    work = tmp_path / "diabetes"
    shutil.copytree(EXAMPLE, work)
    git(work, "init", "-q")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "example")
    emu = start_emulator(username=USER, key=KEY, score_delay_polls=0)
    emu.seed_folder(work / "competition")
    return work, emu, functools.partial(kops_json, cwd=work, env={"PYTHONPATH": None, "MLFLOW_TRACKING_URI": None})


@pytest.mark.slow
def test_example_loop_and_lower_is_better_leaderboard(project: Any) -> None:
    work, emu, kops = project
    # 1) a weaker model first (heavy L2 penalty), through the offline kernel
    (work / "kops.yaml").write_text((work / "kops.yaml").read_text().replace("alpha: 0.01", "alpha: 1.0"))
    git(work, "commit", "-q", "-am", "alpha 1.0")
    weak = kops("train", "--fold", "0", "--fold", "1")
    assert (weak["metric"], weak["higher_is_better"]) == ("rmse", False)
    weak_push = kops("push-kernel", "--run", weak["run_id"], "--submit")
    assert weak_push["status"] == "COMPLETE"
    assert weak_push["code"]["module"] == "progression:ProgressionRidge"  # the user's task travelled as code
    # 2) the example's own settings: a better (lower) RMSE
    git(work, "checkout", "-q", "HEAD~1", "--", "kops.yaml")
    git(work, "commit", "-q", "-am", "alpha 0.01")
    good = kops("train", "--fold", "0", "--fold", "1")
    assert good["cv_rmse"] < weak["cv_rmse"]
    good_push = kops("push-kernel", "--run", good["run_id"], "--submit")
    # 3) the sample submission (the train mean everywhere) as a file: the worst of the three
    kops("submit", "--file", str(work / "competition" / "sample_submission.csv"), "--run", weak_push["run_ids"][0])
    scored = {r["submission_ref"]: r for r in kops("scores", "--wait")}
    assert all(r["status"] == "COMPLETE" for r in scored.values())

    # the score on the run is RMSE recomputed from the kernel's own submission.csv and the hidden solution
    working = emu.root / "kernels" / USER / f"{SLUG}-inference" / str(good_push["kernel_version"]) / "working"
    preds = {r["id"]: float(r["progression"]) for r in read_csv(working / "submission.csv")}
    public = read_csv(work / "competition" / "solution.csv")[0::2]
    expected = math.sqrt(sum((float(r["progression"]) - preds[r["id"]]) ** 2 for r in public) / len(public))
    good_ref = good_push["submission"]["submission_ref"]
    assert scored[good_ref]["lb_public"] == pytest.approx(expected, abs=5e-6)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    for fold_run in good_push["run_ids"]:
        assert client.get_run(fold_run).data.metrics["lb_public"] == pytest.approx(expected, abs=5e-6)

    # lowest RMSE first: good (2nd submission), weak (1st), sample (3rd) — not the submission order either way
    weak_ref = weak_push["submission"]["submission_ref"]
    board = kops("leaderboard")
    lb = [r["lb_public"] for r in board]
    assert lb == sorted(lb) and board[0]["submission_ref"] == good_ref and board[1]["submission_ref"] == weak_ref
    assert [r["submission_ref"] for r in kops("leaderboard", "--sort", "cv")][0] == good_ref
