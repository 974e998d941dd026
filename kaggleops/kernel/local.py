"""`kops kernel run-local DIR`: run a rendered kernel here as Kaggle would, before it costs a submission.

DIR is a folder ``kops push-kernel --no-push`` (or a push) rendered: kernel.py, kernel-metadata.json and the
plan kops-kernel.json. Nothing needs to have been pushed. The kernel runs with the Kaggle image's interpreter
(:mod:`kaggleops.kernel.image`: a cached virtual environment holding only the packages the Kaggle Python image
preinstalls, never kops' own interpreter; ``--python PATH`` names another), on the inputs Kaggle attaches, with
the network blocked and the session's time limit. Layout, under ``DIR/.run-local/`` (made fresh)::

    input/competitions/<competition>/   the competition's data as Kaggle attaches it (downloaded), or ``--data DIR``
    input/datasets/<owner>/<slug>/      each planned dataset at the EXACT version the plan names: model datasets
                                        (ensemble and reranker folds), the kops-runtime wheel, the task's code;
                                        downloaded through the official client as it leaves them (the kernel's own
                                        restore unpacks the ``<dir>.zip`` sub-folders and checks sha256s)
    input/models/<owner>/<model>/<framework>/<variation>/<version>/
                                        each planned Kaggle Model instance version (``publish: {to: model}``)
    source/kernel.py                    the kernel, copied (its folder is the script's ``sys.path[0]``)
    working/                            the kernel's cwd and KOPS_KAGGLE_WORKING; its outputs land here
    home/, tmp/                         the session's own, empty HOME and TMPDIR

``--input-layout legacy`` lays the inputs out the older way, ``input/<slug>/`` for each (models:
``input/<model>/<framework>/<variation>/<version>/``); the kernel finds them by manifest either way.

Downloads are cached under ``.kops/cache/kaggle/<endpoint>/`` by ref + version (versions never change; the
competition by slug) and linked into ``input/``, which is then made read-only as on Kaggle: file permissions,
plus a read-only bind mount inside the kernel's namespace where one can be made.

Environment: the caller's, less credentials (Kaggle's, MLflow's), less every ``PYTHON*``/``PIP_*``/virtualenv
variable and the model caches' (Hugging Face, torch), with kops' own ``bin/`` dropped from PATH and the image's put
first: the kernel and every process it starts see only the image.

Network: the kernel always runs with a socket guard (a ``sitecustomize`` on PYTHONPATH, so the kernel and
every Python child such as pip get it) that refuses any connection or name lookup that is not loopback and
prints ``kops run-local: network blocked: …``; where a network namespace can be made (``unshare -rnm``:
root, or unprivileged user namespaces), the kernel also runs inside one with only loopback up, which
blocks non-Python programs too. The report says which was used.

Time: ``timeout_s`` is the session's limit, counted from the kernel's start; the kernel and every process it
started (its own process group) are stopped when it is reached, as Kaggle ends a session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError
from kaggleops.kernel.image import ImageEnv, kernel_python
from kaggleops.kernel.inputs import LAYOUTS, input_path, set_read_only, stage_inputs
from kaggleops.kernel.runtime import check_submission, read_rows
from kaggleops.refs import CompetitionRef
from kaggleops.schema import (
    EVALUATION_SUBMISSION_FILE,
    KERNEL_FILE,
    KERNEL_METADATA,
    PLAN_FILE,
    SAMPLE_SUBMISSION_FILE,
    SESSION_LIMIT_S,
    SUBMISSION_FILE,
    TIMING_FILE,
    KernelPlan,
    SubmissionKind,
)

RUN_DIR = ".run-local"
BLOCKED_MARK = "kops run-local: network blocked"
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(: .*)?$")  # a traceback's last line
TIMING_LINE = re.compile(r"^kops: timing (.+?)\s+([0-9.]+)$")
NET_ERRORS = ("Network is unreachable", "Temporary failure in name resolution", "Name or service not known")
# In the kernel's own mount namespace: /kaggle/input is read-only there, and so is input/ here ($1).
READ_ONLY_MOUNT = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && (ip link set lo up 2>/dev/null || true) '
                   '&& shift && exec "$@"')  # loopback up, as on Kaggle (an evaluation API's gRPC runs on it)
DROPPED_ENV = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "MLFLOW_TRACKING_URI", "KOPS_KAGGLE_ENDPOINT",
               "VIRTUAL_ENV", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "TORCH_HOME",
               "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
DROPPED_PREFIXES = ("PYTHON", "PIP_", "CONDA", "MLFLOW_", "KOPS_")

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
    read_only: str = "permissions"
    python: str = ""
    image: str = ""
    input_layout: str = "current"
    timeout_s: float = SESSION_LIMIT_S
    inputs: list[str] = field(default_factory=list)
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    estimate_s: float | None = None
    log_tail: list[str] = field(default_factory=list)
    evaluation: dict[str, float] = field(default_factory=dict)  # an evaluation-API kernel's load/latency timings

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
                            "Render one with: kops push-kernel --run RUN_ID --no-push "
                            "(it writes .kops/kernels/<slug>/).")
    return KernelPlan.read(folder / PLAN_FILE), json.loads((folder / KERNEL_METADATA).read_text())


def static_checks(plan: KernelPlan, metadata: dict) -> list[str]:
    """Problems visible without running: internet on, sources not attached."""
    problems = []
    if metadata.get("enable_internet"):
        problems.append("internet needed: kernel-metadata.json enables internet (code competitions forbid it)")
    attached = set(metadata.get("dataset_sources") or [])
    datasets = [m.dataset for m in plan.all_models if m.kind != "model"]
    for ref in datasets + [plan.runtime.get("dataset"), (plan.code or {}).get("dataset")]:
        if ref and ref not in attached:
            problems.append(f"missing input: dataset {ref} is not in kernel-metadata.json dataset_sources")
    models = set(metadata.get("model_sources") or [])
    problems += [f"missing input: model {m.dataset}/{m.dataset_version} is not in kernel-metadata.json "
                 "model_sources" for m in plan.all_models if m.kind == "model"
                 and f"{m.dataset}/{m.dataset_version}" not in models]
    versions: dict[str, set[int]] = {}
    for m in plan.all_models:
        if m.kind != "model":
            versions.setdefault(m.dataset, set()).add(m.dataset_version)
    problems += [f"missing input: dataset {ref} is planned at versions {sorted(v)}; Kaggle attaches one version "
                 "per dataset" for ref, v in versions.items() if len(v) > 1]
    if plan.competition not in (metadata.get("competition_sources") or []):
        problems.append(f"missing input: competition {plan.competition} is not attached")
    return problems


def namespace_available() -> bool:
    """True when ``unshare -rnm`` can make a network + mount namespace here and bind a folder read-only."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory(prefix="kops-ns-") as tmp:
        try:
            return subprocess.run(["unshare", "-rnm", "sh", "-c", READ_ONLY_MOUNT, "sh", tmp, "true"],
                                  capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def _free_port() -> str:
    """A loopback port free now (the bundled evaluation API serves it: no two kernels meet on 50051)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def kernel_env(run_dir: Path, guard_dir: Path, python: Path) -> dict[str, str]:
    """The kernel's environment: the caller's without credentials, Python/pip/virtualenv settings or model caches;
    the image's ``bin/`` first on PATH and kops' own left out; a fresh HOME and TMPDIR; the guard on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV and not k.startswith(DROPPED_PREFIXES)}
    own_bins = {str(Path(p).absolute()) for p in (Path(sys.executable).parent, Path(sys.prefix) / "bin")}
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and str(Path(p).absolute()) not in own_bins]
    for name in ("tmp", "home"):
        (run_dir / name).mkdir(exist_ok=True)
    env.update({"KOPS_KAGGLE_INPUT": str(run_dir / "input"), "KOPS_KAGGLE_WORKING": str(run_dir / "working"),
                "KAGGLE_KERNEL_RUN_TYPE": "Batch", "PYTHONUNBUFFERED": "1", "TMPDIR": str(run_dir / "tmp"),
                "HOME": str(run_dir / "home"), "PYTHONPATH": str(guard_dir), "KAGGLE_EVALUATION_PORT": _free_port(),
                "PATH": os.pathsep.join([str(python.parent), *path])})
    return env


