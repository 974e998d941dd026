"""Inside the kernel: a blend whose members trained different versions of the task's code, one process per version.

SELF-CONTAINED like :mod:`kaggleops.kernel.runtime` (standard library, :mod:`kaggleops.schema`,
:mod:`kaggleops.errors`, :mod:`kaggleops.task`): it runs in the Kaggle image with internet off.

The plan's ``code.versions`` lists every version (its marker: content_sha256, wheel, dependency wheels, module) and
each model's ``code`` names the one it ran. Per version, :func:`predict_by_version` installs that version's wheels
(``pip install --no-index --no-deps --target``, as the kernel installs the current one) and starts a child
``python`` with only that code and the kops runtime on its path: it imports that version's task, loads the test
data, runs its ``predict`` on its own model folders with the ensemble's weights renormalised within the group, and
pickles its predictions table to a scratch file. The parent blends the groups' tables with the CURRENT task's
``combine`` (the one ``kops ensemble`` scored the OOF with), weighted by each group's share, then post-processes
once. The child's entry is :func:`kaggleops.kernel.runtime.version_child`. A child that fails fails the kernel,
naming the version and the child's last stderr lines.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kaggleops
from kaggleops.errors import DataError, KernelFailure
from kaggleops.schema import CODE_MARKER_PREFIX, MARKER_HASH_CHARS, TEST_FILE, KernelPlan

HASH_CHARS = MARKER_HASH_CHARS
CODE_GLOB = f"{CODE_MARKER_PREFIX}*.json"
STDERR_TAIL = 5
CHILD = "import sys; from kaggleops.kernel.runtime import version_child; version_child(sys.argv[1])"


def install_version(input_dir: Path, content: str) -> Path:
    """The version ``content``'s wheel + dependency wheels (named by its marker in the attached code dataset)
    installed into a temp folder (reused when already there); KernelFailure when missing or pip fails."""
    wanted = content[:HASH_CHARS]
    markers = [m for m in (sorted(input_dir.rglob(CODE_GLOB)) if input_dir.is_dir() else []) if wanted in m.name]
    if not markers:
        raise KernelFailure(f"missing input: no attached code dataset holds task code version {wanted} "
                            f"(kops-code-{wanted}.json)")
    manifest = json.loads(markers[0].read_text())
    wheels = [markers[0].parent / manifest["wheel"], *(markers[0].parent / w for w in manifest.get("wheels", []))]
    target = Path(tempfile.gettempdir()) / f"kops-code-{wanted}"
    if not target.is_dir():
        staging = Path(f"{target}.{os.getpid()}")
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--no-warn-script-location", "--target", str(staging),
               *map(str, wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelFailure(f"pip could not install task code version {wanted} {[w.name for w in wheels]}: "
                                f"{proc.stderr.strip()[-400:]}")
        if not target.exists():
            os.replace(staging, target)
    return target


def groups_of(plan: KernelPlan) -> dict[str, list[int]]:
    """Code version → indices of the plan's models that ran it (a model without ``code`` ran the current one)."""
    current = (plan.code or {}).get("content_sha256", "")
    groups: dict[str, list[int]] = {}
    for i, model in enumerate(plan.models):
        groups.setdefault(model.code or current, []).append(i)
    return groups


def run_child(content: str, target: Path, job: dict[str, Any], scratch: Path) -> Any:
    """Run one version's predict in a child python (``target`` and the kops runtime on its path); its table."""
    job_file = scratch / f"job-{content[:HASH_CHARS]}.json"
    job_file.write_text(json.dumps(job))
    runtime_root = Path(kaggleops.__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), str(runtime_root), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(job_file)], cwd=scratch, env=env,
                          stdout=None, stderr=subprocess.PIPE, text=True)
    if proc.stderr:
        print(proc.stderr, end="", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        tail = " | ".join(ln.strip() for ln in proc.stderr.strip().splitlines()[-STDERR_TAIL:] if ln.strip())
        raise KernelFailure(f"task code version {content[:HASH_CHARS]} failed in its own process "
                            f"(exit {proc.returncode}): {tail or 'no stderr'}")
    with open(job["out"], "rb") as f:
        return pickle.load(f)


def predict_by_version(task: Any, plan: KernelPlan, test: Any, competition_dir: Path, model_dirs: list[Path],
                       input_dir: Path, timings: Any) -> Any:
    """The blend's predictions table: each version's group predicted in its own process, the groups' tables
    combined with ``task.combine`` (the current version's) weighted by each group's share, post-processed."""
    from kaggleops.task import PostProcessing

    weights = [m.weight for m in plan.models]
    total = sum(weights) or 1.0
    scratch = Path(tempfile.mkdtemp(prefix="kops-versions-"))
    tables, shares = [], []
    for content, idx in groups_of(plan).items():
        t0 = time.perf_counter()
        target = install_version(input_dir, content)
        group = sum(weights[i] for i in idx) or 1.0
        marker = next((v for v in plan.code_versions if v.get("content_sha256") == content), None)
        if marker is None:
            raise KernelFailure(f"the plan's code.versions lacks task code version {content[:HASH_CHARS]}")
        job = {"spec": marker["module"], "competition": plan.competition, "test": str(competition_dir / TEST_FILE),
               "models": [str(model_dirs[i]) for i in idx], "weights": [weights[i] / group for i in idx],
               "labels": [f"m{i}:{plan.models[i].run_id[:8]}" for i in idx],
               "out": str(scratch / f"preds-{content[:HASH_CHARS]}.pkl")}
        tables.append(run_child(content, target, job, scratch))
        shares.append(group / total)
        seconds = time.perf_counter() - t0
        print(f"kops: task code version {content[:HASH_CHARS]}: {len(idx)} model(s) predicted in their own process "
              f"in {seconds:.1f} s (weight {group / total:.3f})", flush=True)
        timings.add(f"code {content[:8]} ({len(idx)} models)", seconds)
    with timings.stage("combine versions"):
        try:
            preds = task.combine(tables, shares)
        except (KeyError, ValueError, DataError) as e:  # e.g. predict returns labels, combine blends probabilities
            raise KernelFailure(f"the task's combine could not blend the {len(tables)} code versions' predict tables "
                                f"({type(e).__name__}: {e}): with several versions, predict must return what "
                                "combine blends (e.g. the blend_columns)") from None
    print(f"kops: {len(tables)} task code versions combined with the current task's combine", flush=True)
    timings.add("rerank (none attached)", 0.0)
    if isinstance(task, PostProcessing):
        with timings.stage("post-process"):
            preds = task.post_process(test, preds)
    return preds
