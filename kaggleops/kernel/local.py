"""`kops kernel run-local DIR`: run a rendered kernel here, on the inputs Kaggle would attach, network blocked.

DIR is a folder ``kops push-kernel --no-push`` (or a push) rendered: kernel.py, kernel-metadata.json and the
plan kops-kernel.json. Nothing needs to have been pushed. Layout, under ``DIR/.run-local/`` (made fresh)::

    input/<dataset slug>/     each planned model dataset at the EXACT version the plan names (ensemble and
                              reranker folds), downloaded through the Kaggle adapter (the official client's
                              dataset download, from Kaggle or the emulator) as the client leaves it: the
                              kernel's own restore unpacks the ``<dir>.zip`` sub-folders and checks sha256s
    input/kops-runtime/       the runtime dataset version the plan names (the published wheel, not a fresh build)
    input/<experiment>-code/  the task's code dataset version the plan names, when it has one
    input/<competition>/      the competition's data as Kaggle attaches it (downloaded), or ``--data DIR``
    working/                  the kernel's cwd and KOPS_KAGGLE_WORKING; its outputs land here

Downloads are cached under ``.kops/cache/kaggle/<endpoint>/`` by dataset ref + version (versions never
change; the competition by slug) and linked into ``input/``, which is then made read-only as on Kaggle:
file permissions, plus a read-only bind mount inside the kernel's namespace where one can be made.

Network: the kernel always runs with a socket guard (a ``sitecustomize`` on PYTHONPATH, so the kernel and
every Python child such as pip get it) that refuses any connection or name lookup that is not loopback and
prints ``kops run-local: network blocked: …``; where a network namespace can be made (``unshare -rnm``:
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
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.config import KopsConfig
from kaggleops.errors import KopsError
from kaggleops.kernel.runtime import check_submission, read_rows
from kaggleops.refs import CompetitionRef, DatasetRef
from kaggleops.schema import (
    KERNEL_FILE,
    KERNEL_METADATA,
    PLAN_FILE,
    SAMPLE_SUBMISSION_FILE,
    SUBMISSION_FILE,
    KernelPlan,
)

RUN_DIR = ".run-local"
CACHE_DIR = Path(".kops") / "cache" / "kaggle"
BLOCKED_MARK = "kops run-local: network blocked"
COMPETITION_FILES = ("train.csv", "test.csv", "sample_submission.csv")
TIMING_LINE = re.compile(r"^kops: timing (.+?)\s+([0-9.]+)$")
NET_ERRORS = ("Network is unreachable", "Temporary failure in name resolution", "Name or service not known")
# In the kernel's own mount namespace: /kaggle/input is read-only there, and so is input/ here ($1).
READ_ONLY_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
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
    read_only: str = "permissions"
    inputs: list[str] = field(default_factory=list)
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
                            "Render one with: kops push-kernel --run RUN_ID --no-push "
                            "(it writes .kops/kernels/<slug>/).")
    return KernelPlan.read(folder / PLAN_FILE), json.loads((folder / KERNEL_METADATA).read_text())


def static_checks(plan: KernelPlan, metadata: dict) -> list[str]:
    """Problems visible without running: internet on, sources not attached."""
    problems = []
    if metadata.get("enable_internet"):
        problems.append("internet needed: kernel-metadata.json enables internet (code competitions forbid it)")
    attached = set(metadata.get("dataset_sources") or [])
    for ref in [m.dataset for m in plan.all_models] + [plan.runtime.get("dataset"), (plan.code or {}).get("dataset")]:
        if ref and ref not in attached:
            problems.append(f"missing input: dataset {ref} is not in kernel-metadata.json dataset_sources")
    versions: dict[str, set[int]] = {}
    for m in plan.all_models:
        versions.setdefault(m.dataset, set()).add(m.dataset_version)
    problems += [f"missing input: dataset {ref} is planned at versions {sorted(v)}; Kaggle attaches one version "
                 "per dataset" for ref, v in versions.items() if len(v) > 1]
    if plan.competition not in (metadata.get("competition_sources") or []):
        problems.append(f"missing input: competition {plan.competition} is not attached")
    return problems


def planned_datasets(plan: KernelPlan) -> list[DatasetRef]:
    """The exact dataset versions the plan attaches (models, reranker folds, runtime, task code), one per ref.

    Kaggle mounts one version per attached dataset; two runs planned at two versions of one dataset cannot
    both be there, and :func:`static_checks` reports it. The newest planned version is staged.
    """
    pinned: dict[str, int] = {}
    for m in plan.all_models:
        pinned[m.dataset] = max(m.dataset_version, pinned.get(m.dataset, 0))
    for extra in (plan.runtime, plan.code or {}):
        if extra.get("dataset"):
            pinned[str(extra["dataset"])] = int(extra["version"])
    return [DatasetRef.parse(f"{ref}/{version}") for ref, version in pinned.items()]


def cache_root(cfg: KopsConfig, kaggle: Kaggle) -> Path:
    """``.kops/cache/kaggle/<endpoint>/``: kaggle.com, or the emulator's host and port (another server)."""
    where = re.sub(r"[^A-Za-z0-9.-]+", "_", (kaggle.endpoint or "kaggle.com").split("://", 1)[-1]).strip("_")
    return cfg.root / CACHE_DIR / where


