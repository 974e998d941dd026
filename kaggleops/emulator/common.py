"""Small shared types and helpers for the Kaggle API emulator."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path


class ApiError(Exception):
    """An RPC failure answered as an HTTP status plus ``{"code": N, "message": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Redirect:
    """An RPC answer that is a ``302`` to ``location`` (download RPCs)."""

    location: str


@dataclass
class RpcContext:
    """What a handler knows about the call: the authenticated user and the public base URL."""

    user: str
    base_url: str
    extras: dict[str, object] = field(default_factory=dict)


def utc_now() -> datetime:
    """Return the current time as a naive UTC datetime (what kagglesdk expects)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(dt: datetime | None) -> str | None:
    """Format a naive UTC datetime the way kagglesdk serialises datetimes."""
    if dt is None:
        return None
    return dt.isoformat(timespec="milliseconds") + "Z"


def http_date(ts: float) -> str:
    """RFC-1123 GMT date for ``Last-Modified`` (the client parses it with strptime)."""
    return email.utils.formatdate(ts, usegmt=True)


def safe_name(name: str) -> str:
    """Validate a relative file name (may contain ``/``), refusing absolute paths and ``..``."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise ApiError(400, f"invalid file name: {name!r}")
    return "/".join(parts)


def within(base: Path, rel: str) -> Path:
    """Join ``rel`` onto ``base`` and make sure the result stays inside ``base``."""
    target = (base / safe_name(rel)).resolve()
    if base.resolve() not in target.parents and target != base.resolve():
        raise ApiError(404, "file not found")
    return target


def parse_version_label(label: object) -> int | None:
    """Turn a kernel ``versionLabel`` ("v3", "3", None) into an int, or None for latest."""
    if label in (None, ""):
        return None
    text = str(label).strip().lower().lstrip("v")
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"invalid versionLabel: {label!r}") from None


def split_ref(ref: str, default_owner: str) -> tuple[str, str]:
    """Split "owner/slug" (or "slug", owned by ``default_owner``) into its parts."""
    parts = [p for p in str(ref).strip("/").split("/") if p]
    if len(parts) == 3 and parts[0] in ("datasets", "code"):
        parts = parts[1:]
    if len(parts) == 1:
        return default_owner, parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ApiError(400, f"invalid reference: {ref!r}")


@dataclass
class EmulatorConfig:
    """Tunable behaviour of the emulator (see ``Emulator.__init__``)."""

    kernel_timeout_s: float = 600.0
    score_delay_polls: int = 1
    daily_submission_limit: int = 5
    dataset_processing_s: float = 0.0
    input_layout: str = "current"  # "current" (competitions/, datasets/, models/) or "legacy" (<slug>/)
    gpu_quota_hours: float = 30.0  # weekly accelerator quota answered by GetAcceleratorQuotaStatistics
    tpu_quota_hours: float = 20.0
    quota_time_scale: float = 1.0  # seconds of quota one second of an emulated session costs
    # evaluation-API reruns (rerun.py): the gateway's startup limit and per-call timeout (None: the package's own)
    evaluation_startup_s: float | None = None
    evaluation_timeout_s: float | None = None


def page_of(items: list, page_size: object, page_token: object, default_size: int = 20) -> tuple[list, str]:
    """Slice ``items`` by an offset-style ``pageToken``; returns (page, nextPageToken or "")."""
    size = int(page_size) if page_size else default_size
    try:
        start = int(page_token) if page_token else 0
    except (TypeError, ValueError):
        raise ApiError(400, f"invalid pageToken: {page_token!r}") from None
    chunk = items[start:start + size]
    nxt = str(start + size) if start + size < len(items) else ""
    return chunk, nxt
