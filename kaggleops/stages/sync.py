"""Tracking-store sync through a bucket: the offline-first mode (free notebooks as compute, one bucket).

Each machine logs to its own local MLflow store. ``push`` writes each local run under a prefix only that run owns,
``runs/<machine-id>/<run-id>/``, so two machines pushing at once never write the same object (no reliance on
object preconditions):

- ``meta.json`` (format ``kops.run-bundle/2``): name, status, times, artifact URI, params, tags, and the ordered
  list of the run's metric chunks. Small; rewritten when the run changed.
- ``m-<seq>-<md5>.json``: append-only chunks of metric points. A push uploads only the points logged since the
  run's last push; the union of a run's chunks is its metric history (a point may appear in two chunks, never
  missing from all).

Cost follows the change: ``push`` decides from what the store lists without reading any history (status, end
time, each metric's latest step/timestamp/value, params, tags — the run's fingerprint) which runs changed since
their last push, kept in ``.kops/sync-state.json``; only those are read and uploaded. A run's new points are
those after the pushed prefix of its history (by timestamp), checked by count and digest; a history that no longer
starts with the pushed prefix (a point logged with an older timestamp) is uploaded whole as one more chunk. A point
logged at an earlier step than a metric's latest leaves the fingerprint unchanged: it goes up with the run's next
change, or with ``push(full=True)`` (`kops sync push --full`), which reads every run's history. Pushes from one
folder take a file lock, so a background push and `kops sync push` never interleave.

``pull`` imports other machines' runs through the tracking adapter in bulk (``log_batch``: 1,000 entities a call):
matched by the ``kops.origin_run_id`` tag, a second pull creates nothing (a run whose ``meta.json`` MD5 equals its
``kops.origin_md5`` tag is skipped without a download), and a run that grew gets the chunks it has not imported
(tag ``kops.origin_chunks``), deduplicated against its stored points. Imported runs are never pushed back.
Bundles of the first format (one ``runs/<machine>/<run-id>.json`` holding the whole history) are still pulled,
unless the same run also has a ``meta.json``.

Bucket lookup order: ``--bucket`` > ``KOPS_BUCKET`` > ``storage.bucket`` in kops.yaml.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kaggleops.adapters.storage import ObjectInfo, ObjectStore, md5_b64, open_store
from kaggleops.adapters.tracking import Tracker, open_tracker
from kaggleops.errors import ConfigError
from kaggleops.refs import slugify
from kaggleops.schema import (
    TAG_ORIGIN_ARTIFACTS,
    TAG_ORIGIN_CHUNKS,
    TAG_ORIGIN_MACHINE,
    TAG_ORIGIN_MD5,
    TAG_ORIGIN_RUN,
    TAG_PARENT,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

    from kaggleops.config import KopsConfig
from kaggleops.files import file_lock

ENV_BUCKET = "KOPS_BUCKET"
BUNDLE_FORMAT_V1 = "kops.run-bundle/1"
BUNDLE_FORMAT = "kops.run-bundle/2"
CHUNK_FORMAT = "kops.metric-chunk/1"
RUNS_PREFIX = "runs/"
META = "meta.json"
MACHINE_FILE = ".kops/machine-id"
STATE_FILE = ".kops/sync-state.json"
LOCK_FILE = ".kops/sync.lock"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
CHUNK_POINTS = 100_000
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = re.compile(r"^m-(\d{6})-[0-9a-f]{8}\.json$")
log = logging.getLogger(__name__)

Point = tuple[int, int, float]  # step, timestamp, value
Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class PushResult:
    bucket: str
    machine: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: int = 0
    imported_skipped: int = 0
    uploaded_bytes: int = 0
    points_uploaded: int = 0

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


def encode(obj: dict[str, Any]) -> bytes:
    """Deterministic bytes: the same content always encodes the same, so its MD5 says whether it changed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(tracker: Tracker, run: Run) -> str:
    """What the store lists about a run without reading its history; a change here means the run changed."""
    info = run.info
    facts = [info.status, info.start_time, info.end_time, info.run_name, info.artifact_uri,
             sorted(run.data.params.items()), sorted(run.data.tags.items()),
             sorted((k, *p) for k, p in tracker.latest_points(run).items())]
    return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()[:32]


