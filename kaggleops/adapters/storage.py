"""Object storage behind one small Protocol: a local folder or ``gs://bucket/prefix``.

Used for sync bundles (kaggleops.sync) and anything else kops throws into a bucket. Keys are ``/``-separated
paths relative to the store's root. ``open_store(url)`` is the one place that picks the implementation.

GCS credentials, tried in this order (the first that works wins):
  1. ``STORAGE_EMULATOR_HOST`` set (a loopback emulator): anonymous credentials, no project.
  2. Kaggle's "Google Cloud SDK" add-on (``kaggle_gcp``, attached to the notebook with GCS enabled).
  3. Google's default chain: ``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``,
     the metadata server of a GCE/Colab VM.
  4. On Colab: ``google.colab.auth.authenticate_user()`` (asks once in the browser), then the default chain.

google-cloud-storage is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from kaggleops.errors import StorageCredentialsMissing, StorageError

ENV_EMULATOR = "STORAGE_EMULATOR_HOST"
ENV_PROJECT = "GOOGLE_CLOUD_PROJECT"
GCS_SCHEME = "gs://"
HTTP_TIMEOUT_S = 60
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the store root), size in bytes and base64 MD5 (as GCS reports)."""

    key: str
    size: int
    md5: str


def md5_b64(data: bytes) -> str:
    """The base64 MD5 digest of ``data``, the form GCS reports in ``md5Hash``."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


@runtime_checkable
class ObjectStore(Protocol):
    """What kops needs from a bucket: bytes and files in and out, listing by prefix, existence."""

    url: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_file(self, key: str, path: Path) -> Path: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def exists(self, key: str) -> bool: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"Bad object key {key!r}: use a relative path like 'runs/abc.json'.")
    return key


class LocalStore:
    """A folder used as a bucket (tests, a shared network drive, a mounted Google Drive)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: a reader never sees a half-written object."""
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:  # read-only, full, gone: one line naming the folder (nothing half-written is left)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageError(f"Cannot write {key} into the bucket folder {self.url}: {e.strerror or e}.",
                               "Point storage.bucket in kops.yaml at a folder you can write to.") from None

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise StorageError(f"No object {key} in {self.url}.", "List what is there with: kops sync status")
        return path.read_bytes()

    def put_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, Path(path).read_bytes())

    def get_file(self, key: str, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.get_bytes(key))
        return path

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and not path.name.startswith(".") and key.startswith(prefix):
                data = path.read_bytes()
                out.append(ObjectInfo(key, len(data), md5_b64(data)))
        return out

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class GcsStore:
    """``gs://bucket/prefix`` through google-cloud-storage; every call goes through one error translator."""

    def __init__(self, url: str, client: Any | None = None) -> None:
        if not url.startswith(GCS_SCHEME) or not url[len(GCS_SCHEME):].strip("/"):
            raise StorageError(f"Not a bucket URL: {url!r}.", "Use gs://BUCKET or gs://BUCKET/PREFIX.")
        bucket, _, prefix = url[len(GCS_SCHEME):].strip("/").partition("/")
        self.url = f"{GCS_SCHEME}{bucket}" + (f"/{prefix}" if prefix else "")
        self.prefix = f"{prefix}/" if prefix else ""
        self._client = client
        self._bucket_name = bucket
        self._bucket: Any = None

    @property
    def bucket(self) -> Any:
        if self._bucket is None:
            self._client = self._client or gcs_client()
            self._bucket = self._client.bucket(self._bucket_name)
        return self._bucket

    def _blob(self, key: str) -> Any:
        return self.bucket.blob(self.prefix + _check_key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"write {key}", lambda: self._blob(key).upload_from_string(
            data, content_type="application/octet-stream", timeout=HTTP_TIMEOUT_S))

    def get_bytes(self, key: str) -> bytes:
        return self._call(f"read {key}", lambda: self._blob(key).download_as_bytes(timeout=HTTP_TIMEOUT_S))

    def put_file(self, key: str, path: Path) -> None:
        self._call(f"write {key}", lambda: self._blob(key).upload_from_filename(str(path), timeout=HTTP_TIMEOUT_S))

    def get_file(self, key: str, path: Path) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._call(f"read {key}", lambda: self._blob(key).download_to_filename(str(path), timeout=HTTP_TIMEOUT_S))
        return Path(path)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        def run() -> list[ObjectInfo]:
            blobs = self.bucket.list_blobs(prefix=self.prefix + prefix, timeout=HTTP_TIMEOUT_S)
            return [ObjectInfo(b.name[len(self.prefix):], int(b.size or 0), b.md5_hash or "") for b in blobs]

        return self._call(f"list {prefix or '/'}", run)

    def exists(self, key: str) -> bool:
        return self._call(f"check {key}", lambda: self._blob(key).exists(timeout=HTTP_TIMEOUT_S))

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """The one place google-cloud-storage errors become StorageErrors (the client retries transient ones)."""
        from google.api_core import exceptions as gexc

        try:
            return fn()
        except gexc.NotFound:
            if not self._call_exists():
                raise StorageError(f"Bucket gs://{self._bucket_name} not found.",
                                   f"Create it with: gcloud storage buckets create gs://{self._bucket_name}") from None
            raise StorageError(f"No object {what.split(' ', 1)[1]} in {self.url}.",
                               "List what is there with: kops sync status") from None
        except (gexc.Forbidden, gexc.Unauthorized) as e:
            raise StorageError(f"Access to {self.url} denied ({what}): {e.message}.",
                               "Grant your account Storage Object Admin on the bucket, or use other credentials "
                               "(GOOGLE_APPLICATION_CREDENTIALS).") from None
        except gexc.GoogleAPIError as e:
            raise StorageError(f"Cannot {what} in {self.url}: {e}.", "Check the bucket URL and network.") from None

    def _call_exists(self) -> bool:
        try:
            return bool(self.bucket.exists(timeout=HTTP_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - only deciding which message to show
            return True


def _credential_sources() -> Iterator[tuple[str, Callable[[], tuple[Any, str | None]]]]:
    """(description, loader) pairs in lookup order; a loader returns (credentials, project) or raises."""

    def kaggle_addon() -> tuple[Any, str | None]:
        from kaggle_gcp import KaggleKernelCredentials, get_integrations  # only inside Kaggle notebooks
        from kaggle_secrets import GcpTarget

        if not get_integrations().has_gcs():
            raise RuntimeError("the add-on is attached without Cloud Storage")
        return KaggleKernelCredentials(target=GcpTarget.GCS), os.environ.get(ENV_PROJECT)

    def default_chain() -> tuple[Any, str | None]:
        import google.auth

        return google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])

    def colab() -> tuple[Any, str | None]:
        from google.colab import auth  # only inside Colab

        auth.authenticate_user()
        return default_chain()

    yield "Kaggle's Google Cloud SDK add-on (Add-ons → Google Cloud SDK, with Cloud Storage)", kaggle_addon
    yield "Google's default chain (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, " \
          "the VM metadata server)", default_chain
    yield "Colab's google.colab.auth.authenticate_user()", colab


