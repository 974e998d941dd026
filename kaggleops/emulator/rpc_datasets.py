"""Blob-upload and dataset RPCs (``blobs.BlobApiService``, ``datasets.DatasetApiService``)."""

from __future__ import annotations

import time
from typing import Any

from .common import ApiError, EmulatorConfig, Redirect, RpcContext, iso, page_of, safe_name
from .state import Blob, Dataset, DatasetFile, DatasetVersion, Store

Body = dict[str, Any]


class DatasetService:
    """Handlers for blob uploads and datasets; each takes (ctx, body) and returns a JSON dict."""

    routes = {
        "blobs.BlobApiService/StartBlobUpload": "start_blob_upload",
        "datasets.DatasetApiService/GetDatasetStatus": "get_dataset_status",
        "datasets.DatasetApiService/CreateDataset": "create_dataset",
        "datasets.DatasetApiService/CreateDatasetVersion": "create_dataset_version",
        "datasets.DatasetApiService/CreateDatasetVersionById": "create_dataset_version_by_id",
        "datasets.DatasetApiService/GetDataset": "get_dataset",
        "datasets.DatasetApiService/ListDatasetFiles": "list_dataset_files",
        "datasets.DatasetApiService/GetDatasetMetadata": "get_dataset_metadata",
        "datasets.DatasetApiService/DownloadDataset": "download_dataset",
        "datasets.DatasetApiService/ListDatasets": "list_datasets",
    }

    def __init__(self, store: Store, config: EmulatorConfig) -> None:
        self.store = store
        self.config = config

    # ---- blobs ---------------------------------------------------------------------------------

    def start_blob_upload(self, ctx: RpcContext, body: Body) -> Body:
        """Open an upload session; the client then PUTs the bytes to ``createUrl``."""
        name = body.get("name")
        if not name:
            raise ApiError(400, "StartBlobUpload needs a file name")
        blob = self.store.new_blob(str(name), int(body.get("contentLength") or 0), str(body.get("type", "DATASET")))
        return {"token": blob.token, "createUrl": f"{ctx.base_url}/upload/{blob.token}"}

    # ---- create / version ----------------------------------------------------------------------

    def get_dataset_status(self, ctx: RpcContext, body: Body) -> Body:
        """Status of the newest version (404 for unknown datasets, as ``dataset_create_new`` expects)."""
        ds = self.store.dataset(str(body.get("ownerSlug", "")), str(body.get("datasetSlug", "")))
        return {"status": ds.versions[-1].status}

    def create_dataset(self, ctx: RpcContext, body: Body) -> Body:
        """Create a dataset and its version 1; problems are reported in the body like Kaggle does."""
        owner = str(body.get("ownerSlug") or ctx.user)
        slug = str(body.get("slug") or "")
        if owner != ctx.user:
            raise ApiError(403, f"User {ctx.user} cannot create datasets owned by {owner}")
        if not slug:
            return _error("A dataset slug is required")
        if (owner, slug) in self.store.datasets:
            return _error(f"The requested title or slug is already in use: {owner}/{slug}")
        title = str(body.get("title") or "")
        if not title:
            return _error("A dataset title is required")
        try:
            entries = self._collect_files(body)
        except ApiError as e:
            return _error(e.message)
        ds = Dataset(id=self.store.next_id(), owner=owner, slug=slug, title=title,
                     license_name=str(body.get("licenseName") or "unknown"),
                     is_private=bool(body.get("isPrivate", False)), subtitle=body.get("subtitle"),
                     description=body.get("description"), keywords=list(body.get("categoryIds") or []))
        self._add_version(ds, entries, "Initial release", ctx.user)
        self.store.datasets[(owner, slug)] = ds
        return _ok(ds, ctx)

    def create_dataset_version(self, ctx: RpcContext, body: Body) -> Body:
        """Add a version (a full snapshot of the given files) to ``ownerSlug/datasetSlug``."""
        ds = self.store.dataset(str(body.get("ownerSlug", "")), str(body.get("datasetSlug", "")))
        return self._new_version(ctx, ds, body.get("body") or {})

    def create_dataset_version_by_id(self, ctx: RpcContext, body: Body) -> Body:
        """Same as ``CreateDatasetVersion`` but addressed by numeric dataset ``id``."""
        ds = self.store.dataset_by_id(int(body.get("id") or 0))
        return self._new_version(ctx, ds, body.get("body") or {})

    def _new_version(self, ctx: RpcContext, ds: Dataset, body: Body) -> Body:
        if ds.owner != ctx.user:
            raise ApiError(403, f"User {ctx.user} cannot version dataset {ds.ref}")
        if not ds.versions[-1].ready:
            raise ApiError(403, f"Dataset {ds.ref} version {ds.versions[-1].number} is still processing; "
                                "try again once its status is ready")
        try:
            entries = self._collect_files(body)
        except ApiError as e:
            return _error(e.message)
        for attr, key in (("subtitle", "subtitle"), ("description", "description")):
            if body.get(key):
                setattr(ds, attr, body[key])
        if body.get("categoryIds"):
            ds.keywords = list(body["categoryIds"])
        self._add_version(ds, entries, str(body.get("versionNotes") or ""), ctx.user)
        return _ok(ds, ctx)

    def _collect_files(self, body: Body) -> list[tuple[str, Blob, str | None]]:
        """Resolve ``files[]`` and nested ``directories[]`` into (relative name, blob, description)."""
        entries: list[tuple[str, Blob, str | None]] = []
        self._walk(body.get("files") or [], body.get("directories") or [], "", entries)
        if not entries:
            raise ApiError(400, "A dataset version needs at least one file")
        names = [name for name, _, _ in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ApiError(400, f"Duplicate file names in upload: {', '.join(dupes)}")
        return entries

    def _walk(self, files: list[Body], dirs: list[Body], prefix: str,
              out: list[tuple[str, Blob, str | None]]) -> None:
        for f in files:
            blob = self.store.complete_blob(str(f.get("token", "")))
            out.append((safe_name(prefix + blob.name), blob, f.get("description")))
        for d in dirs:
            sub = prefix + safe_name(str(d.get("name", ""))) + "/"
            self._walk(d.get("files") or [], d.get("directories") or [], sub, out)

    def _add_version(self, ds: Dataset, entries: list[tuple[str, Blob, str | None]], notes: str,
                     creator: str) -> DatasetVersion:
        number = len(ds.versions) + 1
        files = self.store.store_dataset_files(ds, number, entries)
        for _, blob, _ in entries:
            blob.used = True
        version = DatasetVersion(number=number, files=files, notes=notes, creator=creator,
                                 ready_at=time.monotonic() + self.config.dataset_processing_s)
        ds.versions.append(version)
        return version

    # ---- reads ---------------------------------------------------------------------------------

    def get_dataset(self, ctx: RpcContext, body: Body) -> Body:
        """The ApiDataset view, with ``currentVersionNumber`` and ``versions[]``."""
        ds = self.store.dataset(str(body.get("ownerSlug", "")), str(body.get("datasetSlug", "")))
        return dataset_view(ds, ctx)

    def list_datasets(self, ctx: RpcContext, body: Body) -> Body:
        """All datasets visible to the caller (``search`` filters on ref/title), newest id first."""
        search = str(body.get("search") or "").lower()
        items = [dataset_view(ds, ctx) for ds in sorted(self.store.datasets.values(), key=lambda d: -d.id)
                 if (not ds.is_private or ds.owner == ctx.user)
                 and (search in ds.ref.lower() or search in ds.title.lower())]
        return {"datasets": items}

    def list_dataset_files(self, ctx: RpcContext, body: Body) -> Body:
        """Files of a version (``datasetVersionNumber`` or latest), paged by ``pageToken``."""
        ds = self.store.dataset(str(body.get("ownerSlug", "")), str(body.get("datasetSlug", "")))
        version = ds.version(_int_or_none(body.get("datasetVersionNumber")))
        files = [_file_view(ds, version, f, ctx) for f in version.files]
        page, nxt = page_of(files, body.get("pageSize"), body.get("pageToken"))
        return {"datasetFiles": page, "nextPageToken": nxt}

    def get_dataset_metadata(self, ctx: RpcContext, body: Body) -> Body:
        """The ``info`` block ``dataset_metadata`` writes to disk."""
        ds = self.store.dataset(str(body.get("ownerSlug", "")), str(body.get("datasetSlug", "")))
        latest = ds.versions[-1]
        return {"info": {
            "datasetId": ds.id, "datasetSlug": ds.slug, "ownerUser": ds.owner, "title": ds.title,
            "subtitle": ds.subtitle, "description": ds.description, "isPrivate": ds.is_private,
            "keywords": ds.keywords, "licenses": [{"name": ds.license_name}], "collaborators": [],
            "data": [{"name": f.name, "description": f.description, "totalBytes": f.size, "columns": []}
                     for f in latest.files],
        }}

    def download_dataset(self, ctx: RpcContext, body: Body) -> Redirect:
        """302 to one file, or to a zip of the whole version named ``<slug>.zip``."""
        ds = self.store.dataset(str(body.get("ownerSlug", "")), str(body.get("datasetSlug", "")))
        version = ds.version(_int_or_none(body.get("datasetVersionNumber")))
        prefix = f"{ctx.base_url}/files/datasets/{ds.owner}/{ds.slug}/{version.number}"
        name = body.get("fileName")
        if name:
            if not any(f.name == name for f in version.files):
                raise ApiError(404, f"File {name!r} not found in {ds.ref} version {version.number}")
            return Redirect(f"{prefix}/{name}")
        self.store.zip_of({f.name: f.path for f in version.files},
                          "datasets", ds.owner, ds.slug, str(version.number), f"{ds.slug}.zip")
        return Redirect(f"{ctx.base_url}/files/zips/datasets/{ds.owner}/{ds.slug}/{version.number}/{ds.slug}.zip")


def dataset_view(ds: Dataset, ctx: RpcContext) -> Body:
    """ApiDataset JSON for ``ds`` (files of the newest version)."""
    latest = ds.versions[-1]
    return {
        "id": ds.id, "ref": ds.ref, "title": ds.title, "subtitle": ds.subtitle, "description": ds.description,
        "url": f"{ctx.base_url}/datasets/{ds.ref}", "lastUpdated": iso(latest.created),
        "totalBytes": sum(f.size for f in latest.files), "isPrivate": ds.is_private,
        "licenseName": ds.license_name, "ownerName": ds.owner, "ownerRef": ds.owner, "creatorName": ds.owner,
        "currentVersionNumber": latest.number,
        "tags": [{"ref": k, "name": k} for k in ds.keywords],
        "versions": [{"versionNumber": v.number, "creationDate": iso(v.created), "creatorName": v.creator,
                      "creatorRef": v.creator, "versionNotes": v.notes, "status": v.status}
                     for v in reversed(ds.versions)],
        "files": [_file_view(ds, latest, f, ctx) for f in latest.files],
    }


def _file_view(ds: Dataset, version: DatasetVersion, f: DatasetFile, ctx: RpcContext) -> Body:
    return {"ref": f.name, "datasetRef": ds.ref, "ownerRef": ds.owner, "name": f.name,
            "creationDate": iso(f.created), "description": f.description, "totalBytes": f.size,
            "url": f"{ctx.base_url}/files/datasets/{ds.owner}/{ds.slug}/{version.number}/{f.name}",
            "fileType": f.name.rsplit(".", 1)[-1] if "." in f.name else ""}


def _ok(ds: Dataset, ctx: RpcContext) -> Body:
    return {"ref": ds.ref, "url": f"{ctx.base_url}/datasets/{ds.ref}", "status": "ok"}


def _error(message: str) -> Body:
    return {"status": "error", "error": message}


def _int_or_none(value: object) -> int | None:
    if value in (None, "", 0):
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ApiError(400, f"invalid version number: {value!r}") from None

