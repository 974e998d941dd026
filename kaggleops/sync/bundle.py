"""What a run looks like in the bucket: the bundle and chunk formats, the listing of ``runs/``, and the content
fingerprints that say whether a run changed (see :mod:`kaggleops.sync`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kaggleops.adapters.storage import ObjectInfo, ObjectStore
from kaggleops.adapters.tracking import Tracker

if TYPE_CHECKING:
    from kaggleops.adapters.tracking import RunRecord


BUNDLE_FORMAT = "kops.run-bundle/2"
BUNDLE_FORMAT_V1 = "kops.run-bundle/1"
CHUNK_FORMAT = "kops.metric-chunk/1"
RUNS_PREFIX = "runs/"
META = "meta.json"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
CHUNK_POINTS = 100_000
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CHUNK_NAME = re.compile(r"^m-(\d{6})-[0-9a-f]{8}\.json$")
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


def encode(obj: dict[str, Any]) -> bytes:
    """Deterministic bytes: the same content always encodes the same, so its MD5 says whether it changed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(tracker: Tracker, run: RunRecord) -> str:
    """What the store lists about a run without reading its history; a change here means the run changed."""
    facts = [run.status, run.start_time, run.end_time, run.name or None, run.artifact_uri,
             sorted(run.params.items()), sorted(run.tags.items()),
             sorted((k, *p) for k, p in run.latest.items())]
    return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()[:32]


def points_digest(points: list[Point]) -> str:
    return hashlib.sha256(json.dumps(points).encode()).hexdigest()[:32]


def by_time(points: list[Point]) -> list[Point]:
    return sorted(points, key=lambda p: (p[1], p[0], p[2]))


@dataclass
class Listing:
    """What the bucket holds under one run's prefix: meta.json's MD5 and the chunk objects."""

    meta_md5: str | None = None
    meta_size: int = 0
    chunks: dict[str, int] = field(default_factory=dict)  # name -> size

    @property
    def next_seq(self) -> int:
        seqs = [int(m.group(1)) for name in self.chunks if (m := CHUNK_NAME.match(name))]
        return max(seqs, default=0) + 1


def list_runs(store: ObjectStore, prefix: str) -> tuple[dict[str, Listing], dict[str, ObjectInfo]]:
    """New-format runs under ``prefix`` (``<machine>/<run>/…``) by ``machine/run``, and old-format bundles."""
    runs: dict[str, Listing] = {}
    old: dict[str, ObjectInfo] = {}
    for obj in store.list(prefix):
        parts = obj.key[len(RUNS_PREFIX):].split("/")
        if len(parts) == 2 and parts[1].endswith(".json") and RUN_ID.match(parts[1][:-5]):
            old[f"{parts[0]}/{parts[1][:-5]}"] = obj
        elif len(parts) == 3 and RUN_ID.match(parts[1]):
            entry = runs.setdefault(f"{parts[0]}/{parts[1]}", Listing())
            if parts[2] == META:
                entry.meta_md5, entry.meta_size = obj.md5, obj.size
            elif CHUNK_NAME.match(parts[2]):
                entry.chunks[parts[2]] = obj.size
    return runs, old


def split_points(new: dict[str, list[Point]], size: int) -> Iterator[dict[str, list[Point]]]:
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
