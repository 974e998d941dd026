"""The generic core names no task concept; the task interface, registry, settings and skeleton behave as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kaggleops
from kaggleops.task import Metric, SettingsError, Submission, check_settings
from kaggleops.tasks import TaskLoadError, get_task, load_task, split_spec

from harness import kops

PACKAGE = Path(kaggleops.__file__).parent
# the reference tasks' words, and those of TSE's second stage that once leaked into the core (its character spans,
# its Hugging Face tokenizer folder, its blend weight w and top-n n); "candidates" stays: the second-stage protocol's
TASK_WORDS = re.compile(r"jaccard|sentiment|neutral|selected_text|tweet|demand|\bspans?\b|tokeni[sz]er\b|\bw/n\b|"
                        r"\bbest_[wn]\b|kops_rerank|\[[\"']w[\"']\]|\[[\"']n[\"']\]", re.IGNORECASE)
TASK_SPECIFIC = ("tasks", "emulator")


def test_generic_modules_name_no_task_concept() -> None:
    hits = []
    for path in sorted(PACKAGE.rglob("*")):
        rel = path.relative_to(PACKAGE)
        if not path.is_file() or rel.parts[0] in TASK_SPECIFIC or "__pycache__" in rel.parts:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if TASK_WORDS.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert hits == []


def test_the_grep_would_catch_a_task_word(tmp_path: Path) -> None:
    assert TASK_WORDS.search("cv_jaccard") and TASK_WORDS.search("Selected_Text") and not TASK_WORDS.search("cv_rmse")
    for leaked in ("the candidate spans", "tokenizer/vocab.json", "tuned w/n", "best_w", "model/kops_rerank.json",
                   "rr['w']", 'options["n"]'):
        assert TASK_WORDS.search(leaked), leaked
    for generic in ("the candidates a second stage rescores", "kops.lib.tokenizers", "spanning", "open(path, 'w')"):
        assert not TASK_WORDS.search(generic), generic


def test_check_settings_names_the_unknown_key() -> None:
    assert check_settings({"lr": 0.1}, {"lr": 0.01, "epochs": 3}) == {"lr": 0.1, "epochs": 3}
    with pytest.raises(SettingsError, match="unknown train setting `epoch`"):
        check_settings({"epoch": 2}, {"lr": 0.01, "epochs": 3})


def test_metric_and_submission_records() -> None:
    rmse = Metric("rmse", higher_is_better=False, fn=lambda t, p: abs(t - p))
    assert rmse(3, 1) == 2.0 and rmse.better(0.1, 0.2) and not rmse.better(0.3, 0.2)
    assert Submission("id", ("a", "b")).header == ["id", "a", "b"]


def test_the_builtin_task_implements_the_interface_and_its_optional_stages() -> None:
    from kaggleops.task import PostProcessing, SecondStage, Task

    tse = get_task("tweet-sentiment-extraction")
    assert isinstance(tse, Task) and isinstance(tse, SecondStage) and isinstance(tse, PostProcessing)
    assert tse.metric.name == "jaccard" and tse.metric.higher_is_better
    with pytest.raises(SettingsError, match="epoch"):
        tse.settings({"epoch": 2})


def test_task_specs_load_files_and_modules_and_name_import_errors(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "helper_mod_x1.py").write_text("VALUE = 41\n")
    (tmp_path / "tasks" / "my_task_x1.py").write_text(
        "from helper_mod_x1 import VALUE\nfrom kaggleops.task import Metric, Submission\n"
        "class T:\n    name = 'x'\n    submission = Submission('id', ('y',))\n"
        "    metric = Metric('acc', True, lambda t, p: 1.0)\n    value = VALUE + 1\n"
        "    def load_train(self, p): ...\n    def load_test(self, p): ...\n    def make_folds(self, d, n, s): ...\n"
        "    def settings(self, m): ...\n    def train_fold(self, d, s, c): ...\n    def predict(self, m, t, c): ...\n")
    (tmp_path / "tasks" / "broken_x1.py").write_text("import not_a_module_kops_x1\n")
    assert load_task("tasks/my_task_x1.py:T", tmp_path).value == 42
    with pytest.raises(TaskLoadError, match="No module named 'not_a_module_kops_x1'"):
        load_task("tasks/broken_x1.py:T", tmp_path)
    with pytest.raises(TaskLoadError, match="does not exist"):
        load_task("tasks/nope.py:T", tmp_path)
    with pytest.raises(TaskLoadError, match="has no 'Nope'"):
        load_task("tasks/my_task_x1.py:Nope", tmp_path)
    with pytest.raises(TaskLoadError, match="cannot import task no_such_pkg_kops.mod:T"):
        load_task("no_such_pkg_kops.mod:T")
    with pytest.raises(TaskLoadError, match="not of the form"):
        split_spec("justaname")
    with pytest.raises(TaskLoadError, match="Unknown task 'titanic'"):
        get_task("titanic")


def test_init_for_an_unknown_competition_writes_a_skeleton_and_train_names_the_first_method(tmp_path: Path) -> None:
    out = kops("init", "--competition", "titanic", "--owner", "alice", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    skeleton = tmp_path / "tasks" / "titanic_task.py"
    assert skeleton.is_file() and "skeleton" in out.stdout
    assert "task: tasks/titanic_task.py:TitanicTask" in (tmp_path / "kops.yaml").read_text()
    source = skeleton.read_text()
    for method in ("load_train", "load_test", "make_folds", "settings", "train_fold", "predict"):
        assert f"def {method}(" in source
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("PassengerId,Survived\n1,0\n")
    out = kops("train", "--data", "data", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "implement TitanicTask.load_train in tasks/titanic_task.py" in lines[0], out.stderr


def test_a_task_spec_that_cannot_import_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text("competition: titanic\ntask: no_such_pkg_k12.tasks:T\nowner: alice\n"
                                        "data_dir: .\n")
    (tmp_path / "train.csv").write_text("a\n1\n")
    out = kops("train", cwd=tmp_path)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert ("cannot import task no_such_pkg_k12.tasks:T: ModuleNotFoundError: No module named 'no_such_pkg_k12'"
            in lines[0])


def test_a_bad_train_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\n"
                                        "train:\n  epochz: 3\n")
    out = kops("train", "--sample", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "epochz" in out.stderr and "train:" in out.stderr


def test_the_kernel_runtime_names_a_module_the_task_needs_but_the_kernel_lacks(tmp_path: Path) -> None:
    from kaggleops.kernel.runtime import KernelFailure, import_task

    (tmp_path / "needs_dep_k12.py").write_text("import kops_absent_dep_k12\nclass T:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(KernelFailure, match="no module named 'kops_absent_dep_k12'.*kernel.wheels"):
            import_task({"competition": "x", "task": {"spec": "needs_dep_k12:T"}})
    finally:
        sys.path.remove(str(tmp_path))


def test_leaderboard_sorts_lower_is_better_metrics_ascending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.config import load_config
    from kaggleops.stages.leaderboard import leaderboard

    (tmp_path / "kops.yaml").write_text("competition: my-regression\nowner: alice\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(tmp_path / "kops.yaml")
    tracker = Tracker(cfg)
    rows = {}
    for name, cv, lb in (("a", 0.30, 0.40), ("b", 0.10, 0.20), ("c", 0.20, 0.60)):
        src = tracker.start_run(f"fold-{name}", {}, {"kops.metric": "rmse", "kops.metric.higher_is_better": "false",
                                                      "kops.kind": "fold"})
        tracker.log_metrics(src, {"best_val_rmse": cv})
        tracker.end_run(src)
        sub = tracker.start_run(f"sub-{name}", {}, {"kops.kind": "submission", "kops.competition": "my-regression",
                                                     "kops.source_runs": src})
        tracker.log_metrics(sub, {"lb_public": lb})
        tracker.end_run(sub)
        rows[sub] = name
    by_lb = [rows[r.submission_run_id] for r in leaderboard(cfg, sort="lb_public")]
    by_cv = [rows[r.submission_run_id] for r in leaderboard(cfg, sort="cv")]
    assert by_lb == ["b", "a", "c"] and by_cv == ["b", "c", "a"]
    assert leaderboard(cfg)[0].metric == "rmse" and leaderboard(cfg)[0].higher_is_better is False


@pytest.mark.slow
def test_the_readme_minimal_task_trains_and_predicts(tmp_path: Path) -> None:
    """The README's "Bring your own competition" task, run through the interface as kops calls it."""
    import numpy as np
    import pandas as pd

    from kaggleops.task import FoldContext, PredictContext

    readme = (PACKAGE.parent / "README.md").read_text()
    source = readme.split("```python\n# tasks/my_task.py", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_task_k12.py").write_text(source)
    task = load_task("readme_task_k12.py:MyTask", tmp_path)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 120)
    train = pd.DataFrame({"id": range(120), "x": x, "target": 1 + 2 * x - x**2 + rng.normal(0, 0.05, 120)})
    train.to_csv(tmp_path / "train.csv", index=False)
    df = task.make_folds(task.load_train(tmp_path / "train.csv"), 3, 42)
    settings = task.settings({"degree": 2})
    with pytest.raises(SettingsError, match="degre"):
        task.settings({"degre": 2})
    dirs, logged = [], []
    for fold in range(3):
        (tmp_path / f"f{fold}").mkdir()
        res = task.train_fold(df, settings, FoldContext(fold, tmp_path / f"f{fold}", log=lambda m, s: logged.append(m)))
        assert res.score < 0.1 and list(res.oof.columns) == ["id", "target"]
        dirs.append(res.model_dir)
    test = train[["id", "x"]].head(10)
    pred = task.predict(dirs, test, PredictContext([1 / 3] * 3, tmp_path))
    assert list(pred.columns) == ["id", "target"] and task.metric(train.head(10), pred) < 0.1
    assert not task.metric.higher_is_better and logged and "val_rmse" in logged[0]


