"""Run → versioned Kaggle Model instance: the second publish target (``kops publish RUN --to model``).

Same guarantees as the dataset target (:mod:`kaggleops.stages.publish`), through the official client's models
API (``model_create_new`` → ``model_instance_create`` → ``model_instance_version_create``):

- a ``kops-manifest.json`` beside the weights names the run, the experiment, the commit and every file's sha256;
- identical weights (the latest instance version's manifest lists the same sha256s) make no upload and no
  version: the run is tagged with the existing one;
- the run is tagged ``kops.model`` (``owner/model/framework/variation``) and ``kops.model.version`` only once
  the version exists and its number has been read back;
- kernels attach it as a model source (``owner/model/framework/variation/version``) and find it by manifest.

Default target: model ``<owner>/<experiment>``, framework ``transformers`` (the weights are a
``save_pretrained`` folder), one variation per run (``<run name>-<run id prefix>``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.adapters.session import Session
from kaggleops.config import KopsConfig
from kaggleops.errors import ConfigError
from kaggleops.refs import ModelRef, slugify
from kaggleops.schema import MANIFEST, TAG_GIT_COMMIT, TAG_MODEL, TAG_MODEL_VERSION, Manifest
from kaggleops.stages.publish import (
    STAGING_DIR,
    build_manifest,
    check_weights,
    publish_failures,
    record_model,
    stage_run,
    uploaded_bytes,
)

MODEL_METADATA = "model-metadata.json"
INSTANCE_METADATA = "model-instance-metadata.json"
DEFAULT_FRAMEWORK = "transformers"
SLUG_MAX = 50


@dataclass(frozen=True)
class ModelPublishResult:
    run_id: str
    model: str  # owner/model/framework/variation
    model_version: int
    url: str
    created: bool  # True when the instance itself was created (version 1)
    uploaded: bool = True
    bytes_uploaded: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"target": "model", **asdict(self)}

    @property
    def source(self) -> str:
        """The kernel model source: ``owner/model/framework/variation/version``."""
        return f"{self.model}/{self.model_version}"


def resolve_model_target(cfg: KopsConfig, run_name: str, run_id: str, model: str | None) -> ModelRef:
    """The instance to publish to: ``--model owner/model/framework/variation``, else the default."""
    if model:
        try:
            return ModelRef.parse(model)
        except ValueError as e:
            raise ConfigError(str(e), "Pass e.g. --model alice/tse-roberta/transformers/fold-0.") from None
    variation = f"{slugify(run_name or 'run', SLUG_MAX - 9)}-{run_id[:8]}"
    return ModelRef(cfg.kaggle_owner, slugify(cfg.experiment_name, SLUG_MAX), DEFAULT_FRAMEWORK, variation)


def model_metadata(ref: ModelRef, private: bool) -> dict[str, object]:
    return {"ownerSlug": ref.owner, "slug": ref.slug, "title": ref.slug.replace("-", " ").title()[:50],
            "isPrivate": private, "description": "Model weights published by kops; each variation is one MLflow run "
                                                 f"and carries `{MANIFEST}` (run id, commit, file sha256s)."}


def instance_metadata(ref: ModelRef, license_name: str, run_id: str, commit: str | None) -> dict[str, object]:
    return {"ownerSlug": ref.owner, "modelSlug": ref.slug, "instanceSlug": ref.variation,
            "framework": ref.framework, "licenseName": license_name,
            "overview": f"Weights of MLflow run `{run_id}` (commit `{commit or 'unknown'}`).",
            "usage": f"Attach as a model source; `{MANIFEST}` names the run. Sub-folders travel as `<folder>.zip`."}


def _reuse_latest(kaggle: Kaggle, ref: ModelRef, current: int | None, manifest: Manifest) -> int | None:
    if not current:
        return None
    latest = kaggle.model_manifest(ref, current)
    return current if latest and latest.files == manifest.files else None


def publish_model(session: Session, run_id: str, model: str | None = None, public: bool | None = None,
                  progress: bool = False) -> ModelPublishResult:
    """Publish a run's weights as a Kaggle Model instance version and tag the run.

    Example:
        >>> publish_model(Session(load_config()), "3f2a…")  # doctest: +SKIP
        ModelPublishResult(run_id='3f2a…', model='alice/tse/transformers/fold-0-3f2a9c1e', model_version=1, ...)
    """
    cfg, tracker, kaggle = session.cfg, session.tracker, session.kaggle
    run_id = tracker.resolve(run_id)
    run = tracker.get_run(run_id)
    ref = resolve_model_target(cfg, run.name, run_id, model)
    private = cfg.dataset.private if public is None else not public
    # a fresh folder per publish, like datasets: no upload record of an earlier attempt matches it
    (cfg.root / STAGING_DIR).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{run_id}-model-", dir=cfg.root / STAGING_DIR))
    try:
        return _publish_staged(cfg, tracker, run, ref, kaggle, private, progress, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_staged(cfg: KopsConfig, tracker: Any, run: Any, ref: ModelRef, kaggle: Kaggle, private: bool,
                    progress: bool, staging: Path) -> ModelPublishResult:
    run_id = run.id
    tags = dict(run.tags)
    weights, folder, archives = stage_run(tracker, run_id, staging)
    check_weights(weights, run_id)
    manifest = build_manifest(weights, run_id, cfg.experiment_name, tags, archives)
    manifest.write(folder / MANIFEST)
    commit = tags.get(TAG_GIT_COMMIT)
    (folder / INSTANCE_METADATA).write_text(json.dumps(
        instance_metadata(ref, cfg.dataset.license, run_id, commit), indent=2))
    notes = f"kops: run {run_id} commit {commit or 'unknown'}"
    with publish_failures(run_id, f"model {ref.ref}", f"kops publish {run_id} --to model --model {ref.ref}"):
        current = kaggle.model_instance_version(ref) if kaggle.model_exists(ref) else None
        version = _reuse_latest(kaggle, ref, current, manifest)
        uploaded = version is None
        if version is None:
            version = _upload(kaggle, ref, folder, staging, current, private, notes, progress)
    tracker.set_tags(run_id, {TAG_MODEL: ref.ref, TAG_MODEL_VERSION: str(version)})
    sent = uploaded_bytes(folder, INSTANCE_METADATA) if uploaded else 0
    pinned = ModelRef(ref.owner, ref.slug, ref.framework, ref.variation, version)
    record_model(tracker, run, "model", ref.ref, version, pinned.url(kaggle.web_base), manifest)
    return ModelPublishResult(run_id, ref.ref, version, pinned.url(kaggle.web_base), created=uploaded and not current,
                              uploaded=uploaded, bytes_uploaded=sent)


def _upload(kaggle: Kaggle, ref: ModelRef, folder: Path, staging: Path, current: int | None, private: bool,
            notes: str, progress: bool) -> int:
    """Create the model and instance, or a new instance version; return the version number read back."""
    if current:
        return kaggle.create_model_instance_version(folder, ref, notes, previous=current, quiet=not progress)
    if not kaggle.model_exists(ref):
        meta = staging / "model"
        meta.mkdir(parents=True, exist_ok=True)
        (meta / MODEL_METADATA).write_text(json.dumps(model_metadata(ref, private), indent=2))
        kaggle.create_model(meta, ref)
    return kaggle.create_model_instance(folder, ref, quiet=not progress)