def _digest(points: list[Point]) -> str:
    return hashlib.sha256(json.dumps(points).encode()).hexdigest()[:32]


def _by_time(points: list[Point]) -> list[Point]:
    return sorted(points, key=lambda p: (p[1], p[0], p[2]))


# ---- push -----------------------------------------------------------------------------------------------------


def _folder_lock(cfg: KopsConfig) -> contextlib.AbstractContextManager[None]:
    """One push at a time from this folder (a background push and `kops sync push` share the state file)."""
    return file_lock(cfg.root / LOCK_FILE)


def _load_state(cfg: KopsConfig, url: str) -> dict[str, Any]:
    path = cfg.root / STATE_FILE
    try:
        return dict(json.loads(path.read_text()).get(url, {}))
    except (OSError, ValueError):
        return {}


def _save_state(cfg: KopsConfig, url: str, runs: dict[str, Any]) -> None:
    path = cfg.root / STATE_FILE
    try:
        everything = json.loads(path.read_text())
    except (OSError, ValueError):
        everything = {}
    everything[url] = runs
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(everything, sort_keys=True))
    os.replace(tmp, path)


@dataclass
class _Listing:
    """What the bucket holds under one run's prefix: meta.json's MD5 and the chunk objects."""

    meta_md5: str | None = None
    meta_size: int = 0
    chunks: dict[str, int] = field(default_factory=dict)  # name -> size

    @property
    def next_seq(self) -> int:
        seqs = [int(m.group(1)) for name in self.chunks if (m := _CHUNK.match(name))]
        return max(seqs, default=0) + 1


def _list_runs(store: ObjectStore, prefix: str) -> tuple[dict[str, _Listing], dict[str, ObjectInfo]]:
    """New-format runs under ``prefix`` (``<machine>/<run>/…``) by ``machine/run``, and old-format bundles."""
    runs: dict[str, _Listing] = {}
    old: dict[str, ObjectInfo] = {}
    for obj in store.list(prefix):
        parts = obj.key[len(RUNS_PREFIX):].split("/")
        if len(parts) == 2 and parts[1].endswith(".json") and _RUN_ID.match(parts[1][:-5]):
            old[f"{parts[0]}/{parts[1][:-5]}"] = obj
        elif len(parts) == 3 and _RUN_ID.match(parts[1]):
            entry = runs.setdefault(f"{parts[0]}/{parts[1]}", _Listing())
            if parts[2] == META:
                entry.meta_md5, entry.meta_size = obj.md5, obj.size
            elif _CHUNK.match(parts[2]):
                entry.chunks[parts[2]] = obj.size
    return runs, old


def push(cfg: KopsConfig, bucket: str | None = None, all_experiments: bool = False,
         store: ObjectStore | None = None, full: bool = False) -> PushResult:
    """Upload what changed in each local run of the experiment (every experiment with ``all_experiments``).

    A run whose fingerprint (status, times, tags, params, latest metric points) matches its last push is not read;
    a changed run uploads its new metric points as one more chunk and its meta.json. ``full`` re-reads every run's
    history (uploading only points not pushed yet).

    Example:
        >>> push(load_config()).uploaded_bytes      # doctest: +SKIP
        48213
    """
    store = store or open_store(bucket_url(cfg, bucket), cfg.root)
    tracker = open_tracker(cfg)
    me = machine_id(cfg)
    result = PushResult(store.url, me)
    with _folder_lock(cfg):
        state = _load_state(cfg, store.url)
        listed, _ = _list_runs(store, f"{RUNS_PREFIX}{me}/")
        names: dict[str, str] = {}
        try:
            for run in tracker.all_runs(tracker.experiment_ids(all_experiments)):
                if TAG_ORIGIN_RUN in run.data.tags:
                    result.imported_skipped += 1
                    continue
                run_id = run.info.run_id
                fp = fingerprint(tracker, run)
                listing = listed.get(f"{me}/{run_id}") or _Listing()
                pushed = _still_there(state.get(run_id), listing)
                if pushed is not None and pushed["fp"] == fp and not full:
                    result.unchanged += 1
                    continue
                exp_id = run.info.experiment_id
                names[exp_id] = names.get(exp_id) or tracker.experiment_name(exp_id)
                state[run_id], sent, points = _push_run(tracker, store, run, me, names[exp_id], pushed, listing)
                state[run_id]["fp"] = fp
                if sent:
                    result.uploaded.append(run_id)
                    result.uploaded_bytes += sent
                    result.points_uploaded += points
                else:
                    result.unchanged += 1
        finally:
            _save_state(cfg, store.url, state)
    return result


