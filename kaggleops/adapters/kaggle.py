"""Adapter over the official ``kaggle`` client (Python API): the only door to Kaggle.

:class:`Kaggle` holds what kops asks of Kaggle (datasets, models, kernels, competitions, submissions); its
transport — connecting the client (lazily, at an emulator or kaggle.com), default timeouts, the one call path
with retries, verify-before-retry for non-idempotent calls, and the error translator — is
:class:`kaggleops.adapters.kaggle_http.KaggleTransport`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kaggleops.adapters.kaggle_http import (  # noqa: F401 - DatasetProcessing, credentials_missing re-exported
    DEFAULT_POLL_S,
    DatasetProcessing,
    KaggleTransport,
    clear_upload_records,
    credentials_missing,
)
from kaggleops.adapters.kaggle_records import Submission, enum_name, submission_of
from kaggleops.errors import (
    DatasetNotFound,
    KaggleError,
    KernelError,
    ModelNotFound,
    PublishError,
    SchemaError,
    TimedOut,
)
from kaggleops.polling import poll
from kaggleops.refs import CompetitionRef, DatasetRef, KernelRef, ModelRef
from kaggleops.schema import MANIFEST, Manifest

if TYPE_CHECKING:
    pass

T = TypeVar("T")
_ZERO = timedelta(0)


class Kaggle(KaggleTransport):
    """The official client, aimed at kaggle.com or at ``endpoint`` (an emulator base URL).

    Example:
        >>> kaggle = Kaggle()                                   # doctest: +SKIP
        >>> kaggle.dataset_info(DatasetRef.parse("alice/tse-f0"))  # doctest: +SKIP
        {'status': 'ready', 'current_version_number': 3}
    """

    # ---- datasets -------------------------------------------------------------------------------------
    def dataset_info(self, ref: DatasetRef) -> dict[str, Any] | None:
        """``{"status": "ready", "current_version_number": N}``, or None when the dataset does not exist."""
        try:
            text = self._call(f"Status of dataset {ref.ref}", self.api.dataset_status, ref.ref, format="json",
                              resource=ref)
        except DatasetNotFound:
            return None
        return json.loads(text)

    def wait_dataset_ready(self, ref: DatasetRef, min_version: int = 1, timeout_s: float = 600,
                           poll_s: float = DEFAULT_POLL_S) -> int:
        """Wait until the dataset's current version is at least ``min_version`` and READY; return its number.

        Kaggle's create calls return no version number, and a new version can take a while to appear.
        """
        last: dict[str, Any] = {}

        def ready() -> int | None:
            info = self.dataset_info(ref)
            last["status"] = info["status"] if info else "not visible yet"
            version = int((info or {}).get("current_version_number") or 0)
            if info is not None and info["status"] in ("failed", "deleted"):
                raise PublishError(f"Dataset {ref.ref} processing ended as {info['status'].upper()}.",
                                   "Retry the same command.")
            return version if info is not None and info["status"] == "ready" and version >= min_version else None

        return poll(ready, timeout_s, poll_s, lambda: TimedOut(
            f"Dataset {ref.ref} not READY after {timeout_s:.0f} s (status {last['status']}).",
            "Retry the same command later."))

    def latest_manifest(self, ref: DatasetRef) -> Manifest | None:
        """The ``kops-manifest.json`` of the dataset's latest version, or None when it has none (or none kops reads)."""
        with tempfile.TemporaryDirectory(prefix="kops-manifest-") as tmp:
            try:
                self._call(f"Download {MANIFEST} of {ref.ref}", self.api.dataset_download_file, ref.ref,
                           MANIFEST, path=tmp, force=True, quiet=True, resource=ref)
            except (DatasetNotFound, KaggleError):
                return None
            found = list(Path(tmp).rglob(MANIFEST))
            try:
                return Manifest.read(found[0]) if found else None
            except SchemaError:
                return None

    def dataset_files(self, ref: DatasetRef) -> list[str]:
        """Names of the files in the dataset's latest version (DatasetNotFound when it does not exist)."""
        names: list[str] = []
        token: str | None = None
        while True:
            page = self._call(f"Files of dataset {ref.ref}", self.api.dataset_list_files, ref.ref,
                              page_token=token, page_size=200, resource=ref)
            names.extend(f.name for f in (page.dataset_files or []))
            token = page.next_page_token
            if not token:
                return names

    def download_dataset(self, ref: DatasetRef, dst: Path) -> Path:
        """Version ``ref.version`` (None: the latest) of the dataset, as the client downloads it: the whole
        version's zip unpacked into ``dst`` (files the uploader zipped, e.g. ``vocab.zip``, stay zipped)."""
        dst.mkdir(parents=True, exist_ok=True)
        self._call(f"Download dataset {ref}", self.api.dataset_download_files, str(ref), path=str(dst),
                   force=True, quiet=True, unzip=True, resource=ref)
        return dst

    def download_model(self, ref: ModelRef, dst: Path) -> Path:
        """One Kaggle Model instance version as the official client downloads it (``model_instance_version_download``,
        untarred into ``dst``; files the uploader zipped stay zipped)."""
        dst.mkdir(parents=True, exist_ok=True)
        self._call(f"Download model {ref}", self.api.model_instance_version_download, str(ref), path=str(dst),
                   force=True, quiet=True, untar=True, resource=ref)
        return dst

    def create_dataset(self, folder: Path, public: bool, ref: DatasetRef | None = None, quiet: bool = True) -> None:
        """Create the dataset (version 1) from ``folder`` (with its dataset-metadata.json); sub-folders as zips."""
        ref = ref or _metadata_ref(folder)
        resp = self._call(
            f"Create dataset {ref.ref}", self.api.dataset_create_new, str(folder), public=public, quiet=quiet,
            dir_mode="zip", resource=ref, idempotent=False,
            verify=lambda: "exists" if self.dataset_info(ref) is not None else None,
        )
        if resp != "exists":
            _check_status(resp, f"Create dataset {ref.ref}")
        else:
            clear_upload_records(folder)  # the answer was lost: the client kept its records of spent tokens

    def create_dataset_version(self, folder: Path, notes: str, ref: DatasetRef | None = None,
                               previous: int | None = None, quiet: bool = True, wait_s: float = 600,
                               poll_s: float = DEFAULT_POLL_S) -> None:
        """Add a version to the dataset (current version ``previous``); waits while the last one is processing.

        A retry after a failure first checks whether the version count went up, so no duplicate is made.
        """
        ref = ref or _metadata_ref(folder)
        if previous is None:
            previous = int((self.dataset_info(ref) or {}).get("current_version_number") or 0)

        def took_effect() -> str | None:
            info = self.dataset_info(ref) or {}
            return "created" if int(info.get("current_version_number") or 0) > previous else None

        deadline = time.monotonic() + wait_s
        while True:
            try:
                resp = self._call(f"Create version of dataset {ref.ref}", self.api.dataset_create_version,
                                  str(folder), notes, quiet=quiet, dir_mode="zip", resource=ref,
                                  idempotent=False, verify=took_effect)
                break
            except DatasetProcessing:
                if time.monotonic() > deadline:
                    raise
                self.wait_dataset_ready(ref, previous, timeout_s=max(1.0, deadline - time.monotonic()),
                                        poll_s=poll_s)
        if resp != "created":
            _check_status(resp, f"Create version of dataset {ref.ref}")
        else:
            clear_upload_records(folder)

    # ---- accelerator quota ----------------------------------------------------------------------------
    def quota(self) -> dict[str, Any]:
        """The calling user's weekly accelerator quota (the client's ``quota_view``), in hours.

        ``{"refresh_time": ISO-8601 UTC or None, "gpu": {"used_h", "reserved_h", "allowed_h", "remaining_h"},
        "tpu": {...}}``; a kind Kaggle does not report is left out.
        """
        resp = self._call("Accelerator quota", self.api.quota_view)
        out: dict[str, Any] = {"refresh_time": None}
        when = getattr(resp, "quota_refresh_time", None)
        if when is not None:
            out["refresh_time"] = when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
        for kind in ("gpu", "tpu"):
            q = getattr(resp, f"{kind}_quota", None)
            if q is None:
                continue
            hours = {name: round(((getattr(q, attr, None) or _ZERO).total_seconds()) / 3600, 2)
                     for name, attr in (("used_h", "time_used"), ("reserved_h", "time_reserved"),
                                        ("allowed_h", "total_time_allowed"))}
            hours["remaining_h"] = round(max(0.0, hours["allowed_h"] - hours["used_h"] - hours["reserved_h"]), 2)
            out[kind] = hours
        return out

    # ---- Kaggle Models --------------------------------------------------------------------------------
    def model_exists(self, ref: ModelRef) -> bool:
        """Whether the model ``owner/slug`` exists (any instance)."""
        try:
            self._call(f"Model {ref.model}", self.api.model_get, ref.model, resource=ref)
        except ModelNotFound:
            return False
        return True

    def create_model(self, folder: Path, ref: ModelRef) -> None:
        """Create the model from ``folder``'s model-metadata.json (an existing one is left as it is)."""
        resp = self._call(f"Create model {ref.model}", self.api.model_create_new, str(folder), resource=ref,
                          idempotent=False, verify=lambda: "exists" if self.model_exists(ref) else None)
        if resp != "exists" and getattr(resp, "error", None) and getattr(resp, "error_code", 0) != 409:
            raise PublishError(f"Create model {ref.model} refused by Kaggle: {resp.error}")

    def model_instance_version(self, ref: ModelRef) -> int | None:
        """The instance's current version number, or None when the instance does not exist."""
        try:
            inst = self._call(f"Model instance {ref.ref}", self.api.model_instance_get, ref.ref, resource=ref)
        except ModelNotFound:
            return None
        return int(inst.version_number or 0) or None

    def create_model_instance(self, folder: Path, ref: ModelRef, quiet: bool = True) -> int:
        """Create the instance (version 1) from ``folder`` (model-instance-metadata.json + files; sub-folders
        as zips); return its version number read back."""
        resp = self._call(f"Create model instance {ref.ref}", self.api.model_instance_create, str(folder),
                          quiet=quiet, dir_mode="zip", resource=ref, idempotent=False,
                          verify=lambda: self.model_instance_version(ref))
        _check_model_response(resp, f"Create model instance {ref.ref}")
        return self.model_instance_version(ref) or 1

    def create_model_instance_version(self, folder: Path, ref: ModelRef, notes: str, previous: int,
                                      quiet: bool = True) -> int:
        """Add a version to the instance (current version ``previous``); return the new number read back.

        A retry after a failure first checks whether the version count went up, so no duplicate is made.
        """
        def took_effect() -> int | None:
            now = self.model_instance_version(ref) or 0
            return now if now > previous else None

        resp = self._call(f"Create version of model instance {ref.ref}", self.api.model_instance_version_create,
                          ref.ref, str(folder), notes, quiet=quiet, dir_mode="zip", resource=ref, idempotent=False,
                          verify=took_effect)
        _check_model_response(resp, f"Create version of model instance {ref.ref}")
        return self.model_instance_version(ref) or previous + 1

    def model_manifest(self, ref: ModelRef, version: int) -> Manifest | None:
        """The ``kops-manifest.json`` of one instance version, or None when it has none."""
        from kagglesdk.models.types.model_api_service import ApiDownloadModelInstanceVersionRequest

        def fetch() -> Any:
            with self.api.build_kaggle_client() as client:
                request = ApiDownloadModelInstanceVersionRequest()
                request.owner_slug, request.model_slug, request.instance_slug = ref.owner, ref.slug, ref.variation
                request.framework = self.api.lookup_enum(type(request.framework), request.framework, ref.framework)
                request.version_number, request.path = version, MANIFEST
                return client.models.model_api_client.download_model_instance_version(request).content

        try:
            data = self._call(f"Download {MANIFEST} of {ref}/{version}", fetch, resource=ref)
        except (ModelNotFound, KaggleError):
            return None
        try:
            return Manifest.from_dict(json.loads(data))
        except (ValueError, SchemaError):
            return None

    # ---- kernels --------------------------------------------------------------------------------------
    def kernel_version(self, ref: KernelRef) -> int | None:
        """The kernel's current version number, or None when the kernel does not exist yet."""
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

        def get() -> Any:
            with self.api.build_kaggle_client() as client:
                request = ApiGetKernelRequest()
                request.user_name, request.kernel_slug = ref.owner, ref.slug
                return client.kernels.kernels_api_client.get_kernel(request)

        try:
            resp = self._call(f"Kernel {ref.ref}", get, resource=ref)
        except KernelError as e:
            if "not found" in str(e):
                return None
            raise
        return int(resp.metadata.current_version_number or 0) or None

    def push_kernel(self, folder: Path, no_run: bool = False) -> int:
        """Push the kernel folder (kernel-metadata.json + code); return the new version number. ``no_run``: save
        the version without running it (Kaggle's Quick Save)."""
        ref = KernelRef.parse(json.loads((folder / "kernel-metadata.json").read_text())["id"])
        previous = self.kernel_version(ref) or 0

        def took_effect() -> Any:
            now = self.kernel_version(ref) or 0
            return _Pushed(now) if now > previous else None

        resp = self._call(f"Push kernel {ref.ref}", self.api.kernels_push, str(folder), no_run=no_run, resource=ref,
                          idempotent=False, verify=took_effect)
        if isinstance(resp, _Pushed):
            return resp.version_number
        problems = [
            *(f"unknown dataset source {s}" for s in (resp.invalid_dataset_sources or [])),
            *(f"unknown competition source {s}" for s in (resp.invalid_competition_sources or [])),
            *(f"unknown model source {s}" for s in (resp.invalid_model_sources or [])),
        ]
        if resp.error or problems:
            raise KernelError(f"Kernel push of {ref.ref} failed: {resp.error or '; '.join(problems)}")
        return int(resp.version_number)

    def kernel_status(self, ref: KernelRef) -> tuple[str, str]:
        """(status name, failure message) of a kernel version."""
        resp = self._call(f"Status of kernel {ref}", self.api.kernels_status, str(ref), resource=ref)
        return enum_name(resp.status), resp.failure_message or ""

    def wait_kernel(self, ref: KernelRef, timeout_s: float = 3 * 3600, poll_s: float = DEFAULT_POLL_S,
                    on_status: Callable[[str], None] | None = None) -> str:
        """Poll until the kernel version is COMPLETE/ERROR (or cancelled); return the final status."""
        last = {"status": ""}

        def finished() -> str | None:
            status, failure = self.kernel_status(ref)
            last["status"] = status
            if on_status:
                on_status(status)
            if status in ("ERROR", "CANCEL_ACKNOWLEDGED"):
                raise KernelError(f"Kernel {ref} ended with {status}: {failure_line(failure)}",
                                  f"See its log with: kaggle kernels output {ref.ref} -p OUT")
            return status if status == "COMPLETE" else None

        return poll(finished, timeout_s, poll_s,
                    lambda: TimedOut(f"Kernel {ref} still {last['status']} after {timeout_s:.0f} s."))

    def kernel_log(self, ref: KernelRef) -> list[str]:
        """The lines a kernel version printed (stdout and stderr, in order); empty when it has no log yet."""
        text = self._call(f"Log of kernel {ref}", self.api.kernels_logs, str(ref), resource=ref)
        try:
            entries = json.loads(text or "[]")
        except json.JSONDecodeError:
            return str(text).splitlines()
        return "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict)).splitlines()

    def kernel_output(self, ref: KernelRef, dst: Path) -> list[Path]:
        """Download a kernel version's output files into ``dst``."""
        dst.mkdir(parents=True, exist_ok=True)
        files, _ = self._call(f"Output of kernel {ref}", self.api.kernels_output, str(ref), str(dst),
                              force=True, quiet=True, resource=ref)
        return [Path(f) for f in files]

    # ---- competitions ---------------------------------------------------------------------------------
    def download_competition(self, competition: CompetitionRef, dst: Path) -> Path:
        """The competition's public data files (as a kernel attaching it sees them), unpacked into ``dst``
        (members that would land outside it are refused); returns ``dst``. A 403 is RulesNotAccepted."""
        dst.mkdir(parents=True, exist_ok=True)
        self._call(f"Download the files of {competition}", self.api.competition_download_files, competition.slug,
                   path=str(dst), force=True, quiet=True, resource=competition)
        for archive in sorted(dst.glob("*.zip")):
            _safe_unzip(archive, dst)
            archive.unlink()
        return dst

    def competition_files(self, competition: CompetitionRef, page_size: int = 200) -> list[str]:
        """The names of the competition's public data files (all pages; nested ones as ``folder/name``)."""
        names: list[str] = []
        token: str | None = None
        while True:
            resp = self._call(f"List the files of {competition}", self.api.competition_list_files, competition.slug,
                              page_token=token, page_size=page_size, resource=competition)
            names += [str(f.name) for f in resp.files or []]
            token = getattr(resp, "next_page_token", None) or None
            if not token:
                return names

    def download_competition_file(self, competition: CompetitionRef, name: str, dst: Path) -> Path:
        """One data file of the competition (e.g. ``sample_submission.csv``) into ``dst``; returns its path."""
        dst.mkdir(parents=True, exist_ok=True)
        self._call(f"Download {name} of {competition}", self.api.competition_download_file, competition.slug, name,
                   path=str(dst), force=True, quiet=True, resource=competition)
        for archive in sorted(dst.glob("*.zip")):
            _safe_unzip(archive, dst)
            archive.unlink()
        return dst / name

    def submit_code(self, competition: CompetitionRef, kernel: KernelRef, file_name: str, message: str) -> int:
        """Create a code-competition submission from a kernel version; return the submission ref.

        ``message`` should start with a unique ``kops:<key>``: after a failed attempt, the competition's
        submissions are searched for it, so a retry never makes a second submission.
        """
        key = message.split()[0] if message.startswith("kops:") else message

        def took_effect() -> int | None:
            found = [s for s in self.list_submissions(competition) if key and key in s.description.split()]
            return found[0].ref if found else None

        resp = self._call(
            f"Submit to {competition}", self.api.competition_submit_code, file_name, message, competition.slug,
            kernel=kernel.ref, kernel_version=kernel.version, quiet=True, resource=competition,
            idempotent=False, verify=took_effect,
        )
        return resp if isinstance(resp, int) else int(resp.ref)

    def get_submission(self, ref: int) -> Submission:
        """One submission by ref."""
        return submission_of(self._call(f"Submission {ref}", self.api.get_submission, ref))

    def list_submissions(self, competition: CompetitionRef, page_size: int = 50) -> list[Submission]:
        """Every submission of the competition, all pages, newest first."""
        out: list[Submission] = []
        page = 1
        while True:
            batch = self._call(f"Submissions of {competition}", self.api.competition_submissions,
                               competition.slug, page_number=page, page_size=page_size, resource=competition) or []
            out.extend(submission_of(s) for s in batch if s is not None)
            if len(batch) < page_size:
                return out
            page += 1

    def submission_limits(self, competition: CompetitionRef) -> dict[str, Any]:
        """``{"num_today", "num_total", "num_allowed_now", "limited_by_total"}`` for the calling user's team."""
        resp = self._call(f"Submission limits of {competition}", self.api.competition_get_submission_limits,
                          competition.slug, resource=competition)
        return {"num_today": int(resp.num_today or 0), "num_total": int(resp.num_total or 0),
                "num_allowed_now": int(resp.num_allowed_now or 0), "limited_by_total": bool(resp.limited_by_total)}

    def submit_file(self, competition: CompetitionRef, path: Path, message: str) -> int:
        """Upload ``path`` as a file-competition submission; return the submission ref.

        Like :meth:`submit_code`, a retry first looks for the ``kops:<key>`` of ``message`` among the
        competition's submissions, so it never makes a second submission.
        """
        key = message.split()[0] if message.startswith("kops:") else ""

        def took_effect() -> int | None:
            found = [s for s in self.list_submissions(competition) if key and key in s.description.split()]
            return found[0].ref if found else None

        resp = self._call(f"Submit {path.name} to {competition}", self.api.competition_submit, str(path), message,
                          competition.slug, quiet=True, resource=competition, idempotent=False,
                          verify=took_effect if key else None)
        if isinstance(resp, int):
            return resp
        if not getattr(resp, "ref", 0):
            raise KaggleError(f"Submit {path.name} to {competition} failed: {resp.message or 'no ref returned'}",
                              "Retry with the same kops submit --file command.")
        return int(resp.ref)


