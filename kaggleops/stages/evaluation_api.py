"""Evaluation-API competitions on kops' side: which submission kind a competition takes, what its kernel measured,
what a failed rerun's error type says.

A competition's data says how it takes predictions (:class:`~kaggleops.schema.SubmissionKind`): an evaluation-API
competition ships ``kaggle_evaluation/`` with a ``<comp>_inference_server.py``; kops.yaml ``kernel.submission``
overrides what is found. The kernel (:mod:`kaggleops.kernel.evaluation_api`) writes its load/latency timings to
``kops-timing.json``; :func:`kernel_timings` turns them into the submission run's ``kernel_*`` metrics.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError
from kaggleops.refs import CompetitionRef, KernelRef
from kaggleops.schema import GATEWAY_ERROR_TYPES, TIMING_FILE, SubmissionKind, inference_server_module

ERROR_TYPE = re.compile(r"\b(" + "|".join(GATEWAY_ERROR_TYPES) + r")\b")
KERNEL_METRIC_PREFIX = "kernel_"  # the kernel's evaluation timings on the submission run: kernel_latency_p95_s, ...
ERROR_HINTS = {
    "GRPC_DEADLINE_EXCEEDED": "A predict_batch call took longer than the gateway's per-call timeout: make it faster "
                              "(only the first call, which loads the models, has no deadline).",
    "INVALID_SUBMISSION": "predict_batch must answer one row per row of its batch, with the submission's columns; "
                          "try the kernel first with: kops kernel run-local",
    "SERVER_NEVER_STARTED": "The notebook's inference server never answered: it exited first, or started after the "
                            "startup limit (keep slow work out of the kernel's start; kops loads models on the first "
                            "call).",
    "SERVER_RAISED_EXCEPTION": "predict_batch raised on the hidden data; try the kernel with: kops kernel run-local",
}


def _competition_names(cfg: KopsConfig, kaggle: Kaggle) -> tuple[list[str], str]:
    """(relative names of the competition's data files, where they were seen): a local copy first (``data_dir``,
    the attached input, the download cache), else the competition's file list on Kaggle."""
    from kaggleops.stages.data import attached_competition_dir, cache_dir

    for folder in (cfg.resolved_data_dir(), attached_competition_dir(cfg.competition),
                   cache_dir(cfg.competition, cfg.resolved_kaggle_endpoint)):
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()], str(folder)
    try:
        return kaggle.competition_files(CompetitionRef.parse(cfg.competition)), "its file list on Kaggle"
    except KopsError as e:
        return [], f"nowhere (listing its files failed: {e.message})"


def detect_submission(cfg: KopsConfig, kaggle: Kaggle) -> dict[str, str]:
    """How the competition takes predictions: ``kind`` (:class:`~kaggleops.schema.SubmissionKind`), the
    ``server_module`` of an evaluation API, and the ``source`` that said so.

    The competition's data says it (an evaluation-API competition ships ``kaggle_evaluation/`` with a
    ``<comp>_inference_server.py``); kops.yaml ``kernel.submission: file | evaluation-api`` overrides it.
    """
    names, where = _competition_names(cfg, kaggle)
    module = inference_server_module(names)
    found = SubmissionKind.EVALUATION_API if module else SubmissionKind.FILE
    kind = cfg.kernel.submission or found
    source = "kops.yaml kernel.submission" if cfg.kernel.submission else f"the competition's data ({where})"
    return {"kind": kind, **({"server_module": module} if module else {}), "source": source}


def describe_submission(competition: str, found: dict[str, str]) -> str:
    """One line: which submission kind kops found for the competition, and where."""
    if found.get("kind") == SubmissionKind.EVALUATION_API:
        module = found.get("server_module")
        what = f"an evaluation API ({module.replace('.', '/')}.py)" if module else "an evaluation API"
    else:
        what = "a submission file (no kaggle_evaluation/ inference server in its data)"
    return f"competition {competition} takes {what}: from {found.get('source', '?')}"


def kernel_timings(kaggle: Kaggle, kernel: KernelRef) -> dict[str, float]:
    """The evaluation timings a kernel version wrote (``kops-timing.json``'s ``evaluation``) as metrics
    ``kernel_load_models_s``, ``kernel_calls``, ``kernel_latency_p50_s`` …; {} when it has none."""
    import json

    with tempfile.TemporaryDirectory(prefix="kops-kout-") as tmp:
        try:
            kaggle.kernel_output(kernel, Path(tmp))
            data = json.loads((Path(tmp) / TIMING_FILE).read_text())
        except (KopsError, OSError, ValueError):
            return {}
    found = data.get("evaluation") if isinstance(data, dict) else None
    return {KERNEL_METRIC_PREFIX + k: float(v) for k, v in (found or {}).items() if isinstance(v, (int, float))}


def error_type(error: str) -> str:
    """The evaluation API's error type named in a submission's error text ('' when it names none)."""
    found = ERROR_TYPE.search(error or "")
    return found.group(1) if found else ""