def execute(folder: Path, run_dir: Path, timeout_s: float, isolation: str,
            python: Path | None = None) -> tuple[int, list[str], float]:
    """Run a copy of kernel.py with ``python`` (default: kops' own); returns (exit code, output lines, seconds).

    ``timeout_s`` is the session's limit: reached, the kernel's whole process group is stopped.
    """
    python = python or Path(sys.executable)
    guard_dir = run_dir / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    script = run_dir / "source" / KERNEL_FILE
    script.parent.mkdir()
    shutil.copyfile(folder / KERNEL_FILE, script)
    cmd = [str(python), str(script)]
    if isolation == "namespace+guard":
        cmd = ["unshare", "-rnm", "sh", "-c", READ_ONLY_MOUNT, "sh", str(run_dir / "input"), *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=run_dir / "working", env=kernel_env(run_dir, guard_dir, python), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            errors="replace", start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ln.rstrip("\n") for ln in proc.stdout or []), daemon=True)
    reader.start()
    timed_out = False
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        code = proc.wait()
    _kill_group(proc)  # what the session left running ends with it, as on Kaggle
    reader.join(timeout=10)
    if timed_out:
        code = -9
        lines.append(f"kops run-local: the kernel ran past its session limit of {timeout_s:g} s and was stopped")
    return code, list(lines), time.perf_counter() - start


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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
    if report.exit_code == 0 and plan.submission_kind == SubmissionKind.EVALUATION_API:
        if not (working / EVALUATION_SUBMISSION_FILE).is_file():
            report.problems.append(f"wrong output: the local gateway wrote no {EVALUATION_SUBMISSION_FILE} "
                                   f"(outputs: {report.outputs})")
        else:
            import pandas as pd

            report.rows = len(pd.read_parquet(working / EVALUATION_SUBMISSION_FILE))
        timing = working / TIMING_FILE
        if timing.is_file():
            report.evaluation = dict(json.loads(timing.read_text()).get("evaluation") or {})
    elif report.exit_code == 0:
        if not (working / SUBMISSION_FILE).is_file():
            report.problems.append(f"wrong output name: no {SUBMISSION_FILE} in working/ (outputs: {report.outputs})")
        elif sample.is_file():
            ids = [r[plan.id_column] for r in read_rows(sample)]
            report.rows = len(ids)
            report.problems += check_submission(working / SUBMISSION_FILE, plan.id_column, plan.target_column, ids)
    elif not report.problems:
        error = next((ln.strip() for ln in reversed(lines) if EXCEPTION_LINE.match(ln.strip())), None)
        report.problems.append(error or f"the kernel exited with status {report.exit_code}")
    report.log_tail = lines[-30:]


