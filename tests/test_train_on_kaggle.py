"""`kops train --on kaggle` end to end, and `kops train --git` against a fresh team server (issue #31)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaggleops import __version__
from kaggleops.emulator import Emulator
from kaggleops.emulator.seeding import seed_competition

from harness import environment, git, kops, kops_process, start_emulator_process

TSE = "tweet-sentiment-extraction"
KEY = "k3y-0f-alice"
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


# ---- a git host on loopback, and the Kaggle stand-in ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def git_host(root: Path) -> Iterator[str]:
    """`git daemon` serving the bare repositories under ``root`` (push allowed) as ``git://127.0.0.1:PORT/``:
    the stand-in for a git host on the internet, which the emulator's sessions can clone from and a local path
    is not."""
    port = _free_port()
    proc = subprocess.Popen(["git", "daemon", "--export-all", "--enable=receive-pack", "--reuseaddr",
                             "--informative-errors", f"--base-path={root}", "--listen=127.0.0.1", f"--port={port}",
                             str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.1)
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def kaggle(tmp_path: Path) -> Iterator[tuple[Emulator, dict[str, str]]]:
    """The Kaggle emulator serving the bundled competition, and the environment that aims kops at it."""
    with Emulator(tmp_path / "emu", username="alice", key=KEY) as emu:
        seed_competition(emu, TSE)
        yield emu, {"KOPS_KAGGLE_ENDPOINT": emu.url, "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": KEY}


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    return lines[0]


def _nothing_pushed(emu: Emulator) -> None:
    state = emu.state_summary()
    assert not state["kernels"] and not state["datasets"], state


def test_a_commit_not_on_origin_is_refused_before_any_push(tmp_path: Path, kaggle: Any) -> None:
    emu, env = kaggle
    work, bare, _ = project_remote(tmp_path, "unpushed")
    with git_host(tmp_path) as host:
        git(work, "remote", "set-url", "origin", f"{host}/{bare.name}")
        (work / "NOTES.md").write_text("committed, not pushed\n")
        git(work, "add", "-A")
        git(work, "commit", "-qm", "not pushed")
        head = git(work, "rev-parse", "HEAD")
        line = _one_error_line(kops("train", "--on", "kaggle", "--wait", cwd=work, env=env))
    assert line == (f"kops: error: Commit {head[:12]} is not on origin ({host}/{bare.name}): the Kaggle kernel "
                    "clones it from there. Push it first: git push origin main")
    _nothing_pushed(emu)


@pytest.mark.parametrize(("origin", "why"), [
    ("{bare}", "a path on this machine: a Kaggle session cannot reach it"),
    ("file://{bare}", "a path on this machine: a Kaggle session cannot reach it"),
    ("git@github.com:alice/project.git", "an SSH URL: a Kaggle session has no SSH key to clone it with"),
])
def test_an_origin_kaggle_cannot_clone_is_refused_before_any_push(tmp_path: Path, kaggle: Any, origin: str,
                                                                   why: str) -> None:
    emu, env = kaggle
    work, bare, _ = project_remote(tmp_path, "unclonable")
    url = origin.format(bare=bare)
    git(work, "remote", "set-url", "origin", url)
    line = _one_error_line(kops("train", "--on", "kaggle", cwd=work, env=env))
    assert line == (f"kops: error: origin is {url}, {why}. Push the project to a git host Kaggle can reach and use "
                    "its https URL: git remote set-url origin https://github.com/OWNER/REPO.git && "
                    "git push origin HEAD")
    _nothing_pushed(emu)


def test_a_loopback_origin_is_refused_when_kaggle_is_the_real_one(tmp_path: Path) -> None:
    """Only the emulator runs on this machine: for kaggle.com a loopback git host is unreachable (checked before
    any call to Kaggle, so no credentials are needed)."""
    work, _, _ = project_remote(tmp_path, "loopback")
    git(work, "remote", "set-url", "origin", "https://127.0.0.1:8443/alice/project.git")
    line = _one_error_line(kops("train", "--on", "kaggle", cwd=work))
    assert line.startswith("kops: error: origin is https://127.0.0.1:8443/alice/project.git, on 127.0.0.1, which "
                           "only this machine's network reaches: a Kaggle session cannot.")


# ---- end to end ---------------------------------------------------------------------------------------------

# One fold of the tiny model, long enough to be stopped between two checkpoints: 160 steps of 8 rows, a checkpoint
# (and a validation) every 40 (each checkpoint is an upload to the team server: more of them only cost time).
TRAIN_ON_KAGGLE = """train:
  folds: [0]
  epochs: 5
  batch_size: 8
  max_steps: 160
  eval_every: 40
  checkpoint_every: 40
