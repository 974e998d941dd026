"""HTTP-level pieces of the Kaggle adapter: default timeouts, Retry-After, and the one error translator.

Only :mod:`kaggleops.adapters.kaggle` uses these; they live here to keep that module small.
"""

from __future__ import annotations

import email.utils
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kaggleops.errors import (
    CredentialsMissing,
    DatasetNotFound,
    DatasetProcessing,
    KaggleError,
    KernelError,
    ModelNotFound,
    QuotaExceeded,
    RulesNotAccepted,
)
from kaggleops.refs import KAGGLE_WEB, CompetitionRef, DatasetRef, KernelRef, ModelRef

Resource = DatasetRef | KernelRef | CompetitionRef | ModelRef | None
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
