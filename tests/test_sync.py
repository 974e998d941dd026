"""Bucket mode: storage backends, `kops sync push/pull` against a real gcp-storage-emulator on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kaggleops.adapters.storage import (
    GcsStore,
    LocalStore,
    ObjectStore,
    StorageCredentialsMissing,
    StorageError,
    gcs_client,
    md5_b64,
    open_store,
)
from kaggleops.adapters.tracking import Tracker
from kaggleops.config import KopsConfig, load_config, render_template
from kaggleops.errors import ConfigError, RunNotFound
from kaggleops.schema import TAG_ORIGIN_MACHINE, TAG_ORIGIN_RUN, TAG_PARENT
from kaggleops.sync import BackgroundSync, bundles, pull, push

from harness import kops

EXPERIMENT = "tse-sync"
POINTS = 150


@pytest.fixture(scope="module")
def emulator_host() -> Iterator[str]:
    """A real gcp-storage-emulator process on 127.0.0.1 (in memory), shared by this module."""
    from kaggleops.emulator.stack import start_gcs

    gcs = start_gcs()
    try:
        yield gcs.url
    finally:
        gcs.stop()


@pytest.fixture
def bucket(emulator_host: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the emulator; returns gs://<bucket>/team (a prefix, as users would configure)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator_host)
    name = "kops-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    gcs_client().create_bucket(name)
    return f"gs://{name}/team"


def machine(root: Path, bucket_url: str | None, name: str) -> KopsConfig:
    """One "machine": its own folder, kops.yaml and SQLite store."""
    folder = root / name
    folder.mkdir()
    text = render_template(owner="alice", experiment=EXPERIMENT)
    if bucket_url:
        text += f"\nstorage:\n  bucket: {bucket_url}\n"
    (folder / "kops.yaml").write_text(text)
    return load_config(folder / "kops.yaml")


def log_run(tracker: Tracker, name: str, points: int = POINTS, parent: str | None = None,
            finish: bool = True, start_step: int = 0) -> str:
    run_id = tracker.start_run(name, {"lr": 0.001, "fold": name}, {"kops.kind": "fold"}, parent_run_id=parent)
    add_points(tracker, run_id, start_step, points)
    if finish:
        tracker.end_run(run_id)
    return run_id


def add_points(tracker: Tracker, run_id: str, start: int, n: int) -> None:
    with tracker.metric_logger(run_id) as log:
        for step in range(start, start + n):
            log({"train_loss": 1.0 / (step + 1), "val_jaccard": step / 1000}, step)


def history(tracker: Tracker, run_id: str) -> dict[str, list[tuple[int, int, float]]]:
    run = tracker.client.get_run(run_id)
    return {k: sorted((m.step, m.timestamp, m.value) for m in tracker.client.get_metric_history(run_id, k))
            for k in run.data.metrics}


def imported(tracker: Tracker) -> dict[str, Any]:
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    return {r.data.tags[TAG_ORIGIN_RUN]: r for r in runs if TAG_ORIGIN_RUN in r.data.tags}


def stored_run(store: ObjectStore, machine_id: str, run_id: str) -> tuple[dict[str, Any], dict[str, set[tuple]]]:
    """A pushed run as the bucket holds it: its meta.json, and the union of its metric chunks."""
    import json

    meta = json.loads(store.get_bytes(f"runs/{machine_id}/{run_id}/meta.json"))
    metrics: dict[str, set[tuple]] = {}
    for name in meta["chunks"]:
        for key, points in json.loads(store.get_bytes(f"runs/{machine_id}/{run_id}/{name}"))["metrics"].items():
            metrics.setdefault(key, set()).update(tuple(p) for p in points)
    return meta, metrics


class CountingStore:
    """Passes every call to the real store and counts what put_bytes/put_file upload."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.url, self.uploads, self.bytes = inner, inner.url, 0, 0

    def put_bytes(self, key: str, data: bytes) -> None:
        self.uploads, self.bytes = self.uploads + 1, self.bytes + len(data)
        self.inner.put_bytes(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, Path(path).read_bytes())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.slow
