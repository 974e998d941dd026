"""`kops publish` against the emulator with the REAL kaggle client and a real MLflow SQLite store."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.adapters.session import Session
from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config
from kaggleops.emulator import Emulator
from kaggleops.errors import ConfigError, PublishError
from kaggleops.kernel.runtime import restore_model_dir
from kaggleops.refs import KAGGLE_WEB, DatasetRef
from kaggleops.schema import TAG_DATASET, TAG_DATASET_VERSION
from kaggleops.stages.publish import publish

from harness import KEY, USER, kops, write_config


@pytest.fixture(scope="module")
def project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One kops.yaml folder (and MLflow SQLite store) for the module: creating the store takes seconds."""
    return write_config(tmp_path_factory.mktemp("proj"), experiment="publish-tests").parent


@pytest.fixture
def project(project_root: Path, emulator: Emulator) -> Path:
    """The module's project, aimed at this test's emulator (the shared fixture: credentials in the environment)."""
    return project_root


def weights(data: bytes) -> bytes:
    """A real (loadable) safetensors file holding ``data`` as one uint8 tensor."""
    import numpy as np
    from safetensors.numpy import save

    return save({"w": np.frombuffer(data, dtype=np.uint8)})


def model_files(seed: int = 0) -> dict[str, bytes]:
    rnd = __import__("random").Random(seed)
    return {
        "config.json": json.dumps({"hidden": 8, "seed": seed}).encode(),
        "model.safetensors": weights(rnd.randbytes(300_000)),
        "tokenizer/vocab.json": b'{"a": 0, "b": 1}',
        "tokenizer/merges.txt": b"#version 0.2\na b\n",
        "tokenizer/special/tokens.json": b'{"pad": "<pad>"}',
    }


def make_run(root: Path, files: dict[str, bytes], name: str = "fold-0") -> str:
    """A finished MLflow run with a `model/` artifact folder holding ``files``."""
    cfg = load_config(root / "kops.yaml")
    tracker = Tracker(cfg)
    run_id = tracker.start_run(name, {"epochs": 1})
    model = root / f"model-src-{run_id}"
    for rel, data in files.items():
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_bytes(data)
    tracker.log_artifacts(run_id, model, "model")
    tracker.end_run(run_id)
    return run_id


def fast_kaggle() -> Kaggle:
    return Kaggle(os.environ["KOPS_KAGGLE_ENDPOINT"], backoff_s=0.01)


def run_tags(root: Path, run_id: str) -> dict[str, str]:
    return dict(Tracker(load_config(root / "kops.yaml")).get_run(run_id).tags)


def versions(emulator: Emulator, ref: str) -> list[dict[str, Any]]:
    return emulator.state_summary()["datasets"].get(ref, {}).get("versions", [])


def rpc_log(emulator: Emulator, suffix: str) -> list[int]:
    log = emulator.root / "requests.log"
    lines = log.read_text().splitlines() if log.is_file() else []  # no request made: no log yet
    return [e["status"] for e in map(json.loads, lines) if str(e.get("rpc", "")).endswith(suffix)]


def restored_version(kaggle: Kaggle, ref: str, version: int, dst: Path) -> Path:
    """The whole version through the real client (the adapter's download), restored as the kernel restores it."""
    folder = kaggle.download_dataset(DatasetRef.parse(f"{ref}/{version}"), dst / "v")
    assert (folder / "tokenizer.zip").is_file() and not (folder / "tokenizer").exists()  # as uploaded: zipped
    return restore_model_dir(folder, dst / "scratch")


def test_round_trip_keeps_subfolders_and_bytes(project: Path, emulator: Emulator, tmp_path: Path) -> None:
    files = model_files()
    run_id = make_run(project, files)
    result = publish(Session(load_config(project / "kops.yaml"), kaggle=fast_kaggle()), run_id)
    assert (result.dataset_version, result.created, result.uploaded) == (1, True, True)
    assert run_tags(project, run_id)[TAG_DATASET] == result.dataset
    assert run_tags(project, run_id)[TAG_DATASET_VERSION] == "1"
    folder = restored_version(fast_kaggle(), result.dataset, 1, tmp_path / "dl")
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, rel
    manifest = json.loads((folder / "kops-manifest.json").read_text())
    assert manifest["run_id"] == run_id and manifest["archives"] == {"tokenizer.zip": "tokenizer"}
    assert set(manifest["files"]) == set(files)
    assert not (project / ".kops" / "publish" / run_id).exists()


