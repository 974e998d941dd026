"""The inference kernel with the candidate reranker attached (`kops push-kernel --reranker RUN`), executed for
real by the emulator, and the kernel's restore of datasets whose sub-folders were zipped by `kops publish`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaggleops.kernel.runtime import KernelFailure, check_submission, main, restore_model_dir
from kaggleops.tasks import get_task

from harness import kops, read_csv, shared_cache

TSE = get_task("tweet-sentiment-extraction")
LOOP_ENV_KEYS = ("KOPS_KAGGLE_ENDPOINT", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR")
RERANK_OVERRIDES = {"top_n": 4, "n_grid": (2, 4), "epochs": 1, "batch_size": 16, "max_steps": 5, "max_len": 96,
                    "device": "cpu"}
KERNEL = "kopsdemo/tse-demo-inference"


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Emulator + 2-fold base (1 epoch) + a tiny reranker over it, pushed with the real CLI and run."""
    from kaggleops.stages.demo import demo_workspace
    from kaggleops.stages.rerank import train_reranker
    from kaggleops.stages.train import train

    workdir = tmp_path_factory.mktemp("kernel-rerank") / "work"
    workdir.mkdir()
    with demo_workspace(workdir, workdir.parent / "emu", epochs=1, folds=[0, 1]) as ws:
        cfg = ws.cfg
        trained = train(cfg, progress=False, sample=True)  # as `kops demo` trains in its workspace
        reranker = train_reranker(cfg, [trained.parent_run_id], RERANK_OVERRIDES, progress=False)
        out = kops("push-kernel", "--run", trained.parent_run_id, "--reranker", reranker.parent_run_id, "--wait",
                   "--json", cwd=workdir)
        assert out.returncode == 0, out.stderr[-3000:]
        env = {k: os.environ[k] for k in LOOP_ENV_KEYS}
        yield {"cfg": cfg, "workdir": workdir, "env": env, "trained": trained, "reranker": reranker,
               "pushed": json.loads(out.stdout)}


