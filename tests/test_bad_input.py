"""Bad input at each stage: one line saying what and how to fix it, exit code 1, nothing half-written."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kaggleops.adapters.session import Session
from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config, render_template
from kaggleops.emulator import Emulator
from kaggleops.errors import KaggleError
from kaggleops.schema import TAG_DATASET
from kaggleops.stages.publish import publish

from harness import kops


def write_config(folder: Path, **kw: object) -> Path:
    path = folder / "kops.yaml"
    path.write_text(render_template(owner="alice", **kw))  # type: ignore[arg-type]
    return path


def test_unknown_competition(tmp_path: Path) -> None:
    write_config(tmp_path, competition="no-such-competition")
    out = kops("train", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == ("kops: error: Unknown task 'no-such-competition'; known tasks: demand-forecasting, "
                                  "digit-recognizer, tweet-sentiment-extraction. Set `task:` in kops.yaml to your own "
                                  "task (kops init --competition SLUG writes a skeleton), or `competition:` to one "
                                  "with a built-in task.")


def test_train_csv_missing_column_creates_no_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("textID,text,sentiment\nab12,hello there,neutral\n")
    write_config(tmp_path, data_dir="data")
    out = kops("train", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"kops: error: {data / 'train.csv'}: missing column(s) selected_text; expected "
                                  "columns: textID, text, selected_text, sentiment")
    assert not (tmp_path / "mlflow.db").exists()


def test_publish_unknown_run(tmp_path: Path) -> None:
    write_config(tmp_path)
    out = kops("publish", "0123456789abcdef", "--json", cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"kops: error: Run 0123456789abcdef not found in the tracking store "
                                 f"sqlite:///{tmp_path / 'mlflow.db'}. Check the id")


def test_failed_publish_leaves_run_untagged(tmp_path: Path, start_emulator: Callable[..., Emulator]) -> None:
    """A 503 on CreateDataset (which the official client does not retry): error, and no kops.dataset tag."""
    cfg = load_config(write_config(tmp_path))
    tracker = Tracker(cfg)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    from safetensors.numpy import save

    (model / "model.safetensors").write_bytes(save({"w": __import__("numpy").frombuffer(os.urandom(2048), "uint8")}))
    run_id = tracker.start_run("fold-0", {"lr": 1e-3})
    tracker.log_artifacts(run_id, model, "model")
    tracker.end_run(run_id)
    emu = start_emulator(username="alice", key="k")
    emu.inject_fault("CreateDataset", 503, times=5)  # kops retries a 503 up to 5 attempts (kaggle.MAX_ATTEMPTS)
    with pytest.raises(KaggleError, match=r"503"):
        publish(Session(cfg), run_id)
    assert TAG_DATASET not in tracker.get_run(run_id).tags
    published = publish(Session(cfg), run_id)  # the fault is gone: the retry the error asked for works
    assert published.dataset_version == 1
    assert tracker.get_run(run_id).tags[TAG_DATASET] == published.dataset


@pytest.mark.parametrize(("args", "line"), [
    (("train", "--stage", "foo"), "kops train: error: Invalid value for '--stage': 'foo' is not one of base, rerank."),
    (("leaderboard", "--sort", "foo"), "kops leaderboard: error: Invalid value for '--sort': 'foo' is not one of "
                                       "lb_public, lb_private, cv, date, ref."),
    (("ui", "--port", "99999"), "kops ui: error: Invalid value for '--port': Input should be less than or equal "
                                "to 65535"),
    (("push-kernel", "--run", "0123456789ab", "--machine-shape", "Foo"),
     "kops push-kernel: error: Invalid value for '--machine-shape': 'Foo' is not an accelerator the installed kaggle "
     "client knows: NvidiaL4, NvidiaTeslaT4, TpuV5E8."),
    (("emulator", "start", "--fault", "garbage"),
     "kops emulator start: error: Invalid value for '--fault': Not a fault spec: 'garbage'. Expected "
     "service/Method=STATUS[,STATUS...], e.g. datasets.DatasetApiService/CreateDatasetVersion=503,429 or "
     "Upload=drop."),
])
def test_a_bad_option_value_is_a_usage_error_before_anything_runs(tmp_path: Path, args: tuple[str, ...],
                                                                  line: str) -> None:
    """Exit 2 (a usage mistake, as the README promises), the one line and the help to read; nothing created."""
    write_config(tmp_path)
    out = kops(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    command = " ".join(["kops", *args[:2]]) if args[0] == "emulator" else f"kops {args[0]}"
    assert out.stderr == f"{line}\nTry '{command} --help' for help.\n"
    assert not (tmp_path / "mlflow.db").exists()


def test_a_yaml_syntax_error_names_its_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\ntrain:\n  epochs: [1, 2\n  lr: 3\n")
    out = kops("train", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr == (f"kops: error: {tmp_path / 'kops.yaml'} is not valid YAML at line 4, column 5: expected ',' "
                          "or ']', but got ':'. Fix that line of the file.\n")


def test_a_header_only_train_csv_is_one_line_and_leaves_no_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("textID,text,selected_text,sentiment\n")
    write_config(tmp_path, data_dir="data")
    out = kops("train", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr == (f"kops: error: {data / 'train.csv'} has 0 row(s): too few for 5 folds. Point --data / "
                          "data_dir at the competition's full train.csv (or lower train.n_folds).\n")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_task_whose_constructor_raises_is_named(tmp_path: Path) -> None:
    (tmp_path / "my_task.py").write_text("class MyTask:\n    def __init__(self):\n        raise RuntimeError('no GPU "
                                         "config found')\n")
    write_config(tmp_path, task="my_task.py:MyTask", competition="my-comp")
    out = kops("train", "--sample", cwd=tmp_path)
    assert out.returncode == 1 and "internal error" not in out.stderr
    assert out.stderr.startswith("kops: error: task my_task.py:MyTask: its constructor raised RuntimeError: no GPU "
                                 "config found.")


def test_publishing_an_interrupted_run_says_how_to_finish_it(tmp_path: Path) -> None:
    write_config(tmp_path)
    tracker = Tracker(load_config(tmp_path / "kops.yaml"))
    run_id = tracker.start_run("fold-1", {"data": "sample"}, {"kops.fold": "1", "kops.kind": "fold"})
    tracker.end_run(run_id, "KILLED")  # Ctrl-C before the fold ended: no model/ artifact
    out = kops("publish", run_id[:8], cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr == (f"kops: error: Run {run_id} has no model to publish: it is KILLED, stopped before it "
                          "finished (the model is logged when a fold ends). Finish it with: kops train --resume "
                          "--fold 1 --sample\n")


def test_next_commands_quote_paths_so_they_paste(tmp_path: Path) -> None:
    """A project under `prøjekt 名前 ü`: the printed next: command runs as pasted."""
    import shlex

    from kaggleops.stages.kernel import KernelResult, describe

    folder = tmp_path / "prøjekt 名前 ü" / ".kops" / "kernels" / "x-inference"
    text = describe(KernelResult("alice/x-inference", None, "http://k/x", folder, ["r1"]))
    line = next(ln for ln in text.splitlines() if ln.startswith("next: "))
    assert shlex.split(line.split("   then:")[0])[1:] == ["kops", "kernel", "run-local", str(folder)]


def test_a_setting_of_the_wrong_type_is_refused_before_any_run(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text(render_template(owner="alice", train={"epochs": "two"}))
    out = kops("train", "--sample", cwd=tmp_path)
    assert out.returncode == 1 and "internal error" not in out.stderr
    assert out.stderr == ("kops: error: kops.yaml `train:`: task setting `epochs` must be int, not 'two' (str). Fix "
                          "the key, or see the task's settings().\n")
    assert not (tmp_path / "mlflow.db").exists()


def test_an_unreachable_tracking_server_fails_in_seconds_with_a_countdown(tmp_path: Path) -> None:
    import time

    write_config(tmp_path)
    start = time.monotonic()
    out = kops("train", "--sample", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    assert time.monotonic() - start < 60 and out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[:2] == [f"kops: tracking server http://127.0.0.1:1 does not answer ([Errno 111] Connection refused); "
                         f"trying again in 2 s ({left} left)" for left in ("2 tries", "1 try")]
    assert lines[2:] == ["kops: error: The tracking server http://127.0.0.1:1 does not answer ([Errno 111] Connection "
                         "refused) after 3 tries. Start it, or: Point MLFLOW_TRACKING_URI / kops.yaml `tracking_uri` "
                         "at a reachable store (unset both for the local sqlite:///mlflow.db)."]
    folder = kops("train", "--sample", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": str(tmp_path / "store")})
    assert folder.returncode == 1 and folder.stderr == (
        f"kops: error: The tracking store '{tmp_path / 'store'}' is a plain path: MLflow 3 no longer writes runs to a "
        f"folder by default. Use a SQLite file, e.g. sqlite:///{tmp_path / 'store'}/mlflow.db\n")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "store").exists()


@pytest.mark.slow
def test_missing_targets_are_counted_in_a_warning(tmp_path: Path) -> None:
    """NaN/empty cells in a column the task needs complete (TSE: selected_text): one warning with the count."""
    import csv

    from kaggleops.resources import bundled_competition

    sample = bundled_competition("tweet-sentiment-extraction")
    with (sample / "train.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows[::10]:
        row["selected_text"] = ""
    data = tmp_path / "data"
    data.mkdir()
    with (data / "train.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_config(tmp_path, data_dir="data", folds=[0], train={"max_steps": 2, "epochs": 1})  # the warning comes first
    out = kops("train", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    blank = len(rows[::10])
    assert (f"kops: warning: {blank:,} of {len(rows):,} rows of {data / 'train.csv'} have no selected_text (empty or "
            "NaN); they are trained on as they are: drop or fill them if they are not meant to be there") in out.stderr


@pytest.mark.slow
def test_two_trainers_at_once_on_a_brand_new_project(tmp_path: Path) -> None:
    """Both create the SQLite store's tables at the same moment: one does, under a lock; both runs finish."""
    from harness import environment, kops_process

    write_config(tmp_path, folds=[0], train={"max_steps": 2, "epochs": 1})
    procs = [kops_process(["train", "--sample", "--json"], tmp_path, environment()) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert "internal error" not in err
    ids = {json.loads(out)["run_id"] for out, _ in results}
    assert len(ids) == 2


def test_sync_push_to_a_bucket_folder_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("a file where the bucket folder should be")
    bucket = tmp_path / "not-a-folder" / "bucket"
    path = write_config(tmp_path)
    path.write_text(path.read_text() + f"storage:\n  bucket: {bucket}\n")
    tracker = Tracker(load_config(path))
    tracker.end_run(tracker.start_run("fold-0", {}))
    out = kops("sync", "push", cwd=tmp_path)
    assert out.returncode == 1 and "internal error" not in out.stderr, out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith("kops: error: Cannot write ") and f"into the bucket folder {bucket}: Not a directory. " \
        "Point storage.bucket in kops.yaml at a folder you can write to." in line


FULL_DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size=16m tmpfs "$PROJECT" || exit 90
cp "$STAGING/kops.yaml" "$PROJECT/"
cd "$PROJECT"
"$PYTHON" -m kaggleops leaderboard >/dev/null    # the store and its tables, while there is room
dd if=/dev/zero of=filler bs=64k >/dev/null 2>&1  # then fill the disk ...
truncate -s -192K filler                          # ... leaving 192 KiB: enough to start a run, not to checkpoint
"$PYTHON" -m kaggleops train --sample --json >first.out 2>first.err
echo "first=$?"
cat first.err >&2
rm filler                                         # the user frees space and resumes, as the error says
"$PYTHON" -m kaggleops train --resume --sample --json 2>resume.err
echo "resume=$?"
cat resume.err >&2
"""


@pytest.mark.slow
def test_a_full_disk_stops_training_at_once_and_the_run_resumes(tmp_path: Path) -> None:
    """The store's disk fills during training: the next step stops with one line naming the disk (not the tracking
    server, not after the last epoch); the run is left resumable, and after freeing space `--resume` finishes it."""
    import shutil
    import subprocess
    import sys

    project, staging = tmp_path / "project", tmp_path / "staging"
    project.mkdir()
    staging.mkdir()
    write_config(staging, folds=[0], train={"max_steps": 16, "epochs": 1, "checkpoint_every": 4, "eval_every": 4})
    # A small disk of our own: a tmpfs in a private mount namespace (root here, an unprivileged user namespace
    # elsewhere); where neither is allowed the test cannot make a full disk and skips.
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    if not shutil.which("unshare") or subprocess.run([*unshare, "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespace here (unshare) to make a small full disk in")
    env = {**os.environ, "PROJECT": str(project), "STAGING": str(staging), "PYTHON": sys.executable}
    out = subprocess.run([*unshare, "sh", "-c", FULL_DISK_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=900)
    if "first=" not in out.stdout:
        pytest.skip(f"could not mount a tmpfs in a mount namespace here: {out.stderr[-300:]}")
    first_rc = int(out.stdout.split("first=")[1].split()[0])
    errors = [line for line in out.stderr.splitlines() if line.startswith("kops: ")]
    assert first_rc == 1, out.stderr[-3000:]
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    [line] = [e for e in errors if e.startswith("kops: error:")]
    assert line.startswith("kops: error: The disk is full"), line
    assert "tracking server" not in line and "[Errno 28] No space left on device" in line, line
    assert f"Free space where the run is stored (sqlite:///{project}/mlflow.db, artifacts in " in line, line
    assert line.endswith("then resume the run: kops train --resume --sample"), line
    import re

    [started] = re.findall(r": run ([0-9a-f]{32})", out.stderr)  # the run the full disk stopped
    assert "resume=0" in out.stdout, out.stderr[-3000:]
    [resumed] = re.findall(r": resuming run ([0-9a-f]{32})", out.stderr)
    assert resumed == started and json.loads(out.stdout.split("first=1", 1)[1].split("resume=")[0])["run_id"] == started
