"""DDP under torchrun on CPU (gloo): one MLflow run, the same numbers as one process, resumable on another count.

Why the tolerance: with dropout off, one step of 2 processes computes on each rank the mean loss of its half
of every global batch, weighted by (its rows × world size / batch rows), and DDP averages the gradients: that
is the full batch's mean gradient, summed in a different order. Float addition is not associative, so the
numbers agree to ~1e-7 relative at step 1 and drift a little through Adam (which divides by √v of tiny
gradients); measured here: ≤ 5e-7 on train_loss over 6 steps. We assert 1e-5 at step 1 (only summation order
differs there), 1e-4 relative after, and 0.01 on val_jaccard (a near-tie start/end argmax may flip on one or two
of the 160 validation tweets).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kaggleops.config import load_config

from harness import kops

TSE = "tweet-sentiment-extraction"
# 640 training rows, global batch 63 (odd: the ranks' shards differ in size, so the weighting is exercised)
# × grad_accum 2 = 126 rows a step; the last micro-batch has 10 rows. Dropout off: the runs are comparable.
DDP_YAML = """competition: tweet-sentiment-extraction
tracking_uri: sqlite:///mlflow.db
train:
  epochs: 1
  batch_size: 63
  grad_accum: 2
  max_steps: 6
  eval_every: 3
  checkpoint_every: 2
  oof_top_k: 2
  tiny: {dropout: 0.0}
"""
# Rank 0 fails inside step FAIL_AT (after the checkpoint of step FAIL_AT - 1 was queued): the run is left FAILED.
FAILING_RUNNER = """
import os, sys
import kaggleops.tasks.tse.train as t
original = t._train_step
def step(loop, batches):
    if loop.step + 1 == int(os.environ["FAIL_AT"]) and os.environ.get("RANK") == "0":
        raise RuntimeError("simulated preemption")
    return original(loop, batches)