def _still_there(pushed: dict[str, Any] | None, listing: _Listing) -> dict[str, Any] | None:
    """The run's push state, if the bucket still holds what it says was pushed (else: push it afresh)."""
    if pushed is None or listing.meta_md5 != pushed.get("meta_md5"):
        return None
    if any(name not in listing.chunks for name in pushed.get("chunks", [])):
        return None
    return pushed


def _push_run(tracker: Tracker, store: ObjectStore, run: Run, me: str, experiment: str,
              pushed: dict[str, Any] | None, listing: _Listing) -> tuple[dict[str, Any], int, int]:
    """Upload a changed run's new points and meta.json; returns (its new push state, bytes sent, points sent)."""
    info = run.info
    prefix = f"{RUNS_PREFIX}{me}/{info.run_id}/"
    pushed = pushed or {"chunks": [], "points": {}}
    chunks = list(pushed["chunks"])
    counts: dict[str, list[Any]] = {}
    new: dict[str, list[Point]] = {}
    for key in sorted(tracker.latest_points(run)):
        history = _by_time(tracker.metric_history(info.run_id, key))
        count, digest = pushed["points"].get(key, (0, ""))
        if count and (len(history) < count or _digest(history[:count]) != digest):
            count = 0  # the pushed prefix changed: upload the whole history once more (pull deduplicates)
        if len(history) > count:
            new[key] = history[count:]
        counts[key] = [len(history), _digest(history)]
    sent = points = 0
    seq = listing.next_seq
    for part in _split(new, CHUNK_POINTS):
        data = encode({"format": CHUNK_FORMAT, "metrics": part})
        name = f"m-{seq:06d}-{hashlib.md5(data).hexdigest()[:8]}.json"
        store.put_bytes(prefix + name, data)
        chunks.append(name)
        seq += 1
        sent += len(data)
        points += sum(len(v) for v in part.values())
    meta = encode({
        "format": BUNDLE_FORMAT,
        "origin": {"machine": me, "run_id": info.run_id, "experiment": experiment},
        "run": {"name": info.run_name, "status": info.status, "start_time": info.start_time,
                "end_time": info.end_time, "artifact_uri": info.artifact_uri},
        "params": dict(sorted(run.data.params.items())),
        "tags": dict(sorted(run.data.tags.items())),
        "chunks": chunks,
        "points": {k: c[0] for k, c in counts.items()},
    })
    md5 = md5_b64(meta)
    if md5 != listing.meta_md5:
        store.put_bytes(prefix + META, meta)
        sent += len(meta)
    return {"meta_md5": md5, "chunks": chunks, "points": counts}, sent, points


def _split(new: dict[str, list[Point]], size: int) -> Iterator[dict[str, list[Point]]]:
    """The new points as chunks of at most ``size`` points (keys in order)."""
    part: dict[str, list[Point]] = {}
    room = size
    for key, points in new.items():
        while points:
            part.setdefault(key, []).extend(points[:room])
            points, room = points[room:], room - len(points[:room])
            if room == 0:
                yield part
                part, room = {}, size
    if part:
        yield part


# ---- pull -----------------------------------------------------------------------------------------------------


