"""In-memory state of the emulator: users, blobs, datasets, kernels, competitions, submissions.

Bytes live on disk under the emulator root:

* ``blobs/<token>``                                    uploaded blobs (datasets and submissions)
* ``datasets/<owner>/<slug>/<version>/<name>``          one full snapshot per dataset version
* ``kernels/<owner>/<slug>/<version>/{source,input,working}``  kernel runs
* ``competitions/<slug>/<name>``                        public competition files
* ``zips/...``                                          zips built for whole-bundle downloads
* ``submissions/<ref>/<file>``                          submitted files

Everything else is in memory and guarded by ``Store.lock``.
"""

from __future__ import annotations

import itertools
import pickle
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import ApiError, utc_now
from .scoring import CompetitionSpec


@dataclass
class Blob:
    """An upload session created by ``StartBlobUpload``/``StartSubmissionUpload``."""

    token: str
    name: str
    content_length: int
    kind: str
    path: Path
    received: int = 0
    used: bool = False  # a token is single-use: once a dataset version holds its bytes, it is spent

    @property
    def complete(self) -> bool:
        """True once every declared byte has arrived."""
        return self.received >= self.content_length


@dataclass
class DatasetFile:
    """One file in a dataset version."""

    name: str
    path: Path
    size: int
    description: str | None = None
    created: datetime = field(default_factory=utc_now)


@dataclass
class DatasetVersion:
    """A full snapshot of a dataset's files."""

    number: int
    files: list[DatasetFile]
    notes: str
    creator: str
    ready_at: float
    created: datetime = field(default_factory=utc_now)

    @property
    def ready(self) -> bool:
        """Whether processing has finished (``dataset_processing_s`` after creation)."""
        return time.monotonic() >= self.ready_at

    @property
    def status(self) -> str:
        """The ``DatabundleVersionStatus`` name of this version."""
        return "READY" if self.ready else "BLOBS_RECEIVED"


@dataclass
class Dataset:
    """A dataset with its versions (oldest first)."""

    id: int
    owner: str
    slug: str
    title: str
    license_name: str
    is_private: bool
    subtitle: str | None = None
    description: str | None = None
    keywords: list[str] = field(default_factory=list)
    versions: list[DatasetVersion] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """``owner/slug``."""
        return f"{self.owner}/{self.slug}"

    def version(self, number: int | None) -> DatasetVersion:
        """Return version ``number`` (None = latest), or raise a 404."""
        if number is None:
            return self.versions[-1]
        for v in self.versions:
            if v.number == number:
                return v
        raise ApiError(404, f"Dataset {self.ref} has no version {number}")

    def latest_ready(self) -> DatasetVersion | None:
        """Newest version whose processing has finished."""
        ready = [v for v in self.versions if v.ready]
        return ready[-1] if ready else None


