"""`kops train --on kaggle` end to end, and `kops train --git` against a fresh team server (issue #31)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import git, kops

TSE = "tweet-sentiment-extraction"
# One fold of the tiny model on the bundled sample: a few seconds of CPU.
TINY_TRAIN = """train:
  folds: [0]
  epochs: 1
  max_steps: 4
"""


def project_remote(base: Path, experiment: str, train: str = TINY_TRAIN) -> tuple[Path, Path, str]:
    """A user's project (kops.yaml committed) and a bare repository it was pushed to: (work, bare, commit)."""
    work, bare = base / "work", base / "remote.git"
    work.mkdir(parents=True)
    (work / "kops.yaml").write_text(f"competition: {TSE}\nowner: alice\nexperiment: {experiment}\n{train}")
    (work / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.kops/\n")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "project")
    git(base, "clone", "-q", "--bare", str(work), str(bare))
    git(work, "remote", "add", "origin", str(bare))
    return work, bare, git(work, "rev-parse", "HEAD")


@pytest.mark.slow
def test_git_train_creates_the_experiment_on_a_fresh_server(tmp_path: Path, mlflow_server: str) -> None:
    """#31 point 2: `kops train --git` (what the training kernel runs) against a server that has never seen the
    experiment used to die with `TypeError: argument of type 'NoneType' is not iterable`."""
    from mlflow.tracking import MlflowClient

    _, bare, commit = project_remote(tmp_path, "fresh-server")
    empty = tmp_path / "kernel-cwd"  # the kernel runs it from a folder without kops.yaml
    empty.mkdir()
    out = kops("train", "--git", f"{bare}@{commit}", "--sample", "--json", cwd=empty,
               env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert out.returncode == 0, out.stderr[-3000:]
    (run_id,) = [r["run_id"] for r in json.loads(out.stdout)["runs"]]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("fresh-server")
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    run = client.get_run(run_id)
    assert run.info.experiment_id == experiment.experiment_id and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == commit
    assert not list(empty.iterdir())  # nothing written where it ran: the server holds the run and its artifacts
