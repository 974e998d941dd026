"""Inference kernel generation and push: runs → published datasets → offline kernel → kernel version.

The generated kernel (``.kops/kernels/<slug>/``) is a script: a small bootstrap (``kernels/
inference_kernel.py.tmpl``) that installs the kops runtime wheel from the attached ``kops-runtime`` dataset
(:mod:`kaggleops.kernel.wheel`) and the task's own code from the ``<experiment>-code`` dataset
(:mod:`kaggleops.kernel.code`), then runs :func:`kaggleops.kernel.runtime.main` on the embedded plan
``kops-kernel.json`` (task: import spec + inference options; submission format; models: dataset ref + version +
run id + weight; second stage; competition).

With ``--reranker RUN`` (a ``kops train --stage rerank`` parent, which expands to its ``rerank-fold`` runs, or
one fold run) the plan's ``reranker`` names each second-stage fold's dataset and the tuned ``w``/``n``; inside
the kernel the task's ``predict_second_stage`` rescores the ensemble's candidates with those models.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kaggleops import __version__
from kaggleops.adapters.kaggle import Kaggle
from kaggleops.adapters.session import Session
from kaggleops.adapters.tracking import Tracker, fold_runs
from kaggleops.config import KopsConfig
from kaggleops.errors import KernelError, KernelRunFailed, KopsError
from kaggleops.kernel.code import CodeDataset, ensure_code_dataset, task_code_version, task_kernel_spec
from kaggleops.kernel.wheel import RuntimeDataset, ensure_runtime_dataset
from kaggleops.refs import CompetitionRef, KernelRef, slugify
from kaggleops.resources import kernel_template
from kaggleops.schema import (
    KERNEL_FILE,
    KERNEL_METADATA,
    PLAN_FILE,
    SESSION_LIMIT_S,
    TAG_DATASET,
    TAG_DATASET_VERSION,
    TAG_KERNEL,
    TAG_KERNEL_DOCKER_IMAGE,
    TAG_KERNEL_MACHINE_SHAPE,
    TAG_KERNEL_VERSION,
    TAG_KIND,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_PARENT,
    TAG_RERANK_OPTIONS,
    KernelPlan,
    Kind,
    PlanModel,
    PlanReranker,
)
from kaggleops.stages.accelerators import docker_pinning, resolve_accelerator
from kaggleops.stages.ensemble_kernel import (
    EnsemblePlan,
    check_budget,
    check_mixed_code,
    check_published,
    expand_ensemble,
    fetch_code_versions,
    fold_code_versions,
    is_ensemble,
    record_timings,
)
from kaggleops.stages.evaluation_api import describe_submission, detect_submission
from kaggleops.task import hook

TEMPLATE = "inference_kernel.py.tmpl"
LOG_TAIL_LINES = 30


ModelSource = PlanModel  # a planned model: run, dataset (or Kaggle Model) version, weight, kind
RerankerSource = PlanReranker  # the planned second stage: run, fold datasets, the task's options


@dataclass(frozen=True)
class KernelOptions:
    """How to push: machine shape and visibility (None = kops.yaml), publishing, pushing, waiting.

    ``push=False`` (``kops push-kernel --no-push``) renders the kernel folder and stops: the model, runtime and
    code datasets are still published (the plan names their exact versions), nothing is pushed or tagged.
    """

    machine_shape: str | None = None
    private: bool | None = None
    publish: bool = True
    push: bool = True
    wait: bool = False
    allow_retired: bool = False  # push a retired accelerator (Kaggle substitutes it) with a warning
    docker_image: str | None = None  # docker_image_pinning_type: original | latest (None: Kaggle's default)
    time_limit_s: float = SESSION_LIMIT_S  # a blend whose estimated kernel time exceeds it is refused …
    ignore_time_limit: bool = False  # … unless this is set


@dataclass
class KernelResult:
    kernel: str
    kernel_version: int | None  # None: rendered, not pushed
    url: str
    folder: Path
    run_ids: list[str]
    status: str | None = None
    published: list[str] = field(default_factory=list)
    runtime: dict[str, object] = field(default_factory=dict)
    submission: dict[str, object] | None = None  # filled by `push-kernel --submit` (the CLI composes submit)
    reranker: dict[str, object] | None = None
    code: dict[str, object] | None = None
    plan: KernelPlan | None = field(default=None, repr=False)  # what the pushed version runs
    submission_kind: dict[str, str] = field(default_factory=dict)  # kind, server_module, source

    def as_dict(self) -> dict[str, object]:
        return {"kernel": self.kernel, "kernel_version": self.kernel_version, "url": self.url,
                "folder": str(self.folder), "run_ids": self.run_ids, "status": self.status,
                "published": self.published, "runtime": self.runtime, "submission": self.submission,
                "reranker": self.reranker, "code": self.code, "submission_kind": self.submission_kind}


def default_kernel_ref(cfg: KopsConfig) -> KernelRef:
    slug = cfg.kernel.slug or f"{slugify(cfg.experiment_name, 40)}-inference"
    return KernelRef(cfg.kaggle_owner, slug)


def expand_runs(tracker: Tracker, run_ids: list[str]) -> tuple[list[str], list[str]]:
    """(model runs, k-fold parents): a parent run (``kops.kind=kfold``) expands to its fold runs, in fold order."""
    models: list[str] = []
    parents: list[str] = []
    for run_id in map(tracker.resolve, run_ids):  # local ids, or origin ids of runs pulled by `kops sync pull`
        run = tracker.get_run(run_id)
        if run.tags.get(TAG_KIND) != Kind.KFOLD:
            models.append(run_id)
            continue
        children = fold_runs(tracker, run_id)
        if not children:
            raise KopsError(f"K-fold run {run_id} has no fold runs (no run has mlflow.parentRunId = it).",
                            "Pass the fold runs with --run, or train them with: kops train")
        models.extend(r.id for r in children)
        parents.append(run_id)
    return list(dict.fromkeys(models)), parents


def resolve_models(session: Session, run_ids: list[str], publish_missing: bool = True,
                   progress: bool = False) -> tuple[list[ModelSource], list[str]]:
    """Each run's dataset version, publishing runs that have none yet. Returns (sources, newly published ids).

    With ``publish_missing`` a run already tagged with a dataset is published again to that dataset: identical
    weights (sha256) keep the tagged version and upload nothing, changed weights become a new version (and the
    run's tag follows), so a kernel never ships weights that are not the run's current ones. A dataset in
    another owner's namespace (a teammate's run pulled by `kops sync pull`) is used as tagged.
    """
    from kaggleops.stages.publish import publish

    cfg, tracker = session.cfg, session.tracker
    if cfg.publish.to == "model":
        return _resolve_model_sources(session, run_ids, publish_missing)
    models, published = [], []
    for run_id in run_ids:
        tags = tracker.get_run(run_id).tags
        if TAG_DATASET not in tags and not publish_missing:
            raise KopsError(f"Run {run_id} has no published dataset (and --no-publish was given).",
                            f"Publish it with: kops publish {run_id}")
        theirs = TAG_DATASET in tags and tags[TAG_DATASET].split("/")[0] != cfg.kaggle_owner  # e.g. a pulled run
        if publish_missing and not theirs:
            result = publish(session, run_id, dataset=tags.get(TAG_DATASET), progress=progress)
            if result.uploaded:
                published.append(run_id)
            tags = tracker.get_run(run_id).tags
        models.append(ModelSource(run_id, tags[TAG_DATASET], int(tags[TAG_DATASET_VERSION])))
    return models, published


def _resolve_model_sources(session: Session, run_ids: list[str],
                           publish_missing: bool) -> tuple[list[ModelSource], list[str]]:
    """``publish.to: model``: each run's Kaggle Model instance version, publishing runs that have none yet."""
    from kaggleops.stages.publish_model import publish_model

    tracker = session.tracker
    models, published = [], []
    for run_id in run_ids:
        tags = tracker.get_run(run_id).tags
        if TAG_MODEL not in tags:
            if not publish_missing:
                raise KopsError(f"Run {run_id} has no published Kaggle Model (and --no-publish was given).",
                                f"Publish it with: kops publish {run_id} --to model")
            publish_model(session, run_id)
            published.append(run_id)
            tags = tracker.get_run(run_id).tags
        models.append(ModelSource(run_id, tags[TAG_MODEL], int(tags[TAG_MODEL_VERSION]), kind="model"))
    return models, published


