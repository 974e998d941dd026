"""Tracking-store sync through a bucket: the offline-first mode (free notebooks as compute, one bucket).

Each machine logs to its own local MLflow store. ``push`` writes every local run as one JSON bundle under
``runs/<machine-id>/<run-id>.json``: a key only that run owns, so two machines pushing at once never write the
same object (no reliance on object preconditions). A bundle whose bytes did not change is not uploaded (its MD5
is compared with the stored object's). ``pull`` imports other machines' bundles through MlflowClient: matched by
the ``kops.origin_run_id`` tag, a second pull creates nothing, and a run that grew gets the new metric points,
tags and status instead of a duplicate. Imported runs are never pushed back.

Bucket lookup order: ``--bucket`` > ``KOPS_BUCKET`` > ``storage.bucket`` in kops.yaml.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kaggleops.adapters.storage import ObjectStore, md5_b64, open_store
from kaggleops.adapters.tracking import Tracker, open_tracker
from kaggleops.errors import ConfigError
from kaggleops.refs import slugify
from kaggleops.schema import TAG_ORIGIN_ARTIFACTS, TAG_ORIGIN_MACHINE, TAG_ORIGIN_MD5, TAG_ORIGIN_RUN, TAG_PARENT

if TYPE_CHECKING:
    from mlflow.entities import Run

    from kaggleops.config import KopsConfig

ENV_BUCKET = "KOPS_BUCKET"
BUNDLE_FORMAT = "kops.run-bundle/1"
RUNS_PREFIX = "runs/"
MACHINE_FILE = ".kops/machine-id"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
MAX_RESULTS = 50_000
METRICS_PER_BATCH = 1000
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger(__name__)


@dataclass
class PushResult:
    bucket: str
    machine: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: int = 0
    imported_skipped: int = 0
    uploaded_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PullResult:
    bucket: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    own: int = 0
    points_added: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bucket_url(cfg: KopsConfig, bucket: str | None = None) -> str:
    """The configured bucket: ``bucket`` argument > ``KOPS_BUCKET`` > kops.yaml ``storage.bucket``."""
    url = bucket or os.environ.get(ENV_BUCKET) or cfg.storage.bucket
    if not url:
        raise ConfigError("No bucket configured for kops sync.",
                          f"Set `storage: {{bucket: gs://BUCKET/PREFIX}}` in kops.yaml or {ENV_BUCKET}, "
                          "or pass --bucket.")
    return url


def machine_id(cfg: KopsConfig) -> str:
    """This store's origin id, kept in ``.kops/machine-id`` beside kops.yaml (created on first use)."""
    path = cfg.root / MACHINE_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    ident = f"{slugify(socket.gethostname(), 30) or 'machine'}-{secrets.token_hex(4)}"
    path.write_text(ident + "\n")
    return ident


def _experiment_ids(tracker: Tracker, all_experiments: bool) -> list[str]:
    if not all_experiments:
        return [tracker.experiment_id]
    return [e.experiment_id for e in tracker.client.search_experiments()]


