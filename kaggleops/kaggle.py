"""Adapter over the official ``kaggle`` client (Python API): the only door to Kaggle.

- The client is imported lazily, after the environment is prepared, because ``import kaggle`` authenticates
  (and without credentials prints help and raises SystemExit).
- ``KOPS_KAGGLE_ENDPOINT=http://127.0.0.1:PORT`` aims the client at a loopback emulator: the client's own
  LOCALHOST environment selector, with its endpoint table pointed at that base URL (the in-process method
  described in shared/reference/kaggle-client.md).
- Every call goes through :meth:`Kaggle._call`, which captures the client's stdout chatter, retries idempotent
  calls on 429/5xx/connection errors, and translates errors into KopsError subclasses, once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kaggleops.errors import (
    CredentialsMissing,
    DatasetNotFound,
    KaggleError,
    KernelError,
    QuotaExceeded,
    RulesNotAccepted,
    TimedOut,
)
from kaggleops.refs import KAGGLE_WEB, CompetitionRef, DatasetRef, KernelRef

T = TypeVar("T")
ENV_ENVIRONMENT = "KAGGLE_API_ENVIRONMENT"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 5
BACKOFF_S = 0.5
DEFAULT_POLL_S = 2.0
CREDENTIAL_HELP = (
    "Set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in $KAGGLE_CONFIG_DIR or ~/.kaggle/ "
    "(or an access token in KAGGLE_API_TOKEN / ~/.kaggle/access_token)."
)


@dataclass(frozen=True)
class Submission:
    ref: int
    status: str  # PENDING | COMPLETE | ERROR
    description: str
    public_score: float | None
    private_score: float | None
    error: str
    date: str


def _score(text: Any) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _enum_name(value: Any) -> str:
    return getattr(value, "name", str(value)).rsplit(".", 1)[-1]


class Kaggle:
    """The official client, aimed at kaggle.com or at ``endpoint`` (an emulator base URL)."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self._api: Any = None

    @property
    def web_base(self) -> str:
        return self.endpoint or KAGGLE_WEB

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = self._connect()
        return self._api

    def _connect(self) -> Any:
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                from kaggle.api.kaggle_api_extended import KaggleApi

                api = KaggleApi()
                _follow_config_dir(api)
                if self.endpoint:
                    import kagglesdk.kaggle_env as kaggle_env

                    kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL] = self.endpoint
                    # per instance: the class attribute was fixed by whatever environment the first import saw
                    api.args = [a for a in KaggleApi.args if a != "--local"] + ["--local"]
                else:
                    api.args = [a for a in KaggleApi.args if a != "--local"]
                api.authenticate()
        except SystemExit:
            raise CredentialsMissing("No Kaggle credentials found.", CREDENTIAL_HELP) from None
        return api

    def _call(self, what: str, fn: Callable[..., T], *args: Any, retry: bool = True, **kwargs: Any) -> T:
        """Run one client call: stdout captured, idempotent calls retried with backoff, errors translated."""
        import requests

        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    return fn(*args, **kwargs)
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                if not (retry and status in RETRY_STATUSES and attempt < MAX_ATTEMPTS):
                    raise self._translate(what, e, status) from None
                self._sleep(attempt, e.response)
            except requests.ConnectionError:
                if not retry or attempt == MAX_ATTEMPTS:
                    raise KaggleError(f"{what}: cannot reach {self.web_base}.", "Check the network and retry.") from None
                self._sleep(attempt, None)
        raise AssertionError("unreachable")

    @staticmethod
    def _sleep(attempt: int, response: Any) -> None:
        retry_after = response.headers.get("Retry-After") if response is not None else None
        delay = float(retry_after) if retry_after and retry_after.isdigit() else BACKOFF_S * 2 ** (attempt - 1)
        time.sleep(delay + random.uniform(0, delay / 4))

    def _translate(self, what: str, err: Any, status: int) -> KaggleError:
        message = _error_message(err)
        if status == 401:
            return CredentialsMissing(f"{what}: Kaggle rejected the credentials (401).", CREDENTIAL_HELP)
        if status == 429:
            return QuotaExceeded(f"{what}: rate or quota limit reached (429): {message}", "Wait and retry later.")
        return KaggleError(f"{what} failed (HTTP {status}): {message}")

    # ---- datasets -------------------------------------------------------------------------------------
    def dataset_info(self, ref: DatasetRef) -> dict[str, Any] | None:
        """``{"status": "ready", "current_version_number": N}``, or None when the dataset does not exist."""
        try:
            text = self._call(f"Status of dataset {ref.ref}", self.api.dataset_status, ref.ref, format="json")
        except KaggleError as e:
            if "HTTP 404" in str(e):
                return None
            raise
        return json.loads(text)

    def wait_dataset_ready(self, ref: DatasetRef, min_version: int = 1, timeout_s: float = 600,
                           poll_s: float = DEFAULT_POLL_S) -> int:
        """Wait until the dataset's current version is at least ``min_version`` and READY; return its number.

        Kaggle's create calls return no version number, and a new version can take a while to appear.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.dataset_info(ref)
            if info is None:
                raise DatasetNotFound(ref.ref)
            if info["status"] == "ready" and int(info.get("current_version_number") or 0) >= min_version:
                return int(info["current_version_number"])
            if info["status"] in ("failed", "deleted"):
                raise KaggleError(f"Dataset {ref.ref} processing ended as {info['status'].upper()}.")
            if time.monotonic() > deadline:
                raise TimedOut(f"Dataset {ref.ref} not READY after {timeout_s:.0f} s (status {info['status']}).")
            time.sleep(poll_s)

    def dataset_files(self, ref: DatasetRef) -> list[str]:
        """Names of the files in the dataset's latest version (all pages)."""
        names: list[str] = []
        token = None
        while True:
            resp = self._call(f"Files of dataset {ref.ref}", self.api.dataset_list_files, ref.ref,
                              page_token=token, page_size=200)
            names.extend(str(f.name) for f in (resp.files or []))
            token = getattr(resp, "next_page_token", None)
            if not token:
                return names

    def create_dataset(self, folder: Path, public: bool) -> None:
        resp = self._call(
            "Create dataset", self.api.dataset_create_new, str(folder), public=public, quiet=True,
            dir_mode="zip", retry=False,
        )
        _check_status(resp, "Create dataset")

    def create_dataset_version(self, folder: Path, notes: str) -> None:
        resp = self._call(
            "Create dataset version", self.api.dataset_create_version, str(folder), notes, quiet=True,
            dir_mode="zip", retry=False,
        )
        _check_status(resp, "Create dataset version")

    # ---- kernels --------------------------------------------------------------------------------------
    def push_kernel(self, folder: Path) -> int:
        """Push the kernel folder (kernel-metadata.json + code); return the new version number."""
        resp = self._call("Push kernel", self.api.kernels_push, str(folder), retry=False)
        problems = [
            *(f"unknown dataset source {s}" for s in (resp.invalid_dataset_sources or [])),
            *(f"unknown competition source {s}" for s in (resp.invalid_competition_sources or [])),
        ]
        if resp.error or problems:
            raise KernelError(f"Kernel push failed: {resp.error or '; '.join(problems)}")
        return int(resp.version_number)

    def kernel_status(self, ref: KernelRef) -> tuple[str, str]:
        """(status name, failure message) of a kernel version."""
        resp = self._call(f"Status of kernel {ref}", self.api.kernels_status, str(ref))
        return _enum_name(resp.status), resp.failure_message or ""

    def wait_kernel(self, ref: KernelRef, timeout_s: float = 3 * 3600, poll_s: float = DEFAULT_POLL_S,
                    on_status: Callable[[str], None] | None = None) -> str:
        """Poll until the kernel version is COMPLETE/ERROR (or cancelled); return the final status."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, failure = self.kernel_status(ref)
            if on_status:
                on_status(status)
            if status == "COMPLETE":
                return status
            if status in ("ERROR", "CANCEL_ACKNOWLEDGED"):
                raise KernelError(f"Kernel {ref} ended with {status}: {failure.strip() or 'no message'}",
                                  f"See its log with: kaggle kernels output {ref.ref} -p OUT")
            if time.monotonic() > deadline:
                raise TimedOut(f"Kernel {ref} still {status} after {timeout_s:.0f} s.")
            time.sleep(poll_s)

    def kernel_log(self, ref: KernelRef) -> list[str]:
        """The lines a kernel version printed (stdout and stderr, in order); empty when it has no log yet."""
        text = self._call(f"Log of kernel {ref}", self.api.kernels_logs, str(ref))
        try:
            entries = json.loads(text or "[]")
        except json.JSONDecodeError:
            return str(text).splitlines()
        return "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict)).splitlines()

    def kernel_output(self, ref: KernelRef, dst: Path) -> list[Path]:
        dst.mkdir(parents=True, exist_ok=True)
        files, _ = self._call(f"Output of kernel {ref}", self.api.kernels_output, str(ref), str(dst),
                              force=True, quiet=True)
        return [Path(f) for f in files]

    # ---- competitions ---------------------------------------------------------------------------------
    def submit_code(self, competition: CompetitionRef, kernel: KernelRef, file_name: str, message: str) -> int:
        """Create a code-competition submission from a kernel version; return the submission ref."""
        resp = self._call(
            f"Submit to {competition}", self.api.competition_submit_code, file_name, message, competition.slug,
            kernel=kernel.ref, kernel_version=kernel.version, quiet=True, retry=False,
        )
        return int(resp.ref)

    def get_submission(self, ref: int) -> Submission:
        return _submission(self._call(f"Submission {ref}", self.api.get_submission, ref))

    def list_submissions(self, competition: CompetitionRef, page_size: int = 50) -> list[Submission]:
        """Every submission of the competition, all pages, newest first."""
        out: list[Submission] = []
        page = 1
        while True:
            batch = self._call(f"Submissions of {competition}", self.api.competition_submissions,
                               competition.slug, page_number=page, page_size=page_size) or []
            out.extend(_submission(s) for s in batch if s is not None)
            if len(batch) < page_size:
                return out
            page += 1

    def submission_limits(self, competition: CompetitionRef) -> dict[str, Any]:
        """``{"num_today", "num_total", "num_allowed_now", "limited_by_total"}`` for the calling user's team."""
        resp = self._call(f"Submission limits of {competition}", self.api.competition_get_submission_limits,
                          competition.slug)
        return {"num_today": int(resp.num_today or 0), "num_total": int(resp.num_total or 0),
                "num_allowed_now": int(resp.num_allowed_now or 0), "limited_by_total": bool(resp.limited_by_total)}

    def submit_file(self, competition: CompetitionRef, path: Path, message: str) -> int:
        """Upload ``path`` as a file-competition submission; return the submission ref."""
        resp = self._call(f"Submit {path.name} to {competition}", self.api.competition_submit, str(path), message,
                          competition.slug, quiet=True, retry=False)
        if not getattr(resp, "ref", 0):
            raise KaggleError(f"Submit {path.name} to {competition} failed: {resp.message or 'no ref returned'}",
                              "Retry: kops submit --file ...")
        return int(resp.ref)


def _follow_config_dir(api: Any) -> None:
    """KaggleApi fixes its config dir at first import; follow a KAGGLE_CONFIG_DIR set since then."""
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if config_dir:
        api.config_dir = config_dir
        api.config = os.path.join(config_dir, api.config_file)


def _submission(s: Any) -> Submission:
    return Submission(
        ref=int(s.ref), status=_enum_name(s.status), description=s.description or "",
        public_score=_score(s.public_score), private_score=_score(s.private_score),
        error=s.error_description or "", date=str(s.date or ""),
    )


def _check_status(resp: Any, what: str) -> None:
    status = (getattr(resp, "status", "") or "").lower()
    if status != "ok":
        raise KaggleError(f"{what} refused by Kaggle: {getattr(resp, 'error', '') or status or 'no reason given'}")


def _error_message(err: Any) -> str:
    try:
        body = err.response.json()
        msg = body.get("message") or (body.get("error") or {}).get("message")
        return str(msg or err)
    except Exception:
        return str(err).splitlines()[0]


def rules_hint(competition: CompetitionRef) -> RulesNotAccepted:
    return RulesNotAccepted(f"Kaggle refused access to {competition} (403).",
                            f"Accept the rules at {competition.rules_url()} and retry.")