@pytest.fixture
def env(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Re-apply the loop's environment after conftest's per-test isolation; run-local's Kaggle image environment
    comes from the session's shared cache (built once per session, as once per machine for a user)."""
    for key, value in loop["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KOPS_CACHE_DIR", str(shared_cache(tmp_path_factory)))
    monkeypatch.chdir(loop["workdir"])
    return loop


def kernel_working(loop: dict[str, Any]) -> Path:
    version = str(loop["pushed"]["kernel_version"])
    return loop["workdir"].parent / "emu" / "kernels" / "kopsdemo" / "tse-demo-inference" / version / "working"


def local_reranked_answers(env: dict[str, Any], tmp: Path, rows: list[dict[str, str]]) -> tuple[list[str], list[str]]:
    """(reranked, ensemble's best candidate) here, from the runs' MLflow artifacts (not the kernel's datasets)."""
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.tasks.tse import infer, rerank_infer

    tracker = Tracker(env["cfg"])
    folds = [r.run_id for r in env["trained"].runs]
    totals = None
    for run_id in folds:
        model, tokenizer = infer.load_model(tracker.download(run_id, "model", tmp / run_id), "cpu")
        features = infer.encode_rows(tokenizer, rows, 128)
        totals = infer.predict_char_probs(model, features, [r["text"] for r in rows], tokenizer.pad_token_id, 64,
                                          into=totals, weight=1 / len(folds))
    rr_dirs = [tracker.download(r.run_id, "model", tmp / r.run_id) for r in env["reranker"].runs]
    n = rerank_infer.read_rerank_config(rr_dirs[0])["n"]
    ps, pe = totals
    cands = [rerank_infer.top_k_char_spans(r["text"], ps[i], pe[i], k=n) for i, r in enumerate(rows)]
    answers = rerank_infer.rerank_candidates(rr_dirs, rows, cands, device="cpu")  # w, n from kops_rerank.json
    return [a if a.strip() else r["text"] for r, a in zip(rows, answers, strict=True)], [c[0]["text"] for c in cands]


@pytest.mark.slow
def test_kernel_with_reranker_writes_what_rerank_candidates_gives_locally(env: dict[str, Any], tmp_path: Path) -> None:
    pushed, working = env["pushed"], kernel_working(env)
    assert pushed["status"] == "COMPLETE"
    test = read_csv(TSE.sample_dir() / "test.csv")
    ids = [r["textID"] for r in read_csv(TSE.sample_dir() / "sample_submission.csv")]
    assert check_submission(working / "submission.csv", "textID", "selected_text", ids) == []
    got = {r["textID"]: r["selected_text"] for r in read_csv(working / "submission.csv")}
    expected, best = local_reranked_answers(env, tmp_path, test)
    changed = [(r["textID"], b, e) for r, b, e in zip(test, best, expected, strict=True)
               if r["sentiment"] != "neutral" and b != e]
    assert changed  # the reranker moves some answers off the ensemble's best span: agreement is not base-only
    mismatches = [(r["textID"], got[r["textID"]], e) for r, e in zip(test, expected, strict=True)
                  if got[r["textID"]] != e]
    assert mismatches == []
    timing = json.loads((working / "kops-timing.json").read_text())
    assert {"restore datasets", "candidates", "rerank"} <= set(timing) and "rerank (none attached)" not in timing


@pytest.mark.slow
def test_plan_names_the_reranker_folds_and_every_run_is_tagged(env: dict[str, Any]) -> None:
    from kaggleops.adapters.tracking import Tracker

    tracker, rr = Tracker(env["cfg"]), env["reranker"]
    plan = json.loads((kernel_working(env) / "kops-kernel.json").read_text())
    fold_runs = [r.run_id for r in sorted(rr.runs, key=lambda r: r.fold)]
    expected_models = []
    for run_id in fold_runs:
        tags = tracker.get_run(run_id).tags
        expected_models.append({"run_id": run_id, "dataset": tags["kops.dataset"],
                                "dataset_version": int(tags["kops.dataset.version"])})
    assert plan["reranker"] == {"run_id": rr.parent_run_id, "models": expected_models, "options": rr.options}
    assert set(rr.options) == {"w", "n"}  # the task's own choices, passed through untouched
    assert plan["task"]["spec"] == "kaggleops.tasks.tse:TweetSentimentExtraction" and plan["code"] is None
    assert set(fold_runs) <= set(env["pushed"]["published"])
    assert env["pushed"]["reranker"] == plan["reranker"]
    meta = json.loads((Path(env["pushed"]["folder"]) / "kernel-metadata.json").read_text())
    assert {m["dataset"] for m in expected_models} <= set(meta["dataset_sources"])
    base = [env["trained"].parent_run_id, *(r.run_id for r in env["trained"].runs)]
    for run_id in [*base, rr.parent_run_id, *fold_runs]:
        tags = tracker.get_run(run_id).tags
        assert tags["kops.kernel"] == KERNEL
        assert tags["kops.kernel.version"] == str(env["pushed"]["kernel_version"])


@pytest.mark.slow
def test_run_local_stages_the_reranker_too(env: dict[str, Any]) -> None:
    from kaggleops.kernel.local import render_report, run_local

    report = run_local(env["cfg"], Path(env["pushed"]["folder"]))
    assert report.ok, render_report(report)
    assert report.rows == 200 and "rerank" in report.timings


@pytest.mark.slow
def test_reranker_refusals_name_the_command(env: dict[str, Any]) -> None:
    from kaggleops.adapters.session import Session
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.errors import KopsError
    from kaggleops.stages.kernel import KernelOptions, push_kernel

    base, rr_fold = env["trained"].parent_run_id, env["reranker"].runs[0].run_id
    with pytest.raises(KopsError) as err:
        push_kernel(Session(env["cfg"]), [base], reranker=base)
    assert str(err.value) == (f"Run {base} is not a reranker run (its kops.kind is 'kfold', not 'rerank'). "
                              "Pass the run id that `kops train --stage rerank --from KFOLD_RUN_ID` printed.")
    tracker = Tracker(env["cfg"])
    dataset = tracker.get_run(rr_fold).tags["kops.dataset"]
    tracker.client.delete_tag(rr_fold, "kops.dataset")
    try:
        with pytest.raises(KopsError) as err:
            push_kernel(Session(env["cfg"]), [base], reranker=env["reranker"].parent_run_id,
                        options=KernelOptions(publish=False))
    finally:
        tracker.set_tags(rr_fold, {"kops.dataset": dataset})
    assert str(err.value) == (f"Run {rr_fold} has no published dataset (and --no-publish was given). "
                              f"Publish it with: kops publish {rr_fold}")


# ---- restoring zipped sub-folders inside the kernel (fast) -------------------------------------------------


def tiny_model_with_tokenizer_subfolder(tmp: Path) -> Path:
    """A QA model folder whose tokenizer was saved in ``tokenizer/`` (a sub-folder `kops publish` zips)."""
    from kaggleops.tasks.tse.data import load_train
    from kaggleops.tasks.tse.modeling import build_tiny_model, build_tokenizer, save_tokenizer

    texts = load_train(TSE.sample_dir() / "train.csv")["text"].head(200).tolist()
    tokenizer = build_tokenizer(texts, tmp / "tok", vocab_size=800)
    src = tmp / "model"
    build_tiny_model(tokenizer, seed=0).save_pretrained(str(src))
    save_tokenizer(tokenizer, src / "tokenizer")
    return src


def stage_like_publish(src: Path, dst: Path, run_id: str, zipped: bool = True) -> Path:
    """The dataset folder as `kops publish` uploads it: files, `<dir>.zip` per sub-folder, the manifest."""
    from kaggleops.files import zip_folder
    from kaggleops.stages.publish import build_manifest

    dst.mkdir(parents=True)
    archives = {}
    for entry in sorted(src.iterdir()):
        if entry.is_dir():
            archives[f"{entry.name}.zip"] = entry.name
            if zipped:
                zip_folder(entry, dst / f"{entry.name}.zip")
            else:  # as Kaggle shows it when it unpacked the archive
                shutil.copytree(entry, dst / entry.name)
        else:
            shutil.copyfile(entry, dst / entry.name)
    build_manifest(src, run_id, "exp", {}, archives).write(dst / "kops-manifest.json")
    return dst


def make_read_only(folder: Path, writable: bool = False) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_kernel_restores_a_zipped_tokenizer_subfolder_from_read_only_input(tmp_path: Path) -> None:
    src = tiny_model_with_tokenizer_subfolder(tmp_path)
    inp = tmp_path / "input"
    dataset = stage_like_publish(src, inp / "tiny-f0", "run0")
    assert (dataset / "tokenizer.zip").is_file() and not (dataset / "tokenizer").exists()
    comp = inp / TSE.name
    comp.mkdir()
    test = read_csv(TSE.sample_dir() / "test.csv")[:20]
    for name, rows in (("test.csv", test), ("sample_submission.csv", [{"textID": r["textID"], "selected_text": ""}
                                                                      for r in test])):
        with (comp / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    plan = {"competition": TSE.name, "reranker": None, "id_column": "textID", "target_column": "selected_text",
            "task": {"spec": "kaggleops.tasks.tse:TweetSentimentExtraction",
                     "options": {"max_len": 64, "batch_size": 8}},
            "models": [{"run_id": "run0", "dataset": "alice/tiny-f0", "dataset_version": 1, "weight": 1.0}]}
    working = tmp_path / "working"
    working.mkdir()
    make_read_only(inp)  # /kaggle/input is read-only on Kaggle
    try:
        main(plan, inp, working)
    finally:
        make_read_only(inp, writable=True)
    assert check_submission(working / "submission.csv", "textID", "selected_text", [r["textID"] for r in test]) == []
    assert not (dataset / "tokenizer").exists()  # unpacked into a scratch view, not into the input


def test_restore_uses_an_unpacked_folder_and_rejects_a_tampered_archive(tmp_path: Path) -> None:
    from kaggleops.tasks.tse import infer

    src = tiny_model_with_tokenizer_subfolder(tmp_path)
    unpacked = stage_like_publish(src, tmp_path / "unpacked", "run1", zipped=False)
    view = restore_model_dir(unpacked, tmp_path / "scratch")
    model, tokenizer = infer.load_model(view, "cpu")
    assert tokenizer("so happy")["input_ids"] and model.config.num_labels == 2
    tampered = stage_like_publish(src, tmp_path / "tampered", "run2")
    (src / "tokenizer" / "tokenizer_config.json").write_text("{}")
    with zipfile.ZipFile(tampered / "tokenizer.zip", "w") as zf:
        for path in sorted((src / "tokenizer").iterdir()):
            zf.write(path, path.name)
    with pytest.raises(KernelFailure, match=r"tokenizer.zip of .*tampered holds tokenizer_config.json with another "
                                            r"sha256 than kops-manifest.json lists"):
        restore_model_dir(tampered, tmp_path / "scratch")


@pytest.mark.parametrize("damage", ["weights", "missing", "zip"])
def test_restore_checks_every_manifest_file_and_names_the_damage(tmp_path: Path, damage: str) -> None:
    """Top-level files are checked too (not only archive members), and a broken zip is one kernel error."""
    src = tiny_model_with_tokenizer_subfolder(tmp_path)
    folder = stage_like_publish(src, tmp_path / "ds", "run3")
    weights = next(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    expected = {
        "weights": rf"{folder} holds {weights.name} with another sha256 than kops-manifest.json lists "
                   r"\(\w{12}…\): the dataset is corrupt",
        "missing": rf"{folder} lacks config.json, which kops-manifest.json lists: the dataset is incomplete",
        "zip": rf"tokenizer.zip of {folder} cannot be unpacked \(.*\): the dataset is corrupt",
    }[damage]
    if damage == "weights":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "missing":
        (folder / "config.json").unlink()
    else:
        (folder / "tokenizer.zip").write_bytes(b"not a zip")
    with pytest.raises(KernelFailure, match=f"^{expected}$"):
        restore_model_dir(folder, tmp_path / "scratch")