def test_identical_republish_makes_no_upload_and_no_version(project: Path, emulator: Emulator) -> None:
    cfg = load_config(project / "kops.yaml")
    run_id = make_run(project, model_files())
    first = publish(Session(cfg, kaggle=fast_kaggle()), run_id)
    uploads_before = len(rpc_log(emulator, "/StartBlobUpload"))
    again = publish(Session(cfg, kaggle=fast_kaggle()), run_id)
    assert (again.uploaded, again.bytes_uploaded, again.dataset_version) == (False, 0, first.dataset_version)
    assert len(rpc_log(emulator, "/StartBlobUpload")) == uploads_before
    assert len(versions(emulator, first.dataset)) == 1
    # Different weights to the same dataset do make a version.
    other = make_run(project, model_files(seed=1), name="fold-1")
    second = publish(Session(cfg, kaggle=fast_kaggle()), other, dataset=first.dataset)
    assert (second.uploaded, second.dataset_version, second.created) == (True, 2, False)
    assert run_tags(project, other)[TAG_DATASET_VERSION] == "2"


def test_publish_waits_while_previous_version_processing(project: Path, emulator: Emulator) -> None:
    cfg = load_config(project / "kops.yaml")
    first = publish(Session(cfg, kaggle=fast_kaggle()), make_run(project, model_files()))
    owner, slug = first.dataset.split("/")
    with emulator.store.lock:  # version 1 is still processing for another 1.5 s
        emulator.store.datasets[(owner, slug)].versions[-1].ready_at = time.monotonic() + 1.5
    # and once it looks ready, Kaggle still refuses once with "still processing" (403): kops waits and retries.
    emulator.inject_fault("CreateDatasetVersion", 403, message="Dataset version is still processing")
    other = make_run(project, model_files(seed=2), name="fold-2")
    result = publish(Session(cfg, kaggle=fast_kaggle()), other, dataset=first.dataset, poll_s=0.2)
    assert result.dataset_version == 2
    assert rpc_log(emulator, "/CreateDatasetVersion") == [403, 200]
    assert [v["number"] for v in versions(emulator, first.dataset)] == [1, 2]


PUBLISH_RPCS = ["GetDatasetStatus", "GetDataset", "DownloadDataset", "StartBlobUpload", "CreateDatasetVersion"]


@pytest.mark.parametrize("status", [429, 503, 0], ids=["429", "503", "connection-dropped"])
def test_faults_on_every_publish_call_make_exactly_one_version(project: Path, emulator: Emulator,
                                                               status: int) -> None:
    cfg = load_config(project / "kops.yaml")
    first = publish(Session(cfg, kaggle=fast_kaggle()), make_run(project, model_files()))
    for rpc in PUBLISH_RPCS:
        emulator.inject_fault(rpc, status)
    run_id = make_run(project, model_files(seed=3), name="fold-3")
    result = publish(Session(cfg, kaggle=fast_kaggle()), run_id, dataset=first.dataset, poll_s=0.05)
    assert result.dataset_version == 2 and len(versions(emulator, first.dataset)) == 2
    assert emulator.api.faults.pending() == {}, "every injected fault was met"
    for rpc in PUBLISH_RPCS:
        assert rpc_log(emulator, "/" + rpc).count(status) == 1, rpc
    assert run_tags(project, run_id)[TAG_DATASET_VERSION] == "2"


@pytest.mark.parametrize("rpc", ["CreateDataset", "CreateDatasetVersion"])
def test_lost_response_of_create_is_not_retried_blindly(project: Path, emulator: Emulator, rpc: str) -> None:
    """The call took effect but its answer was a 503: kops checks Kaggle instead of creating a second version."""
    cfg = load_config(project / "kops.yaml")
    dataset = None
    if rpc == "CreateDatasetVersion":
        dataset = publish(Session(cfg, kaggle=fast_kaggle()), make_run(project, model_files())).dataset
    emulator.inject_fault(rpc, 503, after=True)
    run_id = make_run(project, model_files(seed=4), name="fold-4")
    result = publish(Session(cfg, kaggle=fast_kaggle()), run_id, dataset=dataset, poll_s=0.05)
    assert rpc_log(emulator, "/" + rpc) == [503], "no second create call"
    expected = 1 if rpc == "CreateDataset" else 2
    assert result.dataset_version == expected and len(versions(emulator, result.dataset)) == expected


