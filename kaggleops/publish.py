"""Run → versioned Kaggle dataset, with a manifest pointing back to the run and commit.

The run is tagged ``kops.dataset`` / ``kops.dataset.version`` only after the version is READY and its
number has been read back; any failure before that leaves the run untagged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kaggleops import __version__
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, MissingArtifact
from kaggleops.kaggle import Kaggle
from kaggleops.refs import DatasetRef, slugify
from kaggleops.tracking import TAG_DATASET, TAG_DATASET_VERSION, TAG_GIT_COMMIT, TAG_GIT_REPO, Tracker

MODEL_ARTIFACT = "model"
MANIFEST = "kops-manifest.json"
DATASET_METADATA = "dataset-metadata.json"
TITLE_MIN, TITLE_MAX = 6, 50
SLUG_MIN, SLUG_MAX = 6, 50


@dataclass(frozen=True)
class PublishResult:
    run_id: str
    dataset: str
    dataset_version: int
    url: str
    created: bool  # True when the dataset itself was created (version 1)

    def as_dict(self) -> dict[str, object]:
        return {"run_id": self.run_id, "dataset": self.dataset, "dataset_version": self.dataset_version,
                "url": self.url, "created": self.created}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_dataset_ref(cfg: KopsConfig, run_name: str, run_id: str) -> DatasetRef:
    """``owner/<run name>-<run id prefix>``: one dataset per run, new versions when republished."""
    stem = slugify(run_name or "run", SLUG_MAX - 9)
    return DatasetRef(cfg.kaggle_owner, f"{stem}-{run_id[:8]}")


def build_manifest(staged: Path, run_id: str, experiment: str, tags: dict[str, str]) -> dict[str, object]:
    files = sorted(p for p in staged.rglob("*") if p.is_file())
    return {
        "kops_version": __version__,
        "run_id": run_id,
        "experiment": experiment,
        "commit": tags.get(TAG_GIT_COMMIT),
        "repo_url": tags.get(TAG_GIT_REPO),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {str(p.relative_to(staged)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
    }


def dataset_metadata(ref: DatasetRef, license_name: str, run_id: str, commit: str | None) -> dict[str, object]:
    title = ref.slug.replace("-", " ").title()[:TITLE_MAX]
    if not (TITLE_MIN <= len(title) <= TITLE_MAX) or not (SLUG_MIN <= len(ref.slug) <= SLUG_MAX):
        raise ConfigError(f"Dataset slug {ref.slug!r} must be {SLUG_MIN}-{SLUG_MAX} characters.",
                          "Pass a different one with --dataset owner/slug.")
    return {
        "id": ref.ref,
        "title": title,
        "licenses": [{"name": license_name}],
        "description": f"Model weights of MLflow run `{run_id}` (commit `{commit or 'unknown'}`), published by kops. "
                       f"`{MANIFEST}` lists every file with its sha256.",
    }


def stage_run(tracker: Tracker, run_id: str, staging: Path) -> Path:
    """Download the run's model folder into ``staging`` (flat files + sub-folders as they were logged)."""
    if MODEL_ARTIFACT not in tracker.list_artifacts(run_id):
        raise MissingArtifact(f"Run {run_id} has no `{MODEL_ARTIFACT}/` artifact to publish.",
                              "Publish a run made by `kops train` (it logs the model folder).")
    downloaded = tracker.download(run_id, MODEL_ARTIFACT, staging / "download")
    shutil.copytree(downloaded, staging / "dataset")
    return staging / "dataset"


def publish(cfg: KopsConfig, run_id: str, dataset: str | None = None, public: bool | None = None,
            kaggle: Kaggle | None = None) -> PublishResult:
    """Publish a run's weights as a new Kaggle dataset (or a new version of it) and tag the run.

    Example:
        >>> publish(load_config(), "3f2a…")  # doctest: +SKIP
        PublishResult(run_id='3f2a…', dataset='alice/fold-0-3f2a9c1e', dataset_version=1, ...)
    """
    tracker = Tracker(cfg)
    run = tracker.get_run(run_id)
    kaggle = kaggle or Kaggle(cfg.resolved_kaggle_endpoint)
    ref = DatasetRef.parse(dataset) if dataset else default_dataset_ref(cfg, run.info.run_name, run_id)
    tags = dict(run.data.tags)
    is_public = (not cfg.dataset.private) if public is None else public
    with tempfile.TemporaryDirectory(prefix="kops-publish-") as tmp:
        folder = stage_run(tracker, run_id, Path(tmp))
        manifest = build_manifest(folder, run_id, cfg.experiment_name, tags)
        metadata = dataset_metadata(ref, cfg.dataset.license, run_id, tags.get(TAG_GIT_COMMIT))
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        (folder / DATASET_METADATA).write_text(json.dumps(metadata, indent=2))
        before = kaggle.dataset_info(ref)
        existed = before is not None
        if existed:
            kaggle.create_dataset_version(folder, f"kops: run {run_id} commit {tags.get(TAG_GIT_COMMIT, 'unknown')}")
        else:
            kaggle.create_dataset(folder, public=is_public)
    previous = int(before.get("current_version_number") or 0) if before else 0
    version = kaggle.wait_dataset_ready(ref, min_version=previous + 1)
    tracker.set_tags(run_id, {TAG_DATASET: ref.ref, TAG_DATASET_VERSION: str(version)})
    return PublishResult(run_id, ref.ref, version, ref.url(kaggle.web_base), created=not existed)
