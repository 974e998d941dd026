"""The Kaggle adapter's transport: the official client connected, timed out, retried and translated.

:class:`KaggleTransport` is the base of :class:`kaggleops.adapters.kaggle.Kaggle` (which holds the resource calls).

- The client is imported lazily, after the environment is prepared, because ``import kaggle`` authenticates
  (and without credentials prints help and raises SystemExit, which becomes :class:`CredentialsMissing`).
- ``KOPS_KAGGLE_ENDPOINT=http://127.0.0.1:PORT`` (or ``kaggle_endpoint:`` in kops.yaml) aims the client at a
  loopback emulator: the client's own LOCALHOST environment selector (``--local``), with the base URL set on
  each HTTP client this instance builds, so two instances in one process can talk to two endpoints (the SDK's
  module-wide endpoint table is never written).
- Timeouts: kagglesdk sends every request without one, so each client session built here gets an adapter with
  a default (connect, read) timeout, and so do the client's upload sessions (``KOPS_KAGGLE_TIMEOUT`` seconds).
- Every call goes through :meth:`KaggleTransport._call`, once: stdout chatter captured, 429 (honouring Retry-After),
  5xx, connection errors and timeouts retried with exponential backoff and jitter, errors translated into
  KopsError subclasses carrying the resource. A non-idempotent call (create dataset / version, push kernel,
  submit) is never blindly retried: after a failure its ``verify`` callback checks whether the attempt took
  effect on Kaggle, and only if it did not is the call repeated.
"""

from __future__ import annotations

import contextlib
import email.utils
import importlib
import io
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from kaggleops.errors import (
    CredentialsMissing,
    DatasetNotFound,
    DatasetProcessing,
    KaggleError,
    KernelError,
    ModelNotFound,
    PublishError,
    QuotaExceeded,
    RulesNotAccepted,
    TimedOut,
)
from kaggleops.refs import KAGGLE_WEB, CompetitionRef, DatasetRef, KernelRef, ModelRef

if TYPE_CHECKING:
    from kaggleops.config import KopsConfig

Resource = DatasetRef | KernelRef | CompetitionRef | ModelRef | None
T = TypeVar("T")
ENV_TIMEOUT = "KOPS_KAGGLE_TIMEOUT"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 5
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0  # a longer Retry-After (a daily quota) is reported, not slept through
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
DEFAULT_POLL_S = 2.0
CREDENTIAL_VARS = "KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY"


def credentials_missing() -> CredentialsMissing:
    """The one-line error for absent credentials, naming every place the client looked."""
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR") or str(Path.home() / ".kaggle")
    return CredentialsMissing(
        f"No Kaggle credentials found (looked in {CREDENTIAL_VARS}, {Path(config_dir) / 'kaggle.json'}, "
        f"{Path.home() / '.kaggle' / 'access_token'}).",
        "Set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json from https://www.kaggle.com/settings there.",
    )


