"""Config, refs, metric, CLI contract: the fast checks."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kaggleops.adapters.git import strip_credentials
from kaggleops.config import load_config, render_template
from kaggleops.errors import ConfigError
from kaggleops.refs import KAGGLE_WEB, CompetitionRef, DatasetRef, KernelRef, slugify
from kaggleops.tasks.tse.metric import jaccard, mean_jaccard

from harness import _fork_server, environment, kops, python_script

COMMANDS = [["init"], ["demo"], ["train"], ["publish"], ["push-kernel"], ["submit"], ["scores"], ["leaderboard"],
            ["ui"], ["emulator", "start"], ["kernel", "run-local"], ["sync", "push"], ["sync", "pull"],
            ["sync", "status"], ["data"], ["quota"], ["check-task"], ["sweep"]]
HEAVY = ("torch", "transformers", "mlflow", "kaggle", "kagglesdk", "google.cloud", "pandas", "optuna", "matplotlib",
         "sklearn")


@pytest.mark.parametrize(("truth", "pred", "score"), [
    ("Sooo SAD", "sooo sad i will miss you", 1 / 3),
    ("happy", "HAPPY", 1.0),
    ("a b", "c d", 0.0),
    ("", "", 1.0),           # decided: two empty strings are an exact match
    ("", "something", 0.0),
    ("  spaced   out ", "spaced out", 1.0),
])
def test_jaccard_matches_competition_definition(truth: str, pred: str, score: float) -> None:
    assert jaccard(truth, pred) == pytest.approx(score)


def test_mean_jaccard_rejects_misaligned_rows() -> None:
    assert mean_jaccard(["a", "b c"], ["a", "b"]) == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError, match="2 truths but 1 predictions"):
        mean_jaccard(["a", "b"], ["a"])


def test_refs_parse_and_print() -> None:
    ref = DatasetRef.parse("alice/tse-roberta-f0/3")
    assert (ref.owner, ref.slug, ref.version, str(ref)) == ("alice", "tse-roberta-f0", 3, "alice/tse-roberta-f0/3")
    assert DatasetRef.parse("alice/tse-roberta-f0").url() == f"{KAGGLE_WEB}/datasets/alice/tse-roberta-f0"
    assert KernelRef.parse("alice/tse-infer").url("http://127.0.0.1:9") == "http://127.0.0.1:9/code/alice/tse-infer"
    assert CompetitionRef.parse(f"{KAGGLE_WEB}/competitions/tweet-sentiment-extraction").slug == \
        "tweet-sentiment-extraction"
    with pytest.raises(ValueError, match="Expected owner/slug"):
        DatasetRef.parse("no-owner")
    assert slugify("TSE: RoBERTa fold 0!") == "tse-roberta-fold-0"


def test_strip_credentials_from_remote() -> None:
    assert strip_credentials("https://bob:ghp_secret@github.com/a/b.git") == "https://github.com/a/b.git"
    assert strip_credentials("git@github.com:a/b.git") == "git@github.com:a/b.git"


def test_init_template_is_valid_config(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text(render_template(owner="alice", folds=[0, 1]))
    cfg = load_config(tmp_path / "kops.yaml")
    assert cfg.competition == "tweet-sentiment-extraction" and cfg.train.folds == [0, 1]
    assert cfg.resolved_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize(("content", "message"), [
    ("owner: alice\n", "required key `competition` is missing"),
    ("competition: x\ntrian: {}\n", "unknown key `trian`"),
    ("competition: x\ntrain: {n_folds: 1}\n", "`train.n_folds`: Input should be greater than or equal to 2"),
    ("- a list\n", "must be a mapping"),
])
def test_bad_config_is_one_clear_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "kops.yaml").write_text(content)
    with pytest.raises(ConfigError, match=message.replace("`", "`").replace(".", r"\.")):
        load_config(tmp_path / "kops.yaml")


def test_env_overrides_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_config(tmp_path / "kops.yaml").resolved_tracking_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    out = kops(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: kops" in out.stdout and "--help" in out.stdout


def test_help_imports_no_heavy_library() -> None:
    code = ("import sys\nsys.argv=['kops','--help']\nfrom kaggleops.cli import main\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nprint('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{[h.split('.')[0] for h in HEAVY]!r} or m.startswith('google.cloud')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().endswith("LOADED []"), out.stdout[-500:]


def test_missing_config_says_how_to_create_one(tmp_path: Path) -> None:
    out = kops("train", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"kops: error: No kops.yaml in {tmp_path} or its parent folders. "
                                  "Create one with: kops init")


def test_config_is_found_in_a_parent_folder_like_git(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\n")
    deep = tmp_path / "notebooks" / "eda"
    deep.mkdir(parents=True)
    from kaggleops.config import find_config

    assert find_config(deep) == tmp_path / "kops.yaml"
    cfg_in_sub = subprocess.run([sys.executable, "-c", "from kaggleops.config import load_config; "
                                 "c = load_config(); print(c.root, c.resolved_tracking_uri)"],
                                cwd=deep, capture_output=True, text=True)
    assert cfg_in_sub.stdout.split() == [str(tmp_path), f"sqlite:///{tmp_path / 'mlflow.db'}"]


def test_config_errors_all_at_once_with_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text("competiton: tweet-sentiment-extraction\nownr: alice\n"
                                        "tracking_uri: [1]\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "kops.yaml")
    assert str(info.value) == (f"{tmp_path / 'kops.yaml'}: 3 problems: unknown key `competiton` (did you mean "
                               "`competition`?); unknown key `ownr` (did you mean `owner`?); `tracking_uri`: Input "
                               "should be a valid string. Fix it (see `kops init` for a commented example).")


def test_init_writes_config_once(tmp_path: Path) -> None:
    first = kops("init", "--owner", "alice", "--json", cwd=tmp_path)
    assert first.returncode == 0 and json.loads(first.stdout)["config"] == str(tmp_path / "kops.yaml")
    again = kops("init", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr


def test_run_id_prefix_of_6_or_more_characters_resolves(tmp_path: Path) -> None:
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.errors import RunNotFound

    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\n")
    tracker = Tracker(load_config(tmp_path / "kops.yaml"))
    run_id = tracker.start_run("fold-0", {})
    tracker.end_run(run_id)
    assert tracker.resolve(run_id[:8]) == tracker.resolve(run_id[:6]) == run_id
    from kaggleops.errors import ConfigError

    with pytest.raises(ConfigError, match="is too short: a prefix needs 6\\+ characters"):
        tracker.resolve(run_id[:5])  # too short to be taken as a prefix: says so (not "not found")
    other = "0" * 8 if not run_id.startswith("0") else "f" * 8
    with pytest.raises(RunNotFound):
        tracker.resolve(other)
    second = tracker.start_run("fold-1", {})
    from kaggleops.errors import RunIdAmbiguous

    with pytest.raises(RunIdAmbiguous) as err:  # the empty prefix matches both: how an ambiguous one is reported
        tracker._by_prefix("")
    assert str(err.value) == (f"Run id prefix  matches 2 runs: {', '.join(sorted([run_id, second]))}. "
                              "Give more characters of the id.")


def test_init_writes_a_gitignore_for_what_kops_writes(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.pyc")
    out = kops("init", "--owner", "alice", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / ".gitignore").read_text() == "*.pyc\n# kops: tracking store, artifacts, staging\nmlflow.db\n" \
                                                    "mlartifacts/\n.kops/\n"
    assert f"Wrote {tmp_path / '.gitignore'}" in out.stdout


def test_a_data_record_survives_losing_the_create_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many trainers start at once with the same data: all but one lose the store's race to insert the dataset row
    (PostgreSQL: UniqueViolation). kops tries again and the run gets its data record; another error is not retried
    forever but reported as one kops error."""
    from mlflow.exceptions import MlflowException

    from kaggleops.adapters import tracking
    from kaggleops.errors import KopsError

    monkeypatch.setattr(tracking, "INPUT_RACE_PAUSES_S", (0.0, 0.0))
    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\n")
    tracker = tracking.Tracker(load_config(tmp_path / "kops.yaml"))
    run_id = tracker.start_run("fold-0", {})
    real, calls = tracker.client.log_inputs, []

    def racing(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique "
                                  'constraint "dataset_pk"')
        real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_inputs", racing)
    tracker.log_data_input(run_id, "sample", "ff0b1c0c", "/data/train.csv")
    assert len(calls) == 2
    inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("sample", "ff0b1c0c")]

    def broken(*args: object, **kwargs: object) -> None:
        raise MlflowException("INTERNAL_ERROR: disk full")

    monkeypatch.setattr(tracker.client, "log_inputs", broken)
    with pytest.raises(KopsError, match="disk full"):
        tracker.log_data_input(run_id, "sample", "ff0b1c0c", "/data/train.csv")


