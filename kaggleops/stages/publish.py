"""Run → versioned Kaggle dataset, with a manifest pointing back to the run and commit.

- The target (``--dataset owner/slug``, the derived title) is validated before anything is uploaded.
- Identical weights (the same sha256 per file as the ``kops-manifest.json`` of the latest version) make no
  upload and no version: the run is tagged with the existing version.
- Sub-folders (e.g. ``vocab/``, ``checkpoints/``) travel as deterministic ``<folder>.zip`` files listed under
  ``archives`` in the manifest; :func:`kaggleops.kernel.runtime.restore_model_dir` (the one restore, used by
  the kernel and by ``kops kernel run-local``) turns a downloaded version back into the model folder.
- Files are staged in a fresh folder under ``.kops/publish/`` each time, with their own modification times: the
  official client keys its saved upload state (upload URL and token, kept 6 days) on path, size and mtime, and
  reusing that state would resend upload tokens a finished create already spent.
- The run is tagged ``kops.dataset`` / ``kops.dataset.version`` only after the version is READY and its
  number has been read back; any failure before that leaves the run untagged and names the command to retry.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kaggleops import __version__
from kaggleops.adapters.kaggle import DEFAULT_POLL_S, Kaggle
from kaggleops.adapters.session import Session
from kaggleops.adapters.tracking import Tracker
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError, CredentialsMissing, DataError, KaggleError, MissingArtifact, PublishError
from kaggleops.files import sha256_file, zip_folder
from kaggleops.refs import DatasetRef, slugify
from kaggleops.schema import (
    ARTIFACT_MODEL,
    DATASET_METADATA,
    MANIFEST,
    TAG_DATASET,
    TAG_DATASET_VERSION,
    TAG_FOLD,
    TAG_GIT_COMMIT,
    TAG_GIT_REPO,
    TAG_KIND,
    TAG_PUBLISHED_KIND,
    TAG_PUBLISHED_REF,
    TAG_PUBLISHED_URL,
    TAG_PUBLISHED_VERSION,
    FileEntry,
    Kind,
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
    """``owner/<experiment>-<run name>-<run id prefix>``: one dataset per run, new versions when republished; the
    experiment (the competition slug by default) in the name keeps two competitions' datasets apart."""
    run = slugify(run_name or "run", SLUG_MAX - 9)
    prefix = slugify(cfg.experiment_name, SLUG_MAX - 10 - len(run))  # the experiment is shortened, the run name kept
    stem = f"{prefix}-{run}" if prefix else run
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


def stage_run(tracker: Tracker, run_id: str, staging: Path) -> tuple[Path, Path, dict[str, str]]:
    """Download the run's model folder; build the upload folder (files + one zip per sub-folder).

    Returns (model folder as logged, upload folder, archives ``{"vocab.zip": "vocab"}``).
    """
    if ARTIFACT_MODEL not in tracker.list_artifacts(run_id):
        run = tracker.get_run(run_id)
        status = run.status
        if status in ("KILLED", "FAILED", "RUNNING"):
            fold = run.tags.get(TAG_FOLD)
            sample = run.params.get("data") == "sample"
            again = shlex.join(["kops", "train", "--resume", *(["--fold", fold] if fold else []),
                                *(["--sample"] if sample else [])])
            raise MissingArtifact(f"Run {run_id} has no model to publish: it is {status}, stopped before it finished "
                                  "(the model is logged when a fold ends).", f"Finish it with: {again}")
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
    if progress:
        for line in upload_lines(ref, folder):
            print(line, file=sys.stderr, flush=True)
    if info is None:
        kaggle.create_dataset(folder, public=public, ref=ref, quiet=not progress)
    else:
        if info.get("status") != "ready":
            kaggle.wait_dataset_ready(ref, previous, poll_s=poll_s)
        kaggle.create_dataset_version(folder, notes, ref=ref, previous=previous, quiet=not progress,
                                      poll_s=poll_s)
    return kaggle.wait_dataset_ready(ref, min_version=previous + 1, poll_s=poll_s)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def upload_lines(ref: DatasetRef, folder: Path, width: int = 80) -> list[str]:
    """What is about to be uploaded, one line per file (name and size, at most ``width`` characters)."""
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name)
    total = sum(p.stat().st_size for p in files)
    lines = [f"uploading {len(files)} file(s), {_size(total)}, to {ref.ref}"[:width]]
    for p in files:
        size = _size(p.stat().st_size)
        name = p.name if len(p.name) <= width - len(size) - 4 else p.name[:width - len(size) - 5] + "…"
        lines.append(f"  {name}  {size}")
    return lines


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@contextmanager
def publish_failures(run_id: str, target: str, retry: str) -> Iterator[None]:
    """A Kaggle failure while publishing ``run_id`` to ``target`` as one PublishError (the run stays untagged);
    credential and config errors pass through as they are. Shared by datasets and Kaggle Models."""
    try:
        yield
    except (CredentialsMissing, ConfigError):
        raise
    except KaggleError as e:
        raise PublishError(f"Publishing run {run_id} to {target} failed: {e.message}",
                           f"The run is left untagged; retry with: {retry}") from e


