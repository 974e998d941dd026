"""The installed `kops` script keeps its word: exit codes 0/1/2/130, one-line errors, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import KOPS_SCRIPT, kops


@pytest.mark.parametrize(("args", "first", "hint"), [
    ((), "kops: error: Missing command.", "Try 'kops --help' for help."),
    (("sync",), "kops sync: error: Missing command.", "Try 'kops sync --help' for help."),
    (("trian",), "kops: error: No such command 'trian'. Did you mean 'train'?", "Try 'kops --help' for help."),
    (("publish",), "kops publish: error: Missing argument 'run_id'.", "Try 'kops publish --help' for help."),
    (("train", "--fold", "x"), "kops train: error: Invalid value for '--fold': Input should be a valid integer, "
     "unable to parse string as an integer", "Try 'kops train --help' for help."),
    (("demo", "--epochs"), "kops: error: Option '--epochs' requires an argument.", "Try 'kops --help' for help."),
    (("train", "--no-such-option"), "kops train: error: No such option: --no-such-option",
     "Try 'kops train --help' for help."),
])
def test_usage_mistakes_exit_2_with_one_line(args: tuple[str, ...], first: str, hint: str, tmp_path: Path) -> None:
    out = kops(*args, cwd=tmp_path, script=True)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.splitlines() == [first, hint]


def test_help_and_version_exit_0(tmp_path: Path) -> None:
    out = kops("--help", cwd=tmp_path, script=True)
    assert out.returncode == 0 and "push-kernel" in out.stdout and out.stderr == ""
    out = kops("--version", cwd=tmp_path, script=True)
    assert out.returncode == 0 and out.stdout.startswith("kops ")


def test_kops_error_exits_1_with_one_line(tmp_path: Path) -> None:
    out = kops("publish", "0123456789abcdef", cwd=tmp_path, script=True)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"kops: error: No kops.yaml in {tmp_path} or its parent folders. "
                                       "Create one with: kops init"]


BUGGY = """
import sys
from kaggleops.cli import app, main

@app.command()
def buggy() -> None:
    raise RuntimeError("something\\nbroke")

sys.argv = ["kops", "buggy"]
main()
"""


def test_unexpected_error_is_one_line_and_its_traceback_needs_kops_debug(tmp_path: Path) -> None:
    """A bug (an exception that is no KopsError) is one line plus a hint; KOPS_DEBUG=1 shows its traceback."""
    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", BUGGY], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120)

    out = run()
    assert out.returncode == 1
    assert out.stderr.splitlines() == ["kops: internal error: RuntimeError: something broke",
                                       "Run again with KOPS_DEBUG=1 to see the traceback, and please report it."]
    debug = run(KOPS_DEBUG="1")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "RuntimeError: something" in debug.stderr


FAILING_CHILD_YAML = """competition: tweet-sentiment-extraction
tracking_uri: sqlite:///mlflow.db
train:
  epochs: 1
  batch_size: 32
  max_steps: 2
"""


@pytest.mark.slow
def test_failing_child_under_nproc_is_not_success(tmp_path: Path) -> None:
    """`--fold 7` of 5 folds fails in every worker: the launcher exits non-zero, without torchrun's traceback."""
    pytest.importorskip("torch")
    (tmp_path / "kops.yaml").write_text(FAILING_CHILD_YAML)
    out = kops("train", "--nproc", "2", "--fold", "7", "--sample", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
               script=True)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "kops: error: Fold(s) [7] out of range for n_folds=5. Use --fold 0..n_folds-1." in out.stderr
    assert "kops: error: training process rank" in out.stderr


INTERRUPT_YAML = """competition: tweet-sentiment-extraction
tracking_uri: sqlite:///mlflow.db
train:
  epochs: 20
  batch_size: 16
  max_steps: 120
  eval_every: 40
  checkpoint_every: 1000
  oof_top_k: 2
"""


def _until(proc: subprocess.Popen[bytes], text: bytes, seen: bytearray, timeout_s: float = 300) -> None:
    """Read ``proc``'s stderr into ``seen`` until ``text`` appears in it."""
    import select
    import time

    deadline = time.monotonic() + timeout_s
    assert proc.stderr is not None
    while text not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen.decode(errors="replace")[-2000:]
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            seen += os.read(proc.stderr.fileno(), 65536)


@pytest.mark.slow
def test_sigint_during_train_exits_130_and_resume_continues_the_same_run(tmp_path: Path) -> None:
    """Ctrl-C mid-training: a checkpoint at the step it stopped, the run KILLED, exit 130 and the line saying
    how to resume; `kops train --resume` then says what it resumes and finishes the same run, every step once."""
    import re
    import signal
    import time

    pytest.importorskip("torch")
    if not KOPS_SCRIPT.is_file():
        pytest.skip(f"no installed kops script at {KOPS_SCRIPT}")
    (tmp_path / "kops.yaml").write_text(INTERRUPT_YAML)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(KOPS_SCRIPT), "train", "--fold", "0", "--sample"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = bytearray()
    _until(proc, b"epoch 1/20", seen)  # the loop runs (the bar's label changes at each epoch)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=300)
    err = (seen + rest).decode(errors="replace")
    assert proc.returncode == 130, err[-2000:]
    assert stdout == b"" and "Traceback" not in err
    started = re.search(r"fold 0 \(1/1\): run ([0-9a-f]{32})\n", err)
    assert started, err[-2000:]
    run_id = started.group(1)
    stopped = re.search(rf"\nkops: interrupted at step (\d+) of run {run_id} — resume with `(kops train --resume "
                        r"--fold 0 --sample)`\n$", err)  # the command that resumes THIS run: its fold, its data
    assert stopped, err[-2000:]
    step = int(stopped.group(1))
    assert 0 < step < 120

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"

    printed = stopped.group(2).split()[1:]  # run exactly as printed (the entry point the script calls)
    resumed = kops(*printed, "--json", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"fold 0 (1/1): resuming run {run_id} from step {step} of 120\n" in resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kops.resumes"] == "1"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 121))
