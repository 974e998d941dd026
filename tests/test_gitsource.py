"""`kops train --git URL@REV`: the run carries the cloned commit, not the caller's HEAD."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config, render_template
from kaggleops.errors import GitSourceError
from kaggleops.schema import TAG_DIRTY, TAG_GIT_COMMIT, TAG_GIT_REPO
from kaggleops.stages.gitsource import GitSpec, clone, train_from_git
from kaggleops.stages.mlproject import write_mlproject

from harness import git, kops


@pytest.mark.parametrize(("text", "url", "rev"), [
    ("https://github.com/a/b", "https://github.com/a/b", None),
    ("https://github.com/a/b@v1.2", "https://github.com/a/b", "v1.2"),
    ("git@github.com:a/b.git", "git@github.com:a/b.git", None),
    ("git@github.com:a/b.git@3f2a9c1", "git@github.com:a/b.git", "3f2a9c1"),
    ("https://x:tok@github.com/a/b", "https://x:tok@github.com/a/b", None),
])
def test_git_spec_parse(text: str, url: str, rev: str | None) -> None:
    spec = GitSpec.parse(text)
    assert (spec.url, spec.rev) == (url, rev)
    assert "tok" not in str(spec)


@pytest.fixture
def bare_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A bare repo with two commits: the first trains 1 epoch, the second 2."""
    work, bare = tmp_path / "work", tmp_path / "remote.git"
    work.mkdir()
    git(work, "init", "-q")
    (work / "kops.yaml").write_text(render_template(owner="alice", folds=[0], epochs=1, experiment="from-git"))
    git(work, "add", "-A")
    git(work, "commit", "-qm", "one epoch")
    first = git(work, "rev-parse", "HEAD")
    (work / "kops.yaml").write_text(render_template(owner="alice", folds=[0], epochs=2, experiment="from-git"))
    git(work, "commit", "-qam", "two epochs")
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return bare, first, git(work, "rev-parse", "HEAD")


@pytest.mark.slow
def test_run_from_git_carries_that_commit_while_caller_is_dirty(tmp_path: Path,
                                                                bare_repo: tuple[Path, str, str]) -> None:
    bare, first, latest = bare_repo
    caller = tmp_path / "caller"
    caller.mkdir()
    git(caller, "init", "-q")
    (caller / "kops.yaml").write_text(render_template(owner="alice"))
    git(caller, "add", "-A")
    git(caller, "commit", "-qm", "caller")
    (caller / "kops.yaml").write_text(render_template(owner="alice") + "\n# uncommitted edit\n")
    cfg = load_config(caller / "kops.yaml")
    result = train_from_git(cfg, GitSpec(str(bare), first), progress=False, sample=True)
    run = Tracker(cfg).get_run(result.runs[0].run_id)
    assert run.tags[TAG_GIT_COMMIT] == first != latest
    assert run.tags[TAG_GIT_REPO] == str(bare)
    assert run.tags[TAG_DIRTY] == "false"
    assert run.params["epochs"] == "1"          # the settings of that commit, not of the caller or HEAD
    assert (caller / "mlflow.db").is_file()           # landed in the caller's store, not in the temp clone


def test_clone_errors_hide_credentials(tmp_path: Path) -> None:
    with pytest.raises(GitSourceError) as err:
        clone(GitSpec(f"file://alice:s3cret@{tmp_path}/missing.git", None), tmp_path / "dst")
    assert "s3cret" not in str(err.value) and "git clone failed" in str(err.value)


def test_bad_revision_is_one_clear_line(tmp_path: Path, bare_repo: tuple[Path, str, str]) -> None:
    expected = "git checkout failed: .*no-such-rev.* Check the URL/revision given to --git"
    with pytest.raises(GitSourceError, match=expected):
        clone(GitSpec(str(bare_repo[0]), "no-such-rev"), tmp_path / "dst")


def test_mlproject_runs_kops_train(tmp_path: Path) -> None:
    import yaml

    mlproject, _ = write_mlproject(tmp_path, "tse")
    spec = yaml.safe_load(mlproject.read_text())
    assert spec["entry_points"]["main"]["command"] == "kops train --fold {fold}"


@pytest.mark.slow
def test_cli_train_git_from_an_empty_folder(tmp_path: Path, bare_repo: tuple[Path, str, str]) -> None:
    """As in a fresh training kernel: no kops.yaml here; the commit's own settings, a store in this folder."""
    import json

    bare, first, _ = bare_repo
    here = tmp_path / "empty"
    here.mkdir()
    out = kops("train", "--git", f"{bare}@{first}", "--sample", "--json", cwd=here)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = json.loads(out.stdout)["runs"][0]["run_id"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{here / 'mlflow.db'}").get_run(run_id)
    assert run.data.tags[TAG_GIT_COMMIT] == first


@pytest.mark.slow
def test_mlflow_run_trains_with_kops(tmp_path: Path) -> None:
    """`kops init --mlproject` makes a repo that `mlflow run` can train (env manager: the current one)."""
    import os
    import sys

    from kaggleops.resources import bundled_competition

    git(tmp_path, "init", "-q")
    # the MLproject's command is a plain `kops train`: the project names its data (the bundled sample)
    (tmp_path / "kops.yaml").write_text(render_template(
        owner="alice", folds=[0], epochs=1, data_dir=str(bundled_competition("tweet-sentiment-extraction"))))
    write_mlproject(tmp_path, "tse")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "project")
    bin_dir = str(Path(sys.executable).parent)
    out = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local", "-P", "fold=0"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fold 0: run " in out.stdout
    runs = Tracker(load_config(tmp_path / "kops.yaml")).search()
    assert [r.name for r in runs] == ["fold-0"]
    assert runs[0].tags[TAG_GIT_COMMIT] == git(tmp_path, "rev-parse", "HEAD")
