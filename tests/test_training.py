"""`kops train`: resume after SIGKILL, k-fold parent/children, OOF candidates, provenance, credentials, logging."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from kaggleops.config import load_config
from kaggleops.tasks.tse import infer

from harness import git, python_script

TSE = "tweet-sentiment-extraction"
# 640 training rows / batch 64 = 10 steps an epoch; the kill lands mid-epoch 2, after checkpoints at 4, 8, 12.
TRAIN_YAML = """competition: tweet-sentiment-extraction
tracking_uri: sqlite:///mlflow.db
train:
  epochs: 3
  batch_size: 64
  max_steps: 24
  eval_every: 8
  checkpoint_every: 4
  oof_top_k: 4
"""
# Runs `kops train` in a real process; with KILL_AT it SIGKILLs itself inside that optimizer step (before its log)
# (after a pause that lets the background sender store the last checkpoint and the metrics logged since).
# Counts the steps it trained.
RUNNER = """
import os, signal, sys, time
from pathlib import Path
import kaggleops.tasks.tse.train as t
import kaggleops.adapters.metric_logger as metric_logger
metric_logger.MetricLogger.__init__.__defaults__ = tuple(  # send within 0.1 s: the kill lands after
    0.1 if d == metric_logger.FLUSH_INTERVAL_S else d for d in metric_logger.MetricLogger.__init__.__defaults__)
kill_at, done = int(os.environ.get("KILL_AT", "0")), [0]
original = t._train_step
def step(loop, batches):
    out = original(loop, batches)
    done[0] += 1
    Path("steps.txt").write_text(str(done[0]))
    if loop.step + 1 == kill_at:
        time.sleep(2.0)
        os.kill(os.getpid(), signal.SIGKILL)
    return out
t._train_step = step
from kaggleops.cli import main
sys.argv = ["kops", "train", "--fold", "0", "--sample", "--json", *sys.argv[1:]]
main()
"""


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """2 shared CPU cores: one intra-op thread is ~2.5x faster here than oversubscribed threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _workdir(path: Path, yaml: str = TRAIN_YAML) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "kops.yaml").write_text(yaml)
    (path / "runner.py").write_text(RUNNER)
    return path


def _kops_train(workdir: Path, *args: str, kill_at: int = 0) -> subprocess.CompletedProcess[str]:
    """``python runner.py ARGS`` in its own process (forked from the warm server: harness.python_script)."""
    return python_script(Path("runner.py"), *args, cwd=workdir, env={"KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"},
                         timeout=600)


