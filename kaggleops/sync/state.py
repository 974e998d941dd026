"""This folder's side of sync: the bucket it uses, its machine id (``.kops/machine-id``), what it pushed last
(``.kops/sync-state.json``) and the lock that keeps two pushes from one folder apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from kaggleops.errors import ConfigError
from kaggleops.files import file_lock
from kaggleops.refs import slugify

if TYPE_CHECKING:
    from kaggleops.config import KopsConfig


ENV_BUCKET = "KOPS_BUCKET"
MACHINE_FILE = ".kops/machine-id"
STATE_FILE = ".kops/sync-state.json"
LOCK_FILE = ".kops/sync.lock"


def configured_bucket(cfg: KopsConfig) -> str | None:
    """``KOPS_BUCKET`` > kops.yaml ``storage.bucket`` (None: no bucket configured): THE one lookup of the bucket."""
    return os.environ.get(ENV_BUCKET) or cfg.storage.bucket


def bucket_url(cfg: KopsConfig, bucket: str | None = None) -> str:
    """The bucket to use: ``bucket`` argument > :func:`configured_bucket`; ConfigError naming the settings if none."""
    url = bucket or configured_bucket(cfg)
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


def folder_lock(cfg: KopsConfig) -> contextlib.AbstractContextManager[None]:
    """One push at a time from this folder (a background push and `kops sync push` share the state file)."""
    return file_lock(cfg.root / LOCK_FILE)


def load_state(cfg: KopsConfig, url: str) -> dict[str, Any]:
    path = cfg.root / STATE_FILE
    try:
        return dict(json.loads(path.read_text()).get(url, {}))
    except (OSError, ValueError):
        return {}


def save_state(cfg: KopsConfig, url: str, runs: dict[str, Any]) -> None:
    path = cfg.root / STATE_FILE
    try:
        everything = json.loads(path.read_text())
    except (OSError, ValueError):
        everything = {}
    everything[url] = runs
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(everything, sort_keys=True))
    os.replace(tmp, path)
