"""``kops sync pull``: other machines' runs into this store in bulk, idempotently (``kops.origin_*`` tags).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kaggleops.adapters.storage import ObjectStore, open_store
from kaggleops.adapters.tracking import Tracker, open_tracker
from kaggleops.schema import (
    TAG_ORIGIN_ARTIFACTS,
    TAG_ORIGIN_CHUNKS,
    TAG_ORIGIN_MACHINE,
    TAG_ORIGIN_MD5,
    TAG_ORIGIN_RUN,
    TAG_PARENT,
)
from kaggleops.sync.bundle import META, RUNS_PREFIX, TERMINAL, Point, Progress, PullResult, list_runs
from kaggleops.sync.state import bucket_url, configured_bucket, machine_id

if TYPE_CHECKING:
    from kaggleops.adapters.tracking import RunRecord
    from kaggleops.config import KopsConfig


def _imported(tracker: Tracker) -> dict[str, RunRecord]:
    """Local runs imported by pull, by origin run id."""
    ids = tracker.experiment_ids(all_experiments=True)
    runs = tracker.all_runs(ids, f"tags.`{TAG_ORIGIN_RUN}` LIKE '%'")
    return {r.tags[TAG_ORIGIN_RUN]: r for r in runs}


@dataclass
class _Remote:
    """One other machine's run in the bucket: new format (``meta_key``) or a first-format bundle (``old_key``)."""

    machine: str
    run_id: str
    md5: str
    meta_key: str | None = None
    old_key: str | None = None


def _remote_runs(store: ObjectStore) -> list[_Remote]:
    runs, old = list_runs(store, RUNS_PREFIX)
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
    mapping = {origin: run.id for origin, run in local.items()}
    todo = []
    for remote in _remote_runs(store):
        existing = local.get(remote.run_id)
        if remote.machine == me:
            result.own += 1
        elif existing is not None and existing.tags.get(TAG_ORIGIN_MD5) == remote.md5:
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
            local_id = existing.id
            result.updated.append(local_id)
            result.points_added += _merge_run(tracker, existing, bundle, points)
        _set_status(tracker, local_id, existing, bundle)
        current = existing.tags if existing is not None else _desired_tags(bundle, {})
        touched.append((local_id, current, bundle, {TAG_ORIGIN_MD5: remote.md5, **done_tag}))
        if progress is not None:
            progress(done, len(todo))
    for local_id, current, bundle, marks in touched:  # last: parent ids are remapped once all have local ids
        tags = {**_desired_tags(bundle, mapping), **marks}
        changed = {k: v for k, v in tags.items() if current.get(k) != v}
        if changed:
            tracker.set_tags(local_id, changed)
    return result


def _fetch(store: ObjectStore, remote: _Remote, existing: RunRecord | None
           ) -> tuple[dict[str, Any], dict[str, list[Point]], dict[str, str]]:
    """The run's bundle (meta), the metric points not imported yet, and the tag recording what was imported."""
    if remote.old_key is not None:
        bundle = json.loads(store.get_bytes(remote.old_key))
        return bundle, {k: [tuple(p) for p in v] for k, v in bundle["metrics"].items()}, {}
    bundle = json.loads(store.get_bytes(str(remote.meta_key)))
    chunks = list(bundle["chunks"])
    have = (existing.tags.get(TAG_ORIGIN_CHUNKS, "") if existing is not None else "").split(":", 1)
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


def _merge_run(tracker: Tracker, run: RunRecord, bundle: dict[str, Any], points: dict[str, list[Point]]) -> int:
    """Bring an imported run up to the bundle: new params and the metric points it lacks. Returns points added."""
    run_id = run.id
    have = {key: set(tracker.metric_history(run_id, key)) for key in points if key in run.metrics}
    params = {k: v for k, v in bundle["params"].items() if k not in run.params}
    return tracker.log_bulk(run_id, _flat(points, have), params=params)


def _set_status(tracker: Tracker, run_id: str, existing: RunRecord | None, bundle: dict[str, Any]) -> None:
    status, end_time = bundle["run"]["status"], bundle["run"]["end_time"]
    current = (existing.status, existing.end_time) if existing is not None else ("RUNNING", None)
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
    if not configured_bucket(cfg):
        return None
    return pull(cfg)


def bundles(cfg: KopsConfig, bucket: str | None = None, store: ObjectStore | None = None) -> list[dict[str, Any]]:
    """What the bucket holds: one row per run (machine, run id, bytes of its meta and chunks, format)."""
    store = store or open_store(bucket_url(cfg, bucket), cfg.root)
    runs, old = list_runs(store, RUNS_PREFIX)
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