def estimate(report: LocalRunReport, full_rows: int | None) -> None:
    """Scale the per-row stages (tokenize, forward, ensemble, decode) to ``full_rows`` test rows."""
    if not full_rows or not report.rows or not report.timings:
        return
    fixed = sum(s for k, s in report.timings.items() if k.startswith(("install", "check", "load", "read", "restore")))
    variable = report.timings.get("total", report.seconds) - fixed
    report.estimate_s = round(fixed + variable * full_rows / report.rows, 1)


def run_local(cfg: KopsConfig, folder: Path, data_dir: Path | None = None, timeout_s: float = SESSION_LIMIT_S,
              isolation: str = "auto", full_rows: int | None = None, kaggle: Kaggle | None = None,
              python: Path | str | None = None, input_layout: str = "current",
              progress: Callable[[str], None] | None = None) -> LocalRunReport:
    """Run the kernel in ``folder`` as Kaggle would; report what would fail there.

    The planned dataset and model versions are downloaded through ``kaggle`` (default: the configured endpoint)
    and laid out in ``input_layout`` (``current`` or ``legacy``); the kernel runs with the Kaggle image
    environment's interpreter (built on first use; ``progress`` hears about it) or ``python``, network blocked,
    stopped after ``timeout_s`` seconds (the session's limit).

    Example:
        >>> run_local(load_config(), Path(".kops/kernels/tse-inference")).problems  # doctest: +SKIP
        []
    """
    if input_layout not in LAYOUTS:
        raise KopsError(f"--input-layout {input_layout}: not a layout Kaggle mounts inputs in.",
                        "Pass --input-layout current (competitions/, datasets/, models/) or legacy (<slug>/).")
    folder = folder.resolve()
    plan, metadata = load_kernel_folder(folder)
    image: ImageEnv = kernel_python(python, progress)
    if isolation == "auto":
        isolation = "namespace+guard" if namespace_available() else "guard"
    run_dir = folder / RUN_DIR
    set_read_only(run_dir / "input", read_only=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "working").mkdir(parents=True)
    staged, missing = stage_inputs(cfg, plan, run_dir / "input", data_dir, kaggle, input_layout)
    code, lines, seconds = execute(folder, run_dir, timeout_s, isolation, image.python)
    report = LocalRunReport(str(folder), code, round(seconds, 2), isolation, inputs=staged,
                            read_only="bind mount + permissions" if isolation == "namespace+guard" else "permissions",
                            python=str(image.python), image=image.describe(), input_layout=input_layout,
                            timeout_s=timeout_s, problems=static_checks(plan, metadata) + missing)
    comp = run_dir / "input" / input_path(CompetitionRef.parse(plan.competition), input_layout)
    diagnose(report, lines, run_dir / "working", comp / SAMPLE_SUBMISSION_FILE, plan)
    report.warnings = [ln for ln in lines if "kops: warning:" in ln]
    estimate(report, full_rows)
    return report


