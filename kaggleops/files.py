"""File helpers shared by every layer: sha256 of a file and byte-reproducible zips.

Standard library only: the offline kernel runtime imports it too (it checks a dataset's sha256s).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same entries always zip to the same bytes
ZIP_MODE = 0o644 << 16
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (publish writes the manifest with it; the kernel checks it)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def write_zip(target: Path, entries: Iterable[tuple[str, Path | bytes]], compression: int = zipfile.ZIP_STORED) -> None:
    """A zip of ``entries`` (archive name, file or bytes) in the given order, with fixed times and modes, so
    equal entries give byte-equal archives. Files are streamed (zip64 where large)."""
    with zipfile.ZipFile(target, "w", compression=compression) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = ZIP_MODE
            info.compress_type = compression
            if isinstance(data, bytes):
                zf.writestr(info, data)
                continue
            with Path(data).open("rb") as f, zf.open(info, "w", force_zip64=True) as out:
                shutil.copyfileobj(f, out, CHUNK)


def zip_folder(src: Path, target: Path) -> None:
    """Every file under ``src`` (sorted, paths relative to it), stored uncompressed: :func:`write_zip`."""
    write_zip(target, [(p.relative_to(src).as_posix(), p) for p in sorted(q for q in src.rglob("*") if q.is_file())])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created) for the ``with`` block: one process at a time, across processes
    on this machine. Where there is no ``fcntl`` (Windows) it does not lock."""
    try:
        import fcntl
    except ImportError:  # kops' notebooks, kernels and VMs are Linux
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