@pytest.mark.parametrize("fault", [503, 0], ids=["503-keeps-half", "connection-dropped"])
def test_upload_cut_mid_file_resumes_byte_identical(project: Path, emulator: Emulator, tmp_path: Path,
                                                    fault: int) -> None:
    files = model_files(seed=5)
    run_id = make_run(project, files)
    emulator.inject_fault("Upload", fault)
    result = publish(Session(load_config(project / "kops.yaml"), kaggle=fast_kaggle()), run_id)
    puts = [e for e in map(json.loads, (emulator.root / "requests.log").read_text().splitlines())
            if e["method"] == "PUT"]
    assert puts[0]["status"] == fault
    same = [e["status"] for e in puts if e["path"] == puts[0]["path"]]
    # 503: the client asks where to resume (308 + Range) and sends the rest; a dropped connection is
    # re-sent by the client's urllib3 retry (it rewinds the file). Either way the file completes once.
    assert same[-1] == 200 and (308 in same if fault == 503 else len(same) == 2)
    folder = restored_version(fast_kaggle(), result.dataset, 1, tmp_path / "dl")
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, rel


def test_failure_leaves_run_untagged_and_names_the_retry(project: Path, emulator: Emulator) -> None:
    run_id = make_run(project, model_files())
    emulator.inject_fault("CreateDataset", 500, times=3)
    kaggle = Kaggle(os.environ["KOPS_KAGGLE_ENDPOINT"], backoff_s=0.01, max_attempts=3)
    with pytest.raises(PublishError) as err:
        publish(Session(load_config(project / "kops.yaml"), kaggle=kaggle), run_id)
    ref = f"{USER}/publish-tests-fold-0-{run_id[:8]}"  # experiment-run name-id
    assert str(err.value) == (
        f"Publishing run {run_id} to {ref} failed: Create dataset {ref} failed (HTTP 500): injected fault 500 "
        f"The run is left untagged; retry with: kops publish {run_id} --dataset {ref}")
    assert TAG_DATASET not in run_tags(project, run_id)
    assert emulator.state_summary()["datasets"] == {}
    assert publish(Session(load_config(project / "kops.yaml"), kaggle=fast_kaggle()), run_id).dataset_version == 1