def render_report(report: LocalRunReport) -> str:
    """The human report."""
    lines = [f"run-local {'OK' if report.ok else 'FAILED'}: exit {report.exit_code}, {report.seconds:.1f} s, "
             f"network blocked by {report.isolation}, input/ read-only by {report.read_only}",
             f"  python: {report.image}", f"  input layout: {report.input_layout}, session limit "
             f"{report.timeout_s:g} s"]
    lines += [f"  input: {line}" for line in report.inputs]
    lines += [f"  {stage:<30} {s:9.3f} s" for stage, s in report.timings.items()]
    if report.rows and report.evaluation:
        ev = report.evaluation
        lines.append(f"  submission.parquet: {report.rows} rows written by the competition's local gateway in "
                     f"{int(ev.get('calls', 0))} call(s); models loaded in {ev.get('load_models_s', 0):.3f} s; "
                     f"latency p50 {ev.get('latency_p50_s', 0) * 1000:.1f} ms, p95 "
                     f"{ev.get('latency_p95_s', 0) * 1000:.1f} ms, max {ev.get('latency_max_s', 0) * 1000:.1f} ms")
    elif report.rows:
        lines.append(f"  submission.csv: {report.rows} rows checked against sample_submission.csv")
    if report.estimate_s is not None:
        lines.append(f"  estimate for the full test set: {report.estimate_s:.0f} s on this machine")
    lines += [f"  would fail on Kaggle: {p}" for p in report.problems]
    lines += [f"  {w}" for w in report.warnings]
    if report.problems:
        lines += ["  --- kernel output (last lines) ---", *[f"  {ln}" for ln in report.log_tail]]
    return "\n".join(lines)
