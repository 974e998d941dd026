"""`kops check-task` and the declared task contract (kaggleops.task.TaskBase, hook): deliberate breaches in small
tasks written in tmp_path are each named in one line (exit 1); the built-in tasks, the example project and the
README's task pass; generic code reads no task member with getattr/hasattr."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import kaggleops
from kaggleops.task import HOOKS, FoldContext, TaskBase, hook

from harness import kops

PACKAGE = Path(kaggleops.__file__).parent
REPO = PACKAGE.parent

GOOD = '''import json
from pathlib import Path

import numpy as np
import pandas as pd

from kaggleops.task import FoldResult, Metric, Submission, check_columns, check_settings


def rmse(truth, pred):
    p = dict(zip(pred["id"], pred["target"]))
    return float(np.sqrt(np.mean([(t - p[i]) ** 2 for i, t in zip(truth["id"], truth["target"])])))


class T:  # duck-typed: no TaskBase
    name = "check-me"
    submission = Submission("id", ("target",))
    metric = Metric("rmse", higher_is_better=False, fn=rmse)

    def load_train(self, path):
        return check_columns(pd.read_csv(path), ("id", "x", "target"), path)

    def load_test(self, path):
        return check_columns(pd.read_csv(path), ("id", "x"), path)

    def make_folds(self, df, n_folds, seed):
        return df.assign(fold=np.arange(len(df)) % n_folds)

    def settings(self, mapping):
        return check_settings(mapping, {"degree": 1})

    def train_fold(self, train, settings, ctx):
        fit, valid = train[train.fold != ctx.fold], train[train.fold == ctx.fold]
        coef = np.polyfit(fit["x"], fit["target"], settings["degree"])
        model = ctx.out_dir / "model"
        model.mkdir()
        (model / "coef.json").write_text(json.dumps(coef.tolist()))
        (model / "where.txt").write_text(str(model.resolve()))
        pred = np.polyval(coef, valid["x"])
        oof = pd.DataFrame({"id": valid["id"], "target": pred})
        return FoldResult(model_dir=model, oof=oof, score=float(np.abs(valid["target"] - pred).mean()))

    def predict(self, model_dirs, test, ctx):
        total = sum(w * np.polyval(json.loads((Path(d) / "coef.json").read_text()), test["x"])
                    for d, w in zip(model_dirs, ctx.weights))
        return pd.DataFrame({"id": test["id"], "target": total})
'''

MOVED = "(the model folder was moved away from where train_fold wrote it)"
BREACHES = {  # name: (text in GOOD, its broken replacement, the one breach line expected (a regex))
    "predict-rows": ('return pd.DataFrame({"id": test["id"], "target": total})',
                     'return pd.DataFrame({"id": test["id"], "target": total}).iloc[1:]',
                     re.escape("predict: returned 15 row(s) for 16 test row(s)")),
    "oof-without-id": ('oof = pd.DataFrame({"id": valid["id"], "target": pred})',
                       'oof = pd.DataFrame({"target": pred})',
                       re.escape("train_fold: the OOF table lacks column(s) id (it has target); it needs id, target")),
    "oof-all-rows": ('oof = pd.DataFrame({"id": valid["id"], "target": pred})',
                     'oof = pd.DataFrame({"id": train["id"], "target": np.polyval(coef, train["x"])})',
                     re.escape("train_fold: the OOF table has 64 row(s) for the 13 held-out row(s) of fold 0: it must "
                               "hold exactly the held-out rows (by id)")),
    "settings-accept-anything": ('return check_settings(mapping, {"degree": 1})', 'return {"degree": 1, **mapping}',
                                 re.escape("settings: accepted an unknown key `kops_check_task_unknown_key` (raise "
                                           "kaggleops.task.SettingsError naming it; see check_settings)")),
    "model-dir-missing": ("FoldResult(model_dir=model,", 'FoldResult(model_dir=ctx.out_dir / "nowhere",',
                          r"train_fold: FoldResult\.model_dir /\S+/nowhere is not a folder holding the model"),
    "metric-string": ("    return float(np.sqrt(", "    return str(np.sqrt(",
                      r"metric: rmse returned '[0-9.]+' \(str\), not a float"),
    "no-fold-column": ("return df.assign(fold=", "return df.assign(split=",
                       re.escape("make_folds: returned no `fold` column (columns: id, x, target, split)")),
    "fold-out-of-range": ("% n_folds)", "% (n_folds + 1))",
                          re.escape("make_folds: fold values [5] are outside 0..4 (n_folds=5)")),
    "no-metric": ('    metric = Metric("rmse", higher_is_better=False, fn=rmse)\n', "",
                  re.escape("metric: missing (see kaggleops.task.Task)")),
    "predict-from-the-original-path": (
        '(Path(d) / "coef.json")', '(Path((Path(d) / "where.txt").read_text()) / "coef.json")',
        r"predict: raised FileNotFoundError: \[Errno 2\] No such file or directory: '/\S+/coef\.json' in a fresh "
        + r"process " + re.escape(MOVED)),
}


def write_data(folder: Path, rows: int = 100, test_rows: int = 20) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, rows + test_rows)
    y = 1 + 2 * x - x**2 + rng.normal(0, 0.05, len(x))
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("id,x,target\n" + "".join(f"{i},{x[i]:.5f},{y[i]:.5f}\n" for i in range(rows)))
    (folder / "test.csv").write_text("id,x\n" + "".join(f"{i},{x[i]:.5f}\n" for i in range(rows, rows + test_rows)))
    (folder / "sample_submission.csv").write_text("id,target\n" + "".join(f"{i},0\n" for i in range(rows, rows +
                                                                                                   test_rows)))
    return folder


def project(tmp_path: Path, source: str, module: str) -> Path:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / f"{module}.py").write_text(source)
    write_data(tmp_path / "data")
    return tmp_path


def fail_lines(stdout: str) -> list[str]:
    return [ln[len("FAIL "):] for ln in stdout.splitlines() if ln.startswith("FAIL ")]


@pytest.mark.parametrize("name", list(BREACHES))
def test_each_deliberate_breach_is_one_line_naming_the_hook(tmp_path: Path, name: str) -> None:
    old, new, expected = BREACHES[name]
    assert old in GOOD
    module = f"ct_{name.replace('-', '_')}"
    project(tmp_path, GOOD.replace(old, new), module)
    out = kops("check-task", "--task", f"tasks/{module}.py:T", "--data", "data", cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = fail_lines(out.stdout)
    assert len(lines) == 1 and re.fullmatch(expected, lines[0]), out.stdout
    assert out.stderr.strip().splitlines() == [
        f"kops: error: task tasks/{module}.py:T breaks the task contract in 1 place(s), each named above; fix them "
        "and run: kops check-task"]


def test_the_good_duck_typed_task_passes_and_json_lists_every_check(tmp_path: Path) -> None:
    project(tmp_path, GOOD, "ct_good")
    out = kops("check-task", "--task", "tasks/ct_good.py:T", "--data", "data", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["breaches"] == [] and report["task"] == "tasks/ct_good.py:T"
    assert [c["hook"] for c in report["checks"]] == ["members", "settings", "data", "load_train", "load_test",
                                                     "make_folds", "train_fold", "metric", "predict"]
    assert all(c["ok"] is True for c in report["checks"])
    assert "from a moved model folder in a fresh process" in report["checks"][-1]["detail"]


def test_the_readme_task_passes(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    source = readme.split("```python\n# tasks/my_task.py", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    assert "class MyTask(TaskBase):" in source
    project(tmp_path, source, "ct_readme_task")
    (tmp_path / "kops.yaml").write_text("competition: my-competition\ntask: tasks/ct_readme_task.py:MyTask\n"
                                        "data_dir: data\ntrain:\n  n_folds: 5\n  degree: 2\n")
    out = kops("check-task", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("task tasks/ct_readme_task.py:MyTask passes (")
    assert fail_lines(out.stdout) == [] and "ok   predict: 16 row(s) with id, target" in out.stdout


def test_the_example_project_passes() -> None:
    out = kops("check-task", cwd=REPO / "examples" / "diabetes-regression")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("task tasks/progression.py:ProgressionRidge passes (")


def test_the_digits_task_passes_on_its_sample_with_the_kops_yaml_settings(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text("competition: digit-recognizer\nowner: alice\ntrain:\n  epochs: 1\n")
    out = kops("check-task", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["task"] == "kaggleops.tasks.digits:DigitRecognizer"
    assert report["data"].endswith("digit-recognizer") and len(report["checks"]) == 9


def test_the_tse_task_passes_with_its_reranker_post_processing(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: alice\ntrain:\n"
                                        "  epochs: 1\n  max_steps: 2\n  device: cpu\n")
    out = kops("check-task", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   post_process: 16 row(s) with textID, selected_text after post-processing" in out.stdout


def test_the_evaluation_api_task_is_checked_through_load_models_and_predict_batch(tmp_path: Path) -> None:
    """The kernel of an evaluation-API competition never calls predict on test.csv: check-task runs load_models and
    one predict_batch over the gateway's public files, from the moved model folder, in a fresh process."""
    (tmp_path / "kops.yaml").write_text("competition: demand-forecasting\nowner: alice\n")
    out = kops("check-task", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   predict_batch: 16 row(s) with row_id, target from a moved model folder in a fresh process" \
        in out.stdout.splitlines()


def test_a_bad_train_section_is_named(tmp_path: Path) -> None:
    project(tmp_path, GOOD, "ct_bad_yaml")
    (tmp_path / "kops.yaml").write_text("competition: check-me\ntask: tasks/ct_bad_yaml.py:T\ndata_dir: data\n"
                                        "train:\n  degre: 2\n")
    out = kops("check-task", cwd=tmp_path)
    assert out.returncode == 1
    assert fail_lines(out.stdout) == ["settings: the kops.yaml `train:` section {'degre': 2} raised SettingsError: "
                                      "unknown train setting `degre`; known: degree"]
    assert "ok   make_folds: an int fold column in 0..4" in out.stdout  # what needs no settings is still checked
    assert "skip train_fold: skipped (it needs a check that failed)" in out.stdout


def test_the_init_skeleton_is_told_every_method_still_to_write_that_the_others_do_not_need(tmp_path: Path) -> None:
    assert kops("init", "--competition", "titanic", "--owner", "alice", cwd=tmp_path).returncode == 0
    write_data(tmp_path / "data")
    out = kops("check-task", "--data", "data", cwd=tmp_path)
    assert out.returncode == 1
    lines = fail_lines(out.stdout)
    assert [ln.split(":", 1)[0] for ln in lines] == ["settings", "load_train", "load_test"], out.stdout
    assert lines[1] == ("load_train: raised NotImplementedError: implement TitanicTask.load_train in "
                        "tasks/titanic_task.py: read train.csv (e.g. pandas.read_csv) and check its columns "
                        "(kaggleops.task.check_columns)")
    assert "skip make_folds: skipped (it needs a check that failed)" in out.stdout


def test_check_task_is_a_library_function_too(tmp_path: Path) -> None:
    """A task class defined here (not importable by a fresh process) is predicted with a fresh instance: a predict
    that relies on state train_fold left on the instance is caught."""
    from kaggleops.stages.check_task import check_task

    data = write_data(tmp_path / "data")
    namespace: dict = {"__name__": "__main__"}
    exec(GOOD, namespace)  # the test's own task source, as a script's class

    class Stateful(namespace["T"]):
        def train_fold(self, train, settings, ctx):
            result = super().train_fold(train, settings, ctx)
            self.coef = json.loads((result.model_dir / "coef.json").read_text())
            return result

        def predict(self, model_dirs, test, ctx):
            import numpy as np
            import pandas as pd

            return pd.DataFrame({"id": test["id"], "target": np.polyval(self.coef, test["x"])})

    good = check_task(namespace["T"](), data)
    assert good.ok and good.checks[-1].detail.endswith("from a moved model folder in a fresh instance (same process)")
    report = check_task(Stateful(), data, {"degree": 2})
    assert report.breaches == ["predict: raised AttributeError: 'Stateful' object has no attribute 'coef' "
                               f"{MOVED}"]


def test_every_hook_has_a_declared_default_that_a_duck_typed_task_gets() -> None:
    class Duck:
        name = "duck"

    class Sub(TaskBase):
        name = "sub"
        kernel_requires = ("numpy",)

    assert set(HOOKS) == {"train_columns", "test_columns", "complete_columns", "kernel_requires", "kernel_options",
                          "scored_columns", "sample_dir", "is_checkpoint", "run_label", "second_stage_summary",
                          "blend_columns", "combine"}
    for task in (Duck(), Sub()):
        assert hook(task, "sample_dir")() is None and hook(task, "train_columns") == ()
        assert dict(hook(task, "kernel_options")) == {} and hook(task, "second_stage_summary")({}) == ""
        assert hook(task, "run_label")(object()) == task.name
    assert hook(Sub(), "kernel_requires") == ("numpy",) and hook(Duck(), "kernel_requires") == ()
    with pytest.raises(AttributeError, match="'sample_dirs' is not a task hook"):
        hook(Duck(), "sample_dirs")


def test_the_fold_context_carries_rank_world_size_and_the_stop_flag(tmp_path: Path) -> None:
    ctx = FoldContext(0, tmp_path)
    assert (ctx.rank, ctx.world_size, ctx.progress, ctx.should_stop()) == (0, 1, None, False)
    asked: list[bool] = [False]
    ctx = FoldContext(1, tmp_path, rank=1, world_size=2, stop_requested=lambda: asked[0])
    asked[0] = True
    assert ctx.should_stop() and (ctx.rank, ctx.world_size) == (1, 2)


def test_generic_code_reads_no_task_member_with_getattr_or_hasattr() -> None:
    probe = re.compile(r"\b(getattr|hasattr)\((self\.)?task\b|getattr\((self\.)?settings, .model")
    hits = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
            for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] != "tasks"
            and p.name != "task.py"
            for n, line in enumerate(p.read_text().splitlines(), 1) if probe.search(line)]
    assert hits == []
