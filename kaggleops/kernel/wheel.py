"""The kops runtime as a wheel, shipped to offline kernels in a ``kops-runtime`` dataset.

The wheel is built without network and without a build backend: the installed ``kaggleops`` package is
zipped per the wheel spec (PEP 427: files + ``*.dist-info/{METADATA,WHEEL,RECORD}``) with fixed timestamps,
so the same sources always give the same bytes. The dataset is versioned by content: the sha256 over the
package's files names a marker manifest ``kops-runtime-<hash16>.json`` inside the dataset; when the latest
version already holds that marker, it is reused and no new version is made.

Example:
    >>> rt = ensure_runtime_dataset(cfg, Kaggle.from_config(cfg))  # doctest: +SKIP
    >>> rt.dataset, rt.version, rt.created                     # doctest: +SKIP
    ('alice/kops-runtime', 3, False)
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import kaggleops
from kaggleops import __version__
from kaggleops.adapters.kaggle import Kaggle
from kaggleops.config import KopsConfig
from kaggleops.files import sha256_file, write_zip
from kaggleops.refs import DatasetRef
from kaggleops.schema import MARKER_HASH_CHARS

RUNTIME_SLUG = "kops-runtime"
PACKAGE = "kaggleops"
MARKER_PREFIX = "kops-runtime-"
HASH_CHARS = MARKER_HASH_CHARS
SKIPPED_PARTS = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class RuntimeWheel:
    """A built runtime wheel: its path, the content hash of the package files and the wheel's own sha256."""

    path: Path
    content_sha256: str
    wheel_sha256: str

    @property
    def marker(self) -> str:
        """File name of the manifest that marks a dataset version as holding this content."""
        return f"{MARKER_PREFIX}{self.content_sha256[:HASH_CHARS]}.json"


@dataclass(frozen=True)
class RuntimeDataset:
    """The ``owner/kops-runtime`` dataset version holding the current runtime."""

    dataset: str
    version: int
    content_sha256: str
    wheel: str
    created: bool  # True when this call made a new version

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def tree_files(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    """(``prefix`` + path relative to ``folder``, path) of every file below ``folder``, sorted; no caches or
    bytecode. Used for the kops runtime wheel and for the task's code wheel alike."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not SKIPPED_PARTS & set(rel.parts) and path.suffix not in SKIPPED_SUFFIXES:
            out.append((f"{prefix}{rel.as_posix()}", path))
    return out


def package_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(archive name, path) of every file of the kaggleops package, sorted; no caches or bytecode."""
    return tree_files(root or Path(kaggleops.__file__).resolve().parent, f"{PACKAGE}/")


def content_hash(files: list[tuple[str, Path]]) -> str:
    """sha256 over (name, bytes) of ``files``: equal whenever the runtime's sources are equal."""
    h = hashlib.sha256()
    for name, path in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def runtime_requirements() -> list[str]:
    """kops' declared dependencies (no extras), as the installed kaggleops lists them: the wheel's Requires-Dist,
    so ``pip install`` of the runtime wheel (a Colab notebook) brings them; kernels install it ``--no-deps``."""
    from importlib import metadata

    try:
        declared = metadata.requires(PACKAGE) or []
    except metadata.PackageNotFoundError:
        return []
    return sorted(r for r in declared if "extra" not in r.partition(";")[2])


def _dist_info(content: str) -> dict[str, bytes]:
    requires = "".join(f"Requires-Dist: {r}\n" for r in runtime_requirements())
    metadata = (f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {__version__}\n"
                f"Summary: kops runtime for offline Kaggle kernels (content {content[:HASH_CHARS]})\n{requires}")
    wheel = "Wheel-Version: 1.0\nGenerator: kops\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entry_points = "[console_scripts]\nkops = kaggleops.cli:main\n"  # the `kops` command where pip installs it
    return {"METADATA": metadata.encode(), "WHEEL": wheel.encode(), "entry_points.txt": entry_points.encode()}


def build_wheel(dst: Path, root: Path | None = None) -> RuntimeWheel:
    """Zip the installed kaggleops package into ``dst/kaggleops-<version>-py3-none-any.whl``, offline.

    Deterministic: fixed timestamps and sorted entries, so equal sources give byte-equal wheels.
    """
    dst.mkdir(parents=True, exist_ok=True)
    files = package_files(root)
    content = content_hash(files)
    dist = f"{PACKAGE}-{__version__}.dist-info"
    entries = [(name, path.read_bytes()) for name, path in files]
    entries += [(f"{dist}/{name}", data) for name, data in _dist_info(content).items()]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries) + f"{dist}/RECORD,,\n"
    entries.append((f"{dist}/RECORD", record.encode()))
    path = dst / f"{PACKAGE}-{__version__}-py3-none-any.whl"
    write_zip(path, entries, zipfile.ZIP_DEFLATED)
    return RuntimeWheel(path, content, sha256_file(path))


def stage_runtime(folder: Path, root: Path | None = None) -> RuntimeWheel:
    """Write the wheel and its marker manifest into ``folder`` (a dataset folder or a local input folder)."""
    wheel = build_wheel(folder, root)
    manifest = {"kops_version": __version__, "content_sha256": wheel.content_sha256,
                "wheel": wheel.path.name, "wheel_sha256": wheel.wheel_sha256}
    (folder / wheel.marker).write_text(json.dumps(manifest, indent=2))
    return wheel


def _dataset_metadata(ref: DatasetRef, license_name: str) -> dict[str, object]:
    return {"id": ref.ref, "title": "Kops Runtime", "licenses": [{"name": license_name}],
            "description": "The kops runtime wheel for offline inference kernels, installed with "
                           "`pip install --no-index --no-deps`. Versioned by the content of its files."}


def ensure_runtime_dataset(cfg: KopsConfig, kaggle: Kaggle) -> RuntimeDataset:
    """The ``<owner>/kops-runtime`` version holding the current runtime: reused if unchanged, else a new one."""
    ref = DatasetRef(cfg.kaggle_owner, RUNTIME_SLUG)
    with tempfile.TemporaryDirectory(prefix="kops-runtime-") as tmp:
        folder = Path(tmp) / "dataset"
        wheel = stage_runtime(folder)
        info = kaggle.dataset_info(ref)
        if info is not None and info.get("status") == "ready" and wheel.marker in kaggle.dataset_files(ref):
            version = int(info["current_version_number"])
            return RuntimeDataset(ref.ref, version, wheel.content_sha256, wheel.path.name, created=False)
        (folder / "dataset-metadata.json").write_text(json.dumps(_dataset_metadata(ref, cfg.dataset.license)))
        version = upload_private_dataset(kaggle, ref, folder, info,
                                         f"kops runtime {__version__} content {wheel.content_sha256[:12]}")
    return RuntimeDataset(ref.ref, version, wheel.content_sha256, wheel.path.name, created=True)


def upload_private_dataset(kaggle: Kaggle, ref: DatasetRef, folder: Path, info: dict | None, notes: str) -> int:
    """Create the private dataset ``ref`` from ``folder`` (or a new version of it) and wait until that version is
    ready; returns its number. Shared by the kops-runtime and the task-code datasets."""
    if info is None:
        kaggle.create_dataset(folder, public=False)
    else:
        kaggle.create_dataset_version(folder, notes)
    previous = int(info.get("current_version_number") or 0) if info else 0
    return kaggle.wait_dataset_ready(ref, min_version=previous + 1)
