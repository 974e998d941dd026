"""The KopsError tree: every kops error class, in one place. Standard library only (the kernel runtime and
task code import it).

Every error a user can cause or fix says what failed, where, and what to type next. The CLI prints
``str(error)`` as one line and exits with ``error.exit_code``; anything that is not a KopsError is a bug: one
line too, its traceback only with ``KOPS_DEBUG=1``.

    KopsError
    ├── ConfigError
    ├── SettingsError, TaskLoadError (also ValueErrors: a task's setting / a task that does not import)
    ├── DataError (also a ValueError: task code raises it for malformed competition files)
    ├── SchemaError (a kops-manifest.json / kops-kernel.json that does not read)
    ├── UnknownCompetition, UnknownSortKey, PortInUse, GitSourceError
    ├── RunNotFound, RunIdAmbiguous, MissingArtifact, TrackingUnavailable, DiskFull
    ├── Interrupted (exit code 130)
    ├── TaskContractBroken (`kops check-task` found breaches)
    ├── StorageError ── StorageCredentialsMissing
    ├── KernelFailure (raised inside the offline kernel; printed as ``kops: error: …``)
    ├── TimedOut
    └── KaggleError
        ├── CredentialsMissing, DatasetNotFound, SubmissionError, QuotaExceeded, RulesNotAccepted
        ├── PublishError ── DatasetProcessing
        └── KernelError ── KernelRunFailed
"""

from __future__ import annotations

import re

URL_PASSWORD = re.compile(r"(?P<head>[a-z][\w+.-]*://[^/:@\s]*:)(?P<secret>[^@\s]*)(?P<at>@)", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it replaced by ``***``.

    Example:
        >>> mask_url("postgresql://kops:s3cret@db:5432/optuna")
        'postgresql://kops:***@db:5432/optuna'
    """
    return URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['at']}", text)


class KopsError(Exception):
    """Base class: a one-line, user-facing message (what failed + how to fix it). A password inside a URL in it
    (e.g. a tracking store ``postgresql://user:password@host/db``) is masked: messages reach terminals and logs."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = mask_url(message)
        self.hint = mask_url(hint) if hint else hint
        super().__init__(f"{self.message} {self.hint}" if self.hint else self.message)


class ConfigError(KopsError):
    """kops.yaml is missing, unreadable or invalid."""


class SettingsError(KopsError, ValueError):
    """A ``train:`` (or ``rerank:``) setting the task does not accept; the message names the key (task code
    raises it, see :func:`kaggleops.task.check_settings`)."""


class TaskLoadError(KopsError, ValueError):
    """A task named in kops.yaml (or by competition slug) cannot be found or imported; one line says why."""


class DataError(KopsError, ValueError):
    """Competition data is missing or malformed (e.g. a train.csv without a required column).

    Task code raises it too (``from kaggleops.task import DataError``, the task interface's one door); it stays a
    ValueError for callers that catch that.
    """


class SchemaError(KopsError):
    """A kops record (kops-manifest.json, kops-kernel.json) is unreadable, incomplete or from a newer kops."""


class UnknownSortKey(KopsError):
    """``--sort`` names no column of the leaderboard."""


class PortInUse(KopsError):
    """The UI's port is taken."""


class GitSourceError(KopsError):
    """The repository or revision given to --git cannot be cloned or checked out."""


class TrackingUnavailable(KopsError):
    """The tracking store could not be reached or refused a call (even after retries, where kops retries)."""


class DiskFull(KopsError):
    """A disk kops writes to (the tracking store, a checkpoint, a download) has no space left."""


#: How a full disk reads after passing through SQLite, SQLAlchemy, MLflow or a plain write.
_DISK_FULL_MARKERS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from or during, is a full disk (ENOSPC/EDQUOT)."""
    import errno

    return any(isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
               or any(marker in str(e) for marker in _DISK_FULL_MARKERS) for e in _chain(error))


def disk_full_detail(error: BaseException) -> str:
    """The part of a full disk's error message a user needs (no SQL statement, one line)."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.strerror:
            return f"[Errno {e.errno}] {e.strerror}"
    text = str(error).split(" [SQL:")[0].splitlines()
    return text[0][:160] if text else type(error).__name__


def _chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and the errors it was raised from or during."""
    chain: list[BaseException] = []
    while error is not None and all(error is not e for e in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


class SweepStorageError(KopsError):
    """The Optuna storage of `kops sweep` (sweep.storage) cannot be opened or reached; the URL's password masked."""


class StorageError(KopsError):
    """A bucket or folder could not be read or written."""


class StorageCredentialsMissing(StorageError):
    """No Google Cloud credentials were found for a gs:// URL."""


class KernelFailure(KopsError):
    """A problem the offline kernel reports as one line (``kops: error: …``) and exits non-zero on."""


class UnknownCompetition(KopsError):
    """The configured competition has no built-in task."""


class RunNotFound(KopsError):
    """An MLflow run id that does not exist in the configured tracking store."""

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        super().__init__(
            f"Run {run_id} not found in the tracking store {tracking_uri}.",
            "Check the id with `kops ui` and that MLFLOW_TRACKING_URI / "
            "kops.yaml `tracking_uri` name the store it was logged to.",
        )
        self.run_id = run_id


class RunIdAmbiguous(KopsError):
    """A run-id prefix that matches more than one run."""


class MissingArtifact(KopsError):
    """A run lacks an artifact a later stage needs (e.g. no model folder to publish)."""


class KaggleError(KopsError):
    """A Kaggle API call failed."""


class CredentialsMissing(KaggleError):
    """No Kaggle credentials were found."""


class DatasetNotFound(KaggleError):
    def __init__(self, ref: str, hint: str | None = None) -> None:
        super().__init__(f"Dataset {ref} not found.", hint or "Create it with: kops publish RUN_ID")
        self.ref = ref


class ModelNotFound(KaggleError):
    """A Kaggle Model (or model instance) that does not exist."""


class PublishError(KaggleError):
    """Creating a dataset or dataset version failed; the run was left untagged."""


class DatasetProcessing(PublishError):
    """Kaggle refused a new version because the previous one is still processing (handled by waiting)."""


class KernelError(KaggleError):
    """Pushing or running a kernel failed."""


class ImageError(KopsError):
    """run-local's Kaggle image environment could not be built or used."""


class KernelRunFailed(KernelError):
    """A pushed kernel version ended in ERROR; ``log_tail`` holds the last lines it printed."""

    def __init__(self, message: str, hint: str, log_tail: list[str]) -> None:
        super().__init__(message, hint)
        self.log_tail = log_tail


class SubmissionError(KaggleError):
    """Submitting to a competition failed."""


class QuotaExceeded(KaggleError):
    """The competition's daily submission limit is reached."""


class RulesNotAccepted(KaggleError):
    """403 from a competition endpoint: the rules were not accepted."""


class TimedOut(KopsError):
    """Waiting for a remote state took longer than allowed."""


class Interrupted(KopsError):
    """SIGINT/SIGTERM stopped a command; the message says where and how to continue. Exit code 130."""

    exit_code = 130


class TaskContractBroken(KopsError):
    """`kops check-task` found at least one breach (each printed on its own line)."""


class TaskCheckBreach(Exception):
    """Inside `kops check-task`: the hook named could not give what later checks need (never reaches the user)."""


class TaskCheckStop(Exception):
    """Inside `kops check-task`: stop the checks after the breaches already recorded (never reaches the user)."""
