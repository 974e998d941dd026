"""Competition data in: `kops data` and the data step of `kops train`.

Where a training run's data comes from, first match wins:

1. ``--sample`` (``kops demo`` passes it): the task's bundled synthetic sample;
2. ``--data DIR``, else ``data_dir:`` in kops.yaml;
3. inside a Kaggle notebook, the attached competition: ``/kaggle/input/competitions/<slug>/`` (the layout
   Kaggle uses now) or ``/kaggle/input/<slug>/`` (the older one); ``KOPS_KAGGLE_INPUT`` moves the root;
4. the download cache ``~/.cache/kops/competitions/<slug>/`` (``KOPS_CACHE_DIR`` moves it), filled by
   ``kops data`` (or by ``kops train`` itself) through the official client's ``competition_download_files``,
   unzipped and checked against the task's columns; reused while its files match the sha256s recorded then.

Nothing falls back to the sample silently: when no data is found and the download fails, the error names
``kops data``. Runs record what they trained on as an MLflow dataset input (:meth:`DataSource.as_input`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggleops.config import KopsConfig
from kaggleops.errors import CredentialsMissing, DataError, KaggleError, RulesNotAccepted
from kaggleops.refs import KAGGLE_WEB, CompetitionRef, DatasetRef
from kaggleops.task import hook

ENV_CACHE_DIR = "KOPS_CACHE_DIR"
ENV_KAGGLE_INPUT = "KOPS_KAGGLE_INPUT"
KAGGLE_INPUT = Path("/kaggle/input")
SAMPLE = "sample"
CACHE_RECORD = ".kops-data.json"
TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"


@dataclass(frozen=True)
class DataSource:
    """A folder of competition files and where it came from.

    ``origin``: ``sample`` | ``argument`` | ``config`` | ``kaggle-input`` | ``cache`` | ``download``.
    ``files``: sha256 of each top-level file the run may read (train.csv, test.csv, ...).
    """

    folder: Path
    origin: str
    competition: str
    files: dict[str, str] = field(default_factory=dict)
    web: str = KAGGLE_WEB  # the Kaggle site the files came from (another one for an emulator or stand-in)

    @property
    def name(self) -> str:
        """``sample`` for the bundled sample, else the competition slug."""
        return SAMPLE if self.origin == SAMPLE else self.competition

    @property
    def digest(self) -> str:
        """A short fingerprint of every file's sha256 (what MLflow shows as the dataset digest)."""
        text = json.dumps(sorted(self.files.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def train_file(self) -> Path:
        return self.folder / TRAIN_FILE

    def source_url(self) -> str:
        """Where the data lives: the competition's data page, or the local folder for the sample/own data."""
        if self.origin in ("kaggle-input", "cache", "download"):
            return f"{CompetitionRef(self.competition).url(self.web)}/data"
        return self.folder.resolve().as_uri()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "competition": self.competition, "origin": self.origin,
                "folder": str(self.folder), "digest": self.digest, "files": dict(self.files)}

    def as_input(self) -> dict[str, str]:
        """What :meth:`Tracker.log_data_input` records on a run (name, digest, source, and the file sha256s)."""
        return {"name": self.name, "digest": self.digest, "source": self.source_url(),
                "source_type": "http" if self.source_url().startswith("http") else "local",
                "profile": json.dumps({"origin": self.origin, "files": self.files}, sort_keys=True)}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each top-level file of ``folder`` (hidden files and sub-folders left out)."""
    return {p.name: sha256_of(p) for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


# ---- where data can be ------------------------------------------------------------------------

def kaggle_input_root() -> Path:
    """``/kaggle/input``, or ``KOPS_KAGGLE_INPUT`` (tests, the emulator's kernels, a machine without /kaggle)."""
    return Path(os.environ.get(ENV_KAGGLE_INPUT) or KAGGLE_INPUT)


def attached_competition_dir(slug: str, root: Path | None = None) -> Path | None:
    """The competition's folder as a Kaggle notebook sees it (current layout first, then the older one)."""
    root = root or kaggle_input_root()
    for folder in (root / "competitions" / slug, root / slug):
        if folder.is_dir() and any(folder.glob("*.csv")):
            return folder
    return None


def attached_dataset_dir(ref: DatasetRef, root: Path | None = None) -> Path | None:
    """A dataset's folder as a Kaggle notebook sees it: ``datasets/<owner>/<slug>/``, else ``<slug>/``."""
    root = root or kaggle_input_root()
    for folder in (root / "datasets" / ref.owner / ref.slug, root / ref.slug):
        if folder.is_dir():
            return folder
    return None


def cache_root() -> Path:
    """``KOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/kops``, else ``~/.cache/kops``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kops"


def cache_dir(slug: str, endpoint: str | None = None) -> Path:
    """The download cache of one competition from one Kaggle site: ``competitions/<slug>/`` for kaggle.com,
    ``sites/<host_port>/competitions/<slug>/`` for another endpoint (an emulator), so two never share files."""
    if not endpoint or endpoint.rstrip("/") == KAGGLE_WEB:
        return cache_root() / "competitions" / slug
    site = re.sub(r"[^A-Za-z0-9.-]+", "_", endpoint.split("://", 1)[-1]).strip("_")
    return cache_root() / "sites" / site / "competitions" / slug


# ---- checks -----------------------------------------------------------------------------------

def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def check_columns(folder: Path, task: Any, need_train: bool = True) -> None:
    """train.csv (and test.csv, when present) carry the task's columns; else a DataError naming the file.

    The columns are the task's optional ``train_columns`` / ``test_columns``; a task without them is checked by
    its own ``load_train`` when a run reads the file.
    """
    wanted = [(TRAIN_FILE, tuple(hook(task, "train_columns")), need_train),
              (TEST_FILE, tuple(hook(task, "test_columns")), False)]
    for name, columns, required in wanted:
        path = folder / name
        if not path.is_file():
            if required:
                raise DataError(f"No {name} in {folder}.", "Fetch the competition's files with: kops data")
            continue
        missing = [c for c in columns if c not in _header(path)]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected columns: {', '.join(columns)}")


# ---- the cache --------------------------------------------------------------------------------

def cached(slug: str, endpoint: str | None = None) -> DataSource | None:
    """The cached download (from ``endpoint``: None = kaggle.com) when it is complete and unchanged since it was
    checked, else None."""
    folder = cache_dir(slug, endpoint)
    try:
        record = json.loads((folder / CACHE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    files = record.get("files") or {}
    if not files or any(not (folder / n).is_file() or sha256_of(folder / n) != h for n, h in files.items()):
        return None
    return DataSource(folder, "cache", slug, dict(files), (endpoint or KAGGLE_WEB).rstrip("/"))


def credential_used() -> str:
    """Which Kaggle credential a call used, by name and source (never the value)."""
    from kaggleops.adapters.credentials import kaggle_credentials

    if os.environ.get("KAGGLE_API_TOKEN"):
        return "the KAGGLE_API_TOKEN access token"
    found = kaggle_credentials()
    if found is None:
        return "no credential"
    user, key = found
    where = {"env": "KAGGLE_USERNAME/KAGGLE_KEY", "file": "kaggle.json"}.get(key.source, key.source)
    return f"user {user.value} (from {where})"


def download(cfg: KopsConfig, task: Any, kaggle: Any = None, force: bool = False) -> DataSource:
    """Download the competition's files into the cache (unzipped, checked); reuse the cache unless ``force``.

    Example:
        >>> download(load_config(), get_task("digit-recognizer"))  # doctest: +SKIP
        DataSource(folder=PosixPath('/home/alice/.cache/kops/competitions/digit-recognizer'), ...)
    """
    from kaggleops.adapters.kaggle import Kaggle

    ref = CompetitionRef.parse(cfg.competition)
    endpoint = cfg.resolved_kaggle_endpoint
    if not force and (hit := cached(ref.slug, endpoint)) is not None:
        return hit
    kaggle = kaggle or Kaggle.from_config(cfg)
    folder = cache_dir(ref.slug, endpoint)
    staging = folder.with_name(f".{ref.slug}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        kaggle.download_competition(ref, staging)
    except RulesNotAccepted as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise RulesNotAccepted(f"Kaggle refused the files of {ref} as {credential_used()}: the competition's rules "
                               "are not accepted.",
                               f"Accept them at {ref.rules_url(kaggle.web_base)} and run: kops data") from e
    check_columns(staging, task)
    files = file_hashes(staging)
    (staging / CACHE_RECORD).write_text(json.dumps({"competition": ref.slug, "files": files}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return DataSource(folder, "download", ref.slug, files, kaggle.web_base.rstrip("/"))


# ---- the data step of a run -------------------------------------------------------------------

def _sample(cfg: KopsConfig, task: Any) -> DataSource:
    folder = hook(task, "sample_dir")()
    if folder is None:
        raise DataError(f"Task {task.name} bundles no sample data.", "Fetch the competition's files with: kops data")
    folder = Path(folder)
    return DataSource(folder, SAMPLE, cfg.competition, file_hashes(folder))


def _local(folder: Path, origin: str, cfg: KopsConfig, task: Any) -> DataSource:
    if not (folder / TRAIN_FILE).is_file():
        raise DataError(f"No {TRAIN_FILE} in {folder}.", "Point `data_dir:` in kops.yaml (or --data) at the "
                        "competition's files, or fetch them with: kops data")
    check_columns(folder, task)
    return DataSource(folder, origin, cfg.competition, file_hashes(folder))


def resolve(cfg: KopsConfig, task: Any, data_dir: Path | None = None, sample: bool = False,
            fetch: bool = True, kaggle: Any = None) -> DataSource:
    """The data a training run uses (see the module docstring for the order); downloads when ``fetch``.

    Example:
        >>> resolve(load_config(), task, sample=True).name  # doctest: +SKIP
        'sample'
    """
    if sample:
        return _sample(cfg, task)
    if data_dir is not None:
        return _local(Path(data_dir), "argument", cfg, task)
    if cfg.resolved_data_dir() is not None:
        return _local(cfg.resolved_data_dir(), "config", cfg, task)  # type: ignore[arg-type]
    attached = attached_competition_dir(cfg.competition)
    if attached is not None:
        return _local(attached, "kaggle-input", cfg, task)
    hit = cached(cfg.competition, cfg.resolved_kaggle_endpoint)
    if hit is not None:
        return hit
    if not fetch:
        raise _missing(cfg, "")
    try:
        return download(cfg, task, kaggle=kaggle)
    except RulesNotAccepted:
        raise
    except (CredentialsMissing, KaggleError) as e:
        raise _missing(cfg, f" and the download failed: {e.message.rstrip('.')}") from None


def _missing(cfg: KopsConfig, why: str) -> DataError:
    cache = cache_dir(cfg.competition, cfg.resolved_kaggle_endpoint)
    return DataError(f"No data for competition {cfg.competition}: no data_dir, nothing attached under "
                     f"{kaggle_input_root()}, nothing cached in {cache}{why}.",
                     "Fetch it with: kops data (or train on the bundled sample: kops train --sample)")


def fetch(cfg: KopsConfig, force: bool = False, kaggle: Any = None) -> DataSource:
    """`kops data`: the competition's files as a run would find them, downloading into the cache when needed.

    An attached Kaggle input (inside a notebook) or ``data_dir`` is reported, not downloaded; ``force`` downloads
    into the cache again.
    """
    from kaggleops.tasks import task_for

    task = task_for(cfg)
    if force:
        return download(cfg, task, kaggle=kaggle, force=True)
    return resolve(cfg, task, kaggle=kaggle)
