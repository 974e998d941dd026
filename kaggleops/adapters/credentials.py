"""One lookup chain for every credential kops needs: argument > environment variable > file > notebook secret store.

The notebook secret stores are Kaggle's "Secrets" add-on (``kaggle_secrets.UserSecretsClient``) and Colab's
``google.colab.userdata``, each used only where it is importable. Values never reach logs, params, tags,
datasets or kernels: :class:`Secret` hides its value in ``repr``/``str``, and only names and sources are reported.

Kaggle: ``KAGGLE_USERNAME`` / ``KAGGLE_KEY``, file ``kaggle.json`` in ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle``.
Tracking server: ``MLFLOW_TRACKING_URI`` (not a secret, but notebooks keep it there too),
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN`` (MLflow
itself also reads ``~/.mlflow/credentials``, its own file); the same names in a notebook secret store.

Example:
    >>> apply_tracking_credentials()  # on Colab: copies MLFLOW_TRACKING_* from userdata into the env  # doctest: +SKIP
    ['MLFLOW_TRACKING_TOKEN']
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

ENV_KAGGLE_USERNAME = "KAGGLE_USERNAME"
ENV_KAGGLE_KEY = "KAGGLE_KEY"
ENV_KAGGLE_CONFIG_DIR = "KAGGLE_CONFIG_DIR"
KAGGLE_FILE = "kaggle.json"
TRACKING_VARS: tuple[str, ...] = (
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "KOPS_SWEEP_STORAGE")  # the last: `kops sweep`'s study storage URL (adapters/studies.py), same chain

_cache: dict[str, str | None] = {}


@dataclass(frozen=True)
class Secret:
    """A credential value and where it came from; ``repr``/``str`` never show the value."""

    name: str
    value: str
    source: str

    def __repr__(self) -> str:
        return f"Secret(name={self.name!r}, source={self.source!r}, value='***')"

    __str__ = __repr__


def clear_cache() -> None:
    """Forget notebook-secret lookups (tests; after attaching a secret in a running notebook)."""
    _cache.clear()


def _kaggle_secret(name: str) -> str | None:
    try:
        module = importlib.import_module("kaggle_secrets")
        return module.UserSecretsClient().get_secret(name) or None
    except Exception:  # noqa: BLE001 - absent module, secret not attached, add-on off: all mean "not here"
        return None


def _colab_secret(name: str) -> str | None:
    try:
        module = importlib.import_module("google.colab.userdata")
        return module.get(name) or None
    except Exception:  # noqa: BLE001 - not on Colab, secret missing, notebook access not granted
        return None


def notebook_secret(name: str) -> Secret | None:
    """``name`` from Kaggle's secrets add-on, else Colab's userdata, else None (lookups are cached)."""
    for source, getter in (("kaggle-secrets", _kaggle_secret), ("colab-userdata", _colab_secret)):
        key = f"{source}:{name}"
        if key not in _cache:
            _cache[key] = getter(name)
        if _cache[key]:
            return Secret(name, str(_cache[key]), source)
    return None


def lookup(name: str, argument: str | None = None, file_value: str | None = None) -> Secret | None:
    """The first of: ``argument``, env var ``name``, ``file_value``, a notebook secret called ``name``."""
    if argument:
        return Secret(name, argument, "argument")
    if os.environ.get(name):
        return Secret(name, os.environ[name], "env")
    if file_value:
        return Secret(name, file_value, "file")
    return notebook_secret(name)


def kaggle_json_path() -> Path:
    """Where the official client reads ``kaggle.json``: ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle``."""
    folder = os.environ.get(ENV_KAGGLE_CONFIG_DIR) or str(Path.home() / ".kaggle")
    return Path(folder) / KAGGLE_FILE


def _kaggle_file() -> dict[str, str]:
    try:
        data = json.loads(kaggle_json_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if k in ("username", "key")} if isinstance(data, dict) else {}


def kaggle_credentials(username: str | None = None, key: str | None = None) -> tuple[Secret, Secret] | None:
    """Kaggle ``(username, key)`` through the chain, or None when either is missing."""
    file = _kaggle_file()
    user = lookup(ENV_KAGGLE_USERNAME, username, file.get("username"))
    secret = lookup(ENV_KAGGLE_KEY, key, file.get("key"))
    return (user, secret) if user and secret else None


def _export(secrets: list[Secret]) -> list[str]:
    """Put notebook-store secrets into the environment (where the clients read them); names only are returned."""
    out = []
    for s in secrets:
        if s.source in ("kaggle-secrets", "colab-userdata") and not os.environ.get(s.name):
            os.environ[s.name] = s.value
            out.append(s.name)
    return out


def apply_kaggle_credentials() -> list[str]:
    """Export Kaggle credentials found only in a notebook secret store; returns the variable names set."""
    found = kaggle_credentials()
    return _export(list(found)) if found else []


def apply_tracking_credentials() -> list[str]:
    """Export ``MLFLOW_TRACKING_*`` found only in a notebook secret store; returns the variable names set."""
    return _export([s for s in (lookup(name) for name in TRACKING_VARS) if s is not None])