def uploaded_bytes(folder: Path, metadata_file: str) -> int:
    """Bytes of a staged folder's files that went up (the metadata file is sent as request fields)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.name != metadata_file)


def check_weights(model: Path, run_id: str) -> None:
    """Load every weights file of a model folder (and parse its JSON files) before anything is uploaded;
    a DataError names the first one that does not load."""
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                load_file(str(path), device="cpu")
            elif path.suffix in WEIGHT_SUFFIXES and _claims_torch(path):
                import torch

                torch.load(path, map_location="cpu", weights_only=True)
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as e:  # noqa: BLE001 - whatever the loader says, the file is unusable
            rel = path.relative_to(model).as_posix()
            raise DataError(f"Run {run_id}: model/{rel} does not load ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else 'no message'}); nothing uploaded.",
                            "Fix or re-log the run's model folder, then publish again.") from None


def _claims_torch(path: Path) -> bool:
    """A ``.bin``/``.pt`` file written by ``torch.save`` (a zip archive, or a pickle in the legacy format). Other
    formats under those suffixes (a LightGBM or raw numpy ``.bin`` of a user's task) are not torch's to judge."""
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def check_namespace(ref: DatasetRef) -> None:
    """Refuse a dataset in another user's namespace before uploading (Kaggle would answer 403 after the upload)."""
    from kaggleops.adapters.credentials import kaggle_credentials

    found = kaggle_credentials()
    user = found[0].value if found else None
    if user and ref.owner.lower() != user.lower():
        raise ConfigError(f"Dataset {ref.ref} is in {ref.owner}'s namespace, but the Kaggle credentials are "
                          f"{user}'s; nothing uploaded.",
                          f"Publish into your own: --dataset {user}/{ref.slug} (or set `owner: {user}` in kops.yaml).")


@dataclass(frozen=True)
class PublishedFolds:
    """``kops publish PARENT`` of a k-fold parent: one dataset per fold run (see :func:`publish`)."""

    parent_run_id: str
    folds: list[PublishResult]

    def as_dict(self) -> dict[str, object]:
        return {"parent_run_id": self.parent_run_id, "folds": [f.as_dict() for f in self.folds]}


def publish_folds(session: Session, parent_run_id: str, public: bool | None = None, progress: bool = False,
                  poll_s: float = DEFAULT_POLL_S) -> PublishedFolds:
    """Publish every fold of a k-fold parent run, each as its own dataset (what push-kernel attaches).

    One dataset per fold, not one for all: a fold that is retrained or fixed gets a new version of its own
    dataset without re-uploading the others, a cut publish redoes only the folds not yet tagged, and the kernel
    of any subset of folds (``--run FOLD_RUN``) attaches exactly the weights it uses.
    """
    parent = session.run(session.resolve(parent_run_id))
    if parent.tags.get(TAG_KIND) != Kind.KFOLD:
        raise ConfigError(f"Run {parent_run_id} is not a k-fold parent run.",
                          f"Publish it with: kops publish {parent_run_id}")
    children = session.fold_runs(parent.id)
    if not children:
        raise MissingArtifact(f"K-fold run {parent.id} has no fold runs (no run has mlflow.parentRunId = "
                              "it).", "Train them with: kops train")
    return PublishedFolds(parent.id, [publish(session, run.id, public=public, progress=progress, poll_s=poll_s)
                                      for run in children])


def publish_run_or_folds(session: Session, run_id: str, dataset: str | None = None, public: bool | None = None,
                         progress: bool = False) -> PublishResult | PublishedFolds:
    """`kops publish RUN`: :func:`publish` for a model run, :func:`publish_folds` for a k-fold parent."""
    resolved = session.resolve(run_id)
    if session.run(resolved).tags.get(TAG_KIND) != Kind.KFOLD:
        return publish(session, resolved, dataset=dataset, public=public, progress=progress)
    if dataset:
        raise ConfigError(f"Run {resolved} is a k-fold parent: each fold gets its own dataset, so --dataset "
                          "cannot name one.", f"Drop --dataset, or publish one fold: kops publish FOLD_RUN "
                          f"--dataset {dataset}")
    return publish_folds(session, resolved, public=public, progress=progress)


def publish(session: Session, run_id: str, dataset: str | None = None, public: bool | None = None,
            progress: bool = False, poll_s: float = DEFAULT_POLL_S) -> PublishResult:
    """Publish a run's weights as a new Kaggle dataset (or a new version of it) and tag the run.

    Example:
        >>> publish(Session(load_config()), "3f2a…")  # doctest: +SKIP
        PublishResult(run_id='3f2a…', dataset='alice/tse-fold-0-3f2a9c1e', dataset_version=1, ...)
    """
    cfg, tracker = session.cfg, session.tracker
    run_id = tracker.resolve(run_id)  # a local id, or the origin id of a run pulled by `kops sync pull`
    run = tracker.get_run(run_id)
    ref, title = resolve_target(cfg, run.name, run_id, dataset)
    check_namespace(ref)
    kaggle = session.kaggle
    (cfg.root / STAGING_DIR).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=cfg.root / STAGING_DIR))
    try:
        return _publish_staged(cfg, tracker, run, ref, title, kaggle, public, progress, poll_s, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_staged(cfg: KopsConfig, tracker: Tracker, run: Any, ref: DatasetRef, title: str, kaggle: Kaggle,
                    public: bool | None, progress: bool, poll_s: float, staging: Path) -> PublishResult:
    run_id = run.id
    tags = dict(run.tags)
    is_public = (not cfg.dataset.private) if public is None else public
    model, folder, archives = stage_run(tracker, run_id, staging)
    check_weights(model, run_id)
    manifest = build_manifest(model, run_id, cfg.experiment_name, tags, archives)
    manifest.write(folder / MANIFEST)
    (folder / DATASET_METADATA).write_text(json.dumps(
        dataset_metadata(ref, title, cfg.dataset.license, run_id, tags.get(TAG_GIT_COMMIT)), indent=2))
    notes = f"kops: run {run_id} commit {tags.get(TAG_GIT_COMMIT, 'unknown')}"
    with publish_failures(run_id, ref.ref, f"kops publish {run_id} --dataset {ref.ref}"):
        info = kaggle.dataset_info(ref)
        version = _reuse_latest(kaggle, ref, info, manifest, poll_s)
        uploaded = version is None
        if version is None:
            version = _upload(kaggle, ref, folder, info, is_public, notes, progress, poll_s)
    tracker.set_tags(run_id, {TAG_DATASET: ref.ref, TAG_DATASET_VERSION: str(version)})
    record_model(tracker, run, "dataset", ref.ref, version, ref.url(kaggle.web_base), manifest)
    sent = uploaded_bytes(folder, DATASET_METADATA) if uploaded else 0
    return PublishResult(run_id, ref.ref, version, ref.url(kaggle.web_base), created=uploaded and info is None,
                         uploaded=uploaded, bytes_uploaded=sent)


def record_model(tracker: Tracker, run: Any, kind: str, ref: str, version: int, url: str, manifest: Manifest) -> str:
    """The published weight set as an MLflow 3 LoggedModel of its run (the Models tab): named after the Kaggle
    reference and version, tagged with where it lives, the run's params and each file's sha256 as params. The same
    weights published again (Kaggle kept the version) find the model they already have."""
    name = f"{ref.split('/', 1)[-1]}-v{version}"
    tags = {TAG_PUBLISHED_REF: ref, TAG_PUBLISHED_VERSION: str(version), TAG_PUBLISHED_KIND: kind,
            TAG_PUBLISHED_URL: url}
    params = {k: str(v)[:6000] for k, v in run.params.items()}
    params.update({f"sha256/{path}": entry.sha256 for path, entry in sorted(manifest.files.items())})
    return tracker.published_model(run.id, name, tags, params, model_type=f"kaggle-{kind}")