def _imported(tracker: Tracker) -> dict[str, Run]:
    """Local runs imported by pull, by origin run id."""
    ids = tracker.experiment_ids(all_experiments=True)
    runs = tracker.all_runs(ids, f"tags.`{TAG_ORIGIN_RUN}` LIKE '%'")
    return {r.data.tags[TAG_ORIGIN_RUN]: r for r in runs}


@dataclass
class _Remote:
    """One other machine's run in the bucket: new format (``meta_key``) or a first-format bundle (``old_key``)."""

    machine: str
    run_id: str
    md5: str
    meta_key: str | None = None
    old_key: str | None = None


def _remote_runs(store: ObjectStore) -> list[_Remote]:
    runs, old = _list_runs(store, RUNS_PREFIX)
    out = []
    for where, listing in runs.items():
        if listing.meta_md5 is not None:
            machine, run_id = where.split("/")
            out.append(_Remote(machine, run_id, listing.meta_md5, meta_key=f"{RUNS_PREFIX}{where}/{META}"))
    seen = {r.run_id for r in out}
    for where, obj in old.items():
        machine, run_id = where.split("/")
        if run_id not in seen:  # a run pushed again in the new format is read from there
            out.append(_Remote(machine, run_id, obj.md5, old_key=obj.key))
    return sorted(out, key=lambda r: (r.machine, r.run_id))


def pull(cfg: KopsConfig, bucket: str | None = None, store: ObjectStore | None = None,
         progress: Progress | None = None) -> PullResult:
    """Import other machines' runs into the local store in bulk; idempotent, and grown runs are updated in place.

    ``progress(done, total)`` is called after each run that needed importing.

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
    todo = []
    for remote in _remote_runs(store):
        existing = local.get(remote.run_id)
        if remote.machine == me:
            result.own += 1
        elif existing is not None and existing.data.tags.get(TAG_ORIGIN_MD5) == remote.md5:
            result.unchanged += 1
        elif existing is None and tracker.exists(remote.run_id):
            result.own += 1  # our own run under an older machine id
        else:
            todo.append((remote, existing))
    touched: list[tuple[str, dict[str, str], dict[str, Any], dict[str, str]]] = []
    for done, (remote, existing) in enumerate(todo, 1):
        bundle, points, done_tag = _fetch(store, remote, existing)
        if existing is None:
            local_id = tracker.create_imported_run(
                tracker.experiment_for(bundle["origin"]["experiment"]), bundle["run"]["name"],
                bundle["run"]["start_time"], _desired_tags(bundle, {}))
            mapping[remote.run_id] = local_id
            result.created.append(local_id)
            result.points_added += tracker.log_bulk(local_id, _flat(points), params=bundle["params"])
        else:
            local_id = existing.info.run_id
            result.updated.append(local_id)
            result.points_added += _merge_run(tracker, existing, bundle, points)
        _set_status(tracker, local_id, existing, bundle)
        current = existing.data.tags if existing is not None else _desired_tags(bundle, {})
        touched.append((local_id, current, bundle, {TAG_ORIGIN_MD5: remote.md5, **done_tag}))
        if progress is not None:
            progress(done, len(todo))
    for local_id, current, bundle, marks in touched:  # last: parent ids are remapped once all have local ids
        tags = {**_desired_tags(bundle, mapping), **marks}
        changed = {k: v for k, v in tags.items() if current.get(k) != v}
        if changed:
            tracker.set_tags(local_id, changed)
    return result


def _fetch(store: ObjectStore, remote: _Remote, existing: Run | None
           ) -> tuple[dict[str, Any], dict[str, list[Point]], dict[str, str]]:
    """The run's bundle (meta), the metric points not imported yet, and the tag recording what was imported."""
    if remote.old_key is not None:
        bundle = json.loads(store.get_bytes(remote.old_key))
        return bundle, {k: [tuple(p) for p in v] for k, v in bundle["metrics"].items()}, {}
    bundle = json.loads(store.get_bytes(str(remote.meta_key)))
    chunks = list(bundle["chunks"])
    have = (existing.data.tags.get(TAG_ORIGIN_CHUNKS, "") if existing is not None else "").split(":", 1)
    start = 0
    if len(have) == 2 and have[0].isdigit() and 0 < int(have[0]) <= len(chunks) and chunks[int(have[0]) - 1] == have[1]:
        start = int(have[0])
    points: dict[str, list[Point]] = {}
    prefix = str(remote.meta_key)[: -len(META)]
    for name in chunks[start:]:
        for key, pts in json.loads(store.get_bytes(prefix + name))["metrics"].items():
            points.setdefault(key, []).extend(tuple(p) for p in pts)
    return bundle, points, ({TAG_ORIGIN_CHUNKS: f"{len(chunks)}:{chunks[-1]}"} if chunks else {})