def timeout_adapter(timeout: tuple[float, float]) -> type:
    """An HTTPAdapter subclass that applies ``timeout`` to every request sent without one."""
    from requests.adapters import HTTPAdapter

    class TimeoutAdapter(HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return super().send(request, **kwargs)

    return TimeoutAdapter


def http_error(what: str, status: int, message: str, response: Any, resource: Resource,
               web: str = KAGGLE_WEB) -> KaggleError:
    """Map an HTTP status (and the resource it concerned) to the KopsError a user can act on; URLs on ``web``
    (the site the client talks to: kaggle.com, or an emulator)."""
    if status == 401:
        return CredentialsMissing(f"{what}: Kaggle rejected the credentials (401).",
                                  "Check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json (a new key: "
                                  "https://www.kaggle.com/settings).")
    if status == 403 and isinstance(resource, CompetitionRef):
        return RulesNotAccepted(f"{what}: Kaggle refused access to competition {resource} (403).",
                                f"Accept the rules at {resource.rules_url(web)} and retry.")
    if status == 403 and isinstance(resource, DatasetRef) and "processing" in message.lower():
        return DatasetProcessing(f"{what}: the previous version of {resource.ref} is still processing.",
                                 "Retry once it is ready.")
    if status == 404 and isinstance(resource, DatasetRef):
        return DatasetNotFound(resource.ref)
    if status == 404 and isinstance(resource, ModelRef):
        return ModelNotFound(f"{what}: not found on Kaggle Models.", "Publish it with: kops publish RUN_ID --to model")
    if status == 404 and isinstance(resource, KernelRef) and resource.version is not None:
        return KernelError(f"Kernel {resource.ref} has no version {resource.version} (not found on {web}).",
                           "Pass a version it has: --version N (the runs' kops.kernel.version tags name the ones "
                           "kops pushed)")
    if status == 404 and isinstance(resource, KernelRef):
        return KernelError(f"Kernel {resource.ref} not found.", "Push one with: kops push-kernel --run RUN_ID")
    if status == 404 and isinstance(resource, CompetitionRef):
        return KaggleError(f"Competition {resource} not found.", f"Check the slug at {resource.url(web)}.")
    if status == 429:
        reset = _reset_time(response)
        return QuotaExceeded(f"{what}: Kaggle rate or quota limit reached (429){reset}.",
                             "Retry the same command after that.")
    return KaggleError(f"{what} failed (HTTP {status}): {message}")


def retry_after_s(response: Any) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or HTTP-date), or None when absent/unparseable."""
    value = (response.headers.get("Retry-After") or "").strip() if response is not None else ""
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _reset_time(response: Any) -> str:
    seconds = retry_after_s(response)
    if seconds is None:
        return ""
    reset = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return f"; it resets at {reset:%Y-%m-%d %H:%M} UTC"


def error_message(err: Any) -> str:
    try:
        body = err.response.json()
        msg = body.get("message") or (body.get("error") or {}).get("message")
        return str(msg or err)
    except Exception:
        return str(err).splitlines()[0]


class KaggleTransport:
    """The official client aimed at kaggle.com or at ``endpoint`` (an emulator base URL), and the one call path."""

    def __init__(self, endpoint: str | None = None, timeout_s: float | None = None,
                 max_attempts: int = MAX_ATTEMPTS, backoff_s: float = BACKOFF_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.timeout_s = float(timeout_s or os.environ.get(ENV_TIMEOUT) or READ_TIMEOUT_S)
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self._sleep_fn = sleep
        self._api: Any = None

    @classmethod
    def from_config(cls, cfg: KopsConfig, **kwargs: Any) -> Self:
        """The client for a command: aimed at ``cfg.resolved_kaggle_endpoint`` (env > kops.yaml), else kaggle.com.

        Example:
            >>> Kaggle.from_config(load_config()).web_base  # doctest: +SKIP
            'https://www.kaggle.com'
        """
        return cls(cfg.resolved_kaggle_endpoint, **kwargs)

    @property
    def web_base(self) -> str:
        return self.endpoint or KAGGLE_WEB

    @property
    def api(self) -> Any:
        """The authenticated ``KaggleApi`` (imported and built on first use)."""
        if self._api is None:
            self._api = self._connect()
        return self._api

    def _connect(self) -> Any:
        from kaggleops.adapters.credentials import apply_kaggle_credentials

        apply_kaggle_credentials()  # KAGGLE_USERNAME/KEY found only in Kaggle's or Colab's secret store
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                kae = importlib.import_module("kaggle.api.kaggle_api_extended")

                api = kae.KaggleApi()
                _follow_config_dir(api)
                # per instance, never through KAGGLE_API_ENVIRONMENT: the class attribute is fixed by whatever
                # environment the first import saw, and a global env var would leak into later clients
                others = [a for a in kae.KaggleApi.args if a != "--local"]
                api.args = [*others, "--local"] if self.endpoint else others
                self._install_client_hooks(kae, api)
                api.authenticate()
        except SystemExit:
            raise credentials_missing() from None
        return api

    def _install_client_hooks(self, kae: Any, api: Any) -> None:
        """Each SDK client ``api`` builds: this instance's endpoint (if any) and default timeouts on its RPC
        session; the client's upload sessions get the timeouts too."""
        adapter_cls = timeout_adapter((CONNECT_TIMEOUT_S, self.timeout_s))
        kae.HTTPAdapter = adapter_cls  # the upload PUT sessions mount kae.HTTPAdapter(max_retries=...)
        build = api.build_kaggle_client

        def build_with_timeout() -> Any:
            client = build()
            http = client._http_client
            if self.endpoint:  # the client's LOCAL env read "http://localhost" from the SDK's table; aim it here
                http._endpoint = self.endpoint
            http._init_session()
            adapter = adapter_cls()
            http._session.mount("http://", adapter)
            http._session.mount("https://", adapter)
            return client

        api.build_kaggle_client = build_with_timeout
        _name_upload_bars(kae, api)

    # ---- the one call path -----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, resource: Resource = None,
              verify: Callable[[], T | None] | None = None, idempotent: bool = True, **kwargs: Any) -> T:
        """Run one client call: stdout captured, retried with backoff, errors translated once.

        A non-idempotent call (``idempotent=False``) is retried only after ``verify()`` returned None
        ("the earlier attempt did not take effect"); a non-None answer is returned as the call's result.
        """
        for attempt in range(1, self.max_attempts + 1):
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - classified below; anything unknown is re-raised
                delay = self._retry_delay(e, attempt)
                if delay is None or (not idempotent and verify is None):
                    raise self._translate(what, e, resource) from None
                self._sleep_fn(delay)
            if not idempotent and verify is not None:
                done = verify()
                if done is not None:
                    return done
        raise AssertionError("unreachable")

    def _retry_delay(self, err: Exception, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when ``err`` is final (or attempts are spent)."""
        import requests

        if attempt >= self.max_attempts:
            return None
        if isinstance(err, requests.HTTPError):
            response = err.response
            status = response.status_code if response is not None else 0
            if status not in RETRY_STATUSES:
                return None
            retry_after = retry_after_s(response)
            if retry_after is not None:
                return None if retry_after > MAX_RETRY_AFTER_S else retry_after
        elif not isinstance(err, (requests.ConnectionError, requests.Timeout)):
            return None
        base = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)  # "equal jitter"

    def _translate(self, what: str, err: Exception, resource: Resource) -> Exception:
        """One KopsError per failure, naming the resource and the next command; unknown errors pass through."""
        import requests

        if isinstance(err, requests.Timeout):
            return TimedOut(f"{what}: no answer from {self.web_base} within {self.timeout_s:g} s.",
                            f"Retry later, or raise {ENV_TIMEOUT}.")
        if isinstance(err, requests.ConnectionError):
            return KaggleError(f"{what}: cannot reach {self.web_base}.", "Check the network and retry.")
        if isinstance(err, ValueError) and str(err).startswith("Upload unsuccessful"):
            return PublishError(f"{what}: {err} (the upload state is kept).", "Retry the same command to resume.")
        if not isinstance(err, requests.HTTPError):
            return err
        status = err.response.status_code if err.response is not None else 0
        return http_error(what, status, error_message(err), err.response, resource, self.web_base)


_UPLOADING = threading.local()  # .name: the file the client's upload on this thread is sending


def _name_upload_bars(kae: Any, api: Any) -> None:
    """The client's per-file byte bars carry the file's name (it draws them with no label), and its upload lines
    ("Starting upload for file …", "Upload successful: …") go to stderr: stdout is kops' data (``--json``)."""
    if not getattr(kae.tqdm, "kops_named", False):
        plain = kae.tqdm

        def named(*args: Any, **kwargs: Any) -> Any:
            name = getattr(_UPLOADING, "name", None)
            if name and not kwargs.get("desc"):
                kwargs["desc"] = name
            return plain(*args, **kwargs)

        named.kops_named = True  # type: ignore[attr-defined]
        kae.tqdm = named
    complete, upload_file = api.upload_complete, api._upload_file

    def upload_complete(path: str, *args: Any, **kwargs: Any) -> Any:
        _UPLOADING.name = Path(path).name
        try:
            return complete(path, *args, **kwargs)
        finally:
            _UPLOADING.name = None

    def upload_one(*args: Any, **kwargs: Any) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return upload_file(*args, **kwargs)

    api.upload_complete = upload_complete
    api._upload_file = upload_one


def clear_upload_records(folder: Path) -> int:
    """Delete the official client's resumable-upload records of ``folder``'s files (and of files that no longer
    exist, e.g. its temporary zips); returns how many were deleted.

    The client keeps a record (upload URL, token, "complete") per file for 6 days whenever a call raised, and on
    the next upload of the same path, size and mtime sends that token again instead of uploading. After a create
    whose answer was lost but which took effect, those tokens are spent: a server treating them as single-use
    would refuse every later upload of the files.
    """
    from kaggle.api.kaggle_api_extended import ResumableUploadContext

    context = ResumableUploadContext()
    records = Path(context.get_upload_info_file_path("x")).parent
    if not records.is_dir():
        return 0
    ours = {Path(context.get_upload_info_file_path(str(p))).name for p in Path(folder).iterdir() if p.is_file()}
    removed = 0
    for record in records.glob("*.json"):
        try:
            recorded = json.loads(record.read_text()).get("path") or ""
        except (OSError, ValueError):
            continue
        if record.name in ours or (recorded and not Path(recorded).exists()):
            record.unlink(missing_ok=True)
            removed += 1
    return removed


def _follow_config_dir(api: Any) -> None:
    """KaggleApi fixes its config dir at first import; follow a KAGGLE_CONFIG_DIR set since then."""
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if config_dir:
        api.config_dir = config_dir
        api.config = os.path.join(config_dir, api.config_file)