def gcs_client() -> Any:
    """A google-cloud-storage Client: the emulator when STORAGE_EMULATOR_HOST is set, else the credential chain.

    Raises StorageCredentialsMissing naming every source tried.
    """
    try:
        from google.cloud import storage
    except ImportError:
        raise StorageError("google-cloud-storage is not installed.",
                           "Install it with: pip install google-cloud-storage") from None
    if os.environ.get(ENV_EMULATOR):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get(ENV_PROJECT, "kops-emulator"),
                              credentials=AnonymousCredentials())
    tried = []
    for description, load in _credential_sources():
        try:
            credentials, project = load()
        except Exception as e:  # noqa: BLE001 - each failure is reported in the final message
            tried.append(f"{description}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        return storage.Client(project=project or os.environ.get(ENV_PROJECT), credentials=credentials)
    raise StorageCredentialsMissing(
        "No Google Cloud credentials for gs://. Tried: " + "; ".join(tried) + ".",
        "Run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
        "key file, or attach the Google Cloud SDK add-on (Kaggle).")


def open_store(url: str, base: Path | None = None) -> ObjectStore:
    """The store for ``url``: ``gs://bucket[/prefix]`` or a local folder (relative paths resolve against ``base``).

    Example:
        >>> open_store("gs://my-team-bucket/tse").url      # doctest: +SKIP
        'gs://my-team-bucket/tse'
    """
    if url.startswith(GCS_SCHEME):
        return GcsStore(url)
    if "://" in url and not url.startswith("file://"):
        raise StorageError(f"Unsupported storage URL {url!r}.", "Use gs://BUCKET/PREFIX or a local folder.")
    path = Path(url[len("file://"):] if url.startswith("file://") else url).expanduser()
    return LocalStore(path if path.is_absolute() or base is None else base / path)
