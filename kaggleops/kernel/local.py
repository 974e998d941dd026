"""`kops kernel run-local DIR`: run a generated kernel here, in a Kaggle-like layout, with the network blocked.

Layout, under ``DIR/.run-local/`` (made fresh each time)::

    input/<competition>/      test.csv, sample_submission.csv (+ train.csv) from `data_dir` or the bundled sample
    input/<dataset slug>/     each planned run's `model/` artifact (ensemble and reranker folds) + a
                              kops-manifest.json naming the run
    input/kops-runtime/       the runtime wheel built from the installed kops (as push-kernel would publish it)
    input/<experiment>-code/  the task's own code wheel (+ kernel.wheels), when the plan has a code dataset
    working/                  the kernel's cwd and KOPS_KAGGLE_WORKING; its outputs land here

Network: the kernel always runs with a socket guard (a ``sitecustomize`` on PYTHONPATH, so the kernel and
every Python child such as pip get it) that refuses any connection or name lookup that is not loopback and
prints ``kops run-local: network blocked: …``; where a network namespace can be made (``unshare -rn``:
root, or unprivileged user namespaces), the kernel also runs inside one with no interfaces up, which
blocks non-Python programs too. The report says which was used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaggleops.adapters.tracking import open_tracker
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError
from kaggleops.kernel.runtime import check_submission, read_rows
from kaggleops.kernel.wheel import RUNTIME_SLUG, stage_runtime
from kaggleops.schema import (
    KERNEL_FILE,
    KERNEL_METADATA,
    MANIFEST,
    PLAN_FILE,
    SAMPLE_SUBMISSION_FILE,
    SUBMISSION_FILE,
    KernelPlan,
    Manifest,
)
from kaggleops.tasks import task_for

RUN_DIR = ".run-local"
BLOCKED_MARK = "kops run-local: network blocked"
COMPETITION_FILES = ("train.csv", "test.csv", "sample_submission.csv")
TIMING_LINE = re.compile(r"^kops: timing (.+?)\s+([0-9.]+)$")
NET_ERRORS = ("Network is unreachable", "Temporary failure in name resolution", "Name or service not known")
DROPPED_ENV = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "MLFLOW_TRACKING_URI", "KOPS_KAGGLE_ENDPOINT")

GUARD = '''"""kops run-local socket guard: Kaggle runs this kernel with internet off; so does run-local."""
import socket
import sys

_MARK = "@MARK@"
_LOCAL = ("127.", "::1", "localhost", "0.0.0.0")


def _is_local(host):
    return not isinstance(host, str) or host.startswith(_LOCAL) or host == ""


def _refuse(host):
    msg = _MARK + ": the kernel tried to reach " + str(host) + " (Kaggle runs it with internet off)"
    print(msg, file=sys.stderr, flush=True)
    return OSError(101, msg)  # ENETUNREACH


def _guard(orig):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise _refuse(address[0])
        return orig(self, address)
    return connect


_orig_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if not _is_local(name):
        raise socket.gaierror(-3, str(_refuse(name)))
    return _orig_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guard(socket.socket.connect)
socket.socket.connect_ex = _guard(socket.socket.connect_ex)
socket.getaddrinfo = getaddrinfo
'''.replace("@MARK@", BLOCKED_MARK)


@dataclass
class LocalRunReport:
    """What run-local saw: exit code, problems that would fail on Kaggle, timing table, outputs."""

    folder: str
    exit_code: int
    seconds: float
    isolation: str
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    estimate_s: float | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.problems

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def load_kernel_folder(folder: Path) -> tuple[KernelPlan, dict]:
    """(plan, metadata) of a folder that push-kernel rendered; KopsError naming what is missing."""
    for name in (KERNEL_FILE, KERNEL_METADATA, PLAN_FILE):
        if not (folder / name).is_file():
            raise KopsError(f"No {name} in {folder}: not a kernel folder rendered by kops.",
                            "Render one with: kops push-kernel --run RUN_ID (it writes .kops/kernels/<slug>/).")
    return KernelPlan.read(folder / PLAN_FILE), json.loads((folder / KERNEL_METADATA).read_text())


def static_checks(plan: KernelPlan, metadata: dict) -> list[str]:
    """Problems visible without running: internet on, sources not attached."""
    problems = []
    if metadata.get("enable_internet"):
        problems.append("internet needed: kernel-metadata.json enables internet (code competitions forbid it)")
    attached = set(metadata.get("dataset_sources") or [])
    for ref in [m.dataset for m in plan.all_models] + [plan.runtime.get("dataset")]:
        if ref and ref not in attached:
            problems.append(f"missing input: dataset {ref} is not in kernel-metadata.json dataset_sources")
    if plan.competition not in (metadata.get("competition_sources") or []):
        problems.append(f"missing input: competition {plan.competition} is not attached")
    return problems


def stage_inputs(cfg: KopsConfig, plan: KernelPlan, input_dir: Path, data_dir: Path | None) -> list[str]:
    """Populate ``input/``; returns problems (a run whose model artifact cannot be read)."""
    task = task_for(cfg)
    source = data_dir or cfg.resolved_data_dir() or (task.sample_dir() if hasattr(task, "sample_dir") else ".")
    comp = input_dir / plan.competition
    comp.mkdir(parents=True)
    for name in COMPETITION_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, comp / name)
    tracker = open_tracker(cfg)
    problems = []
    for model in plan.all_models:
        target = input_dir / model.dataset.split("/", 1)[1]
        try:
            downloaded = tracker.download(model.run_id, "model", input_dir.parent / "download" / model.run_id)
        except Exception as e:  # noqa: BLE001 - any tracking failure means the input is missing
            problems.append(f"missing input: run {model.run_id}'s model artifact could not be read ({e})")
            continue
        shutil.copytree(downloaded, target, dirs_exist_ok=True)
        Manifest(model.run_id, extra={"staged_by": "kops run-local"}).write(target / MANIFEST)
    stage_runtime(input_dir / RUNTIME_SLUG)
    if plan.code:  # the task's own code, built from the working tree as push-kernel would publish it
        from kaggleops.kernel.code import stage_code, task_kernel_spec

        stage_code(cfg, task_kernel_spec(cfg), input_dir / str(plan.code["dataset"]).split("/", 1)[1])
    shutil.rmtree(input_dir.parent / "download", ignore_errors=True)
    return problems


def namespace_available() -> bool:
    """True when ``unshare -rn`` can make a network namespace here."""
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def kernel_env(run_dir: Path, guard_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    (run_dir / "tmp").mkdir(exist_ok=True)
    env.update({"KOPS_KAGGLE_INPUT": str(run_dir / "input"), "KOPS_KAGGLE_WORKING": str(run_dir / "working"),
                "KAGGLE_KERNEL_RUN_TYPE": "Batch", "PYTHONUNBUFFERED": "1", "TMPDIR": str(run_dir / "tmp"),
                "PYTHONPATH": os.pathsep.join(p for p in (str(guard_dir), env.get("PYTHONPATH", "")) if p)})
    return env


def execute(folder: Path, run_dir: Path, timeout_s: float, isolation: str) -> tuple[int, list[str], float]:
    """Run kernel.py; returns (exit code, output lines, seconds)."""
    guard_dir = run_dir / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    cmd = [sys.executable, str(folder / KERNEL_FILE)]
    if isolation == "namespace+guard":
        cmd = ["unshare", "-rn", *cmd]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=run_dir / "working", env=kernel_env(run_dir, guard_dir), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        code, out = -9, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\nkops run-local: the kernel ran past {timeout_s:g} s and was stopped"
    return code, out.splitlines(), time.perf_counter() - start


def diagnose(report: LocalRunReport, lines: list[str], working: Path, sample: Path, plan: KernelPlan) -> None:
    """Fill the report's problems, timings and row count from the kernel's output and files."""
    report.timings = {m.group(1).strip(): float(m.group(2)) for ln in lines if (m := TIMING_LINE.match(ln))}
    if any(BLOCKED_MARK in ln for ln in lines) or (report.exit_code and any(e in ln for ln in lines
                                                                               for e in NET_ERRORS)):
        report.problems.append("internet needed: " + next((ln for ln in lines if BLOCKED_MARK in ln),
                                                          "the kernel failed on a network error"))
    report.problems += [ln.split("kops: error: ", 1)[1] for ln in lines if "kops: error: " in ln]
    report.problems += [ln for ln in lines if "ran past" in ln and ln.startswith("kops run-local")]
    report.outputs = sorted(p.relative_to(working).as_posix() for p in working.rglob("*") if p.is_file())
    if report.exit_code == 0:
        if not (working / SUBMISSION_FILE).is_file():
            report.problems.append(f"wrong output name: no {SUBMISSION_FILE} in working/ (outputs: {report.outputs})")
        elif sample.is_file():
            ids = [r[plan.id_column] for r in read_rows(sample)]
            report.rows = len(ids)
            report.problems += check_submission(working / SUBMISSION_FILE, plan.id_column, plan.target_column, ids)
    elif not report.problems:
        report.problems.append(f"the kernel exited with status {report.exit_code}")
    report.log_tail = lines[-30:]


def estimate(report: LocalRunReport, full_rows: int | None) -> None:
    """Scale the per-row stages (tokenize, forward, ensemble, decode) to ``full_rows`` test rows."""
    if not full_rows or not report.rows or not report.timings:
        return
    fixed = sum(s for k, s in report.timings.items() if k.startswith(("install", "check", "load", "read", "restore")))
    variable = report.timings.get("total", report.seconds) - fixed
    report.estimate_s = round(fixed + variable * full_rows / report.rows, 1)


def run_local(cfg: KopsConfig, folder: Path, data_dir: Path | None = None, timeout_s: float = 3 * 3600,
              isolation: str = "auto", full_rows: int | None = None) -> LocalRunReport:
    """Run the kernel in ``folder`` in a Kaggle-like layout with the network blocked; report what would fail.

    Example:
        >>> run_local(load_config(), Path(".kops/kernels/tse-inference")).problems  # doctest: +SKIP
        []
    """
    folder = folder.resolve()
    plan, metadata = load_kernel_folder(folder)
    if isolation == "auto":
        isolation = "namespace+guard" if namespace_available() else "guard"
    run_dir = folder / RUN_DIR
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "working").mkdir(parents=True)
    problems = static_checks(plan, metadata) + stage_inputs(cfg, plan, run_dir / "input", data_dir)
    code, lines, seconds = execute(folder, run_dir, timeout_s, isolation)
    report = LocalRunReport(str(folder), code, round(seconds, 2), isolation, problems=problems)
    sample = run_dir / "input" / plan.competition / SAMPLE_SUBMISSION_FILE
    diagnose(report, lines, run_dir / "working", sample, plan)
    report.warnings = [ln for ln in lines if "kops: warning:" in ln]
    estimate(report, full_rows)
    return report


def render_report(report: LocalRunReport) -> str:
    """The human report."""
    lines = [f"run-local {'OK' if report.ok else 'FAILED'}: exit {report.exit_code}, {report.seconds:.1f} s, "
             f"network blocked by {report.isolation}"]
    lines += [f"  {stage:<30} {s:9.3f} s" for stage, s in report.timings.items()]
    if report.rows:
        lines.append(f"  submission.csv: {report.rows} rows checked against sample_submission.csv")
    if report.estimate_s is not None:
        lines.append(f"  estimate for the full test set: {report.estimate_s:.0f} s on this machine")
    lines += [f"  would fail on Kaggle: {p}" for p in report.problems]
    lines += [f"  {w}" for w in report.warnings]
    if report.problems:
        lines += ["  --- kernel output (last lines) ---", *[f"  {ln}" for ln in report.log_tail]]
    return "\n".join(lines)