"""
KERNEL = "alice/kaggle-e2e-train"


def _runs(client: Any, experiment: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`kops.kind` = 'fold'") if exp else []


def _has_checkpoint(client: Any, run: Any) -> bool:
    return any(a.path.endswith("latest.json") for a in client.list_artifacts(run.info.run_id, "checkpoint"))


def _stop_after_first_checkpoint(emu: Emulator, client: Any, before: set[str], proc: Any) -> str:
    """Wait for the new session's run to store a checkpoint, then stop the session (its machine is lost)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        new = [r for r in _runs(client, "kaggle-e2e") if r.info.run_id not in before]
        if new and _has_checkpoint(client, new[0]):
            assert emu.stop_kernel(KERNEL, reason="error"), "the session ended before it could be stopped"
            return str(new[0].info.run_id)
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint stored; kops said: {proc.communicate()[1][-3000:]}")


def _steps_once(client: Any, run_id: str) -> None:
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at some step: {sorted(steps)}"


@pytest.mark.slow
def test_train_on_kaggle_new_project_then_killed_and_resumed(tmp_path: Path, kaggle: Any,
                                                              mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    emu, kaggle_env = kaggle
    env = {**kaggle_env, "MLFLOW_TRACKING_URI": mlflow_server}  # the team server; the kernel gets it as a secret
    client = MlflowClient(mlflow_server)
    work, bare, commit = project_remote(tmp_path / "git", "kaggle-e2e", TRAIN_ON_KAGGLE)
    with git_host(tmp_path / "git") as host:
        git(work, "remote", "set-url", "origin", f"{host}/{bare.name}")

        # 1. a new notebook has no secrets: saved without running, and the user is told which to attach
        first = kops("train", "--on", "kaggle", "--wait", cwd=work, env=env)
        assert first.returncode == 1, first.stderr[-3000:]
        assert first.stderr.strip().splitlines()[-1] == (
            f"kops: error: Training kernel {KERNEL} v1 was saved on Kaggle but not run: open {emu.url}/code/{KERNEL}/"
            "edit, Add-ons > Secrets, and attach MLFLOW_TRACKING_URI (your team server's URL), and "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) if it asks for them. "
            "Then: kops train --on kaggle --wait")
        assert f"kops: {KERNEL} is a new Kaggle notebook" in first.stderr
        assert [v["status"] for v in emu.state_summary()["kernels"][KERNEL]["versions"]] == ["COMPLETE"]
        assert not _runs(client, "kaggle-e2e")

        # 2. the user attaches the secret in the notebook's editor; the next push trains
        emu.add_secret("MLFLOW_TRACKING_URI", mlflow_server, owner="alice")
        emu.attach_secrets(KERNEL, ["MLFLOW_TRACKING_URI"])
        started = time.monotonic()
        done = kops("train", "--on", "kaggle", "--wait", "--json", cwd=work, env=env)
        seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr[-5000:]
        result = json.loads(done.stdout)
        assert result["status"] == "COMPLETE" and result["kernel_version"] == 2
        assert result["git"] == f"{host}/{bare.name}@{commit}"
        assert f"kernel {KERNEL} v2: RUNNING (" in done.stderr and f"kernel {KERNEL} v2: COMPLETE (" in done.stderr
        (run_id,) = result["run_ids"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.git.commit"] == commit
        assert run.data.tags["kops.env"].startswith("kaggle")
        assert run.data.params["data"] == TSE and run.data.params["batch_size"] == "8"
        assert "best_val_jaccard" in run.data.metrics and run.data.metrics["train_loss"] > 0
        assert [a.path for a in client.list_artifacts(run_id, "model")]
        log = "\n".join(emu_log(emu, 2))
        assert f"kops: kops {__version__} from dataset alice/kops-runtime v1 (pip --no-index --no-deps)" in log
        assert "installing what the image lacks" not in log  # the emulator's image has kops' dependencies
        assert "kops: secrets loaded: ['MLFLOW_TRACKING_URI']" in log and mlflow_server not in log
        for path in (work / ".kops" / "kernels" / "kaggle-e2e-train").iterdir():
            assert mlflow_server not in path.read_text() and KEY not in path.read_text(), path.name

        # 3. a session lost mid-training: --wait names the run, which kops marks FAILED
        proc = kops_process(["train", "--on", "kaggle", "--wait"], work, environment(env))
        killed = _stop_after_first_checkpoint(emu, client, {run_id}, proc)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 1, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == (
            f"kops: error: Training kernel {KERNEL}/3 ended in ERROR: Kernel session was stopped: the machine running "
            f"it was lost; run {killed} was RUNNING, now FAILED. Continue from the last checkpoint: kops train --on "
            "kaggle --resume --wait")
        assert client.get_run(killed).info.status == "FAILED"
        stopped_at = max(m.step for m in client.get_metric_history(killed, "train_loss"))
        assert stopped_at < 160

        # 4. --resume reaches the kernel: the same run continues from its checkpoint
        resumed = kops("train", "--on", "kaggle", "--resume", "--wait", "--json", cwd=work, env=env)
        assert resumed.returncode == 0, resumed.stderr[-5000:]
        assert json.loads(resumed.stdout)["run_ids"] == [killed]
    run = client.get_run(killed)
    assert run.info.status == "FINISHED" and run.data.tags["kops.resumes"] == "1"
    assert run.data.tags["mlflow.source.git.commit"] == commit
    assert "resuming run " + killed + " from step " in "\n".join(emu_log(emu, 4))
    _steps_once(client, killed)
    assert len(_runs(client, "kaggle-e2e")) == 2  # the finished run and the resumed one: no third
    print(f"train --on kaggle --wait (new project, one fold): {seconds:.0f} s")


def emu_log(emu: Emulator, version: int) -> list[str]:
    """What kernel version ``version`` printed (its log, as Kaggle keeps it)."""
    kernel = emu.store.kernels[tuple(KERNEL.split("/"))]  # type: ignore[index]
    return [str(e["data"]).rstrip("\n") for e in kernel.version(version).log]


# ---- the emulator's notebook secrets and sessions ----------------------------------------------------------------

PEEK = '''import os, subprocess, time
from kaggle_secrets import UserSecretsClient
client = UserSecretsClient()
for name in ("TEAM_URI", "OTHER"):
    try:
        print(name, "=", "right value" if client.get_secret(name) == "http://team.example" else "wrong value")
    except Exception as e:
        print(name, type(e).__name__, e)
print("host credentials:", sorted(k for k in os.environ if k.startswith(("MLFLOW_", "KAGGLE_KEY"))))
clone = subprocess.run(["git", "clone", "-q", os.environ["PEEK_REPO"], "clone"], capture_output=True, text=True)
print("local clone:", clone.returncode, clone.stderr.strip().splitlines()[-1])
if os.environ.get("PEEK_SLEEP"):
    subprocess.Popen(["sleep", "300"])
    time.sleep(300)
'''


def _push_peek(kaggle: Any, folder: Path, slug: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "peek.py").write_text(PEEK)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"alice/{slug}", "title": f"{slug} kernel", "code_file": "peek.py", "language": "python",
        "kernel_type": "script",
        "is_private": True, "enable_gpu": False, "enable_internet": True, "dataset_sources": [],
        "competition_sources": [], "kernel_sources": [], "model_sources": []}))
    return int(kaggle.push_kernel(folder))