def expand_reranker(tracker: Tracker, run_id: str) -> list[str]:
    """A reranker parent (``kops.kind=rerank``) → its fold runs in fold order; a ``rerank-fold`` run → itself."""
    run_id = tracker.resolve(run_id)
    kind = tracker.get_run(run_id).tags.get(TAG_KIND)
    if kind == Kind.RERANK_FOLD:
        return [run_id]
    if kind != Kind.RERANK:
        raise KopsError(f"Run {run_id} is not a reranker run (its kops.kind is {kind!r}, not {Kind.RERANK!r}).",
                        "Pass the run id that `kops train --stage rerank --from KFOLD_RUN_ID` printed.")
    children = fold_runs(tracker, run_id, Kind.RERANK_FOLD)
    if not children:
        raise KopsError(f"Reranker run {run_id} has no rerank-fold runs (no run has mlflow.parentRunId = it).",
                        "Retrain it with: kops train --stage rerank --from KFOLD_RUN_ID")
    return [r.id for r in children]


def second_stage_options(tracker: Tracker, fold_run_id: str) -> dict[str, Any]:
    """What the task chose on the OOF for its second stage (``kops.rerank.options`` on the fold run, else on its
    parent, as `kops train --stage rerank` logs them): opaque to kops, handed back to the task in the kernel."""
    tags = tracker.get_run(fold_run_id).tags
    text = tags.get(TAG_RERANK_OPTIONS)
    if text is None and tags.get(TAG_PARENT):
        text = tracker.get_run(tags[TAG_PARENT]).tags.get(TAG_RERANK_OPTIONS)
    try:
        options = json.loads(text) if text is not None else None
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise KopsError(f"Reranker run {fold_run_id} carries no readable {TAG_RERANK_OPTIONS} tag (what its task chose "
                        "on the OOF).", "Retrain the reranker with: kops train --stage rerank --from KFOLD_RUN_ID")
    return options


