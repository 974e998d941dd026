"""`kops train --on kaggle`: the rendered training kernel holds no credential and gets kops from the runtime dataset.

The kernel executed end to end (emulator sessions, secrets, a git host, a team server, a kill and a resume) is in
tests/test_train_on_kaggle.py; a local-path origin, which this file's earlier end-to-end test used, is refused
before any push since issue #31.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggleops.config import load_config, render_template
from kaggleops.kernel.wheel import RuntimeDataset
from kaggleops.refs import KernelRef
from kaggleops.stages.gitsource import GitSpec
from kaggleops.stages.remote_train import SECRET_NAMES, render_training_kernel

PASSWORD = "s3cr3t-tracking-pass"
KEY = "k3y-0f-alice"
SERVER = "https://mlflow.team.example"


def test_training_kernel_holds_no_secret_and_installs_kops_from_the_runtime_dataset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kops.yaml").write_text(render_template(owner="alice", folds=[0], epochs=1, experiment="remote"))
    for var, value in {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": KEY, "MLFLOW_TRACKING_URI": SERVER,
                       "MLFLOW_TRACKING_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(var, value)
    cfg = load_config(tmp_path / "kops.yaml")
    runtime = RuntimeDataset("alice/kops-runtime", 3, "ab" * 32, "kaggleops-0.1.0-py3-none-any.whl", created=False)
    folder = render_training_kernel(cfg, KernelRef("alice", "remote-train"),
                                    GitSpec("https://github.com/alice/project.git", "0" * 40), [0], "NvidiaTeslaT4",
                                    tmp_path / "kernel", runtime, resume=True)
    for path in folder.iterdir():
        text = path.read_text()
        assert PASSWORD not in text and KEY not in text and SERVER not in text, path.name
    metadata = json.loads((folder / "kernel-metadata.json").read_text())
    assert metadata["enable_internet"] is True and metadata["dataset_sources"] == ["alice/kops-runtime"]
    source = (folder / "kernel.py").read_text()
    assert '"--no-index", "--no-deps"' in source and "kaggleops==" not in source  # never by name from an index
    assert all(name in source for name in SECRET_NAMES)
    plan = json.loads(source.split('PLAN = json.loads(r"""', 1)[1].split('""")', 1)[0])
    assert plan["resume"] is True and plan["required_secrets"] == ["MLFLOW_TRACKING_URI"]
    assert plan["runtime"]["version"] == 3 and plan["git"] == f"https://github.com/alice/project.git@{'0' * 40}"
    assert plan["requirements"]["mlflow"]  # kops' own dependencies, pinned to this machine's versions