def _flat(points: dict[str, list[Point]], have: dict[str, set[Point]] | None = None
          ) -> list[tuple[str, int, int, float]]:
    """(key, step, timestamp, value) of every point not in ``have``, each once."""
    out = []
    for key, pts in points.items():
        seen = set((have or {}).get(key, ()))
        for p in pts:
            if p not in seen:
                seen.add(p)
                out.append((key, p[0], p[1], p[2]))
    return out


def _merge_run(tracker: Tracker, run: Run, bundle: dict[str, Any], points: dict[str, list[Point]]) -> int:
    """Bring an imported run up to the bundle: new params and the metric points it lacks. Returns points added."""
    run_id = run.info.run_id
    have = {key: set(tracker.metric_history(run_id, key)) for key in points if key in run.data.metrics}
    params = {k: v for k, v in bundle["params"].items() if k not in run.data.params}
    return tracker.log_bulk(run_id, _flat(points, have), params=params)


def _set_status(tracker: Tracker, run_id: str, existing: Run | None, bundle: dict[str, Any]) -> None:
    status, end_time = bundle["run"]["status"], bundle["run"]["end_time"]
    current = (existing.info.status, existing.info.end_time) if existing is not None else ("RUNNING", None)
    if status != current[0] or (status in TERMINAL and end_time != current[1]):
        tracker.set_status(run_id, status, end_time)


def _desired_tags(bundle: dict[str, Any], mapping: dict[str, str]) -> dict[str, str]:
    tags = dict(bundle["tags"])
    if tags.get(TAG_PARENT) in mapping:
        tags[TAG_PARENT] = mapping[tags[TAG_PARENT]]
    origin = bundle["origin"]
    tags.update({TAG_ORIGIN_RUN: origin["run_id"], TAG_ORIGIN_MACHINE: origin["machine"]})
    if bundle["run"].get("artifact_uri"):
        tags[TAG_ORIGIN_ARTIFACTS] = bundle["run"]["artifact_uri"]
    return tags


def pull_if_configured(cfg: KopsConfig) -> PullResult | None:
    """`kops sync pull` when a bucket is configured (``KOPS_BUCKET`` or ``storage.bucket``), else nothing."""
    if not (os.environ.get(ENV_BUCKET) or cfg.storage.bucket):
        return None
    return pull(cfg)


def bundles(cfg: KopsConfig, bucket: str | None = None, store: ObjectStore | None = None) -> list[dict[str, Any]]:
    """What the bucket holds: one row per run (machine, run id, bytes of its meta and chunks, format)."""
    store = store or open_store(bucket_url(cfg, bucket), cfg.root)
    runs, old = _list_runs(store, RUNS_PREFIX)
    rows = []
    for where, listing in runs.items():
        machine, run_id = where.split("/")
        rows.append({"machine": machine, "run_id": run_id, "bytes": listing.meta_size + sum(listing.chunks.values()),
                     "format": 2,
                     "chunks": len(listing.chunks)})
    seen = {(r["machine"], r["run_id"]) for r in rows}
    for where, obj in old.items():
        machine, run_id = where.split("/")
        if (machine, run_id) not in seen:
            rows.append({"machine": machine, "run_id": run_id, "bytes": obj.size, "format": 1, "chunks": 0})
    return sorted(rows, key=lambda r: (r["machine"], r["run_id"]))


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
