"""The credential chain is applied for every command: MLFLOW_TRACKING_URI kept only in a notebook secret store.

In a Kaggle or Colab notebook the team's tracking server often lives only in the notebook's secret store.
Before, only `kops train` looked there; `kops publish`, `kops scores`, `kops sync push` silently used a fresh
local SQLite file. Here the installed `kops` runs as a subprocess with a fake ``kaggle_secrets`` (or
``google.colab.userdata``) module on its path, no MLFLOW_TRACKING_URI in its environment and a kops.yaml that
names a local SQLite store, and each command must reach the real `mlflow server` the secret names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggleops.config import load_config
from kaggleops.emulator import Emulator
from kaggleops.schema import TAG_DATASET, TAG_KIND, TAG_SUBMISSION_STATUS, Kind

from harness import kops, write_config

USER, KEY = "chainuser", "chainkey"
COMP = "chain-comp"

KAGGLE_SECRETS = '''
import json, os
class UserSecretsClient:
    def get_secret(self, name):
        secrets = json.load(open(os.environ["FAKE_SECRETS_FILE"]))
        if name not in secrets:
            raise KeyError(name)
        return secrets[name]
'''
COLAB_USERDATA = '''
import json, os
def get(name):
    return json.load(open(os.environ["FAKE_SECRETS_FILE"]))[name]
'''


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator], tmp_path: Path) -> Emulator:
    emu = start_emulator(username=USER, key=KEY, score_delay_polls=1)
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("id,x\n0,a\n1,b\n")
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,y\n0,a\n1,a\n")
    emu.add_competition(COMP, {"test.csv": test_csv, "sample_submission.csv": sample},
                        [{"id": "0", "y": "a"}, {"id": "1", "y": "b"}], "id", "y",
                        lambda truth, pred: sum(t == p for t, p in zip(truth, pred, strict=True)) / len(truth))
    return emu


def fake_store(tmp_path: Path, kind: str, secrets: dict[str, str]) -> Path:
    """A folder holding the fake secret-store module a notebook provides, and the secrets it returns."""
    folder = tmp_path / f"fake-{kind}"
    if kind == "kaggle":
        folder.mkdir()
        (folder / "kaggle_secrets.py").write_text(KAGGLE_SECRETS)
    else:
        (folder / "google" / "colab").mkdir(parents=True)
        # no google/__init__.py: `google` stays a namespace package, so google.protobuf etc. still import
        (folder / "google" / "colab" / "__init__.py").write_text("")
        (folder / "google" / "colab" / "userdata.py").write_text(COLAB_USERDATA)
    (folder / "secrets.json").write_text(json.dumps(secrets))
    return folder


def secret_env(store: Path) -> dict[str, str | None]:
    """No MLFLOW_TRACKING_* variable; the fake secret store on the path."""
    return {**dict.fromkeys(k for k in os.environ if k.startswith("MLFLOW_TRACKING")), "PYTHONPATH": str(store),
            "FAKE_SECRETS_FILE": str(store / "secrets.json")}


def server_run(server: str, cfg: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A finished run on the server with a small `model/` artifact, made directly (not through the chain)."""
    from kaggleops.adapters.tracking import Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    try:
        tracker = Tracker(cfg)
        run_id = tracker.start_run("fold-0", {"epochs": 1}, {TAG_KIND: Kind.FOLD})
        model = cfg.root / "model-src"
        model.mkdir()
        (model / "config.json").write_text('{"hidden": 8}')
        import torch

        torch.save({"w": torch.randn(512)}, model / "weights.bin")  # loadable: publish load-checks weights
        tracker.log_artifacts(run_id, model, "model")
        tracker.end_run(run_id)
        return run_id
    finally:
        monkeypatch.delenv("MLFLOW_TRACKING_URI")


def server_client(server: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kaggle", "colab"])
def test_publish_scores_and_sync_push_reach_the_server_named_only_in_a_secret_store(
        tmp_path: Path, kind: str, mlflow_server: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    cfg = load_config(write_config(work, "tracking_uri: sqlite:///mlflow.db\n", competition=COMP, owner=USER,
                                   experiment="chain"))
    run_id = server_run(mlflow_server, cfg, monkeypatch)
    store = fake_store(tmp_path, kind, {"MLFLOW_TRACKING_URI": mlflow_server})
    client = server_client(mlflow_server)

    out = kops("publish", run_id, "--json", cwd=work, env=secret_env(store))
    assert out.returncode == 0, out.stderr
    assert client.get_run(run_id).data.tags[TAG_DATASET] == json.loads(out.stdout)["dataset"]

    (work / "sub.csv").write_text("id,y\n0,a\n1,a\n")
    out = kops("submit", "--file", "sub.csv", "--run", run_id, "--json", cwd=work, env=secret_env(store))
    assert out.returncode == 0, out.stderr
    sub_run = json.loads(out.stdout)["submission_run_id"]
    out = kops("scores", "--wait", "--timeout", "120", "--json", cwd=work, env=secret_env(store))
    assert out.returncode == 0, out.stderr
    sub = client.get_run(sub_run)
    assert sub.data.tags[TAG_SUBMISSION_STATUS] == "COMPLETE"
    assert sub.data.metrics["lb_public"] == 1.0  # the public split: the even rows
    assert client.get_run(run_id).data.metrics["lb_public"] == 1.0

    bucket = tmp_path / "bucket"
    out = kops("sync", "push", "--bucket", str(bucket), "--json", cwd=work, env=secret_env(store))
    assert out.returncode == 0, out.stderr
    pushed = {p.parent.name for p in bucket.rglob("meta.json")}  # runs/<machine>/<run id>/meta.json
    assert {run_id, sub_run} <= pushed, (pushed, out.stdout)

    assert not (work / "mlflow.db").exists()  # no command fell back to the local SQLite file


def test_an_unreachable_tracking_server_is_one_line(tmp_path: Path) -> None:
    from kaggleops.adapters.mlflow_server import free_port

    work = tmp_path / "work"
    write_config(work, f"tracking_uri: http://127.0.0.1:{free_port()}\n", competition=COMP, owner=USER,
                 experiment="chain")
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    out = kops("leaderboard", cwd=work, env=env)
    assert out.returncode == 1, out.stderr
    *countdown, last = out.stderr.strip().splitlines()  # a few tries, each announced, then one error line
    assert countdown and all(line.startswith("kops: tracking server http://127.0.0.1:") for line in countdown)
    assert last.startswith("kops: error: ") and "tracking server http://127.0.0.1:" in last
    assert "Traceback" not in out.stderr