t._train_step = step
from kaggleops.cli import main
sys.argv = ["kops", *sys.argv[1:]]
main()
"""
TRAIN_ARGS = ["train", "--fold", "0", "--sample", "--json"]
TORCHRUN = [sys.executable, "-m", "kaggleops.distributed", "--standalone", "--nproc_per_node", "2"]


def _workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "kops.yaml").write_text(DDP_YAML)
    (path / "runner.py").write_text(FAILING_RUNNER)
    return path


def _run(workdir: Path, cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                **env}
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=full_env, timeout=300)


def _client(workdir: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def _runs(workdir: Path) -> list[Any]:
    client = _client(workdir)
    return client.search_runs([client.get_experiment_by_name(TSE).experiment_id])


def _history(workdir: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client(workdir).get_metric_history(run_id, key))


def _assert_close(got: list[tuple[int, float]], want: list[tuple[int, float]], key: str) -> None:
    assert [s for s, _ in got] == [s for s, _ in want], key
    if key == "val_jaccard":
        assert all(abs(a - b) <= 0.01 for (_, a), (_, b) in zip(got, want, strict=True)), (key, got, want)
        return
    assert abs(got[0][1] - want[0][1]) <= 1e-5, (key, got[0], want[0])
    assert all(a == pytest.approx(b, rel=1e-4) for (_, a), (_, b) in zip(got, want, strict=True)), (key, got, want)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 1-process run of the same config: the numbers the DDP runs must reproduce."""
    workdir = _workdir(tmp_path_factory.mktemp("one-process"))
    proc = kops(*TRAIN_ARGS, cwd=workdir, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, json.loads(proc.stdout)["run_id"]


@pytest.mark.slow
def test_two_process_gloo_run_is_one_run_with_the_metrics_of_one_process(
    reference: tuple[Path, str], tmp_path: Path
) -> None:
    ref_dir, ref_run = reference
    workdir = _workdir(tmp_path / "two-processes")
    proc = _run(workdir, [*TORCHRUN, "-m", "kaggleops", *TRAIN_ARGS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # rank 0 alone printed: stdout is one JSON document
    (run,) = _runs(workdir)  # rank 1 created no run
    assert out["run_id"] == run.info.run_id and run.info.status == "FINISHED"
    ref = _client(ref_dir).get_run(ref_run)
    assert run.data.tags["kops.world_size"] == "2" and ref.data.tags["kops.world_size"] == "1"
    assert run.data.tags["kops.train.key"] == ref.data.tags["kops.train.key"]  # resumable across counts
    assert run.data.params == ref.data.params
    for key in ("train_loss", "val_jaccard", "val_loss"):
        _assert_close(_history(workdir, run.info.run_id, key), _history(ref_dir, ref_run, key), key)
    assert _history(workdir, run.info.run_id, "lr") == _history(ref_dir, ref_run, "lr")
    assert {a.path for a in _client(workdir).list_artifacts(run.info.run_id)} >= {"model", "oof", "checkpoint"}


@pytest.mark.slow
def test_checkpoint_of_a_two_process_run_resumes_in_one_process(reference: tuple[Path, str], tmp_path: Path) -> None:
    import torch

    from kaggleops.adapters.tracking import Tracker
    from kaggleops.stages.fold_artifacts import download_checkpoint
    from kaggleops.tasks.tse.checkpoint import STATE_FILE

    ref_dir, ref_run = reference
    workdir = _workdir(tmp_path / "preempted")
    failed = _run(workdir, [*TORCHRUN, "runner.py", *TRAIN_ARGS], FAIL_AT="5")
    assert failed.returncode != 0 and "simulated preemption" in failed.stderr, failed.stderr[-3000:]
    (run,) = _runs(workdir)
    assert run.info.status == "FAILED"
    folder = download_checkpoint(Tracker(load_config(workdir / "kops.yaml")), run.info.run_id, tmp_path / "ckpt")
    state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    assert (state["world_size"], state["step"]) == (2, 4)

    resumed = kops(*TRAIN_ARGS, "--resume", cwd=workdir, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (after,) = _runs(workdir)
    assert json.loads(resumed.stdout)["run_id"] == after.info.run_id == run.info.run_id
    assert after.info.status == "FINISHED"
    assert (after.data.tags["kops.world_size"], after.data.tags["kops.resumes"]) == ("1", "1")
    assert [s for s, _ in _history(workdir, run.info.run_id, "train_loss")] == list(range(1, 7))
    for key in ("train_loss", "val_jaccard", "val_loss"):
        _assert_close(_history(workdir, run.info.run_id, key), _history(ref_dir, ref_run, key), key)


def test_shards_cover_the_batch_and_weights_give_the_full_batch_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops import distributed

    rows = list(range(63))
    monkeypatch.setenv("WORLD_SIZE", "2")
    parts = []
    for r in ("0", "1"):
        monkeypatch.setenv("RANK", r)
        parts.append(distributed.shard(rows))
    assert sorted(parts[0][0] + parts[1][0]) == rows
    assert [len(p) for p, _ in parts] == [32, 31]
    # DDP averages over 2 ranks: (w0·mean0 + w1·mean1) / 2 = (32·mean0 + 31·mean1) / 63, the mean of all 63 rows
    assert [w / 2 for _, w in parts] == pytest.approx([32 / 63, 31 / 63])
    monkeypatch.setenv("RANK", "1")
    assert distributed.shard([7]) == ([7], 0.0)  # nothing left for rank 1: a row, weighted 0
    assert distributed.without_nproc(["train", "--nproc", "2", "--fold", "0", "--nproc=3"]) == [
        "train", "--fold", "0"]


def test_without_torchrun_every_helper_answers_as_the_only_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops import distributed

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.init() is False and not distributed.active()
    assert distributed.broadcast({"x": 1}) == {"x": 1} and distributed.shard([1, 2, 3]) == ([1, 2, 3], 1.0)
    assert distributed.launch_command(2, ["train"])[1:] == [
        "-m", "kaggleops.distributed", "--standalone", "--nproc_per_node=2", "-m", "kaggleops", "train"]
