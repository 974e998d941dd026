"""Kernel RPCs (``kernels.KernelsApiService``): push, status, pull and outputs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .common import ApiError, EmulatorConfig, RpcContext, iso, page_of, parse_version_label, split_ref, utc_now
from .notebook_secrets import ENV_TOKEN, ENV_URL_BASE, new_session_token
from .rpc_models import version_files
from .runner import KernelRunner
from .state import Kernel, KernelVersion, Store

Body = dict[str, Any]
Sources = dict[str, Path | dict[str, Path]]

_SETTING_KEYS = (
    "newTitle", "text", "language", "kernelType", "isPrivate", "enableGpu", "enableTpu", "enableInternet",
    "datasetDataSources", "competitionDataSources", "kernelDataSources", "modelDataSources", "categoryIds",
    "dockerImagePinningType", "dockerImage", "sessionTimeoutSeconds", "machineShape", "kernelExecutionType",
    "priority",
)


class KernelService:
    """Handlers for kernels; a push really runs Python script kernels via ``KernelRunner``."""

    routes = {
        "kernels.KernelsApiService/SaveKernel": "save_kernel",
        "kernels.KernelsApiService/GetKernelSessionStatus": "get_kernel_session_status",
        "kernels.KernelsApiService/GetKernel": "get_kernel",
        "kernels.KernelsApiService/ListKernelSessionOutput": "list_kernel_session_output",
        "kernels.KernelsApiService/ListKernels": "list_kernels",
        "kernels.KernelsApiService/GetAcceleratorQuotaStatistics": "get_accelerator_quota_statistics",
    }

    def __init__(self, store: Store, config: EmulatorConfig, runner: KernelRunner) -> None:
        self.store = store
        self.config = config
        self.runner = runner

    # ---- push ----------------------------------------------------------------------------------

    def save_kernel(self, ctx: RpcContext, body: Body) -> Body:
        """Create a kernel or a new version of it, and start running that version."""
        kernel = self._target_kernel(ctx, body)
        if not body.get("text"):
            return {"error": "Kernel source text is empty"}
        if str(body.get("kernelType") or "").lower() not in ("script", "notebook"):
            return {"error": f"Invalid kernelType {body.get('kernelType')!r}; use script or notebook"}
        settings = {k: body.get(k) for k in _SETTING_KEYS if body.get(k) is not None}
        sources, invalid = self._resolve_sources(ctx, body)
        for key, bad in (("datasetDataSources", invalid["dataset"]),
                         ("competitionDataSources", invalid["competition"]),
                         ("kernelDataSources", invalid["kernel"]), ("modelDataSources", invalid["model"])):
            settings[key] = [s for s in settings.get(key) or [] if s not in bad]
        if body.get("newTitle"):
            kernel.title = str(body["newTitle"])
        number = len(kernel.versions) + 1
        run_dir = self.store.dir("kernels", kernel.owner, kernel.slug, str(number))
        kv = KernelVersion(number=number, settings=settings, run_dir=run_dir)
        kernel.versions.append(kv)
        self.store.kernels[(kernel.owner, kernel.slug)] = kernel
        if body.get("kernelExecutionType") == "QUICK_SAVE":
            kv.status = "COMPLETE"
        else:
            token = new_session_token(self.store, kernel.owner, kernel.slug)
            self.runner.start(kv, kernel.slug, sources, {ENV_TOKEN: token, ENV_URL_BASE: ctx.base_url})
        return {
            "ref": kernel.ref, "url": f"{ctx.base_url}/code/{kernel.ref}", "versionNumber": number,
            "kernelId": kernel.id, "invalidTags": [],
            "invalidDatasetSources": invalid["dataset"], "invalidCompetitionSources": invalid["competition"],
            "invalidKernelSources": invalid["kernel"], "invalidModelSources": invalid["model"],
        }

    def _target_kernel(self, ctx: RpcContext, body: Body) -> Kernel:
        """Find the kernel named by ``id``/``slug`` or make a new one owned by the caller."""
        if body.get("id"):
            for k in self.store.kernels.values():
                if k.id == int(body["id"]):
                    if k.owner != ctx.user:
                        raise ApiError(403, f"User {ctx.user} cannot push to kernel {k.ref}")
                    return k
            if not body.get("slug"):
                raise ApiError(404, f"Kernel id {body['id']} not found")
        if not body.get("slug"):
            raise ApiError(400, "SaveKernel needs a slug (owner/kernel-slug) or an id")
        owner, slug = split_ref(str(body["slug"]), ctx.user)
        if owner != ctx.user:
            raise ApiError(403, f"User {ctx.user} cannot push to kernels owned by {owner}")
        existing = self.store.kernels.get((owner, slug))
        if existing is not None:
            return existing
        title = str(body.get("newTitle") or slug)
        return Kernel(id=self.store.next_id(), owner=owner, slug=slug, title=title)

    def _resolve_sources(self, ctx: RpcContext, body: Body) -> tuple[Sources, dict[str, list[str]]]:
        """Map attached sources to input folders (``input_layout``); unknown ones are reported as invalid.

        current: ``competitions/<slug>``, ``datasets/<owner>/<slug>``, ``models/<owner>/<model>/<framework>/
        <variation>/<version>``, ``notebooks/<owner>/<slug>``; legacy: ``<slug>`` for each (models:
        ``<model>/<framework>/<variation>/<version>``).
        """
        legacy = self.config.input_layout == "legacy"
        sources: Sources = {}
        invalid: dict[str, list[str]] = {"dataset": [], "competition": [], "kernel": [], "model": []}
        for ref in body.get("datasetDataSources") or []:
            owner, slug = split_ref(str(ref), ctx.user)
            ds = self.store.datasets.get((owner, slug))
            ready = ds.latest_ready() if ds and (not ds.is_private or owner == ctx.user) else None
            if ready is None:
                invalid["dataset"].append(ref)
            else:
                sources[slug if legacy else f"datasets/{owner}/{slug}"] = {f.name: f.path for f in ready.files}
        for slug in body.get("competitionDataSources") or []:
            comp = self.store.competitions.get(str(slug))
            if comp is None:
                invalid["competition"].append(slug)
            else:
                sources[comp.slug if legacy else f"competitions/{comp.slug}"] = dict(comp.files)
        for ref in body.get("kernelDataSources") or []:
            owner, slug = split_ref(str(ref), ctx.user)
            k = self.store.kernels.get((owner, slug))
            done = [v for v in k.versions if v.status == "COMPLETE"] if k else []
            if not done:
                invalid["kernel"].append(ref)
            else:
                sources[slug if legacy else f"notebooks/{owner}/{slug}"] = {
                    name: done[-1].working / name for name in done[-1].outputs}
        for ref in body.get("modelDataSources") or []:
            found = version_files(self.store, str(ref))
            if found is None or (self.store.models[found[0][:2]].is_private and found[0][0] != ctx.user):
                invalid["model"].append(ref)
                continue
            (owner, model, framework, variation, number), files = found
            folder = f"{model}/{framework}/{variation}/{number}"
            sources[folder if legacy else f"models/{owner}/{folder}"] = files
        return sources, invalid

    # ---- reads ---------------------------------------------------------------------------------

    def _version(self, body: Body) -> tuple[Kernel, KernelVersion]:
        kernel = self.store.kernel(str(body.get("userName", "")), str(body.get("kernelSlug", "")))
        return kernel, kernel.version(parse_version_label(body.get("versionLabel")))

    def get_kernel_session_status(self, ctx: RpcContext, body: Body) -> Body:
        """QUEUED/RUNNING/COMPLETE/ERROR of a version (``versionLabel`` "vN", default latest)."""
        _, kv = self._version(body)
        out: Body = {"status": kv.status}
        if kv.failure_message:
            out["failureMessage"] = kv.failure_message
        return out

    def get_kernel(self, ctx: RpcContext, body: Body) -> Body:
        """Metadata and source of a kernel version, as ``kernels_pull`` reads them."""
        kernel, kv = self._version(body)
        s = kv.setting
        return {
            "metadata": {
                "id": kernel.id, "ref": kernel.ref, "title": kernel.title, "author": kernel.owner,
                "slug": kernel.slug, "lastRunTime": iso(kv.finished or kv.created),
                "language": s("language"), "kernelType": s("kernelType"), "isPrivate": s("isPrivate", True),
                "enableGpu": s("enableGpu", False), "enableTpu": s("enableTpu", False),
                "enableInternet": s("enableInternet", False), "categoryIds": s("categoryIds", []),
                "datasetDataSources": s("datasetDataSources", []),
                "kernelDataSources": s("kernelDataSources", []),
                "competitionDataSources": s("competitionDataSources", []),
                "modelDataSources": s("modelDataSources", []), "currentVersionNumber": kernel.versions[-1].number,
                "dockerImage": s("dockerImage"), "machineShape": s("machineShape"),
            },
            "blob": {"source": s("text"), "language": s("language"), "kernelType": s("kernelType"),
                     "slug": kernel.slug},
        }

    def list_kernel_session_output(self, ctx: RpcContext, body: Body) -> Body:
        """Output files (unauthenticated ``/files/kernels/...`` URLs) and the JSON-array log."""
        kernel, kv = self._version(body)
        base = f"{ctx.base_url}/files/kernels/{kernel.owner}/{kernel.slug}/{kv.number}"
        files = [{"url": f"{base}/{name}", "fileName": name} for name in kv.outputs]
        page, nxt = page_of(files, body.get("pageSize"), body.get("pageToken"))
        out: Body = {"files": page, "log": json.dumps(kv.log)}
        if nxt:
            out["nextPageToken"] = nxt
        return out

    def list_kernels(self, ctx: RpcContext, body: Body) -> Body:
        """The caller's kernels (and public ones), newest first; ``search`` filters by ref/title."""
        search = str(body.get("search") or "").lower()
        items = []
        for k in sorted(self.store.kernels.values(), key=lambda k: -k.id):
            latest = k.versions[-1]
            if latest.setting("isPrivate", True) and k.owner != ctx.user:
                continue
            if search in k.ref.lower() or search in k.title.lower():
                items.append({"id": k.id, "ref": k.ref, "title": k.title, "author": k.owner, "slug": k.slug,
                              "lastRunTime": iso(latest.finished or latest.created),
                              "language": latest.setting("language"), "kernelType": latest.setting("kernelType"),
                              "isPrivate": latest.setting("isPrivate", True)})
        return {"kernels": items}

    # ---- quota ---------------------------------------------------------------------------------

    def get_accelerator_quota_statistics(self, ctx: RpcContext, body: Body) -> Body:
        """The caller's weekly GPU/TPU hours: used (finished sessions' run time, scaled by ``quota_time_scale``),
        reserved (running sessions' time limits) and allowed; refreshed each Saturday 00:00 UTC."""
        out: Body = {"quotaRefreshTime": iso(next_quota_refresh(utc_now()))}
        for kind, allowed_h in (("gpu", self.config.gpu_quota_hours), ("tpu", self.config.tpu_quota_hours)):
            used = reserved = 0.0
            for kernel in self.store.kernels.values():
                if kernel.owner != ctx.user:
                    continue
                for kv in kernel.versions:
                    if accelerator_kind(kv) != kind:
                        continue
                    if kv.status in ("QUEUED", "RUNNING"):
                        reserved += float(kv.setting("sessionTimeoutSeconds") or 12 * 3600)
                    elif kv.finished is not None:
                        used += (kv.finished - kv.created).total_seconds() * self.config.quota_time_scale
            out[f"{kind}Quota"] = {"timeUsed": _duration(used), "timeReserved": _duration(reserved),
                                   "totalTimeAllowed": _duration(allowed_h * 3600),
                                   "minimumTimeAllowed": _duration(allowed_h * 3600), "hasEverRun": used > 0}
        return out


def accelerator_kind(kv: KernelVersion) -> str | None:
    """``gpu`` / ``tpu`` / None for a kernel version, from its machine shape or enableGpu/enableTpu."""
    shape = str(kv.setting("machineShape") or "").lower()
    if shape.startswith("tpu") or kv.setting("enableTpu", False):
        return "tpu"
    if shape.startswith("nvidia") or kv.setting("enableGpu", False):
        return "gpu"
    return None


def next_quota_refresh(now: datetime) -> datetime:
    """The next Saturday 00:00 UTC after ``now``."""
    days = (5 - now.weekday()) % 7 or 7
    return datetime(now.year, now.month, now.day) + timedelta(days=days)


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"