def test_public_dataset_with_progress_bars(project: Path, emulator: Emulator,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run_id = make_run(project, model_files(seed=6))
    result = publish(Session(load_config(project / "kops.yaml"), kaggle=fast_kaggle()), run_id,
                     dataset=f"{USER}/public-weights", public=True, progress=True)
    assert result.dataset == f"{USER}/public-weights" and result.dataset_version == 1
    assert emulator.store.datasets[(USER, "public-weights")].is_private is False
    out = capsys.readouterr()
    assert "B/s]" in out.err  # the client's per-file upload bars (bytes), on stderr
    for name in ("config.json", "model.safetensors", "kops-manifest.json", "tokenizer.zip"):
        assert f"{name}: 100%" in out.err, out.err  # each bar names its file
    assert "Upload successful" not in out.out  # the client's upload lines are progress: stderr, not stdout


def test_kops_publish_shows_the_file_list_then_a_named_bar_per_file(project: Path, emulator: Emulator) -> None:
    """The installed `kops publish` (no --json): kops' labelled file list, then each of the client's byte bars
    under the name of the file it sends; stdout holds only the result."""
    run_id = make_run(project, model_files(seed=8))
    out = kops("publish", run_id, cwd=project)
    assert out.returncode == 0, out.stderr
    for name in ("config.json", "model.safetensors", "kops-manifest.json", "tokenizer.zip"):
        assert f"{name}: 100%" in out.stderr, out.stderr
    assert "Upload successful" not in out.stdout and "B/s]" not in out.stdout


def test_the_published_weights_are_one_mlflow_logged_model(project: Path, emulator: Emulator) -> None:
    """Issue 30: a publish records the dataset version as a LoggedModel of the run; publishing the same weights
    again (Kaggle keeps the version) finds that model instead of adding a second."""
    from mlflow.tracking import MlflowClient

    cfg = load_config(project / "kops.yaml")
    run_id = make_run(project, model_files(seed=9))
    first = publish(Session(cfg, kaggle=fast_kaggle()), run_id)
    again = publish(Session(cfg, kaggle=fast_kaggle()), run_id)
    assert again.dataset_version == first.dataset_version and not again.uploaded
    client = MlflowClient(cfg.resolved_tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    (model,) = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert model.model_type == "kaggle-dataset"
    assert model.tags["kops.published.ref"] == first.dataset and model.tags["kops.published.version"] == "1"
    weights = model_files(seed=9)["model.safetensors"]
    assert model.params["sha256/model.safetensors"] == hashlib.sha256(weights).hexdigest()


def test_bad_slug_is_refused_before_any_upload(project: Path, emulator: Emulator) -> None:
    run_id = make_run(project, model_files())
    with pytest.raises(ConfigError) as err:
        publish(Session(load_config(project / "kops.yaml"), kaggle=fast_kaggle()), run_id, dataset="testuser/abc")
    assert str(err.value) == ("Dataset slug 'abc' has 3 characters; Kaggle needs 6-50. "
                              "Pass another one with --dataset owner/slug.")
    assert not (emulator.root / "requests.log").exists() or rpc_log(emulator, "/StartBlobUpload") == []


# ---- the CLI: exit code 1 and the exact one-line error -------------------------------------------------


def kops_in_process(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`kops ARGS --config ...` through the real entry point (kaggleops.cli.main): (exit code, stdout, stderr)."""
    from kaggleops.cli import main

    capsys.readouterr()
    argv = sys.argv
    sys.argv = ["kops", *args, "--config", str(root / "kops.yaml")]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_exit_code_and_exact_error_in_a_subprocess(project: Path) -> None:
    run_id = make_run(project, model_files())
    out = kops("publish", run_id, "--dataset", "testuser/short", "--config", str(project / "kops.yaml"), cwd=project)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == ("kops: error: Dataset slug 'short' has 5 characters; Kaggle needs 6-50. "
                                           "Pass another one with --dataset owner/slug.")


def test_cli_publish_errors_are_one_line_with_exit_1(project: Path, emulator: Emulator,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = make_run(project, model_files())
    code, _, err = kops_in_process(project, capsys, "publish", run_id, "--dataset", "testuser/Bad_Slug")
    assert (code, err) == (1, "kops: error: --dataset 'testuser/Bad_Slug' is not owner/slug with a lowercase slug "
                              "of letters, digits and dashes. Pass e.g. --dataset alice/tse-roberta-f0.\n")
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    code, _, err = kops_in_process(project, capsys, "publish", run_id)
    home, config_dir = Path(os.environ["HOME"]), Path(os.environ["KAGGLE_CONFIG_DIR"])
    assert (code, err) == (1, (
        "kops: error: No Kaggle credentials found (looked in KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY, "
        f"{config_dir / 'kaggle.json'}, {home / '.kaggle' / 'access_token'}). Set KAGGLE_USERNAME and KAGGLE_KEY, "
        f"or save kaggle.json from {KAGGLE_WEB}/settings there.\n"))
    assert TAG_DATASET not in run_tags(project, run_id)
    assert not (emulator.root / "requests.log").exists() or rpc_log(emulator, "/StartBlobUpload") == []


def test_cli_publish_twice_says_nothing_uploaded(project: Path, emulator: Emulator,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_id = make_run(project, model_files())
    code, out, err = kops_in_process(project, capsys, "publish", run_id, "--json")
    assert code == 0, err
    assert json.loads(out)["dataset_version"] == 1
    code, out, err = kops_in_process(project, capsys, "publish", run_id)
    ref = f"{USER}/publish-tests-fold-0-{run_id[:8]}"  # experiment-run name-id
    assert code == 0, err
    assert out.splitlines()[0] == (f"Weights of run {run_id} equal {ref} version 1: nothing uploaded, "
                                   "no new version; run tagged with it")


def test_corrupt_weights_are_refused_before_any_upload(project: Path, emulator: Emulator) -> None:
    files = {**model_files(seed=11), "model.safetensors": b"\x00garbage, not safetensors" * 100}
    run_id = make_run(project, files)
    from kaggleops.errors import DataError

    with pytest.raises(DataError) as err:
        publish(Session(load_config(project / "kops.yaml"), kaggle=fast_kaggle()), run_id)
    assert str(err.value).startswith(f"Run {run_id}: model/model.safetensors does not load (")
    assert str(err.value).endswith("; nothing uploaded. Fix or re-log the run's model folder, then publish again.")
    assert rpc_log(emulator, "/StartBlobUpload") == [] and rpc_log(emulator, "/CreateDataset") == []
    assert TAG_DATASET not in run_tags(project, run_id)


def test_changed_artifact_is_published_as_a_new_version(project: Path, emulator: Emulator) -> None:
    """The run's weights were replaced after publishing: the next publish to its dataset makes version 2."""
    cfg = load_config(project / "kops.yaml")
    run_id = make_run(project, model_files(seed=12))
    first = publish(Session(cfg, kaggle=fast_kaggle()), run_id)
    fixed = project / "fixed"
    fixed.mkdir()
    (fixed / "model.safetensors").write_bytes(weights(b"fixed" * 1000))
    Tracker(cfg).log_artifact(run_id, fixed / "model.safetensors", "model")
    second = publish(Session(cfg, kaggle=fast_kaggle()), run_id, dataset=first.dataset)
    assert (first.dataset_version, second.dataset_version, second.uploaded) == (1, 2, True)
    assert run_tags(project, run_id)[TAG_DATASET_VERSION] == "2"


def test_another_users_namespace_is_refused_before_any_upload(project: Path, emulator: Emulator) -> None:
    run_id = make_run(project, model_files(seed=13))
    with pytest.raises(ConfigError) as err:
        publish(Session(load_config(project / "kops.yaml"), kaggle=fast_kaggle()), run_id,
                dataset="someoneelse/weights-abc")
    assert str(err.value) == (f"Dataset someoneelse/weights-abc is in someoneelse's namespace, but the Kaggle "
                              f"credentials are {USER}'s; nothing uploaded. Publish into your own: --dataset "
                              f"{USER}/weights-abc (or set `owner: {USER}` in kops.yaml).")
    assert rpc_log(emulator, "/StartBlobUpload") == []


def test_lost_create_answer_leaves_no_spent_tokens_for_the_next_publish(project: Path, emulator: Emulator) -> None:
    """CreateDataset took effect but its answer was lost: the client kept its upload records (token, "complete").
    The emulator treats tokens as single-use, so resending them fails; the next publish of the same run (here to
    a second dataset) must upload afresh."""
    cfg = load_config(project / "kops.yaml")
    run_id = make_run(project, model_files(seed=14))
    emulator.inject_fault("CreateDataset", 503, after=True)
    first = publish(Session(cfg, kaggle=fast_kaggle()), run_id, poll_s=0.05)
    second = publish(Session(cfg, kaggle=fast_kaggle()), run_id, dataset=f"{USER}/second-copy-{run_id[:8]}",
                     poll_s=0.05)
    assert (first.dataset_version, second.dataset_version, second.uploaded) == (1, 1, True)
    assert rpc_log(emulator, "/CreateDataset") == [503, 200]


def test_spent_upload_token_is_refused_by_the_emulator(project: Path, emulator: Emulator) -> None:
    """The strictness the test above relies on: a token a dataset version holds cannot make another one."""
    import requests

    cfg = load_config(project / "kops.yaml")
    publish(Session(cfg, kaggle=fast_kaggle()), make_run(project, model_files(seed=15)))
    token = next(t for t, b in emulator.store.blobs.items() if b.used)
    body = {"ownerSlug": USER, "slug": "reuse-the-token", "title": "Reuse The Token", "licenseName": "CC0-1.0",
            "files": [{"token": token}]}
    answer = requests.post(f"{emulator.url}/api/v1/datasets.DatasetApiService/CreateDataset", json=body,
                           auth=(USER, KEY), timeout=10)
    assert answer.status_code == 200 and "was already used" in answer.json()["error"]  # Kaggle: error in the body
    assert f"{USER}/reuse-the-token" not in emulator.state_summary()["datasets"]


def test_upload_lines_name_each_file_and_its_size_within_80_columns(tmp_path: Path) -> None:
    from kaggleops.refs import DatasetRef
    from kaggleops.stages.publish import upload_lines

    (tmp_path / "model.safetensors").write_bytes(b"x" * 5_000_000)
    (tmp_path / "tokenizer.zip").write_bytes(b"y" * 1234)
    (tmp_path / ("a" * 100 + ".json")).write_bytes(b"{}")
    lines = upload_lines(DatasetRef("alice", "fold-0-3f2a9c1e"), tmp_path)
    assert lines == ["uploading 3 file(s), 4.8 MB, to alice/fold-0-3f2a9c1e", "  " + "a" * 72 + "…  2 B",
                     "  model.safetensors  4.8 MB", "  tokenizer.zip  1.2 KB"]
    assert max(map(len, lines)) <= 80


def test_kfold_parent_publishes_each_fold_as_its_own_dataset(project: Path, emulator: Emulator) -> None:
    from kaggleops.adapters.session import Session
    from kaggleops.stages.publish import PublishedFolds, publish_run_or_folds

    cfg = load_config(project / "kops.yaml")
    tracker = Tracker(cfg)
    parent = tracker.start_run("kfold-tiny", {}, {"kops.kind": "kfold"})
    folds = []
    for k in (0, 1):
        run_id = make_run(project, model_files(seed=20 + k), name=f"fold-{k}")
        tracker.set_tags(run_id, {"mlflow.parentRunId": parent, "kops.kind": "fold", "kops.fold": str(k)})
        folds.append(run_id)
    tracker.end_run(parent)
    result = publish_run_or_folds(Session(cfg), parent)
    assert isinstance(result, PublishedFolds) and result.parent_run_id == parent
    assert [(r.run_id, r.dataset, r.dataset_version) for r in result.folds] == [
        (f, f"{USER}/publish-tests-fold-{k}-{f[:8]}", 1) for k, f in enumerate(folds)]
    with pytest.raises(ConfigError, match="is a k-fold parent: each fold gets its own dataset"):
        publish_run_or_folds(Session(cfg), parent, dataset=f"{USER}/all-folds")


def test_weight_check_judges_torch_files_and_leaves_other_formats_to_their_task(tmp_path: Path) -> None:
    """A raw ``.bin`` of another library (a user's task) publishes; a truncated torch file is refused."""
    import torch

    from kaggleops.errors import DataError
    from kaggleops.stages.publish import check_weights

    (tmp_path / "booster.bin").write_bytes(b"tree\x00" * 100)  # e.g. a LightGBM/numpy dump: not torch's format
    torch.save({"w": torch.zeros(64)}, tmp_path / "head.pt")
    check_weights(tmp_path, "r1")
    (tmp_path / "head.pt").write_bytes((tmp_path / "head.pt").read_bytes()[:200])  # cut mid-archive
    with pytest.raises(DataError, match=r"^Run r1: model/head.pt does not load \("):
        check_weights(tmp_path, "r1")


def test_every_command_that_takes_a_run_id_takes_a_unique_prefix(project: Path, emulator: Emulator) -> None:
    """publish, push-kernel --run / --reranker, submit --run (tests/test_scores.py) and train --stage rerank --from:
    an 8-character prefix is resolved to the run (the full id in what they say), a 5-character one is refused."""
    run_id = make_run(project, model_files(seed=77))
    prefix = run_id[:8]
    published = kops("publish", prefix, "--json", cwd=project)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["run_id"] == run_id
    rendered = kops("push-kernel", "--run", prefix, "--no-push", "--json", cwd=project)
    assert rendered.returncode == 0, rendered.stderr
    assert json.loads(rendered.stdout)["run_ids"] == [run_id]
    reranker = kops("push-kernel", "--run", prefix, "--reranker", prefix, "--no-push", cwd=project)
    assert reranker.returncode == 1 and f"Run {run_id} is not a reranker run" in reranker.stderr  # found, then judged
    rerank = kops("train", "--stage", "rerank", "--from", prefix, cwd=project)
    assert rerank.returncode == 1 and f"Run {run_id} is neither a k-fold parent nor a fold run" in rerank.stderr
    for args in (("publish", run_id[:5]), ("push-kernel", "--run", run_id[:5], "--no-push"),
                 ("train", "--stage", "rerank", "--from", run_id[:5])):
        out = kops(*args, cwd=project)
        assert out.returncode == 1 and f"Run id prefix '{run_id[:5]}' is too short" in out.stderr, (args, out.stderr)
