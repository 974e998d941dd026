"""The generic core names no task concept; the task interface, registry, settings and skeleton behave as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kaggleops
from kaggleops.task import Metric, SettingsError, Submission, check_settings
from kaggleops.tasks import TaskLoadError, get_task, load_task, split_spec

PACKAGE = Path(kaggleops.__file__).parent
TASK_WORDS = re.compile(r"jaccard|sentiment|neutral|selected_text|tweet", re.IGNORECASE)
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