def _all_runs(tracker: Tracker, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = tracker.client.search_runs(experiment_ids, filter_string=filter_string, max_results=MAX_RESULTS,
                                          page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_bundle(tracker: Tracker, run: Run, machine: str, experiment: str) -> dict[str, Any]:
    """One run as a self-contained dict: params, tags, full metric history, status, times, artifact URI."""
    client = tracker.client
    info = run.info
    metrics = {}
    for key in sorted(run.data.metrics):
        points = client.get_metric_history(info.run_id, key)
        metrics[key] = sorted([m.step, m.timestamp, m.value] for m in points)
    return {
        "format": BUNDLE_FORMAT,
        "origin": {"machine": machine, "run_id": info.run_id, "experiment": experiment},
        "run": {"name": info.run_name, "status": info.status, "start_time": info.start_time,
                "end_time": info.end_time, "artifact_uri": info.artifact_uri},
        "params": dict(sorted(run.data.params.items())),
        "tags": dict(sorted(run.data.tags.items())),
        "metrics": metrics,
    }


def encode_bundle(bundle: dict[str, Any]) -> bytes:
    """Deterministic bytes: the same run always encodes the same, so its MD5 says whether it changed."""
    return json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode()


def push(cfg: KopsConfig, bucket: str | None = None, all_experiments: bool = False,
         store: ObjectStore | None = None) -> PushResult:
    """Upload each local run of the experiment (all experiments with ``all_experiments``) that changed.

    Example:
        >>> push(load_config()).uploaded_bytes      # doctest: +SKIP
        48213
    """
    store = store or open_store(bucket_url(cfg, bucket), cfg.root)
    tracker = open_tracker(cfg)
    me = machine_id(cfg)
    result = PushResult(store.url, me)
    stored = {o.key: o.md5 for o in store.list(f"{RUNS_PREFIX}{me}/")}
    names: dict[str, str] = {}
    for run in _all_runs(tracker, _experiment_ids(tracker, all_experiments)):
        if TAG_ORIGIN_RUN in run.data.tags:
            result.imported_skipped += 1
            continue
        exp_id = run.info.experiment_id
        names[exp_id] = names.get(exp_id) or tracker.client.get_experiment(exp_id).name
        data = encode_bundle(run_bundle(tracker, run, me, names[exp_id]))
        key = f"{RUNS_PREFIX}{me}/{run.info.run_id}.json"
        if stored.get(key) == md5_b64(data):
            result.unchanged += 1
            continue
        store.put_bytes(key, data)
        result.uploaded.append(run.info.run_id)
        result.uploaded_bytes += len(data)
    return result


def _imported(tracker: Tracker) -> dict[str, Run]:
    """Local runs imported by pull, by origin run id."""
    ids = _experiment_ids(tracker, all_experiments=True)
    runs = _all_runs(tracker, ids, f"tags.`{TAG_ORIGIN_RUN}` LIKE '%'") if ids else []
    return {r.data.tags[TAG_ORIGIN_RUN]: r for r in runs}


def _is_local_run(tracker: Tracker, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        tracker.client.get_run(run_id)
    except MlflowException:
        return False
    return True


def pull(cfg: KopsConfig, bucket: str | None = None, store: ObjectStore | None = None) -> PullResult:
    """Import other machines' run bundles into the local store; idempotent, and grown runs are updated in place.

    Example:
        >>> pull(load_config()).created             # doctest: +SKIP
        ['3f0c…', …]
    """
    store = store or open_store(bucket_url(cfg, bucket), cfg.root)
    tracker = open_tracker(cfg)
    me = machine_id(cfg)
    result = PullResult(store.url)
    local = _imported(tracker)
    mapping = {origin: run.info.run_id for origin, run in local.items()}
    touched: list[tuple[str, dict[str, Any]]] = []
    for obj in store.list(RUNS_PREFIX):
        origin_id = obj.key.rsplit("/", 1)[-1].removesuffix(".json")
        if obj.key.startswith(f"{RUNS_PREFIX}{me}/") or not _RUN_ID.match(origin_id):
            result.own += obj.key.startswith(f"{RUNS_PREFIX}{me}/")
            continue
        existing = local.get(origin_id)
        if existing is not None and existing.data.tags.get(TAG_ORIGIN_MD5) == obj.md5:
            result.unchanged += 1
            continue
        if existing is None and _is_local_run(tracker, origin_id):
            result.own += 1  # our own run under an older machine id
            continue
        bundle = json.loads(store.get_bytes(obj.key))
        if existing is None:
            local_id = _create_run(tracker, cfg, bundle)
            mapping[origin_id] = local_id
            result.created.append(local_id)
        else:
            local_id = existing.info.run_id
            result.updated.append(local_id)
        result.points_added += _merge_run(tracker, local_id, bundle, mapping)
        touched.append((local_id, {**bundle, "md5": obj.md5}))
    for local_id, bundle in touched:
        _set_tags(tracker, local_id, {**_desired_tags(bundle, mapping), TAG_ORIGIN_MD5: bundle["md5"]})
    return result


def _experiment_for(tracker: Tracker, cfg: KopsConfig, name: str) -> str:
    if name == cfg.experiment_name:
        return tracker.experiment_id
    exp = tracker.client.get_experiment_by_name(name)
    return exp.experiment_id if exp else tracker.client.create_experiment(
        name, artifact_location=cfg.resolved_artifact_location)


def _desired_tags(bundle: dict[str, Any], mapping: dict[str, str]) -> dict[str, str]:
    tags = dict(bundle["tags"])
    if tags.get(TAG_PARENT) in mapping:
        tags[TAG_PARENT] = mapping[tags[TAG_PARENT]]
    origin = bundle["origin"]
    tags.update({TAG_ORIGIN_RUN: origin["run_id"], TAG_ORIGIN_MACHINE: origin["machine"]})
    if bundle["run"].get("artifact_uri"):
        tags[TAG_ORIGIN_ARTIFACTS] = bundle["run"]["artifact_uri"]
    return tags


def _create_run(tracker: Tracker, cfg: KopsConfig, bundle: dict[str, Any]) -> str:
    experiment_id = _experiment_for(tracker, cfg, bundle["origin"]["experiment"])
    tags = {k: v for k, v in _desired_tags(bundle, {}).items() if k != TAG_ORIGIN_MD5}
    run = tracker.client.create_run(experiment_id, start_time=bundle["run"]["start_time"], tags=tags,
                                    run_name=bundle["run"]["name"])
    return run.info.run_id


def _set_tags(tracker: Tracker, run_id: str, tags: dict[str, str]) -> None:
    current = tracker.client.get_run(run_id).data.tags
    changed = {k: v for k, v in tags.items() if current.get(k) != v}
    if changed:
        tracker.set_tags(run_id, changed)


def _merge_run(tracker: Tracker, run_id: str, bundle: dict[str, Any], mapping: dict[str, str]) -> int:
    """Bring a local run up to the bundle: new params, missing metric points, tags, status. Returns points added."""
    from mlflow.entities import Metric, Param

    client = tracker.client
    run = client.get_run(run_id)
    new_params = [Param(k, v) for k, v in bundle["params"].items() if k not in run.data.params]
    for i in range(0, len(new_params), 100):
        client.log_batch(run_id, params=new_params[i:i + 100])
    missing = []
    for key, points in bundle["metrics"].items():
        have = set()
        if key in run.data.metrics:
            have = {(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)}
        missing.extend(Metric(key, v, ts, step) for step, ts, v in points if (step, ts, v) not in have)
    for i in range(0, len(missing), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=missing[i:i + METRICS_PER_BATCH])
    _set_tags(tracker, run_id, _desired_tags(bundle, mapping))
    status, end_time = bundle["run"]["status"], bundle["run"]["end_time"]
    if status != run.info.status or (status in TERMINAL and end_time != run.info.end_time):
        if status in TERMINAL:
            client.set_terminated(run_id, status, end_time)
        else:
            client.update_run(run_id, status=status)
    return len(missing)


def pull_if_configured(cfg: KopsConfig) -> PullResult | None:
    """`kops sync pull` when a bucket is configured (``KOPS_BUCKET`` or ``storage.bucket``), else nothing."""
    if not (os.environ.get(ENV_BUCKET) or cfg.storage.bucket):
        return None
    return pull(cfg)


def bundles(cfg: KopsConfig, bucket: str | None = None, store: ObjectStore | None = None) -> list[dict[str, Any]]:
    """What the bucket holds: one row per run bundle (machine, run id, bytes)."""
    store = store or open_store(bucket_url(cfg, bucket), cfg.root)
    rows = []
    for obj in store.list(RUNS_PREFIX):
        parts = obj.key.split("/")
        if len(parts) == 3 and parts[2].endswith(".json"):
            rows.append({"machine": parts[1], "run_id": parts[2].removesuffix(".json"), "bytes": obj.size})
    return rows


class BackgroundSync:
    """Pushes every ``every_s`` seconds on a daemon thread, so a lost notebook loses at most one interval."""

    def __init__(self, cfg: KopsConfig, every_s: float, bucket: str | None = None,
                 store: ObjectStore | None = None) -> None:
        self.cfg = cfg
        self.every_s = every_s
        self.store = store or open_store(bucket_url(cfg, bucket), cfg.root)
        self.last_error: Exception | None = None
        self.pushed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kops-sync", daemon=True)

    def start(self) -> BackgroundSync:
        self._thread.start()
        return self

    def push_now(self) -> PushResult | None:
        """One push; a failure is logged and kept in ``last_error`` (training must not die of a network blip)."""
        try:
            result = push(self.cfg, store=self.store)
        except Exception as e:  # noqa: BLE001 - reported, retried at the next interval
            self.last_error = e
            log.warning("kops sync push to %s failed: %s", self.store.url, e)
            return None
        self.pushed.set()
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.push_now()

    def stop(self, final_push: bool = True) -> None:
        """Stop the thread; by default push once more so the final status reaches the bucket."""
        self._stop.set()
        self._thread.join()
        if final_push:
            self.push_now()


@contextlib.contextmanager
def background_sync(cfg: KopsConfig) -> Iterator[BackgroundSync | None]:
    """Around training: push every ``storage.sync_minutes`` when a bucket is configured (else do nothing).

    Example (training.py):
        >>> with background_sync(cfg):              # doctest: +SKIP
        ...     runs = [train_fold(...) for fold in folds]
    """
    if not cfg.storage.sync_minutes or not (os.environ.get(ENV_BUCKET) or cfg.storage.bucket):
        yield None
        return
    bg = BackgroundSync(cfg, cfg.storage.sync_minutes * 60).start()
    try:
        yield bg
    finally:
        bg.stop()