def test_two_machines_push_concurrently_third_pulls_each_run_once(tmp_path: Path, bucket: str) -> None:
    a, b, c = (machine(tmp_path, bucket, n) for n in ("a", "b", "c"))
    ta, tb, tc = Tracker(a), Tracker(b), Tracker(c)
    parent = ta.start_run("kfold", {"folds": "0,1"}, {"kops.kind": "kfold"})
    runs_a = [log_run(ta, f"fold-{i}", parent=parent) for i in range(2)]
    ta.log_metrics(parent, {"cv_jaccard": 0.7})
    ta.end_run(parent)
    runs_b = [log_run(tb, f"b-{i}") for i in range(3)] + [log_run(tb, "b-running", finish=False)]
    origins = {**{r: ta for r in [parent, *runs_a]}, **{r: tb for r in runs_b}}

    start, results, errors = threading.Barrier(2), {}, []

    def go(name: str, cfg: KopsConfig) -> None:
        try:
            start.wait()
            results[name] = push(cfg)
        except Exception as e:  # noqa: BLE001 - re-raised below in the main thread
            errors.append(e)

    threads = [threading.Thread(target=go, args=(n, cfg)) for n, cfg in (("a", a), ("b", b))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    assert sorted(results["a"].uploaded) == sorted([parent, *runs_a])
    assert sorted(results["b"].uploaded) == sorted(runs_b)
    assert results["a"].machine != results["b"].machine
    assert len(bundles(c)) == 7

    first = pull(c)
    assert len(first.created) == 7 and first.updated == [] and first.points_added == 6 * 2 * POINTS + 1
    got = imported(tc)
    assert sorted(got) == sorted(origins)  # every run exactly once
    for origin_id, tracker in origins.items():
        src, dst = tracker.client.get_run(origin_id), got[origin_id]
        assert history(tc, dst.info.run_id) == history(tracker, origin_id)
        assert dst.data.params == src.data.params
        assert dst.info.status == src.info.status and dst.info.start_time == src.info.start_time
        assert dst.info.end_time == src.info.end_time and dst.info.run_name == src.info.run_name
        assert dst.data.tags["kops.kind"] == src.data.tags["kops.kind"]
        assert dst.data.tags[TAG_ORIGIN_MACHINE] == (results["a"] if tracker is ta else results["b"]).machine
    assert got[runs_b[-1]].info.status == "RUNNING"
    assert got[runs_a[0]].data.tags[TAG_PARENT] == got[parent].info.run_id  # parent link remapped to the local id

    again = pull(c)
    assert (again.created, again.updated, again.unchanged) == ([], [], 7)
    assert len(tc.client.search_runs([tc.experiment_id], max_results=1000)) == 7


@pytest.mark.slow
def test_unchanged_push_uploads_zero_bytes_and_a_grown_run_is_updated(tmp_path: Path, bucket: str) -> None:
    a, c = machine(tmp_path, bucket, "a"), machine(tmp_path, bucket, "c")
    ta, tc = Tracker(a), Tracker(c)
    done = log_run(ta, "done")
    growing = log_run(ta, "growing", points=20, finish=False)
    store = CountingStore(open_store(bucket))
    first = push(a, store=store)
    assert len(first.uploaded) == 2 and first.uploaded_bytes == store.bytes > 0
    pull(c)

    store.uploads = store.bytes = 0
    second = push(a, store=store)
    assert (second.uploaded, second.uploaded_bytes, second.unchanged) == ([], 0, 2)
    assert (store.uploads, store.bytes) == (0, 0)

    add_points(ta, growing, 20, 10)
    ta.set_tags(growing, {"kops.note": "resumed"})
    ta.end_run(growing)
    third = push(a, store=store)
    # only the run that changed is read, and it uploads only its 2 x 10 new points (one chunk) and its meta.json
    assert third.uploaded == [growing] and third.points_uploaded == 2 * 10 and store.uploads == 2
    keys = sorted(o.key for o in open_store(bucket).list(f"runs/{third.machine}/{growing}/"))
    assert [k.rsplit("/", 1)[1][:8] for k in keys] == ["m-000001", "m-000002", "meta.jso"]

    grown = pull(c)
    local_id = imported(tc)[growing].info.run_id
    assert grown.created == [] and grown.updated == [local_id] and grown.points_added == 2 * 10
    assert history(tc, local_id) == history(ta, growing)
    run = tc.client.get_run(local_id)
    assert run.info.status == "FINISHED" and run.data.tags["kops.note"] == "resumed"
    assert len(imported(tc)) == 2 and imported(tc)[done].info.run_id != local_id

    # a machine never pushes runs it pulled, and never pulls its own
    assert push(c).imported_skipped == 2 and bundles(c) == bundles(a)
    assert pull(a).own == 2


@pytest.mark.slow
def test_run_killed_mid_training_is_visible_up_to_last_background_sync(tmp_path: Path, bucket: str) -> None:
    a, c = machine(tmp_path, bucket, "a"), machine(tmp_path, bucket, "c")
    ta = Tracker(a)
    run_id = log_run(ta, "fold-0", points=40, finish=False)
    sync = BackgroundSync(a, every_s=0.05).start()
    assert sync.pushed.wait(60), sync.last_error
    sync.stop(final_push=False)  # the notebook dies: no final push
    add_points(ta, run_id, 40, 25)  # logged after the last sync: lost with the machine

    pull(c)
    run = imported(Tracker(c))[run_id]
    assert run.info.status == "RUNNING"
    steps = {m.step for m in Tracker(c).client.get_metric_history(run.info.run_id, "train_loss")}
    assert steps == set(range(40))


@pytest.mark.slow
def test_tracker_resolve_accepts_origin_or_local_id(tmp_path: Path, bucket: str) -> None:
    a, c = machine(tmp_path, bucket, "a"), machine(tmp_path, bucket, "c")
    origin = log_run(Tracker(a), "fold-0", points=3)
    push(a)
    local_id = pull(c).created[0]
    tc = Tracker(c)
    assert tc.resolve(origin) == local_id
    assert tc.resolve(local_id) == local_id
    with pytest.raises(RunNotFound, match="Run 0123456789abcdef0123456789abcdef not found"):
        tc.resolve("0123456789abcdef0123456789abcdef")
    with pytest.raises(RunNotFound):
        tc.resolve("x' or 1=1 --")


def test_local_folder_store_round_trip(tmp_path: Path) -> None:
    store = open_store("shared", base=tmp_path)
    assert isinstance(store, LocalStore) and store.url == str(tmp_path / "shared")
    store.put_bytes("runs/m1/a.json", b"{}")
    (tmp_path / "f.bin").write_bytes(b"weights")
    store.put_file("ckpt/f.bin", tmp_path / "f.bin")
    assert store.exists("runs/m1/a.json") and not store.exists("runs/m1/b.json")
    assert [(o.key, o.size, o.md5) for o in store.list("runs/")] == [("runs/m1/a.json", 2, md5_b64(b"{}"))]
    assert store.get_file("ckpt/f.bin", tmp_path / "out" / "f.bin").read_bytes() == b"weights"
    with pytest.raises(ValueError, match="Bad object key"):
        store.put_bytes("../escape", b"")
    with pytest.raises(StorageError, match="No object runs/nope.json in"):
        store.get_bytes("runs/nope.json")


@pytest.mark.slow
def test_gcs_store_round_trip_and_missing_bucket(bucket: str, tmp_path: Path) -> None:
    store = open_store(bucket + "/")
    assert isinstance(store, GcsStore) and store.url == bucket
    store.put_bytes("runs/m/x.json", b'{"a": 1}')
    (tmp_path / "w.bin").write_bytes(b"\x00" * 1000)
    store.put_file("ckpt/w.bin", tmp_path / "w.bin")
    assert store.exists("ckpt/w.bin") and not store.exists("ckpt/none")
    assert [(o.key, o.md5) for o in store.list("runs/")] == [("runs/m/x.json", md5_b64(b'{"a": 1}'))]
    assert store.get_file("ckpt/w.bin", tmp_path / "back.bin").read_bytes() == b"\x00" * 1000
    with pytest.raises(StorageError, match="No object runs/none.json in gs://"):
        store.get_bytes("runs/none.json")
    with pytest.raises(StorageError, match="Bucket gs://kops-no-such-bucket not found"):
        open_store("gs://kops-no-such-bucket").get_bytes("x")


def test_missing_gcs_credentials_name_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(StorageCredentialsMissing) as err:
        gcs_client()
    text = str(err.value)
    assert "Kaggle's Google Cloud SDK add-on" in text and "Google's default chain" in text and "Colab" in text
    assert "missing-key.json" in text and "gcloud auth application-default login" in text


def test_sync_config_is_validated(tmp_path: Path) -> None:
    (tmp_path / "kops.yaml").write_text("competition: x\nstorage: {bucket: gs://b, sync_minuts: 5}\n")
    with pytest.raises(ConfigError, match="unknown key `storage.sync_minuts`"):
        load_config(tmp_path / "kops.yaml")
    cfg = machine(tmp_path, None, "nobucket")
    with pytest.raises(ConfigError, match="No bucket configured for kops sync"):
        push(cfg)


@pytest.mark.slow
def test_cli_push_and_status(tmp_path: Path, bucket: str) -> None:
    import json

    a = machine(tmp_path, bucket, "a")
    run_id = log_run(Tracker(a), "fold-0", points=5)

    out = kops("sync", "push", "--json", cwd=a.root)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == [run_id]
    status = kops("sync", "status", "--json", cwd=a.root)
    assert [r["run_id"] for r in json.loads(status.stdout)] == [run_id]
    no_credentials = {"STORAGE_EMULATOR_HOST": None, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json")}
    bad = kops("sync", "push", cwd=a.root, env=no_credentials)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("kops: error: No Google Cloud credentials for gs://. Tried: ")
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_training_pushes_in_the_background_to_a_folder_bucket(tmp_path: Path) -> None:
    """`kops train` with `storage.sync_minutes`: the hook pushes during training and once more at the end."""

    from kaggleops.stages.train import train

    cfg = machine(tmp_path, str(tmp_path / "bucket"), "a")
    cfg.storage.sync_minutes = 0.01
    cfg.train.epochs, cfg.train.folds, cfg.train.max_steps = 1, [0, 1], 6
    result = train(cfg, progress=False, sample=True)
    run_id = result.runs[0].run_id
    rows = {row["run_id"]: row for row in bundles(cfg)}
    assert set(rows) == {result.parent_run_id, *(r.run_id for r in result.runs)}
    machine_id = rows[run_id]["machine"]
    assert machine_id in (tmp_path / "a" / ".kops" / "machine-id").read_text()
    store = open_store(str(tmp_path / "bucket"))
    bundle, metrics = stored_run(store, machine_id, run_id)
    assert bundle["run"]["status"] == "FINISHED" and bundle["params"]["epochs"] == "1"
    assert len(metrics["train_loss"]) > 1 and len(bundle["chunks"]) == rows[run_id]["chunks"] >= 1
    parent, parent_metrics = stored_run(store, machine_id, result.parent_run_id)
    assert parent["run"]["status"] == "FINISHED" and "cv_jaccard" in parent_metrics  # the end is in the bucket


@pytest.mark.slow
def test_artifacts_go_straight_to_the_bucket_and_pulled_runs_point_at_them(tmp_path: Path, bucket: str) -> None:
    import mlflow.artifacts

    from kaggleops.schema import TAG_ORIGIN_ARTIFACTS

    a, c = machine(tmp_path, bucket, "a"), machine(tmp_path, bucket, "c")
    a.artifact_location = f"{bucket}/artifacts"
    ta = Tracker(a)
    run_id = log_run(ta, "fold-0", points=2)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x01" * 64)
    ta.log_artifacts(run_id, tmp_path / "model", "model")
    assert open_store(bucket).exists(f"artifacts/{run_id}/artifacts/model/weights.bin")
    push(a)
    pull(c)
    origin_uri = imported(Tracker(c))[run_id].data.tags[TAG_ORIGIN_ARTIFACTS]
    got = mlflow.artifacts.download_artifacts(artifact_uri=f"{origin_uri}/model", dst_path=str(tmp_path / "dl"))
    assert (Path(got) / "weights.bin").read_bytes() == b"\x01" * 64


def test_publish_a_pulled_run_by_its_origin_id(tmp_path: Path, start_emulator: Callable[..., Any]) -> None:
    """On a viewer machine after `kops sync pull`: `kops publish ORIGIN_ID` finds the run and its origin artifacts."""
    from kaggleops.adapters.session import Session
    from kaggleops.stages.publish import publish

    shared = str(tmp_path / "bucket")
    a, c = machine(tmp_path, shared, "a"), machine(tmp_path, shared, "c")
    ta = Tracker(a)
    origin = log_run(ta, "fold-0", points=3)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "roberta"}')
    from safetensors.numpy import save

    (model / "model.safetensors").write_bytes(save({"w": __import__("numpy").zeros(512, "uint8")}))
    ta.log_artifacts(origin, model, "model")
    push(a)
    local_id = pull(c).created[0]
    start_emulator(username="alice", key="k")
    result = publish(Session(c), origin)
    assert result.run_id == local_id and result.dataset_version == 1
    assert Tracker(c).get_run(local_id).tags["kops.dataset"] == result.dataset


def test_ui_pulls_first_when_a_bucket_is_configured(tmp_path: Path) -> None:
    from kaggleops.sync import pull_if_configured

    shared = str(tmp_path / "bucket")
    a, c = machine(tmp_path, shared, "a"), machine(tmp_path, shared, "c")
    log_run(Tracker(a), "fold-0", points=3)
    push(a)
    assert len(pull_if_configured(c).created) == 1          # what `kops ui` does before starting the server
    assert pull_if_configured(machine(tmp_path, None, "nobucket")) is None


@pytest.mark.slow
def test_push_reads_only_changed_runs_and_pull_imports_in_bulk(tmp_path: Path, bucket: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An unchanged re-push reads no metric history; a grown run's history alone is read. A pull stores a new run's
    points, params and tags in ceil(entities / 1000) log_batch calls and reports progress per run."""
    from mlflow.tracking import MlflowClient

    a, c = machine(tmp_path, bucket, "a"), machine(tmp_path, bucket, "c")
    ta = Tracker(a)
    runs = [log_run(ta, f"r{i}", points=600) for i in range(3)]  # 2 keys x 600 points each
    reads: list[str] = []
    real_history = Tracker.metric_history
    monkeypatch.setattr(Tracker, "metric_history", lambda self, run_id, key: (
        reads.append(run_id), real_history(self, run_id, key))[1])
    push(a)
    assert sorted(set(reads)) == sorted(runs)
    reads.clear()
    assert push(a).unchanged == 3 and reads == []
    ta.set_tags(runs[1], {"kops.note": "looked at"})  # a tag alone: its meta is re-sent, no new points
    second = push(a)
    assert second.uploaded == [runs[1]] and second.points_uploaded == 0 and set(reads) == {runs[1]}

    calls: list[int] = []
    real_batch = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, run_id, metrics=(), params=(), tags=(), **kw: (
        calls.append(len(metrics) + len(params) + len(tags)), real_batch(self, run_id, metrics, params, tags, **kw))[1])
    seen: list[tuple[int, int]] = []
    pulled = pull(c, progress=lambda done, total: seen.append((done, total)))
    assert len(pulled.created) == 3 and pulled.points_added == 3 * 1200
    assert seen == [(1, 3), (2, 3), (3, 3)]
    # per run: 1,200 points + 2 params in 2 calls (1,000 + 202), then one call for the origin tags
    assert len(calls) == 3 * 3 and max(calls) == 1000
    tc = Tracker(c)
    assert history(tc, imported(tc)[runs[0]].info.run_id) == history(ta, runs[0])


@pytest.mark.slow
def test_lost_push_state_and_first_format_bundles(tmp_path: Path, bucket: str) -> None:
    """Without .kops/sync-state.json a push sends a run's history again as one more chunk and the pull adds no
    duplicate point; a first-format bundle (runs/<machine>/<run>.json) is still pulled, and once the same run also
    has a meta.json, pulls neither duplicate nor flip-flop."""
    import json

    from kaggleops.sync import STATE_FILE, encode

    a, c = machine(tmp_path, bucket, "a"), machine(tmp_path, bucket, "c")
    ta, tc = Tracker(a), Tracker(c)
    run_id = log_run(ta, "fold-0", points=30, finish=False)
    me = push(a).machine
    # the same run as the previous kops version pushed it: one bundle with the whole history
    run = ta.client.get_run(run_id)
    old = {"format": "kops.run-bundle/1", "origin": {"machine": me, "run_id": run_id, "experiment": EXPERIMENT},
           "run": {"name": run.info.run_name, "status": run.info.status, "start_time": run.info.start_time,
                   "end_time": run.info.end_time, "artifact_uri": run.info.artifact_uri},
           "params": run.data.params, "tags": run.data.tags,
           "metrics": {k: [list(p) for p in v] for k, v in history(ta, run_id).items()}}
    other = log_run(Tracker(machine(tmp_path, bucket, "b")), "only-old", points=5)
    store = open_store(bucket)
    store.put_bytes(f"runs/{me}/{run_id}.json", encode(old))
    store.put_bytes(f"runs/old-machine/{other}.json", encode({**old, "origin": {**old["origin"], "run_id": other},
                                                                 "tags": {}, "metrics": {"m": [[0, 1, 0.5]]}}))
    first = pull(c)
    assert len(first.created) == 2 and imported(tc)[other].data.metrics == {"m": 0.5}
    assert history(tc, imported(tc)[run_id].info.run_id) == history(ta, run_id)

    (tmp_path / "a" / STATE_FILE).unlink()
    add_points(ta, run_id, 30, 5)
    again = push(a)
    assert again.uploaded == [run_id] and again.points_uploaded == 2 * 35  # the whole history once more
    meta = json.loads(store.get_bytes(f"runs/{me}/{run_id}/meta.json"))
    assert [n[:8] for n in meta["chunks"]] == ["m-000002"]  # m-000001 is kept, unlisted: a subset of m-000002
    grown = pull(c)
    assert grown.updated == [imported(tc)[run_id].info.run_id] and grown.points_added == 2 * 5
    assert history(tc, imported(tc)[run_id].info.run_id) == history(ta, run_id)
    assert (pull(c).updated, pull(c).created) == ([], [])
    assert len(tc.client.search_runs([tc.experiment_id], max_results=100)) == 2
