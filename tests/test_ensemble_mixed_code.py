"""One kernel from a blend whose members trained DIFFERENT versions of the task's code (issue 25's last piece).

Member A trains the example's ridge; then the task file changes (its ``predict`` adds a constant) and member B trains
a k-NN on the new code. ``kops ensemble A B`` → ``kops push-kernel --run ENS``: both versions travel in one version
of the code dataset, the kernel predicts each version's group in its own process with that version's code, and
the submission is the weighted blend of what A alone and B alone submit (had A run B's code, its predictions would
carry the constant too). Refusals: a member without its ``task-code/`` artifact, a second stage with mixed versions.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggleops.emulator import Emulator

from harness import REPO, git, kops, kops_json, read_csv

EXAMPLE = REPO / "examples" / "diabetes-regression"
USER, KEY = "exampleuser", "examplekey"
KERNEL = "diabetes-progression-inference"
OFFSET = 7.0  # what version B's predict adds: a change only the kernel's predictions show


@pytest.fixture
def project(tmp_path: Path, start_emulator: Callable[..., Emulator]) -> Any:
    work = tmp_path / "diabetes"
    shutil.copytree(EXAMPLE, work)
    text = (work / "kops.yaml").read_text().replace("n_folds: 5", "n_folds: 2").replace("steps: 300", "steps: 100")
    (work / "kops.yaml").write_text(text)
    git(work, "init", "-q")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "example")
    emu = start_emulator(username=USER, key=KEY, score_delay_polls=0)
    emu.seed_folder(work / "competition")
    env = {"PYTHONPATH": None, "MLFLOW_TRACKING_URI": None}
    return work, emu, functools.partial(kops_json, cwd=work, env=env), functools.partial(kops, cwd=work, env=env)


def _submission(emu: Emulator, version: int) -> dict[str, float]:
    working = emu.root / "kernels" / USER / KERNEL / str(version) / "working"
    return {r["id"]: float(r["progression"]) for r in read_csv(working / "submission.csv")}


def _log(emu: Emulator, version: int) -> list[str]:
    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.refs import KernelRef

    return Kaggle(emu.url).kernel_log(KernelRef(USER, KERNEL, version))


def _last_line(out: Any) -> str:
    """The one error line a refused command printed (after its notices), asserted to be the only one."""
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("kops: error:")]
    assert out.returncode == 1 and errors == [out.stderr.strip().splitlines()[-1]], out.stderr[-2000:]
    return errors[0]


@pytest.mark.slow
def test_a_blend_of_two_task_code_versions_runs_each_in_its_own_process(project: Any) -> None:
    work, emu, kops, kops_raw = project
    a = kops("train")
    alone_a = kops("push-kernel", "--run", a["run_id"], "--wait")  # the working tree is still version A
    task_file = work / "tasks" / "progression.py"
    text = task_file.read_text()
    edited = text.replace("np.round(total / sum(ctx.weights), 4)", f"np.round(total / sum(ctx.weights) + {OFFSET}, 4)")
    assert edited != text
    task_file.write_text(edited)
    (work / "kops.yaml").write_text((work / "kops.yaml").read_text().replace("model: ridge", "model: knn")
                                   .replace("features: null", "features: [bmi, bp, s5]"))
    git(work, "commit", "-q", "-am", "version B: knn, and predict adds a constant")
    b = kops("train")
    alone_b = kops("push-kernel", "--run", b["run_id"], "--wait")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    version_a, version_b = (client.get_run(r).data.tags["kops.task.code"] for r in (a["run_id"], b["run_id"]))
    assert version_a != version_b
    for run in (a["run_id"], b["run_id"]):  # train kept the code each run ran, once, on the k-fold run
        assert [x.path for x in client.list_artifacts(run, "task-code")] and not any(
            x.path == "task-code" for f in client.search_runs([client.get_run(run).info.experiment_id],
                                                              f"tags.`mlflow.parentRunId` = '{run}'")
            for x in client.list_artifacts(f.info.run_id))

    ens = kops("ensemble", a["run_id"], b["run_id"])
    weights = ens["weights"]
    assert weights[a["run_id"]] > 0 and weights[b["run_id"]] > 0, weights  # both versions are in the blend
    sub_a, sub_b = _submission(emu, alone_a["kernel_version"]), _submission(emu, alone_b["kernel_version"])
    expected = {i: weights[a["run_id"]] * sub_a[i] + weights[b["run_id"]] * sub_b[i] for i in sub_a}

    # refused before anything is published: a second stage, which does not combine per-version tables
    reranked = kops_raw("push-kernel", "--run", ens["run_id"], "--reranker", a["run_id"])
    assert re.fullmatch(rf"kops: error: Ensemble {ens['run_id']} blends runs of 2 task code versions, which a kernel "
                        r"with a second stage \(--reranker\) cannot run \(each version predicts in its own "
                        r"process\)\. Retrain the members on the current code \(kops train\), or blend runs of one "
                        "version", _last_line(reranked))

    # rendered and run here as Kaggle would (kops kernel run-local), then pushed and submitted
    rendered = kops("push-kernel", "--run", ens["run_id"], "--no-push")
    assert rendered["code"]["created"] and {v["content_sha256"] for v in rendered["code"]["versions"]} == {
        version_a, version_b}
    local = kops("kernel", "run-local", rendered["folder"], "--python", sys.executable)
    assert local["ok"], local
    local_sub = {r["id"]: float(r["progression"])
                 for r in read_csv(Path(rendered["folder"]) / ".run-local" / "working" / "submission.csv")}
    assert local_sub == pytest.approx(expected, abs=1e-6)

    push = kops("push-kernel", "--run", ens["run_id"], "--submit", "-m", "two code versions")
    assert push["status"] == "COMPLETE" and not push["code"]["created"]  # the rendered version holds both
    assert _submission(emu, push["kernel_version"]) == pytest.approx(expected, abs=1e-6)
    groups = [ln for ln in _log(emu, push["kernel_version"]) if "predicted in their own process" in ln]
    assert sorted(g.split()[4].rstrip(":") for g in groups) == sorted([version_a[:16], version_b[:16]]), groups
    assert all(re.search(r": 2 model\(s\) predicted in their own process in [\d.]+ s", g) for g in groups)

    scored = {r["submission_ref"]: r for r in kops("scores", "--wait")}
    private = scored[push["submission"]["submission_ref"]]["lb_private"]
    assert client.get_run(ens["run_id"]).data.metrics["lb_private"] == private
    for run in [a["run_id"], b["run_id"], *push["run_ids"]]:  # members and every fold run
        assert client.get_run(run).data.metrics["lb_private"] == private

    # a plain push of one run of the current code reuses the code dataset version that holds its marker
    plain = kops("push-kernel", "--run", b["run_id"], "--no-push")
    assert not plain["code"]["created"] and plain["code"]["version"] == push["code"]["version"]
    assert "versions" not in plain["code"] or not plain["code"]["versions"]

    # a member trained before kops kept its code (no task-code/ artifact): rebuilt from its recorded git commit when
    # that gives the same hash (A trained on a clean tree) ...
    artifacts = client.get_run(a["run_id"]).info.artifact_uri
    shutil.rmtree(Path(artifacts.removeprefix("file://")) / "task-code")
    from_git = kops("push-kernel", "--run", ens["run_id"], "--no-push")
    assert not from_git["code"]["created"] and {v["content_sha256"] for v in from_git["code"]["versions"]} == {
        version_a, version_b}
    # ... else refused in one line naming it and what to do
    commit_b = client.get_run(b["run_id"]).data.tags["mlflow.source.git.commit"]
    client.set_tag(a["run_id"], "mlflow.source.git.commit", commit_b)
    bare = kops_raw("push-kernel", "--run", ens["run_id"])
    assert _last_line(bare) == (
        f"kops: error: Member {a['run_id']} of ensemble {ens['run_id']} (task code {version_a[:12]}) has no "
        f"task-code/ artifact (trained before kops kept the code a run ran) and its recorded git commit "
        f"{commit_b[:12]} does not hold that code. Retrain it with: kops train (or blend runs of one task code "
        "version)")
    assert os.environ.get("KOPS_KAGGLE_ENDPOINT")  # the emulator, never kaggle.com


# ---- the pieces, without training -----------------------------------------------------------------------------

def _staged(tmp_path: Path, name: str, source: str, dep: bytes) -> tuple[str, Path]:
    """A folder as `stage_code` writes it (code wheel, one dependency wheel, marker) for a one-module task."""
    import json

    from kaggleops.kernel.code import build_code_wheel, content_hash, marker_name

    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "mytask.py").write_text(source)
    (src / "dep-1.0-py3-none-any.whl").write_bytes(dep)
    files = [("mytask.py", src / "mytask.py")]
    content = content_hash(files, [src / "dep-1.0-py3-none-any.whl"], "mytask:T")
    folder = tmp_path / f"staged-{name}"
    wheel = build_code_wheel(folder, files, content)
    shutil.copyfile(src / "dep-1.0-py3-none-any.whl", folder / "dep-1.0-py3-none-any.whl")
    manifest = {"content_sha256": content, "wheel": wheel.name, "module": "mytask:T",
                "wheels": ["dep-1.0-py3-none-any.whl"]}
    (folder / marker_name(content)).write_text(json.dumps(manifest))
    return content, folder


def test_versions_lie_side_by_side_and_pip_installs_each(tmp_path: Path) -> None:
    import subprocess

    from kaggleops.errors import KopsError
    from kaggleops.kernel.code import stage_versions

    a, folder_a = _staged(tmp_path, "a", "X = 1\n", b"same bytes")
    b, folder_b = _staged(tmp_path, "b", "X = 2\n", b"same bytes")
    out = tmp_path / "dataset"
    manifests = stage_versions(out, {a: folder_a, b: folder_b})
    assert sorted(m["wheel"] for m in manifests) == sorted(f"kops_task_code-0.0.0+{c[:16]}-py3-none-any.whl"
                                                           for c in (a, b))
    for content, x in ((a, "1"), (b, "2")):  # each relabelled wheel installs offline and holds its own code
        target = tmp_path / f"target-{content[:8]}"
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                        str(target), str(out / f"kops_task_code-0.0.0+{content[:16]}-py3-none-any.whl")], check=True)
        assert (target / "mytask.py").read_text() == f"X = {x}\n"
        assert (target / f"kops_task_code-0.0.0+{content[:16]}.dist-info").is_dir()

    c, folder_c = _staged(tmp_path, "c", "X = 3\n", b"other bytes")
    with pytest.raises(KopsError, match=r"^Two task code versions of the blend ship different "
                                        r"dep-1\.0-py3-none-any\.whl"):
        stage_versions(tmp_path / "dataset2", {a: folder_a, c: folder_c})


def test_a_version_that_fails_in_its_process_fails_the_kernel_naming_it(tmp_path: Path) -> None:
    from kaggleops.errors import KernelFailure
    from kaggleops.kernel.versions import run_child

    job = {"spec": "no_such_task_module:Task", "competition": "c", "test": str(tmp_path / "test.csv"),
           "models": [], "weights": [], "labels": [], "out": str(tmp_path / "out.pkl")}
    (tmp_path / "code").mkdir()
    with pytest.raises(KernelFailure, match=r"^task code version abcdef0123456789 failed in its own process "
                                            r"\(exit 1\): .*importing the task no_such_task_module:Task failed"):
        run_child("abcdef0123456789" + "0" * 48, tmp_path / "code", job, tmp_path)


def test_mixed_versions_are_refused_with_an_evaluation_api() -> None:
    from kaggleops.errors import KopsError
    from kaggleops.stages.ensemble_kernel import EnsemblePlan, check_mixed_code

    plan = EnsemblePlan("ens1", "caruana", ["m1", "m2"])
    versions = {"f1": "a" * 64, "f2": "b" * 64}
    check_mixed_code(plan, {}, None, "evaluation-api")  # one version: nothing to refuse
    check_mixed_code(plan, versions, None, "file")
    with pytest.raises(KopsError, match=r"^Ensemble ens1 blends runs of 2 task code versions, which a kernel with an "
                                        r"evaluation-API competition cannot run"):
        check_mixed_code(plan, versions, None, "evaluation-api")
