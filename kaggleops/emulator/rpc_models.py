"""Kaggle Models RPCs (``models.ModelApiService``): models, instances (framework + variation), versions, files.

A model ``owner/slug`` has instances keyed by (framework, variation slug); each instance has numbered versions
holding uploaded files. Kernels attach a version as ``owner/model/framework/variation/version``
(``modelDataSources``) and see it under ``/kaggle/input/models/owner/model/framework/variation/version/``
(the older layout: ``/kaggle/input/<model>/<framework>/<variation>/<version>/``).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import ApiError, EmulatorConfig, Redirect, RpcContext, iso, page_of, safe_name, utc_now
from .state import Blob, Store

Body = dict[str, Any]
FRAMEWORK_PREFIX = "MODEL_FRAMEWORK_"


@dataclass
class ModelFile:
    name: str
    path: Path
    size: int
    created: datetime = field(default_factory=utc_now)


@dataclass
class ModelInstanceVersion:
    number: int
    files: list[ModelFile]
    notes: str
    created: datetime = field(default_factory=utc_now)


@dataclass
class ModelInstance:
    id: int
    framework: str  # as in paths: "transformers", "pytorch", ... (see framework_name)
    slug: str
    license_name: str
    wire: str = ""  # the enum name the client sent, e.g. MODEL_FRAMEWORK_PY_TORCH
    versions: list[ModelInstanceVersion] = field(default_factory=list)


@dataclass
class Model:
    id: int
    owner: str
    slug: str
    title: str
    is_private: bool
    description: str = ""
    instances: dict[tuple[str, str], ModelInstance] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"


def framework_name(value: object) -> str:
    """``MODEL_FRAMEWORK_TRANSFORMERS`` / ``transformers`` / ``Transformers`` → ``transformers``."""
    text = str(value or "").strip()
    if text.upper().startswith(FRAMEWORK_PREFIX):
        text = text[len(FRAMEWORK_PREFIX):]
    text = text.replace("_", "").lower()
    if not text or text == "unspecified":
        raise ApiError(400, "A model instance needs a framework")
    return text


def models_of(store: Store) -> dict[tuple[str, str], Model]:
    """The store's models (kept beside datasets and kernels)."""
    return store.models


def version_files(store: Store, ref: str) -> tuple[tuple[str, str, str, str, int], dict[str, Path]] | None:
    """(parts, files) of a kernel's model source ``owner/model/framework/variation/version``; None when unknown."""
    parts = [p for p in str(ref).strip("/").split("/") if p]
    if len(parts) != 5 or not parts[4].isdigit():
        return None
    owner, slug, framework, variation, number = parts[0], parts[1], framework_name(parts[2]), parts[3], int(parts[4])
    model = models_of(store).get((owner, slug))
    instance = model.instances.get((framework, variation)) if model else None
    if instance is None or not 1 <= number <= len(instance.versions):
        return None
    return (owner, slug, framework, variation, number), {f.name: f.path for f in instance.versions[number - 1].files}


