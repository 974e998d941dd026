"""``kops sync push``: this store's runs into the bucket, each under a prefix only it owns; cost follows the change.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from kaggleops.adapters.storage import ObjectStore, md5_b64, open_store
from kaggleops.adapters.tracking import Tracker, open_tracker
from kaggleops.schema import TAG_ORIGIN_RUN
from kaggleops.sync.bundle import (
    BUNDLE_FORMAT,
    CHUNK_FORMAT,
    CHUNK_POINTS,
    META,
    RUNS_PREFIX,
    Listing,
    Point,
    PushResult,
    by_time,
    encode,
    fingerprint,
    list_runs,
    points_digest,
    split_points,
)
from kaggleops.sync.state import bucket_url, folder_lock, load_state, machine_id, save_state

if TYPE_CHECKING:
    from kaggleops.adapters.tracking import RunRecord
    from kaggleops.config import KopsConfig


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
    with folder_lock(cfg):
        state = load_state(cfg, store.url)
        listed, _ = list_runs(store, f"{RUNS_PREFIX}{me}/")
        names: dict[str, str] = {}
        try:
            for run in tracker.all_runs(tracker.experiment_ids(all_experiments)):
                if TAG_ORIGIN_RUN in run.tags:
                    result.imported_skipped += 1
                    continue
                run_id = run.id
                fp = fingerprint(tracker, run)
                listing = listed.get(f"{me}/{run_id}") or Listing()
                pushed = _still_there(state.get(run_id), listing)
                if pushed is not None and pushed["fp"] == fp and not full:
                    result.unchanged += 1
                    continue
                exp_id = run.experiment_id
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
            save_state(cfg, store.url, state)
    return result


def _still_there(pushed: dict[str, Any] | None, listing: Listing) -> dict[str, Any] | None:
    """The run's push state, if the bucket still holds what it says was pushed (else: push it afresh)."""
    if pushed is None or listing.meta_md5 != pushed.get("meta_md5"):
        return None
    if any(name not in listing.chunks for name in pushed.get("chunks", [])):
        return None
    return pushed


def _push_run(tracker: Tracker, store: ObjectStore, run: RunRecord, me: str, experiment: str,
              pushed: dict[str, Any] | None, listing: Listing) -> tuple[dict[str, Any], int, int]:
    """Upload a changed run's new points and meta.json; returns (its new push state, bytes sent, points sent)."""
    prefix = f"{RUNS_PREFIX}{me}/{run.id}/"
    pushed = pushed or {"chunks": [], "points": {}}
    chunks = list(pushed["chunks"])
    counts: dict[str, list[Any]] = {}
    new: dict[str, list[Point]] = {}
    for key in sorted(run.latest):
        history = by_time(tracker.metric_history(run.id, key))
        count, digest = pushed["points"].get(key, (0, ""))
        if count and (len(history) < count or points_digest(history[:count]) != digest):
            count = 0  # the pushed prefix changed: upload the whole history once more (pull deduplicates)
        if len(history) > count:
            new[key] = history[count:]
        counts[key] = [len(history), points_digest(history)]
    sent = points = 0
    seq = listing.next_seq
    for part in split_points(new, CHUNK_POINTS):
        data = encode({"format": CHUNK_FORMAT, "metrics": part})
        name = f"m-{seq:06d}-{hashlib.md5(data).hexdigest()[:8]}.json"
        store.put_bytes(prefix + name, data)
        chunks.append(name)
        seq += 1
        sent += len(data)
        points += sum(len(v) for v in part.values())
    meta = encode({
        "format": BUNDLE_FORMAT,
        "origin": {"machine": me, "run_id": run.id, "experiment": experiment},
        "run": {"name": run.name or None, "status": run.status, "start_time": run.start_time,
                "end_time": run.end_time, "artifact_uri": run.artifact_uri},
        "params": dict(sorted(run.params.items())),
        "tags": dict(sorted(run.tags.items())),
        "chunks": chunks,
        "points": {k: c[0] for k, c in counts.items()},
    })
    md5 = md5_b64(meta)
    if md5 != listing.meta_md5:
        store.put_bytes(prefix + META, meta)
        sent += len(meta)
    return {"meta_md5": md5, "chunks": chunks, "points": counts}, sent, points