def _client(workdir: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _checkpoint_state(workdir: Path, run_id: str) -> dict[str, Any]:
    import torch

    from kaggleops.adapters.tracking import Tracker
    from kaggleops.stages.fold_artifacts import download_checkpoint
    from kaggleops.tasks.tse.checkpoint import STATE_FILE

    folder = download_checkpoint(Tracker(load_config(workdir / "kops.yaml")), run_id, workdir / "ckpt")
    assert folder is not None
    return torch.load(Path(folder) / STATE_FILE, weights_only=False)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_continues_the_same_run(tmp_path: Path) -> None:
    import torch

    ref_dir, dir_ = _workdir(tmp_path / "reference"), _workdir(tmp_path / "killed")
    ref = _kops_train(ref_dir)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_run = json.loads(ref.stdout)["run_id"]

    killed = _kops_train(dir_, kill_at=15)
    assert killed.returncode == -9, killed.stderr[-3000:]
    client = _client(dir_)
    (run,) = client.search_runs([client.get_experiment_by_name(TSE).experiment_id])
    # metrics of steps 13..14 were stored after the last checkpoint (12): the resumed run must not log them twice
    assert run.info.status == "RUNNING" and max(s for s, _ in _history(client, run.info.run_id, "train_loss")) == 14

    resumed = _kops_train(dir_, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["run_id"] == run.info.run_id
    runs = client.search_runs([client.get_experiment_by_name(TSE).experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # one run, reopened and finished
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["kops.resumes"] == "1"
    replayed = int((dir_ / "steps.txt").read_text())
    assert replayed in (24 - 12, 24 - 8, 24 - 4)  # continued from a checkpoint, not from step 0

    ref_client = _client(ref_dir)
    for key in ("train_loss", "lr", "val_jaccard", "val_loss", "val_jaccard_negative"):
        got, want = _history(client, run.info.run_id, key), _history(ref_client, ref_run, key)
        assert [s for s, _ in got] == [s for s, _ in want], key  # no duplicated or missing steps
        assert got == want, key  # and the very same values
    assert [s for s, _ in _history(client, run.info.run_id, "train_loss")] == list(range(1, 25))
    final, final_ref = _checkpoint_state(dir_, run.info.run_id), _checkpoint_state(ref_dir, ref_run)
    assert final["step"] == final_ref["step"] == 24
    assert all(torch.equal(final["model"][k], final_ref["model"][k]) for k in final_ref["model"])
    oof = Path(client.download_artifacts(run.info.run_id, "oof/oof.csv", str(tmp_path / "o1"))).read_text()
    oof_ref = Path(ref_client.download_artifacts(ref_run, "oof/oof.csv", str(tmp_path / "o2"))).read_text()
    assert oof == oof_ref


# ---- k-fold, OOF candidates, resume of a k-fold job (in process) -------------------------------------------

KFOLD_YAML = """competition: tweet-sentiment-extraction
tracking_uri: sqlite:///mlflow.db
train:
  epochs: 1
  batch_size: 64
  max_steps: 3
  eval_every: 2
  checkpoint_every: 2
  oof_top_k: 3
"""


@pytest.fixture
def kfold_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    (tmp_path / "kops.yaml").write_text(KFOLD_YAML)
    monkeypatch.chdir(tmp_path)
    return load_config(tmp_path / "kops.yaml")


@pytest.mark.slow
def test_kfold_parent_children_metrics_and_oof_candidates(kfold_cfg: Any, tmp_path: Path) -> None:
    import pandas as pd

    from kaggleops.stages.train import train

    result = train(kfold_cfg, folds=[0, 1], progress=False, sample=True)
    client = _client(tmp_path)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["kops.kind"] == "kfold" and parent.info.status == "FINISHED"
    assert parent.data.metrics["cv_jaccard"] == pytest.approx(sum(r.score for r in result.runs) / 2)
    for fold_run in result.runs:
        run = client.get_run(fold_run.run_id)
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert run.data.tags["kops.fold"] == str(fold_run.fold) and run.info.status == "FINISHED"
        assert {"train_loss", "lr", "samples_per_s", "val_loss", "val_jaccard", "val_jaccard_neutral",
                "val_jaccard_positive", "val_jaccard_negative", "best_val_jaccard"} <= set(run.data.metrics)
        best = max(v for _, v in _history(client, fold_run.run_id, "val_jaccard"))
        assert run.data.metrics["best_val_jaccard"] == pytest.approx(best) == pytest.approx(fold_run.score)
        assert run.data.tags["kops.gpu"] and run.data.tags["kops.env"] == "local"
        path = client.download_artifacts(fold_run.run_id, "oof/oof.csv", str(tmp_path / f"oof{fold_run.fold}"))
        oof = pd.read_csv(path, keep_default_na=False)
        assert list(oof.columns) == ["textID", "sentiment", "text", "selected_text", "pred", "jaccard", "candidates",
                                     "fold"]  # the fold that held the row out (kops adds it: the blendable OOF)
        for text, raw in zip(oof["text"], oof["candidates"], strict=True):
            cands = json.loads(raw)
            assert 1 <= len(cands) <= 3
            assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
            assert all(text[c["start"]:c["end"]] == c["text"] and set(c) == {"start", "end", "text", "score"}
                       for c in cands)
        non_neutral = oof[oof["sentiment"] != "neutral"]
        assert all(json.loads(c)[0]["text"] == p for c, p in zip(non_neutral["candidates"], non_neutral["pred"],
                                                                  strict=True))


@pytest.mark.slow
def test_resume_kfold_job_keeps_finished_folds_and_reopens_the_rest(
    kfold_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaggleops.stages.train import train
    from kaggleops.tasks.tse import TweetSentimentExtraction

    original = TweetSentimentExtraction.train_fold

    def crash_on_fold_1(self: Any, df: Any, settings: Any, fold: Any, *args: Any, **kw: Any) -> Any:
        if getattr(fold, "fold", fold) == 1:  # kops passes a FoldContext (kaggleops.task)
            raise RuntimeError("simulated disconnect")
        return original(self, df, settings, fold, *args, **kw)

    monkeypatch.setattr(TweetSentimentExtraction, "train_fold", crash_on_fold_1)
    with pytest.raises(RuntimeError, match="simulated"):
        train(kfold_cfg, folds=[0, 1], progress=False, sample=True)
    monkeypatch.setattr(TweetSentimentExtraction, "train_fold", original)
    client = _client(tmp_path)
    before = {r.data.tags.get("kops.fold", "parent"): r for r in
              client.search_runs([client.get_experiment_by_name(TSE).experiment_id])}
    assert {k: r.info.status for k, r in before.items()} == {"parent": "FAILED", "0": "FINISHED", "1": "FAILED"}

    result = train(kfold_cfg, folds=[0, 1], progress=False, resume=True, sample=True)
    after = client.search_runs([client.get_experiment_by_name(TSE).experiment_id])
    assert len(after) == 3 and all(r.info.status == "FINISHED" for r in after)
    assert result.parent_run_id == before["parent"].info.run_id
    assert [r.run_id for r in result.runs] == [before["0"].info.run_id, before["1"].info.run_id]
    assert client.get_run(result.parent_run_id).data.metrics["cv_jaccard"] == pytest.approx(result.cv)


@pytest.mark.slow
def test_rerun_without_resume_starts_a_new_run_and_says_so(kfold_cfg: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.stages.train import train

    first = train(kfold_cfg, folds=[0], progress=False, sample=True)
    Tracker(kfold_cfg).reopen_run(first.run_id)  # as a SIGKILL leaves it
    with caplog.at_level(logging.WARNING, logger="kaggleops"):
        second = train(kfold_cfg, folds=[0], progress=False, sample=True)
    assert second.run_id != first.run_id
    assert (f"fold 0 has an unfinished run {first.run_id}; continue it with: kops train --resume --fold 0 "
            "--sample") in caplog.text


@pytest.mark.slow
def test_a_fold_named_twice_is_trained_once(kfold_cfg: Any) -> None:
    """`kops train --fold 0 --fold 0`: one run of fold 0 (no k-fold parent over two copies of it)."""
    from kaggleops.stages.train import train

    result = train(kfold_cfg, folds=[0, 0], progress=False, sample=True)
    assert [r.fold for r in result.runs] == [0] and result.parent_run_id is None


# ---- top-k spans -------------------------------------------------------------------------------------------


def _char_probs(text: str, feature: Any, start: Any, end: Any) -> tuple[Any, Any]:
    return infer.batch_char_probs([feature], start[None, :], end[None, :], infer.char_width([text]))


def test_top_k_char_spans_sorted_unique_best_first() -> None:
    import torch

    text = "  so  happy today"
    # tokens: <s> neutral </s> </s> |so| |happy| |today| zero-width </s>
    offsets = [(0, 0), (0, 7), (0, 0), (0, 0), (2, 4), (6, 11), (12, 17), (17, 17), (0, 0)]
    feature = infer.Encoded({"input_ids": [0] * 9}, offsets, [4, 5, 6, 7])
    start = torch.tensor([0, 0, 0, 0, 1.0, 3.0, 0.5, 9.0, 0])
    end = torch.tensor([0, 0, 0, 0, 0.2, 2.5, 1.0, 9.0, 0])
    ps, pe = _char_probs(text, feature, start, end)
    assert ps[0].nonzero()[:, 0].tolist() == [2, 6, 12] and pe[0].nonzero()[:, 0].tolist() == [3, 10, 16]
    assert float(ps.sum()) == pytest.approx(1.0) and float(pe.sum()) == pytest.approx(1.0)
    cands = infer.top_k_char_spans(text, ps[0], pe[0], k=10)
    assert len(cands) == 6  # 3 scorable tokens: 3 + 2 + 1 spans, the zero-width one left out
    assert cands[0] == {"start": 6, "end": 11, "text": "happy", "score": pytest.approx(cands[0]["score"])}
    starts, stops = infer.best_char_spans(ps, pe)
    assert (cands[0]["start"], cands[0]["end"]) == (starts[0], stops[0])
    assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
    assert sum(c["score"] for c in cands) <= 1.0 + 1e-6
    assert all(text[c["start"]:c["end"]] == c["text"] for c in cands)
    assert [c["text"] for c in infer.top_k_char_spans(text, ps[0], pe[0], k=2)] == [c["text"] for c in cands[:2]]
    empty = infer.Encoded({"input_ids": [0, 2]}, [(0, 0), (0, 0)], [])
    eps, epe = _char_probs("", empty, torch.zeros(2), torch.zeros(2))
    assert infer.top_k_char_spans("", eps[0], epe[0]) == [{"start": 0, "end": 0, "text": "", "score": 1.0}]
    assert infer.best_char_spans(eps, epe) == ([-1], [-1])


def test_best_char_spans_match_brute_force() -> None:
    import torch

    gen = torch.Generator().manual_seed(0)
    ps, pe = torch.rand(50, 12, generator=gen), torch.rand(50, 12, generator=gen)
    ps[ps < 0.5], pe[pe < 0.5] = 0.0, 0.0
    starts, stops = infer.best_char_spans(ps, pe)
    for r in range(50):
        pairs = [(float(ps[r, a] * pe[r, b]), a, b + 1) for a in range(12) for b in range(a, 12)]
        best = max(p[0] for p in pairs)
        if best == 0:
            assert (starts[r], stops[r]) == (-1, -1)
        else:
            assert float(ps[r, starts[r]] * pe[r, stops[r] - 1]) == best and starts[r] < stops[r]


def test_post_processing_rules() -> None:
    post = infer.PostProcessing(start_shift=True, shift_min_spaces=2)
    text = "  hello  world today"  # 2 leading spaces + 1 doubled: 3 extra spaces before "world"
    assert infer.extra_spaces(text[:9]) == 3 and infer.extra_spaces("a b") == 0 and infer.extra_spaces(" a") == 1
    assert post.answer(text, "negative", 9, 14) == text[6:14]  # "o  world": the labels' offset noise
    assert infer.PostProcessing().answer(text, "negative", 9, 14) == "world"
    assert post.answer(" a b", "positive", 3, 4) == "b"  # 1 extra space: below shift_min_spaces
    assert post.answer(text, "neutral", 9, 14) == text and post.answer(text, "positive", -1, -1) == text
    assert post.answer(text, "positive", 0, 2) == text  # a blank span
    assert infer.PostProcessing.from_dict(post.as_dict()) == post
    assert infer.PostProcessing.from_dict(None) == infer.PostProcessing()


# ---- metric logging never blocks ---------------------------------------------------------------------------


class _StuckClient:
    """A tracking client whose calls hang until released, then fail ``failures`` times, then store."""

    def __init__(self, failures: int = 0) -> None:
        self.release = threading.Event()
        self.failures = failures
        self.calls: list[Any] = []

    def log_batch(self, run_id: str, metrics: list[Any]) -> None:
        self.release.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("tracking server unreachable")
        self.calls.extend((m.key, m.step) for m in metrics)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str) -> None:
        self.release.wait()
        self.calls.append(("upload", artifact_path))


def test_metric_logger_does_not_block_on_a_stuck_server_and_keeps_order(caplog: pytest.LogCaptureFixture) -> None:
    from kaggleops.adapters.metric_logger import MetricLogger

    client = _StuckClient(failures=2)
    logger = MetricLogger(client, "run123", interval_s=0.01)
    with caplog.at_level(logging.WARNING, logger="kaggleops"):
        for step in range(1, 1201):  # the server is stuck the whole time: every call still returns
            logger({"loss": 1.0 / step}, step)
            if step == 600:
                logger.upload(Path("."), "checkpoint/a")
        assert not client.release.is_set() and client.calls == []
        client.release.set()
        logger.close(retries=5)
    assert caplog.text.count("tracking store unreachable or failing") == 1
    upload_at = client.calls.index(("upload", "checkpoint/a"))
    assert [s for _, s in client.calls[:upload_at]] == list(range(1, 601))
    assert [s for _, s in client.calls[upload_at + 1:]] == list(range(601, 1201))


def test_metric_logger_raises_when_store_stays_down_and_skips_stored_steps() -> None:
    from kaggleops.adapters.metric_logger import MetricLogger
    from kaggleops.errors import TrackingUnavailable

    client = _StuckClient(failures=10**6)
    client.release.set()
    logger = MetricLogger(client, "run123", skip={"loss": 5}, background=False)
    for step in range(1, 11):
        logger({"loss": 0.5, "lr": 0.1}, step)
    assert sum(len(op) for op in logger._ops) == 10 + 5  # lr 1..10, loss 6..10
    with pytest.raises(TrackingUnavailable, match="kops train --resume"):
        logger.close(retries=0)


# ---- provenance ----------------------------------------------------------------------------------------------


def test_provenance_of_a_dirty_tree_with_a_credentialed_remote(tmp_path: Path) -> None:
    from kaggleops.adapters.tracking import Tracker

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "exp/kfold")
    (repo / "kops.yaml").write_text("competition: tweet-sentiment-extraction\ntracking_uri: sqlite:///mlflow.db\n")
    (repo / "train.py").write_text("lr = 1\n")
    git(repo, "add", "kops.yaml", "train.py")
    git(repo, "commit", "-q", "-m", "first")
    git(repo, "remote", "add", "origin", "https://alice:ghp_SeCrEt123@github.com/alice/tse.git")
    (repo / "train.py").write_text("lr = 2\n")
    tracker = Tracker(load_config(repo / "kops.yaml"))
    run_id = tracker.start_run("fold-0", {"lr": 2}, {"kops.kind": "fold"})
    run = tracker.get_run(run_id)
    tags = run.tags
    assert tags["mlflow.source.git.repoURL"] == "https://github.com/alice/tse.git"
    assert tags["mlflow.source.git.branch"] == "exp/kfold" and tags["kops.git.dirty"] == "true"
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["kops.env"] == "local"
    assert {"kops.lib.python", "kops.lib.torch", "kops.lib.mlflow"} <= set(tags)
    assert "ghp_SeCrEt123" not in json.dumps([tags, run.params])
    diff = Path(tracker.download(run_id, "git/uncommitted.diff", tmp_path / "dl")).read_text()
    assert "-lr = 1" in diff and "+lr = 2" in diff


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "local"), ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle-interactive"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, "kaggle-batch"), ({"COLAB_RELEASE_TAG": "release-colab_2026"}, "colab"),
])
def test_detect_env(env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops.environment import detect_env

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert detect_env() == expected


# ---- credentials ---------------------------------------------------------------------------------------------


@pytest.fixture
def secret_stores(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """Fake ``kaggle_secrets`` and ``google.colab.userdata`` modules, as the notebooks provide them."""
    from kaggleops.adapters import credentials

    stores: dict[str, dict[str, str]] = {"kaggle": {}, "colab": {}}

    class UserSecretsClient:
        def get_secret(self, name: str) -> str:
            if name not in stores["kaggle"]:
                raise RuntimeError("secret not attached")  # what the add-on does
            return stores["kaggle"][name]

    def colab_get(name: str) -> str:
        if name not in stores["colab"]:
            raise KeyError(name)  # SecretNotFoundError in Colab
        return stores["colab"][name]

    colab = types.ModuleType("google.colab")
    userdata = types.ModuleType("google.colab.userdata")
    userdata.get = colab_get  # type: ignore[attr-defined]
    colab.userdata = userdata  # type: ignore[attr-defined]
    kaggle_secrets = types.ModuleType("kaggle_secrets")
    kaggle_secrets.UserSecretsClient = UserSecretsClient  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kaggle_secrets", kaggle_secrets)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    for name in credentials.TRACKING_VARS:
        monkeypatch.setenv(name, "")  # restored (removed) after the test even when kops sets it
    credentials.clear_cache()
    yield stores
    credentials.clear_cache()


def test_credential_chain_order(secret_stores: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
                                isolated_env: Path) -> None:
    from kaggleops.adapters.credentials import kaggle_credentials, lookup

    secret_stores["colab"].update(KAGGLE_USERNAME="colab-user", KAGGLE_KEY="colab-key")
    user, key = kaggle_credentials()
    assert (user.value, user.source, key.source) == ("colab-user", "colab-userdata", "colab-userdata")
    secret_stores["kaggle"]["KAGGLE_KEY"] = "kaggle-key"
    from kaggleops.adapters import credentials

    credentials.clear_cache()
    assert kaggle_credentials()[1].source == "kaggle-secrets"  # Kaggle's add-on is asked first
    (isolated_env / ".kaggle").mkdir()
    (isolated_env / ".kaggle" / "kaggle.json").write_text('{"username": "file-user", "key": "file-key"}')
    assert [s.source for s in kaggle_credentials()] == ["file", "file"]
    monkeypatch.setenv("KAGGLE_KEY", "env-key")
    assert [s.source for s in kaggle_credentials()] == ["file", "env"]
    assert [s.source for s in kaggle_credentials(key="arg-key")] == ["file", "argument"]
    secret = lookup("KAGGLE_KEY")
    assert "env-key" not in repr(secret) and "env-key" not in str(secret) and secret.value == "env-key"


@pytest.mark.slow
def test_tracking_token_from_colab_reaches_env_never_the_run(
    secret_stores: dict[str, dict[str, str]], kfold_cfg: Any, tmp_path: Path
) -> None:
    from kaggleops.adapters.credentials import apply_tracking_credentials
    from kaggleops.stages.train import train

    secret_stores["colab"]["MLFLOW_TRACKING_TOKEN"] = "tok-DoNotLog-42"
    os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    result = train(kfold_cfg, folds=[0], progress=False, sample=True)
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "tok-DoNotLog-42"
    assert apply_tracking_credentials() == []  # already in the env: nothing more to do
    run = _client(tmp_path).get_run(result.run_id)
    assert "DoNotLog" not in json.dumps([run.data.tags, run.data.params])


def test_resume_line_names_the_step_of_a_checkpoint_without_progress_json(tmp_path: Path) -> None:
    """A task whose checkpoint folder has no progress.json (e.g. a user's): the step comes from kops' latest.json."""
    import json

    from kaggleops.adapters.tracking import Tracker
    from kaggleops.config import load_config
    from kaggleops.stages.fold_artifacts import download_checkpoint, start_line

    (tmp_path / "kops.yaml").write_text("competition: digit-recognizer\nowner: alice\n")
    tracker = Tracker(load_config(tmp_path / "kops.yaml"))
    run_id = tracker.start_run("fold-0", {})
    slot = tmp_path / "a"
    slot.mkdir()
    (slot / "state.pt").write_bytes(b"weights")
    tracker.log_artifacts(run_id, slot, "checkpoint/a")
    pointer = tmp_path / "pointer"
    pointer.mkdir()
    (pointer / "latest.json").write_text(json.dumps({"slot": "a", "step": 20}))
    tracker.log_artifacts(run_id, pointer, "checkpoint")
    folder = download_checkpoint(tracker, run_id, tmp_path / "dl")
    assert folder is not None and (folder / "state.pt").read_bytes() == b"weights"
    assert start_line("fold 0 (1/1)", run_id, run_id, folder) == f"fold 0 (1/1): resuming run {run_id} from step 20"