def resolve_reranker(session: Session, run_id: str,
                     publish_missing: bool = True) -> tuple[RerankerSource, list[str], list[str]]:
    """The second stage's fold datasets (published first when missing) and the options its task chose.

    Returns (source, fold run ids, newly published run ids).
    """
    folds = expand_reranker(session.tracker, run_id)
    models, published = resolve_models(session, folds, publish_missing)
    return RerankerSource(run_id, models, second_stage_options(session.tracker, folds[0])), folds, published


def build_plan(cfg: KopsConfig, models: list[ModelSource], runtime: RuntimeDataset,
               reranker: RerankerSource | None = None, code: CodeDataset | None = None,
               submission: dict[str, str] | None = None, ensemble: EnsemblePlan | None = None) -> KernelPlan:
    """The kernel's embedded plan (kops-kernel.json).

    ``task.options`` is the task's optional ``kernel_options`` mapping (handed to ``predict`` as
    ``ctx.options``); ``task.requires`` its optional ``kernel_requires`` (imported first, so a missing package
    fails by name).
    """
    from kaggleops.stages.train import get_task_for

    task = get_task_for(cfg)
    columns = list(task.submission.columns)
    return KernelPlan(
        kops_version=__version__,
        competition=cfg.competition,
        task={"name": task.name, "spec": task_kernel_spec(cfg, code),
              "requires": list(hook(task, "kernel_requires")),
              "options": dict(hook(task, "kernel_options"))},
        metric={"name": task.metric.name, "higher_is_better": bool(task.metric.higher_is_better)},
        id_column=task.submission.id_column,
        target_column=columns[0],
        columns=columns,
        models=list(models),
        reranker=reranker,
        runtime={"dataset": runtime.dataset, "version": runtime.version,
                 "content_sha256": runtime.content_sha256, "wheel": runtime.wheel},
        code=code.as_plan() if code else None,
        submission={k: v for k, v in (submission or {}).items() if k in ("kind", "server_module")},
        extra={"ensemble": ensemble.as_plan()} if ensemble else {},
    )


def kernel_metadata(cfg: KopsConfig, ref: KernelRef, models: list[ModelSource], runtime: RuntimeDataset,
                    options: KernelOptions = KernelOptions(), code: CodeDataset | None = None) -> dict[str, object]:
    """kernel-metadata.json as the official client reads it (internet off, GPU per kops.yaml).

    ``models``: every attached model dataset (the ensemble's and the reranker's).
    """
    return {
        "id": ref.ref,
        "title": ref.slug.replace("-", " ").title(),
        "code_file": KERNEL_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": cfg.kernel.private if options.private is None else options.private,
        "enable_gpu": cfg.kernel.enable_gpu,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": sorted({m.dataset for m in models if m.kind == "dataset"} | {runtime.dataset}
                                  | ({code.dataset} if code else set())),
        "competition_sources": [cfg.competition],
        "kernel_sources": [],
        "model_sources": sorted({f"{m.dataset}/{m.dataset_version}" for m in models if m.kind == "model"}),
        **({"machine_shape": options.machine_shape} if options.machine_shape else {}),
        **({"docker_image_pinning_type": options.docker_image} if options.docker_image else {}),
    }