@dataclass
class KernelVersion:
    """One pushed version of a kernel and the state of its run."""

    number: int
    settings: dict[str, object]
    run_dir: Path
    status: str = "QUEUED"
    failure_message: str | None = None
    log: list[dict[str, object]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    created: datetime = field(default_factory=utc_now)
    finished: datetime | None = None
    isolation: str = ""  # how the session was isolated (runner.py): namespace (...) | guard (...)
    stop_reason: str | None = None  # "cancel" (the user's Cancel run) | "error" (the session was lost), when stopped

    @property
    def working(self) -> Path:
        """The run's working directory; its files become the outputs."""
        return self.run_dir / "working"

    @property
    def input(self) -> Path:
        """The run's input directory (one subfolder per attached source)."""
        return self.run_dir / "input"

    def setting(self, name: str, default: object = None) -> object:
        """A SaveKernel request field (camelCase) as pushed for this version."""
        value = self.settings.get(name)
        return default if value is None else value


@dataclass
class Kernel:
    """A kernel (notebook or script) with its versions (oldest first)."""

    id: int
    owner: str
    slug: str
    title: str
    versions: list[KernelVersion] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """``owner/slug``."""
        return f"{self.owner}/{self.slug}"

    def version(self, number: int | None) -> KernelVersion:
        """Return version ``number`` (None = latest), or raise a 404."""
        if not self.versions:
            raise ApiError(404, f"Kernel {self.ref} has no versions")
        if number is None:
            return self.versions[-1]
        for v in self.versions:
            if v.number == number:
                return v
        raise ApiError(404, f"Kernel {self.ref} has no version {number}")


@dataclass
class Competition:
    """A competition seeded by ``Emulator.add_competition``."""

    slug: str
    files: dict[str, Path]
    spec: CompetitionSpec
    output_file: str
    kind: str = "file"  # "code": only notebook outputs can be submitted
    created: datetime = field(default_factory=utc_now)
    evaluation: Any = None  # rerun.EvaluationSpec: an evaluation-API competition (the gateway reruns submissions)
    rules_accepted: set[str] = field(default_factory=set)  # users who accepted the rules (downloads, submits)


@dataclass
class Submission:
    """A competition submission; its result is computed at once but revealed after some reads."""

    ref: int
    competition: str
    user: str
    file_name: str
    total_bytes: int
    description: str | None
    public_score: str | None
    private_score: str | None
    error: str | None
    polls_left: int
    kernel: str | None = None
    date: datetime = field(default_factory=utc_now)
    running: bool = False  # an evaluation-API rerun is still going (rerun.py)

    @property
    def status(self) -> str:
        """PENDING while its rerun runs and until ``polls_left`` reads have happened, then COMPLETE or ERROR."""
        if self.running or self.polls_left > 0:
            return "PENDING"
        return "ERROR" if self.error else "COMPLETE"


class Store:
    """All emulator state plus the on-disk layout; callers hold ``lock`` while mutating."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.blobs: dict[str, Blob] = {}
        self.datasets: dict[tuple[str, str], Dataset] = {}
        self.kernels: dict[tuple[str, str], Kernel] = {}
        self.competitions: dict[str, Competition] = {}
        self.submissions: dict[int, Submission] = {}
        self.models: dict[tuple[str, str], Any] = {}  # rpc_models.Model by (owner, slug)
        # notebook secrets (notebook_secrets.py), in memory only: by owner, label -> value; the labels attached to
        # each kernel (owner, slug), (owner, "*"): to all of the owner's; each running session's token -> its kernel
        self.secrets: dict[str, dict[str, str]] = {}
        self.secret_attachments: dict[tuple[str, str], set[str]] = {}
        self.secret_sessions: dict[str, tuple[str, str]] = {}
        self._ids = itertools.count(1001)
        self._refs = itertools.count(50001)
        self._tokens = itertools.count(1)

    # ---- ids and paths -------------------------------------------------------------------------

    def next_id(self) -> int:
        """A fresh numeric id for a dataset or kernel."""
        return next(self._ids)

    def next_submission_ref(self) -> int:
        """A fresh submission ref."""
        return next(self._refs)

    def dir(self, *parts: str) -> Path:
        """A directory under the root, created on demand."""
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---- blobs ---------------------------------------------------------------------------------

    def new_blob(self, name: str, content_length: int, kind: str) -> Blob:
        """Open an upload session for a file of ``content_length`` bytes."""
        token = f"blob-{next(self._tokens):06d}-{time.time_ns() % 10**9:09d}"
        path = self.dir("blobs") / token
        path.write_bytes(b"")
        blob = Blob(token=token, name=name, content_length=max(0, int(content_length)), kind=kind, path=path)
        self.blobs[token] = blob
        return blob

    def complete_blob(self, token: str) -> Blob:
        """Return a fully uploaded blob, or raise a 400 naming the problem."""
        blob = self.blobs.get(str(token))
        if blob is None:
            raise ApiError(400, f"Unknown upload token {token!r}")
        if blob.used:
            raise ApiError(400, f"Upload token {token!r} ({blob.name}) was already used; start a new upload")
        if not blob.complete:
            raise ApiError(400, f"Upload {token!r} ({blob.name}) is incomplete: "
                                f"{blob.received}/{blob.content_length} bytes")
        return blob

    # ---- lookups -------------------------------------------------------------------------------

    def dataset(self, owner: str, slug: str) -> Dataset:
        """Find a dataset or raise a 404."""
        ds = self.datasets.get((owner, slug))
        if ds is None:
            raise ApiError(404, f"Dataset {owner}/{slug} not found")
        return ds

    def dataset_by_id(self, dataset_id: int) -> Dataset:
        """Find a dataset by numeric id or raise a 404."""
        for ds in self.datasets.values():
            if ds.id == dataset_id:
                return ds
        raise ApiError(404, f"Dataset id {dataset_id} not found")

    def kernel(self, owner: str, slug: str) -> Kernel:
        """Find a kernel or raise a 404."""
        k = self.kernels.get((owner, slug))
        if k is None:
            raise ApiError(404, f"Kernel {owner}/{slug} not found")
        return k

    def competition(self, slug: str) -> Competition:
        """Find a competition or raise a 404."""
        comp = self.competitions.get(slug)
        if comp is None:
            raise ApiError(404, f"Competition {slug!r} not found")
        return comp

    def submission(self, ref: int) -> Submission:
        """Find a submission or raise a 404."""
        sub = self.submissions.get(int(ref))
        if sub is None:
            raise ApiError(404, f"Submission {ref} not found")
        return sub

    # ---- files ---------------------------------------------------------------------------------

    def store_dataset_files(self, ds: Dataset, number: int, entries: list[tuple[str, Blob, str | None]]
                            ) -> list[DatasetFile]:
        """Copy uploaded blobs into ``datasets/<owner>/<slug>/<number>/`` and describe them."""
        base = self.dir("datasets", ds.owner, ds.slug, str(number))
        files = []
        for name, blob, description in sorted(entries, key=lambda e: e[0]):
            target = base / name
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(blob.path, target)
            files.append(DatasetFile(name=name, path=target, size=target.stat().st_size, description=description))
        return files

    def zip_of(self, files: dict[str, Path], *parts: str) -> Path:
        """Build (once) a zip of ``files`` at ``zips/<parts...>`` and return its path."""
        target = self.root.joinpath("zips", *parts)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, path in sorted(files.items()):
                    zf.write(path, name)
            tmp.replace(target)
        return target

    def summary(self) -> dict[str, object]:
        """A JSON-able snapshot of the state, for ``GET /state`` and debugging."""
        with self.lock:
            return {
                "datasets": {ds.ref: {"id": ds.id, "versions": [
                    {"number": v.number, "status": v.status, "files": [f.name for f in v.files]}
                    for v in ds.versions]} for ds in self.datasets.values()},
                "kernels": {k.ref: {"id": k.id, "versions": [
                    {"number": v.number, "status": v.status, "failure": v.failure_message,
                     "outputs": v.outputs, "isolation": v.isolation} for v in k.versions]}
                    for k in self.kernels.values()},
                "competitions": sorted(self.competitions),
                "submissions": [
                    {"ref": s.ref, "competition": s.competition, "user": s.user, "status": s.status,
                     "public": s.public_score, "private": s.private_score, "error": s.error,
                     "kernel": s.kernel} for s in self.submissions.values()],
                "uploads": {t: {"name": b.name, "received": b.received, "size": b.content_length}
                            for t, b in self.blobs.items() if not b.complete},
            }


STATE_FILE = "state.pickle"
_PERSISTED = ("blobs", "datasets", "kernels", "submissions", "models")


def save_state(store: Store) -> None:
    """Write the metadata (datasets, kernels, submissions, uploads) to ``<root>/state.pickle``, atomically.

    File bytes already live under the root; competitions are seeded again by whoever starts the emulator.
    """
    with store.lock:
        data = {name: getattr(store, name) for name in _PERSISTED}
        payload = pickle.dumps({"format": 1, **data})
    tmp = store.root / (STATE_FILE + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(store.root / STATE_FILE)


def load_state(store: Store) -> bool:
    """Restore what :func:`save_state` wrote; returns False when there is nothing to restore.

    Versions still processing come back READY; kernel runs cut by the restart come back as ERROR.
    """
    path = store.root / STATE_FILE
    if not path.is_file():
        return False
    data = pickle.loads(path.read_bytes())  # noqa: S301 - our own file, in the folder the user named
    with store.lock:
        for name in _PERSISTED:
            setattr(store, name, data.get(name, {}))
        for ds in store.datasets.values():
            for v in ds.versions:
                v.ready_at = 0.0
        for kernel in store.kernels.values():
            for kv in kernel.versions:
                if kv.status in ("QUEUED", "RUNNING"):
                    kv.status, kv.failure_message = "ERROR", "The emulator was restarted during this run."
        for sub in store.submissions.values():
            if getattr(sub, "running", False):  # an evaluation-API rerun cut by the restart
                sub.running = False
                sub.error = "Evaluation API error UNSPECIFIED: the emulator restarted during the rerun"
        ids = [1000, *(d.id for d in store.datasets.values()), *(k.id for k in store.kernels.values())]
        store._ids = itertools.count(max(ids) + 1)
        store._refs = itertools.count(max([50000, *store.submissions]) + 1)
        store._tokens = itertools.count(len(store.blobs) + 1)
    return True


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (blobs are immutable once complete), copying if that fails."""
    if dst.exists():
        dst.unlink()
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)