def _peek_log(kaggle: Any, slug: str, version: int) -> list[str]:
    from kaggleops.refs import KernelRef

    ref = KernelRef("alice", slug, version)
    assert kaggle.wait_kernel(ref, timeout_s=120, poll_s=0.5) == "COMPLETE"
    return [line for line in kaggle.kernel_log(ref) if line.strip()]


def test_emulator_sessions_read_attached_secrets_only_and_clone_no_local_path(
        tmp_path: Path, kaggle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops.adapters.kaggle import Kaggle

    emu, env = kaggle
    for var, value in {**env, "MLFLOW_TRACKING_URI": "http://host-only.example", "PEEK_REPO": str(tmp_path)}.items():
        monkeypatch.setenv(var, value)  # the emulator runs in this process: its sessions must not see these
    git(tmp_path, "init", "-q")
    client = Kaggle(emu.url)
    emu.add_secret("TEAM_URI", "http://team.example")
    emu.add_secret("OTHER", "never attached")
    first = _peek_log(client, "peek-secrets", _push_peek(client, tmp_path / "k", "peek-secrets"))
    assert first[:2] == ["TEAM_URI BackendError Unexpected response from the service. Response: {'wasSuccessful': "
                         f"False, 'errors': ['No user secrets exist for kernel id {_kernel_id(emu)} and label "
                         "TEAM_URI']}.", first[1]]  # a new notebook: nothing attached
    emu.attach_secrets("alice/peek-secrets", ["TEAM_URI"])
    second = _peek_log(client, "peek-secrets", _push_peek(client, tmp_path / "k", "peek-secrets"))
    assert second[0] == "TEAM_URI = right value" and second[1].startswith("OTHER BackendError")
    assert second[2] == "host credentials: []"
    assert second[3] == "local clone: 128 fatal: transport 'file' not allowed"
    log = (emu.root / "requests.log").read_text()
    assert "http://team.example" not in log and '"label": "TEAM_URI"' in log


def _kernel_id(emu: Emulator) -> int:
    return emu.store.kernels[("alice", "peek-secrets")].id


def test_emulator_stop_kernel_ends_the_whole_session(tmp_path: Path, kaggle: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.refs import KernelRef

    emu, env = kaggle
    for var, value in {**env, "PEEK_REPO": str(tmp_path), "PEEK_SLEEP": "1"}.items():
        monkeypatch.setenv(var, value)
    git(tmp_path, "init", "-q")
    client = Kaggle(emu.url)
    version = _push_peek(client, tmp_path / "k", "sleeper")
    ref = KernelRef("alice", "sleeper", version)
    deadline = time.monotonic() + 60
    while not any("local clone" in line for line in client.kernel_log(ref)) and time.monotonic() < deadline:
        time.sleep(0.2)
    kv = emu.store.kernels[("alice", "sleeper")].version(version)
    group = emu.runner._procs[id(kv)].pid
    assert emu.stop_kernel("alice/sleeper")
    deadline = time.monotonic() + 30
    while client.kernel_status(ref)[0] != "CANCEL_ACKNOWLEDGED" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.kernel_status(ref) == ("CANCEL_ACKNOWLEDGED", "Kernel run was cancelled by the user.")
    assert not _alive_in_group(group)  # the session's `sleep` child is gone too
    assert not emu.stop_kernel("alice/sleeper")


def _alive_in_group(group: int) -> list[int]:
    """Processes of process group ``group`` that still run (zombies left to an init that does not reap excluded)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_emulator_start_secret_reaches_every_notebook_of_the_user(tmp_path: Path) -> None:
    from kaggleops.adapters.kaggle import Kaggle

    git(tmp_path, "init", "-q")
    with start_emulator_process(tmp_path / "emu", username="alice", key=KEY, args=["--secret", "TEAM_URI"],
                                env={"TEAM_URI": "http://team.example", "PEEK_REPO": str(tmp_path)}) as emulated:
        os.environ.update(emulated.env)
        try:
            client = Kaggle(emulated.url)
            lines = _peek_log(client, "peek-secrets", _push_peek(client, tmp_path / "k", "peek-secrets"))
        finally:
            for var in emulated.env:
                os.environ.pop(var, None)
    assert lines[0] == "TEAM_URI = right value" and lines[1].startswith("OTHER BackendError")
    missing = kops("emulator", "start", "--root", str(tmp_path / "emu2"), "--secret", "NOT_SET_ANYWHERE")
    assert _one_error_line(missing) == ("kops: error: --secret NOT_SET_ANYWHERE: the environment variable "
                                        "NOT_SET_ANYWHERE is not set. Set it first: export NOT_SET_ANYWHERE=VALUE")