class ModelService:
    """Handlers for Kaggle Models."""

    routes = {
        "models.ModelApiService/GetModel": "get_model",
        "models.ModelApiService/CreateModel": "create_model",
        "models.ModelApiService/GetModelInstance": "get_model_instance",
        "models.ModelApiService/CreateModelInstance": "create_model_instance",
        "models.ModelApiService/CreateModelInstanceVersion": "create_model_instance_version",
        "models.ModelApiService/ListModelInstanceVersions": "list_model_instance_versions",
        "models.ModelApiService/ListModelInstanceVersionFiles": "list_model_instance_version_files",
        "models.ModelApiService/DownloadModelInstanceVersion": "download_model_instance_version",
    }

    def __init__(self, store: Store, config: EmulatorConfig) -> None:
        self.store = store
        self.config = config

    # ---- models --------------------------------------------------------------------------------

    def _model(self, ctx: RpcContext, owner: str, slug: str) -> Model:
        model = models_of(self.store).get((owner, slug))
        if model is None or (model.is_private and owner != ctx.user):
            raise ApiError(404, f"Model {owner}/{slug} not found")
        return model

    def get_model(self, ctx: RpcContext, body: Body) -> Body:
        model = self._model(ctx, str(body.get("ownerSlug", "")), str(body.get("modelSlug", "")))
        return self._model_view(model, ctx)

    def create_model(self, ctx: RpcContext, body: Body) -> Body:
        owner, slug = str(body.get("ownerSlug") or ctx.user), str(body.get("slug", ""))
        if owner != ctx.user:
            raise ApiError(403, f"User {ctx.user} cannot create models owned by {owner}")
        if (owner, slug) in models_of(self.store):
            return {"error": f"Model {owner}/{slug} already exists", "errorCode": 409}
        if not slug or not body.get("title"):
            return {"error": "A model needs a slug and a title", "errorCode": 400}
        model = Model(self.store.next_id(), owner, slug, str(body["title"]), bool(body.get("isPrivate", False)),
                      str(body.get("description") or ""))
        models_of(self.store)[(owner, slug)] = model
        return {"id": model.id, "ref": model.ref, "url": f"{ctx.base_url}/models/{model.ref}"}

    # ---- instances and versions ----------------------------------------------------------------

    def _instance(self, ctx: RpcContext, body: Body) -> tuple[Model, ModelInstance]:
        model = self._model(ctx, str(body.get("ownerSlug", "")), str(body.get("modelSlug", "")))
        key = (framework_name(body.get("framework")), str(body.get("instanceSlug", "")))
        instance = model.instances.get(key)
        if instance is None:
            raise ApiError(404, f"Model instance {model.ref}/{key[0]}/{key[1]} not found")
        return model, instance

    def get_model_instance(self, ctx: RpcContext, body: Body) -> Body:
        model, instance = self._instance(ctx, body)
        return self._instance_view(model, instance, ctx)

    def create_model_instance(self, ctx: RpcContext, body: Body) -> Body:
        owner, slug = str(body.get("ownerSlug", "")), str(body.get("modelSlug", ""))
        model = self._model(ctx, owner, slug)
        if owner != ctx.user:
            raise ApiError(403, f"User {ctx.user} cannot add instances to model {model.ref}")
        inner = body.get("body") or {}
        key = (framework_name(inner.get("framework")), str(inner.get("instanceSlug", "")))
        if key in model.instances:
            return {"error": f"Instance {model.ref}/{key[0]}/{key[1]} already exists", "errorCode": 409}
        if not inner.get("licenseName"):
            return {"error": "A model instance needs a license", "errorCode": 400}
        wire = str(inner.get("framework"))
        instance = ModelInstance(self.store.next_id(), key[0], key[1], str(inner["licenseName"]),
                                 wire if wire.startswith(FRAMEWORK_PREFIX) else FRAMEWORK_PREFIX + key[0].upper())
        self._add_version(model, instance, inner, "Initial version")
        model.instances[key] = instance
        return {"id": instance.id, "ref": f"{model.ref}/{key[0]}/{key[1]}",
                "url": f"{ctx.base_url}/models/{model.ref}/{key[0]}/{key[1]}/1"}

    def create_model_instance_version(self, ctx: RpcContext, body: Body) -> Body:
        model, instance = self._instance(ctx, body)
        if model.owner != ctx.user:
            raise ApiError(403, f"User {ctx.user} cannot version model {model.ref}")
        inner = body.get("body") or {}
        version = self._add_version(model, instance, inner, str(inner.get("versionNotes") or ""))
        ref = f"{model.ref}/{instance.framework}/{instance.slug}"
        return {"id": instance.id, "ref": ref, "url": f"{ctx.base_url}/models/{ref}/{version.number}"}

    def _add_version(self, model: Model, instance: ModelInstance, inner: Body, notes: str) -> ModelInstanceVersion:
        entries: list[tuple[str, Blob]] = []
        self._walk(inner.get("files") or [], inner.get("directories") or [], "", entries)
        if not entries:
            raise ApiError(400, "A model instance version needs at least one file")
        number = len(instance.versions) + 1
        base = self.store.dir("models", model.owner, model.slug, instance.framework, instance.slug, str(number))
        files = []
        for name, blob in sorted(entries, key=lambda e: e[0]):
            target = base / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob.path.read_bytes())
            files.append(ModelFile(name, target, target.stat().st_size))
        version = ModelInstanceVersion(number, files, notes)
        instance.versions.append(version)
        return version

    def _walk(self, files: list[Body], dirs: list[Body], prefix: str, out: list[tuple[str, Blob]]) -> None:
        for f in files:
            blob = self.store.complete_blob(str(f.get("token", "")))
            out.append((safe_name(prefix + blob.name), blob))
        for d in dirs:
            self._walk(d.get("files") or [], d.get("directories") or [], prefix + safe_name(str(d.get("name"))) + "/",
                       out)

    # ---- reads ---------------------------------------------------------------------------------

    def list_model_instance_versions(self, ctx: RpcContext, body: Body) -> Body:
        model, instance = self._instance(ctx, body)
        items = [{"id": instance.id * 1000 + v.number, "variationSlug": instance.slug, "versionNumber": v.number,
                  "creationTime": iso(v.created), "url": f"{ctx.base_url}/models/{model.ref}/{instance.framework}/"
                                                         f"{instance.slug}/{v.number}"}
                 for v in reversed(instance.versions)]
        page, nxt = page_of(items, body.get("pageSize"), body.get("pageToken"))
        return {"versionList": {"versions": page}, "nextPageToken": nxt}

    def _version(self, ctx: RpcContext, body: Body) -> tuple[Model, ModelInstance, ModelInstanceVersion]:
        model, instance = self._instance(ctx, body)
        number = int(body.get("versionNumber") or len(instance.versions))
        if not 1 <= number <= len(instance.versions):
            raise ApiError(404, f"Version {number} of {model.ref}/{instance.framework}/{instance.slug} not found")
        return model, instance, instance.versions[number - 1]

    def list_model_instance_version_files(self, ctx: RpcContext, body: Body) -> Body:
        _, _, version = self._version(ctx, body)
        files = [{"name": f.name, "size": f.size, "creationDate": iso(f.created)} for f in version.files]
        page, nxt = page_of(files, body.get("pageSize"), body.get("pageToken"))
        return {"files": page, "nextPageToken": nxt}

    def download_model_instance_version(self, ctx: RpcContext, body: Body) -> Redirect:
        """302 to one file (``path``), or to a ``<model>.tar.gz`` of the whole version."""
        model, instance, version = self._version(ctx, body)
        prefix = f"models/{model.owner}/{model.slug}/{instance.framework}/{instance.slug}/{version.number}"
        name = body.get("path")
        if name:
            if not any(f.name == name for f in version.files):
                raise ApiError(404, f"File {name!r} not found in {prefix[len('models/'):]}")
            return Redirect(f"{ctx.base_url}/files/{prefix}/{name}")
        target = self.store.root / "zips" / prefix / f"{model.slug}.tar.gz"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for f in version.files:
                    tar.add(f.path, arcname=f.name)
            target.write_bytes(buf.getvalue())
        return Redirect(f"{ctx.base_url}/files/zips/{prefix}/{model.slug}.tar.gz")

    # ---- views ---------------------------------------------------------------------------------

    def _instance_view(self, model: Model, instance: ModelInstance, ctx: RpcContext) -> Body:
        latest = instance.versions[-1]
        return {"id": instance.id, "slug": instance.slug, "framework": instance.wire,
                "versionNumber": latest.number, "versionId": instance.id * 1000 + latest.number,
                "licenseName": instance.license_name,
                "url": f"{ctx.base_url}/models/{model.ref}/{instance.framework}/{instance.slug}/{latest.number}",
                "totalUncompressedBytes": sum(f.size for f in latest.files)}

    def _model_view(self, model: Model, ctx: RpcContext) -> Body:
        return {"id": model.id, "ref": model.ref, "title": model.title, "author": model.owner, "slug": model.slug,
                "isPrivate": model.is_private, "description": model.description,
                "url": f"{ctx.base_url}/models/{model.ref}",
                "instances": [self._instance_view(model, i, ctx) for i in model.instances.values()]}