def cached_download(target: Path, fetch: Callable[[Path], Path]) -> bool:
    """``fetch`` into ``target`` once (into a partial folder, renamed when whole). Returns True on a cache hit."""
    if target.is_dir():
        return True
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    fetch(partial)
    partial.rename(target)
    return False


def link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a tree of hard links to ``src``'s files (copies where links cannot be made)."""
    shutil.copytree(src, dst, copy_function=_link_or_copy, dirs_exist_ok=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def set_read_only(folder: Path, read_only: bool = True) -> None:
    """Files 0444 / folders 0555 (``read_only``), or writable again so the folder can be removed."""
    if not folder.exists():
        return
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = (0o555 if path.is_dir() else 0o444) if read_only else (0o755 if path.is_dir() else 0o644)
        path.chmod(mode)


def stage_competition(kaggle: Kaggle, cache: Path, slug: str, target: Path, data_dir: Path | None) -> str:
    """``input/<competition>/``: ``data_dir``'s files, else the competition's data downloaded (cached)."""
    if data_dir is not None:
        target.mkdir(parents=True)
        for name in COMPETITION_FILES:
            if (Path(data_dir) / name).is_file():
                shutil.copyfile(Path(data_dir) / name, target / name)
        return f"competition {slug} ← {data_dir} (--data)"
    ref = CompetitionRef.parse(slug)
    try:
        hit = cached_download(cache / "competitions" / slug, lambda d: kaggle.download_competition(ref, d))
    except KopsError as e:
        raise KopsError(f"run-local could not download the data of competition {slug}: {e.message}",
                        "Accept its rules on Kaggle, or pass the data with: kops kernel run-local DIR --data "
                        "FOLDER (test.csv + sample_submission.csv).") from None
    link_tree(cache / "competitions" / slug, target)
    return f"competition {slug} → input/{slug} ({'cached' if hit else 'downloaded'})"


def stage_inputs(cfg: KopsConfig, plan: KernelPlan, input_dir: Path, data_dir: Path | None,
                 kaggle: Kaggle | None = None) -> tuple[list[str], list[str]]:
    """Populate ``input/`` as Kaggle would; returns (what was staged, problems: a version that cannot be had)."""
    kaggle = kaggle or Kaggle.from_config(cfg)
    cache = cache_root(cfg, kaggle)
    input_dir.mkdir(parents=True)
    staged = [stage_competition(kaggle, cache, plan.competition, input_dir / plan.competition, data_dir)]
    problems = []
    for ref in planned_datasets(plan):
        where = cache / "datasets" / ref.owner / ref.slug / str(ref.version)
        try:
            hit = cached_download(where, lambda d, r=ref: kaggle.download_dataset(r, d))
        except KopsError as e:
            problems.append(f"missing input: dataset {ref} cannot be downloaded ({e.message})")
            continue
        link_tree(where, input_dir / ref.slug)
        staged.append(f"dataset {ref} → input/{ref.slug} ({'cached' if hit else 'downloaded'})")
    set_read_only(input_dir)
    return staged, problems


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
        cmd = ["unshare", "-rnm", "sh", "-c", READ_ONLY_MOUNT, "sh", str(run_dir / "input"), *cmd]
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
              isolation: str = "auto", full_rows: int | None = None, kaggle: Kaggle | None = None) -> LocalRunReport:
    """Run the kernel in ``folder`` on the inputs Kaggle would attach, network blocked; report what would fail.

    The planned dataset versions are downloaded through ``kaggle`` (default: the configured endpoint).

    Example:
        >>> run_local(load_config(), Path(".kops/kernels/tse-inference")).problems  # doctest: +SKIP
        []
    """
    folder = folder.resolve()
    plan, metadata = load_kernel_folder(folder)
    if isolation == "auto":
        isolation = "namespace+guard" if namespace_available() else "guard"
    run_dir = folder / RUN_DIR
    set_read_only(run_dir / "input", read_only=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "working").mkdir(parents=True)
    staged, missing = stage_inputs(cfg, plan, run_dir / "input", data_dir, kaggle)
    code, lines, seconds = execute(folder, run_dir, timeout_s, isolation)
    report = LocalRunReport(str(folder), code, round(seconds, 2), isolation, inputs=staged,
                            read_only="bind mount + permissions" if isolation == "namespace+guard" else "permissions",
                            problems=static_checks(plan, metadata) + missing)
    sample = run_dir / "input" / plan.competition / SAMPLE_SUBMISSION_FILE
    diagnose(report, lines, run_dir / "working", sample, plan)
    report.warnings = [ln for ln in lines if "kops: warning:" in ln]
    estimate(report, full_rows)
    return report


def render_report(report: LocalRunReport) -> str:
    """The human report."""
    lines = [f"run-local {'OK' if report.ok else 'FAILED'}: exit {report.exit_code}, {report.seconds:.1f} s, "
             f"network blocked by {report.isolation}, input/ read-only by {report.read_only}"]
    lines += [f"  input: {line}" for line in report.inputs]
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