def failure_line(failure: str) -> str:
    """The line of a kernel's failure message that says what went wrong: the last one that is not a traceback
    marker (``^^^^``, ``~~~``); ``no message`` when there is none."""
    lines = [line.strip() for line in failure.splitlines() if line.strip().strip("^~ ")]
    return lines[-1] if lines else "no message"


@dataclass(frozen=True)
class _Pushed:
    version_number: int


def _safe_unzip(archive: Path, dst: Path) -> None:
    """Extract ``archive`` into ``dst``, refusing members that would land outside it."""
    import zipfile

    root = dst.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (dst / member).resolve()
            if root != target and root not in target.parents:
                raise KaggleError(f"{archive.name} holds {member!r}, outside the download folder.",
                                  "Refusing to unpack it; report it to the competition hosts.")
        zf.extractall(dst)


def _metadata_ref(folder: Path) -> DatasetRef:
    return DatasetRef.parse(json.loads((folder / "dataset-metadata.json").read_text())["id"])


def _check_model_response(resp: Any, what: str) -> None:
    if isinstance(resp, int):
        return  # a verified retry: the version exists
    error = getattr(resp, "error", None)
    if error:
        raise PublishError(f"{what} refused by Kaggle: {error}")


def _check_status(resp: Any, what: str) -> None:
    status = (getattr(resp, "status", "") or "").lower()
    if status != "ok":
        reason = getattr(resp, "error", "") or status or "no reason given"
        raise PublishError(f"{what} refused by Kaggle: {reason}", "Pick another slug with --dataset owner/slug."
                           if "in use" in reason else None)
