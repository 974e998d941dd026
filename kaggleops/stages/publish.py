"""Run → versioned Kaggle dataset, with a manifest pointing back to the run and commit.

- The target (``--dataset owner/slug``, the derived title) is validated before anything is uploaded.
- Identical weights (the same sha256 per file as the ``kops-manifest.json`` of the latest version) make no
  upload and no version: the run is tagged with the existing version.
- Sub-folders (``tokenizer/``, ``checkpoints/``) travel as deterministic ``<folder>.zip`` files listed under
  ``archives`` in the manifest; :func:`kaggleops.kernel.runtime.restore_model_dir` (the one restore, used by
  the kernel and by ``kops kernel run-local``) turns a downloaded version back into the model folder.
- Files are staged under ``.kops/publish/<run id>/`` with fixed modification times, so re-running a publish
  whose upload was cut resumes it (the client keys its resume state on path, size and mtime).
- The run is tagged ``kops.dataset`` / ``kops.dataset.version`` only after the version is READY and its
  number has been read back; any failure before that leaves the run untagged and names the command to retry.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kaggleops import __version__
from kaggleops.adapters.kaggle import DEFAULT_POLL_S, Kaggle
from kaggleops.adapters.tracking import Tracker, open_tracker
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, CredentialsMissing, KaggleError, MissingArtifact, PublishError
from kaggleops.files import sha256_file, zip_folder
from kaggleops.refs import DatasetRef, slugify
from kaggleops.schema import (
    ARTIFACT_MODEL,
    DATASET_METADATA,
    MANIFEST,
    TAG_DATASET,
    TAG_DATASET_VERSION,
    TAG_GIT_COMMIT,
    TAG_GIT_REPO,
    FileEntry,
    Manifest,
)

STAGING_DIR = Path(".kops") / "publish"
TITLE_MIN, TITLE_MAX = 6, 50
SLUG_MIN, SLUG_MAX = 6, 50


@dataclass(frozen=True)
class PublishResult:
    run_id: str
    dataset: str
    dataset_version: int
    url: str
    created: bool  # True when the dataset itself was created (version 1)
    uploaded: bool = True  # False when the weights equalled the latest version's (nothing sent)
    bytes_uploaded: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def default_dataset_ref(cfg: KopsConfig, run_name: str, run_id: str) -> DatasetRef:
    """``owner/<run name>-<run id prefix>``: one dataset per run, new versions when republished."""
    stem = slugify(run_name or "run", SLUG_MAX - 9)
    return DatasetRef(cfg.kaggle_owner, f"{stem}-{run_id[:8]}")


def dataset_title(ref: DatasetRef) -> str:
    """The title kops gives a dataset: its slug in words."""
    return ref.slug.replace("-", " ").title()[:TITLE_MAX].strip()


def resolve_target(cfg: KopsConfig, run_name: str, run_id: str, dataset: str | None) -> tuple[DatasetRef, str]:
    """The dataset ref and title, checked against Kaggle's rules (slug and title 6-50 characters)."""
    if dataset:
        try:
            ref = DatasetRef.parse(dataset)
        except ValueError as e:
            raise ConfigError(f"--dataset {dataset!r} is not owner/slug with a lowercase slug of letters, digits "
                              "and dashes.", "Pass e.g. --dataset alice/tse-roberta-f0.") from e
    else:
        ref = default_dataset_ref(cfg, run_name, run_id)
    if not SLUG_MIN <= len(ref.slug) <= SLUG_MAX:
        raise ConfigError(f"Dataset slug {ref.slug!r} has {len(ref.slug)} characters; Kaggle needs "
                          f"{SLUG_MIN}-{SLUG_MAX}.", "Pass another one with --dataset owner/slug.")
    title = dataset_title(ref)
    if not TITLE_MIN <= len(title) <= TITLE_MAX:
        raise ConfigError(f"Dataset title {title!r} must be {TITLE_MIN}-{TITLE_MAX} characters.",
                          "Pass a longer slug with --dataset owner/slug.")
    return ref, title


def build_manifest(model: Path, run_id: str, experiment: str, tags: dict[str, str],
                   archives: dict[str, str]) -> Manifest:
    """The manifest: run, commit, and the sha256 of every model file (paths as in the model folder)."""
    files = sorted(p for p in model.rglob("*") if p.is_file())
    return Manifest(
        kops_version=__version__,
        run_id=run_id,
        experiment=experiment,
        commit=tags.get(TAG_GIT_COMMIT),
        repo_url=tags.get(TAG_GIT_REPO),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        files={p.relative_to(model).as_posix(): FileEntry(sha256_file(p), p.stat().st_size) for p in files},
        archives=archives,
    )


def dataset_metadata(ref: DatasetRef, title: str, license_name: str, run_id: str,
                     commit: str | None) -> dict[str, object]:
    """dataset-metadata.json for the client."""
    return {
        "id": ref.ref,
        "title": title,
        "licenses": [{"name": license_name}],
        "description": f"Model weights of MLflow run `{run_id}` (commit `{commit or 'unknown'}`), published by kops. "
                       f"`{MANIFEST}` lists every file with its sha256; sub-folders are stored as `<folder>.zip`.",
    }