def render_kernel(cfg: KopsConfig, ref: KernelRef, models: list[ModelSource], folder: Path,
                  runtime: RuntimeDataset, options: KernelOptions = KernelOptions(),
                  reranker: RerankerSource | None = None, code: CodeDataset | None = None,
                  submission: dict[str, str] | None = None, ensemble: EnsemblePlan | None = None) -> Path:
    """Write kernel.py (bootstrap + plan), kops-kernel.json and kernel-metadata.json into ``folder``."""
    plan = build_plan(cfg, models, runtime, reranker, code, submission, ensemble)
    source = kernel_source(cfg, plan, runtime)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / KERNEL_FILE).write_text(source)
    plan.write(folder / PLAN_FILE)
    attached = [*models, *(reranker.models if reranker else [])]
    (folder / KERNEL_METADATA).write_text(json.dumps(kernel_metadata(cfg, ref, attached, runtime, options, code),
                                                     indent=2))
    return folder


def kernel_source(cfg: KopsConfig, plan: KernelPlan, runtime: RuntimeDataset) -> str:
    """kernel.py's text: the template filled with the plan, compiled so a broken template fails here."""
    template = kernel_template(TEMPLATE)
    source = template.format(kops_version=__version__, competition=cfg.competition, runtime_dataset=runtime.dataset,
                             plan_json=plan.to_json())
    compile(source, KERNEL_FILE, "exec")  # a broken template fails here, not on Kaggle
    return source


def check_renders(cfg: KopsConfig, run_ids: list[str]) -> None:
    """Render the kernel in memory with placeholder versions before anything is published.

    The template, the task's kernel spec and the plan are the same ones the real render uses, so a missing
    template or a task that cannot be loaded fails here: no dataset uploaded, no run tagged.
    """
    placeholder = RuntimeDataset(f"{cfg.kaggle_owner}/kops-runtime", 1, "", wheel="", created=False)
    models = [ModelSource(run_id, f"{cfg.kaggle_owner}/placeholder", 1) for run_id in run_ids]
    kernel_source(cfg, build_plan(cfg, models, placeholder), placeholder)


def wait_for_kernel(kaggle: Kaggle, ref: KernelRef, on_status: Callable[[str], None] | None = None) -> str:
    """Poll until COMPLETE; on ERROR raise KernelRunFailed with the failure message and the log's tail."""
    try:
        return kaggle.wait_kernel(ref, on_status=on_status)
    except KernelRunFailed:
        raise
    except KernelError as e:
        try:
            tail = kaggle.kernel_log(ref)[-LOG_TAIL_LINES:]
        except KopsError:
            tail = []
        raise KernelRunFailed(e.message, f"Full log: kaggle kernels logs {ref}", tail) from None