def test_init_puts_a_skeleton_task_on_the_cpu_and_a_builtin_one_on_the_gpu(tmp_path: Path) -> None:
    """A kernel for a task kops knows nothing about yet spends no GPU quota unless asked (--gpu)."""
    import yaml

    for folder, args, gpu in (("own", ("--competition", "my-tabular"), False), ("builtin", (), True),
                              ("asked", ("--competition", "my-tabular", "--gpu"), True)):
        (tmp_path / folder).mkdir()
        out = kops("init", "--owner", "alice", *args, cwd=tmp_path / folder)
        assert out.returncode == 0, out.stderr
        kernel = yaml.safe_load((tmp_path / folder / "kops.yaml").read_text())["kernel"]
        assert kernel["enable_gpu"] is gpu, folder


def test_a_forked_kops_call_behaves_as_a_fresh_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/forkserver.py (how harness.kops runs most calls) against a fresh `python -m kaggleops`: the same exit
    code, stdout and stderr for a usage error, an error naming the store, a result, the call's own environment and
    folder."""
    import shutil

    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\nexperiment: x\n")
    sub = tmp_path / "sub"
    server = _fork_server(environment(None))
    if server is not None:  # torch is preloaded there: a call with other thread settings gets a fresh process
        assert server.accepts(environment(None))
        assert not server.accepts(environment({"OMP_NUM_THREADS": "2"}))
        assert not server.accepts(environment({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}))
    calls = [(("leaderboard", "--sort", "nope"), tmp_path, {}),
             (("publish", "0123456789abcdef"), tmp_path, {}),
             (("leaderboard",), tmp_path, {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"}),
             (("init", "--competition", "my-comp", "--json"), sub, {})]
    for args, cwd, env in calls:
        results = []
        for fork in ("1", "0"):
            shutil.rmtree(sub, ignore_errors=True)
            sub.mkdir()
            monkeypatch.setenv("KOPS_TEST_FORK", fork)
            out = kops(*args, cwd=cwd, env=env)
            results.append((out.returncode, out.stdout, out.stderr))
        assert results[0] == results[1], args
    assert (tmp_path / "other.db").is_file()  # the call's own environment reached MLflow in the fork too
    assert (sub / "tasks" / "my_comp_task.py").is_file()  # written in the call's own folder
    # a test's own wrapper script (harness.python_script): as `python wrap.py ARGS` sees its name, argv and path
    (tmp_path / "wrap.py").write_text(
        "import os, sys\nprint(__name__, sys.argv, sys.path[0] == os.path.dirname(os.path.abspath(__file__)))\n"
        "from kaggleops.cli import main\nsys.argv = ['kops', 'leaderboard', '--sort', sys.argv[1]]\nmain()\n")
    results = []
    for fork in ("1", "0"):
        monkeypatch.setenv("KOPS_TEST_FORK", fork)
        out = python_script(Path("wrap.py"), "nope", cwd=tmp_path)
        results.append((out.returncode, out.stdout, out.stderr))
    assert results[0] == results[1] and results[0][0] == 2, results
    assert results[0][1] == "__main__ ['wrap.py', 'nope'] True\n"


def test_library_defaults_set_in_the_test_process_do_not_stop_forking(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """What in-process tasks and trainings import sets variables in the test process (scikit-learn KMP_INIT_AT_FORK;
    torch TORCHINDUCTOR_CACHE_DIR, from the TMPDIR of the moment): a server started before or after must still take
    the calls (else every later call of the worker runs in a fresh interpreter, silently ~3 s slower each)."""
    from harness import ForkServer

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "first-test-tmp"))  # inherited by the server
    server = ForkServer()
    try:
        import sklearn  # noqa: F401
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
        monkeypatch.setenv("TMPDIR", str(tmp_path / "another-tmp"))
        (tmp_path / "another-tmp").mkdir()
        monkeypatch.setattr(tempfile, "tempdir", None)
        assert cache_dir().startswith(str(tmp_path / "another-tmp"))
        assert server.accepts(environment(None)), "every later call would start a fresh interpreter"
        assert not server.accepts(environment({"KMP_AFFINITY": "compact"}))  # a setting of the call still counts
    finally:
        server.proc.kill()
        server.proc.wait()


def test_a_forked_kops_call_adds_its_pythonpath_or_runs_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook's secret store on PYTHONPATH reaches a forked call as it reaches a fresh one; a folder that would
    shadow a module the fork server preloaded (here mlflow), or that holds a start-up hook, gets a fresh process:
    its output is what only a fresh interpreter prints."""
    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\nexperiment: x\n")
    secrets, shadow, hook = (tmp_path / name for name in ("secrets", "shadow", "hook"))
    for folder in (secrets, shadow, hook):
        folder.mkdir()
    (secrets / "kaggle_secrets.py").write_text(
        "class UserSecretsClient:\n    def get_secret(self, name):\n"
        f"        return {{'MLFLOW_TRACKING_URI': 'sqlite:///{tmp_path / 'secret.db'}'}}[name]\n")
    (shadow / "mlflow.py").write_text("raise SystemExit('a shadowing mlflow.py on PYTHONPATH')\n")
    (hook / "sitecustomize.py").write_text("import sys; print('sitecustomize ran', file=sys.stderr)\n")
    results = []
    for fork in ("1", "0"):
        monkeypatch.setenv("KOPS_TEST_FORK", fork)
        out = kops("leaderboard", "--json", cwd=tmp_path, env={"PYTHONPATH": str(secrets)})
        results.append((out.returncode, out.stdout, out.stderr))
        assert (tmp_path / "secret.db").is_file(), fork  # the secret store on the call's PYTHONPATH named the store
        (tmp_path / "secret.db").unlink()
    assert results[0] == results[1] and results[0][0] == 0, results
    monkeypatch.setenv("KOPS_TEST_FORK", "1")
    shadowed = kops("leaderboard", "--json", cwd=tmp_path, env={"PYTHONPATH": str(shadow)})
    assert (shadowed.returncode, shadowed.stderr.strip()) == (1, "a shadowing mlflow.py on PYTHONPATH")
    hooked = kops("leaderboard", "--json", cwd=tmp_path, env={"PYTHONPATH": str(hook)})
    assert hooked.returncode == 0 and hooked.stderr.startswith("sitecustomize ran\n"), hooked.stderr


def test_waits_ask_again_after_a_quarter_second_then_back_off_to_their_interval() -> None:
    """What is ready at once is seen at once; a long wait (a kernel session) still asks every poll_s."""
    from kaggleops.errors import TimedOut
    from kaggleops.polling import poll

    answers, pauses = iter([None] * 6 + ["ready"]), []
    assert poll(lambda: next(answers), 60, 2.0, lambda: TimedOut("late"), sleep=pauses.append) == "ready"
    assert pauses == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    pauses.clear()
    assert poll(lambda: "now", 60, 2.0, lambda: TimedOut("late"), sleep=pauses.append) == "now" and pauses == []
    short: list[float] = []
    with pytest.raises(TimedOut, match="late"):
        poll(lambda: None, -1.0, 0.1, lambda: TimedOut("late"), sleep=short.append)
    assert short == []  # past the deadline after the first check: no pause at all