def stage_run(tracker: Tracker, run_id: str, staging: Path, mtime: float) -> tuple[Path, Path, dict[str, str]]:
    """Download the run's model folder; build the upload folder (files + one zip per sub-folder).

    Returns (model folder as logged, upload folder, archives ``{"tokenizer.zip": "tokenizer"}``).
    """
    if ARTIFACT_MODEL not in tracker.list_artifacts(run_id):
        raise MissingArtifact(f"Run {run_id} has no `{ARTIFACT_MODEL}/` artifact to publish.",
                              "Publish a run made by `kops train` (it logs the model folder).")
    shutil.rmtree(staging / "download", ignore_errors=True)
    model = tracker.download(run_id, ARTIFACT_MODEL, staging / "download")
    upload = staging / "dataset"
    shutil.rmtree(upload, ignore_errors=True)
    upload.mkdir(parents=True)
    archives: dict[str, str] = {}
    for entry in sorted(model.iterdir()):
        if entry.is_dir():
            archives[f"{entry.name}.zip"] = entry.name
            zip_folder(entry, upload / f"{entry.name}.zip")
        else:
            shutil.copyfile(entry, upload / entry.name)
    for path in upload.iterdir():
        os.utime(path, (mtime, mtime))
    return model, upload, archives


def _reuse_latest(kaggle: Kaggle, ref: DatasetRef, info: dict[str, Any] | None,
                  manifest: Manifest, poll_s: float) -> int | None:
    """The latest version's number when its manifest lists the same files with the same sha256s."""
    if info is None:
        return None
    latest = kaggle.latest_manifest(ref)
    if not latest or latest.files != manifest.files:
        return None
    return kaggle.wait_dataset_ready(ref, int(info.get("current_version_number") or 1), poll_s=poll_s)


def _upload(kaggle: Kaggle, ref: DatasetRef, folder: Path, info: dict[str, Any] | None, public: bool,
            notes: str, progress: bool, poll_s: float) -> int:
    """Create the dataset or a new version; wait until READY and return the version number read back."""
    previous = int(info.get("current_version_number") or 0) if info else 0
    if info is None:
        kaggle.create_dataset(folder, public=public, ref=ref, quiet=not progress)
    else:
        if info.get("status") != "ready":
            kaggle.wait_dataset_ready(ref, previous, poll_s=poll_s)
        kaggle.create_dataset_version(folder, notes, ref=ref, previous=previous, quiet=not progress,
                                      poll_s=poll_s)
    return kaggle.wait_dataset_ready(ref, min_version=previous + 1, poll_s=poll_s)


def publish(cfg: KopsConfig, run_id: str, dataset: str | None = None, public: bool | None = None,
            kaggle: Kaggle | None = None, progress: bool = False, poll_s: float = DEFAULT_POLL_S) -> PublishResult:
    """Publish a run's weights as a new Kaggle dataset (or a new version of it) and tag the run.

    Example:
        >>> publish(load_config(), "3f2a…")  # doctest: +SKIP
        PublishResult(run_id='3f2a…', dataset='alice/fold-0-3f2a9c1e', dataset_version=1, ...)
    """
    tracker = open_tracker(cfg)
    run_id = tracker.resolve(run_id)  # a local id, or the origin id of a run pulled by `kops sync pull`
    run = tracker.get_run(run_id)
    ref, title = resolve_target(cfg, run.info.run_name, run_id, dataset)
    kaggle = kaggle or Kaggle.from_config(cfg)
    tags = dict(run.data.tags)
    is_public = (not cfg.dataset.private) if public is None else public
    staging = cfg.root / STAGING_DIR / run_id
    model, folder, archives = stage_run(tracker, run_id, staging, mtime=run.info.start_time / 1000)
    manifest = build_manifest(model, run_id, cfg.experiment_name, tags, archives)
    manifest.write(folder / MANIFEST)
    (folder / DATASET_METADATA).write_text(json.dumps(
        dataset_metadata(ref, title, cfg.dataset.license, run_id, tags.get(TAG_GIT_COMMIT)), indent=2))
    notes = f"kops: run {run_id} commit {tags.get(TAG_GIT_COMMIT, 'unknown')}"
    try:
        info = kaggle.dataset_info(ref)
        version = _reuse_latest(kaggle, ref, info, manifest, poll_s)
        uploaded = version is None
        if version is None:
            version = _upload(kaggle, ref, folder, info, is_public, notes, progress, poll_s)
    except (CredentialsMissing, ConfigError):
        raise
    except KaggleError as e:
        raise PublishError(f"Publishing run {run_id} to {ref.ref} failed: {e.message}",
                           f"The run is left untagged; retry with: kops publish {run_id} --dataset {ref.ref}") from e
    tracker.set_tags(run_id, {TAG_DATASET: ref.ref, TAG_DATASET_VERSION: str(version)})
    sent = sum(p.stat().st_size for p in folder.iterdir() if p.name != DATASET_METADATA) if uploaded else 0
    shutil.rmtree(staging, ignore_errors=True)
    return PublishResult(run_id, ref.ref, version, ref.url(kaggle.web_base), created=uploaded and info is None,
                         uploaded=uploaded, bytes_uploaded=sent)