def test_code_dataset_holds_the_task_folder_or_package_and_installs_offline(tmp_path: Path) -> None:
    from kaggleops.kernel.code import build_code_wheel, code_files, content_hash, kernel_spec

    root = tmp_path / "proj"
    (root / "tasks" / "sub").mkdir(parents=True)
    for rel in ("tasks/my_task_k12c.py", "tasks/helper_k12c.py", "tasks/sub/__init__.py", "tasks/sub/x.py"):
        (root / rel).write_text("VALUE = 1\n")
    (root / "tasks" / "notes.txt").write_text("not code")
    (root / "pkg_k12c").mkdir()
    (root / "pkg_k12c" / "__init__.py").write_text("")
    (root / "pkg_k12c" / "mod.py").write_text("class T:\n    pass\n")
    files = code_files("tasks/my_task_k12c.py:T", root)
    assert [n for n, _ in files] == ["helper_k12c.py", "my_task_k12c.py", "sub/__init__.py", "sub/x.py"]
    assert kernel_spec("tasks/my_task_k12c.py:T") == "my_task_k12c:T" and kernel_spec("a.b:T") == "a.b:T"
    assert [n for n, _ in code_files("pkg_k12c.mod:T", root)] == ["pkg_k12c/__init__.py", "pkg_k12c/mod.py"]
    assert code_files("kaggleops.tasks.tse:TweetSentimentExtraction", root) == []
    content = content_hash(files, [], "my_task_k12c:T")
    a, b = build_code_wheel(tmp_path / "a", files, content), build_code_wheel(tmp_path / "b", files, content)
    assert a.read_bytes() == b.read_bytes()  # content-versioned: same code, same bytes
    (root / "tasks" / "helper_k12c.py").write_text("VALUE = 2\n")
    assert content_hash(code_files("tasks/my_task_k12c.py:T", root), [], "my_task_k12c:T") != content
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "-q", "--target", str(target),
                    str(a)], check=True)
    out = subprocess.run([sys.executable, "-c", "import my_task_k12c, helper_k12c, sub.x; print(helper_k12c.VALUE)"],
                         cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr


def test_ui_view_shows_the_task_metric_and_sorts_lower_is_better_ascending(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from mlflow.tracking import MlflowClient

    from kaggleops.adapters.tracking import Tracker
    from kaggleops.config import load_config
    from kaggleops.stages.ui import SHARE_KEY, SHARED_VIEW_TAG, save_leaderboard_view

    (tmp_path / "kops.yaml").write_text("competition: my-regression\nowner: alice\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(tmp_path / "kops.yaml")
    tracker = Tracker(cfg)
    save_leaderboard_view(tracker, metric="rmse", higher_is_better=False)
    exp = MlflowClient(tracking_uri=cfg.resolved_tracking_uri).get_experiment(tracker.experiment_id)
    state = json.loads(exp.tags[SHARED_VIEW_TAG + SHARE_KEY])
    assert state["orderByAsc"] is True and "metrics.`cv_rmse`" in state["selectedColumns"]
    assert "metrics.`best_val_rmse`" in state["selectedColumns"]


@pytest.mark.slow
def test_a_run_records_the_libraries_its_task_imported(tmp_path: Path) -> None:
    """The README's task, importing a library kops itself never imports (joblib): the fold run's
    environment/requirements.txt pins it, beside everything else the run imported."""
    import json
    from importlib import metadata

    import numpy as np
    from mlflow.tracking import MlflowClient

    readme = (PACKAGE.parent / "README.md").read_text()
    source = readme.split("```python\n# tasks/my_task.py", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    head, sep, rest = source.partition("    def train_fold(self, train, settings, ctx):")
    assert sep, "the README task changed"
    line_end = rest.index("\n") + 1
    source = head + sep + rest[:line_end] + "        import joblib  # noqa: F401 - a library only the task uses\n" + \
        rest[line_end:]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_task.py").write_text(source)
    (tmp_path / "data").mkdir()
    x = np.random.default_rng(0).uniform(-1, 1, 60)
    (tmp_path / "data" / "train.csv").write_text("id,x,target\n" + "".join(f"{i},{v},{1 + 2 * v}\n"
                                                                           for i, v in enumerate(x)))
    (tmp_path / "kops.yaml").write_text("competition: my-competition\ntask: tasks/my_task.py:MyTask\nowner: alice\n"
                                        "data_dir: data\ntrain:\n  n_folds: 3\n  degree: 1\n")
    out = kops("train", "--fold", "0", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = json.loads(out.stdout)["runs"][0]["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = client.download_artifacts(run_id, "environment/requirements.txt", str(tmp_path / "dl"))
    lines = Path(path).read_text().splitlines()
    assert f"joblib=={metadata.version('joblib')}" in lines
    assert f"numpy=={metadata.version('numpy')}" in lines
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==\S+", ln) for ln in lines)  # pip's requirements format
