"""`kops train --on kaggle`: a training kernel, executed by the emulator, trains the pushed commit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kaggleops.adapters.tracking import TAG_GIT_COMMIT, Tracker
from kaggleops.config import load_config, render_template
from kaggleops.emulator import Emulator
from kaggleops.emulator.seeding import seed_competition
from kaggleops.stages.remote_train import train_on_kaggle
from kaggleops.tasks import get_task

from harness import git

PASSWORD = "s3cr3t-tracking-pass"
KEY = "k3y-0f-alice"


@pytest.mark.slow
def test_training_kernel_trains_pushed_commit_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              start_emulator: Callable[..., Emulator]) -> None:
    work, bare = tmp_path / "work", tmp_path / "remote.git"
    work.mkdir()
    git(work, "init", "-q")
    (work / "kops.yaml").write_text(render_template(owner="alice", folds=[0], epochs=1, experiment="remote"))
    git(work, "add", "-A")
    git(work, "commit", "-qm", "train me")
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    git(work, "remote", "add", "origin", str(bare))
    head = git(work, "rev-parse", "HEAD")
    store = f"sqlite:///{tmp_path / 'central.db'}"
    emu = start_emulator(username="alice", key=KEY)
    seed_competition(emu, get_task("tweet-sentiment-extraction"))
    for var, value in {"MLFLOW_TRACKING_URI": store, "MLFLOW_TRACKING_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(var, value)
    cfg = load_config(work / "kops.yaml")
    result = train_on_kaggle(cfg, wait=True)
    assert result.status == "COMPLETE" and len(result.run_ids) == 1
    assert result.git == f"{bare}@{head}"
    run = Tracker(cfg).get_run(result.run_ids[0])
    assert run.data.tags[TAG_GIT_COMMIT] == head
    kernel_dir = work / ".kops" / "kernels" / "remote-train"
    for path in kernel_dir.iterdir():
        text = path.read_text()
        assert PASSWORD not in text and KEY not in text, path.name
    assert '"enable_internet": true' in (kernel_dir / "kernel-metadata.json").read_text()