def push_kernel(session: Session, run_ids: list[str], wait: bool = False,
                on_status: Callable[[str], None] | None = None,
                options: KernelOptions | None = None, reranker: str | None = None,
                notify: Callable[[str], None] | None = None) -> KernelResult:
    """Generate the offline inference kernel for ``run_ids``, push it, tag the runs; optionally wait.

    With ``options.push`` False the rendered folder is the result (``kernel_version`` None): datasets are
    published as for a push, so ``kops kernel run-local`` can download the exact versions the plan names.

    A k-fold parent run expands to its folds; runs without a dataset are published first (unless
    ``options.publish`` is False); the kops runtime wheel goes to ``<owner>/kops-runtime`` (reused when unchanged).
    ``reranker``: a reranker run (parent or fold) whose fold models rescore the ensemble's predictions.
    To submit the version, pass ``result.plan`` on to :func:`kaggleops.stages.submit.submit` (no re-download).
    The accelerator is checked before anything is published or pushed (a retired one is refused unless
    ``options.allow_retired``); with ``wait`` on a GPU, ``notify`` first gets the weekly quota.

    Example:
        >>> push_kernel(Session(load_config()), ["3f2a…"], reranker="9c1e…",  # doctest: +SKIP
        ...             options=KernelOptions(wait=True))
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kops-code-versions-") as scratch:  # other members' task code
        return _push_kernel(session, run_ids, options or KernelOptions(wait=wait), on_status, reranker, notify,
                            Path(scratch))


def _push_kernel(session: Session, run_ids: list[str], options: KernelOptions,
                 on_status: Callable[[str], None] | None, reranker: str | None,
                 notify: Callable[[str], None] | None, scratch: Path) -> KernelResult:
    cfg = session.cfg
    shape = resolve_accelerator(cfg, options.machine_shape, options.allow_retired, notify)
    # a CPU kernel (enable_gpu: false, no --machine-shape) sends and records no accelerator
    on_cpu = not cfg.kernel.enable_gpu and options.machine_shape is None
    options = replace(options, machine_shape=None if on_cpu else shape.name,
                      docker_image=docker_pinning(options.docker_image))
    tracker, kaggle = session.tracker, session.kaggle
    CompetitionRef.parse(cfg.competition)
    submission = detect_submission(cfg, kaggle)
    if notify is not None:
        notify(describe_submission(cfg.competition, submission))
    ensemble, model_runs, parents = _expand(cfg, tracker, run_ids, options)
    versions, others = _code_versions(cfg, tracker, ensemble, reranker, submission, scratch)
    check_renders(cfg, model_runs)
    models, published = resolve_models(session, model_runs, options.publish, progress=on_status is not None)
    if ensemble is not None:
        models = [replace(m, weight=ensemble.fold_weights[m.run_id], code=versions.get(m.run_id, "")) for m in models]
    rerank_source, rerank_runs = None, []
    if reranker:
        rerank_source, rerank_runs, more = resolve_reranker(session, reranker, options.publish)
        published += more
    runtime = ensure_runtime_dataset(cfg, kaggle)
    code = ensure_code_dataset(cfg, kaggle, task_kernel_spec(cfg), others) if cfg.task or cfg.kernel.wheels else None
    ref = default_kernel_ref(cfg)
    folder = render_kernel(cfg, ref, models, cfg.root / ".kops" / "kernels" / ref.slug, runtime, options,
                           rerank_source, code, submission, ensemble)
    if not options.push:
        return KernelResult(ref.ref, None, ref.url(kaggle.web_base), folder, model_runs, published=published,
                            runtime=runtime.as_dict(), reranker=rerank_source.to_dict() if rerank_source else None,
                            code=code.as_dict() if code else None, submission_kind=submission)
    if options.wait and not on_cpu and notify is not None:
        show_quota(kaggle, shape.kind, notify)
    if on_status is not None:  # the CLI: say what the next seconds of upload are
        files = [p for p in folder.rglob("*") if p.is_file()]
        print(f"pushing kernel {ref.ref}: {len(files)} file(s), {sum(p.stat().st_size for p in files) // 1024} KB",
              file=sys.stderr, flush=True)
    version = kaggle.push_kernel(folder)
    pinned = KernelRef(ref.owner, ref.slug, version)
    result = KernelResult(ref.ref, version, ref.url(kaggle.web_base), folder, model_runs, published=published,
                          runtime=runtime.as_dict(), reranker=rerank_source.to_dict() if rerank_source else None,
                          plan=KernelPlan.read(folder / PLAN_FILE), code=code.as_dict() if code else None,
                          submission_kind=submission)
    if options.wait:  # a version that ends in ERROR is not tagged: the runs keep pointing at the last good one
        result.status = wait_for_kernel(kaggle, pinned, on_status)
        record_timings(tracker, kaggle, pinned, model_runs)
    kernel_tags = {TAG_KERNEL: ref.ref, TAG_KERNEL_VERSION: str(version),
                   TAG_KERNEL_MACHINE_SHAPE: options.machine_shape or "cpu",
                   TAG_KERNEL_DOCKER_IMAGE: options.docker_image or "default"}
    for run_id in dict.fromkeys([*model_runs, *parents, *rerank_runs, *([reranker] if reranker else [])]):
        tracker.set_tags(run_id, kernel_tags)
    return result


def _expand(cfg: KopsConfig, tracker: Tracker, run_ids: list[str],
            options: KernelOptions) -> tuple[EnsemblePlan | None, list[str], list[str]]:
    """(ensemble, model runs, runs to tag besides them): an ensemble run (alone) expands to its members' folds,
    weighted, after its members' task code and its estimated kernel time are checked."""
    if not any(is_ensemble(tracker, r) for r in run_ids):
        return None, *expand_runs(tracker, run_ids)
    if len(run_ids) > 1:
        raise KopsError("An ensemble run is pushed alone: its weights cover its members, not other runs.",
                        "Add the runs to the blend instead: kops ensemble RUN … then push-kernel --run ENSEMBLE_RUN")
    ensemble = expand_ensemble(tracker, run_ids[0])
    model_runs = list(ensemble.fold_weights)
    if not options.publish:
        check_published(tracker, ensemble)
    check_budget(tracker, model_runs, options.time_limit_s, options.ignore_time_limit)
    return ensemble, model_runs, [ensemble.run_id, *ensemble.members]


