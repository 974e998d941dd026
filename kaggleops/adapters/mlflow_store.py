"""The tracking store itself: checked before use, locked while a new SQLite store is created, and MLflow's
exceptions translated into kops errors in one place (:func:`translate`, used by every call of the tracking adapter).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kaggleops.errors import DiskFull, RunNotFound, TrackingUnavailable, disk_full_detail, is_disk_full
from kaggleops.files import file_lock

NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def store_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """Held while a client opens a SQLite store: MLflow creates and migrates a new store's tables then, and two
    `kops train` starting at once in a new project raced in alembic ("table ... already exists") and one died."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri.removeprefix("sqlite:///"))
    return file_lock(db.with_name(f"{db.name}.lock"))


STORE_TRIES, STORE_WAIT_S, STORE_TIMEOUT_S = 3, 2.0, 4.0


def check_store(uri: str, tries: int = STORE_TRIES, wait_s: float = STORE_WAIT_S,
                timeout_s: float = STORE_TIMEOUT_S) -> None:
    """Fail in seconds, in one line, on a store no command could use: a server that does not answer (a few tries,
    each announced with its countdown), a SQLite file in a folder that is missing or read-only, a plain folder."""
    import sys
    import time
    import urllib.error
    import urllib.request

    fix = ("Point MLFLOW_TRACKING_URI / kops.yaml `tracking_uri` at a reachable store (unset both for the local "
           "sqlite:///mlflow.db)")
    if uri.startswith(("http://", "https://")):
        for attempt in range(1, tries + 1):
            try:
                urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()  # noqa: S310
                return
            except urllib.error.HTTPError:
                return  # it answers (a proxy or an auth layer may refuse /health): MLflow's calls will tell more
            except (OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
            if attempt < tries:
                print(f"kops: tracking server {uri} does not answer ({reason}); trying again in {wait_s:g} s "
                      f"({tries - attempt} tr{'y' if tries - attempt == 1 else 'ies'} left)", file=sys.stderr,
                      flush=True)
                time.sleep(wait_s)
        raise TrackingUnavailable(f"The tracking server {uri} does not answer ({reason}) after {tries} tries.",
                                  f"Start it, or: {fix}.")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise TrackingUnavailable(f"The tracking store {uri} is in a folder that does not exist ({folder}).",
                                      f"Create it, or: {fix}.")
        db = Path(uri.removeprefix("sqlite:///"))
        if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnavailable(f"The tracking store {uri} is read-only here (SQLite needs to write "
                                      f"{db if db.exists() else folder}).", f"Make it writable, or: {fix}.")
        return
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        raise TrackingUnavailable(f"The tracking store {uri!r} is a plain path: MLflow 3 no longer writes runs to a "
                                  "folder by default.", f"Use a SQLite file, e.g. sqlite:///{uri.rstrip('/')}/mlflow.db")


@contextmanager
def translate(what: str, uri: str, run_id: str | None = None) -> Iterator[None]:
    """MLflow's exceptions → kops errors: a missing run → RunNotFound; an unreachable or failing store →
    TrackingUnavailable naming the store (one line, no traceback). Anything else propagates."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as e:
        if is_disk_full(e):
            raise DiskFull(f"{what} failed: the disk is full ({disk_full_detail(e)}).",
                           f"Free space on the disk of the tracking store {uri}, then run the command again "
                           "(an interrupted training run resumes with `kops train --resume`).") from e
        if isinstance(e, OSError):  # connection refused/reset, DNS: requests' errors are OSErrors too
            raise TrackingUnavailable(f"{what}: the tracking store {uri} is unreachable ({type(e).__name__}).",
                                      "Check MLFLOW_TRACKING_URI / kops.yaml `tracking_uri` and that the server is "
                                      "up.") from e
        if run_id and e.error_code in NOT_FOUND_CODES:
            raise RunNotFound(run_id, uri) from None
        raise TrackingUnavailable(f"{what} failed on the tracking store {uri}: {str(e).splitlines()[0][:200]}",
                                  "Check MLFLOW_TRACKING_URI / kops.yaml `tracking_uri` and that the server is "
                                  "up.") from e