def _code_versions(cfg: KopsConfig, tracker: Tracker, ensemble: EnsemblePlan | None, reranker: str | None,
                   submission: dict[str, str], scratch: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """A blend whose members trained different task code: (fold run → its code version, every version but the
    current one → its members' ``task-code/`` artifact downloaded under ``scratch``); both empty for one version.
    Checked and fetched before anything is published."""
    if ensemble is None:
        return {}, {}
    current = task_code_version(cfg)
    versions = fold_code_versions(tracker, ensemble, current)
    check_mixed_code(ensemble, versions, reranker, submission.get("kind"))
    return versions, fetch_code_versions(cfg, tracker, ensemble, versions, current, scratch) if versions else {}


def show_quota(kaggle: Kaggle, kind: str, notify: Callable[[str], None]) -> None:
    """Tell ``notify`` how many accelerator hours are left before a session starts (skipped if unavailable)."""
    try:
        q = kaggle.quota()
    except KopsError as e:
        notify(f"kops: quota unavailable ({e.message})")
        return
    h = q.get(kind)
    if h:
        notify(f"{kind.upper()} quota: {h['used_h']:.2f} h used, {h['reserved_h']:.2f} h reserved of "
               f"{h['allowed_h']:.2f} h this week ({h['remaining_h']:.2f} h left; refreshes {q['refresh_time']})")


def status_printer(echo: Callable[[str], None], clock: Callable[[], float] | None = None) -> Callable[[str], None]:
    """An ``on_status`` callback that echoes each status change with the seconds since the push."""
    import time

    clock = clock or time.monotonic
    start, last = clock(), [""]

    def on_status(status: str) -> None:
        if status != last[0]:
            last[0] = status
            echo(f"kernel status: {status} ({clock() - start:.0f} s)")

    return on_status


def describe(result: KernelResult) -> str:
    """The human summary of a push (or of a render: ``--no-push``)."""
    if result.kernel_version is None:
        head = [f"Rendered {result.kernel} into {result.folder} (NOT pushed: no kernel version, no run tagged)",
                f"next: kops kernel run-local {shlex.quote(str(result.folder))}   "
                "then: kops push-kernel with the same --run options"]
    else:
        head = [f"Pushed {result.kernel} version {result.kernel_version}"
                f"{f' ({result.status})' if result.status else ''}", result.url]
    lines = [*head,
             f"models: {len(result.run_ids)} run(s); runtime {result.runtime.get('dataset')} "
             f"v{result.runtime.get('version')}{' (new)' if result.runtime.get('created') else ' (reused)'}"]
    if result.code:
        versions = result.code.get("versions") or []
        lines.append(f"task code: {result.code['dataset']} v{result.code['version']}"
                     f"{' (new)' if result.code.get('created') else ' (reused)'}"
                     + (f", {len(versions)} versions (each predicted in its own process)" if versions else ""))
    if result.reranker:
        rr = result.reranker
        chosen = "".join(f", {k} {v}" for k, v in rr.get("options", {}).items())
        lines.append(f"second stage: run {rr['run_id']}, {len(rr['models'])} fold model(s){chosen}")
    if result.published:
        lines.append(f"published first (datasets on Kaggle even without a push): {', '.join(result.published)}")
    if result.submission:
        lines.append(f"submitted: submission {result.submission['submission_ref']}, "
                     f"submission run {result.submission['submission_run_id']}")
    return "\n".join(lines)
