"""`kops train --on kaggle`: push a TRAINING kernel that runs `kops train --git <this commit>` on Kaggle's GPUs.

Before anything is pushed, the commit is checked: ``origin`` must be a URL a Kaggle session can clone (http(s) or
git://; not a local path, not SSH) and must hold the commit. kops reaches the kernel as the ``<owner>/kops-runtime``
dataset (the wheel of this very kops, as for the inference kernel), installed with ``pip install --no-index
--no-deps``; never by name from a package index.

Credentials never enter the kernel's source or metadata: the kernel reads them from Kaggle's Secrets add-on
(names in ``SECRET_NAMES``) at run time. A new notebook has none attached, so its first version is saved without
running and the user is told which secrets to attach. The kernel writes ``kops-train-result.json`` (the run ids,
also while training, so a failed session names them) to its output. With ``wait``, kops follows the session and,
when it ends in ERROR (or is cancelled), marks its runs that are still RUNNING as FAILED (KILLED) in the tracking
store; ``resume`` has the kernel continue them from their last checkpoint (``kops train --resume``).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from kaggleops import __version__
from kaggleops.adapters.git import run_git, strip_credentials
from kaggleops.adapters.kaggle import Kaggle, failure_line
from kaggleops.config import KopsConfig
from kaggleops.errors import GitSourceError, KernelError, KernelRunFailed, KopsError, RunNotFound, TimedOut
from kaggleops.kernel.wheel import RuntimeDataset, ensure_runtime_dataset, runtime_requirements
from kaggleops.polling import poll
from kaggleops.refs import KernelRef, slugify
from kaggleops.resources import kernel_template
from kaggleops.stages.accelerators import docker_pinning, resolve_accelerator
from kaggleops.stages.gitsource import GitSpec

TRACKING_SECRET = "MLFLOW_TRACKING_URI"
SECRET_NAMES = (TRACKING_SECRET, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON")
AUTH_SECRETS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
TEMPLATE = "train_kernel.py.tmpl"
RESULT_FILE = "kops-train-result.json"
SESSION_RUN_LINE = re.compile(r"^kops-train: run ([0-9a-f]{32})\b")  # what the kernel prints per run it sees
CLONABLE_SCHEMES = ("https", "http", "git")
GIT_REMOTE_TIMEOUT_S = 60
WAIT_TIMEOUT_S = 12 * 3600  # Kaggle's longest session
POLL_S = 2.0
HEARTBEAT_S = 30.0  # a status line at least this often while waiting, even when nothing changed
LOG_TAIL_LINES = 30
ACTIVE = ("QUEUED", "RUNNING", "CANCEL_REQUESTED", "NEW_SCRIPT")
ENDED_BADLY = {"ERROR": "FAILED", "CANCEL_ACKNOWLEDGED": "KILLED"}  # kernel status -> what its RUNNING runs become


@dataclass
class RemoteTrainResult:
    kernel: str
    kernel_version: int
    url: str
    git: str
    status: str | None = None
    run_ids: list[str] = field(default_factory=list)
    machine_shape: str | None = None
    docker_image: str | None = None
    runtime: dict[str, object] = field(default_factory=dict)
    resume: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        head = (f"Pushed training kernel {self.kernel} v{self.kernel_version} ({self.status or 'running'}) for "
                f"{self.git}{' (resuming its unfinished runs)' if self.resume else ''}\n{self.url}")
        return head + (f"\nruns: {', '.join(self.run_ids)}" if self.run_ids else "")


# ---- what Kaggle can clone ----------------------------------------------------------------------------------


def _is_local_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local


def clone_problem(url: str, kaggle_endpoint: str | None) -> str | None:
    """Why a Kaggle session could not clone ``url`` (None: it can). A host on this machine's network is fine only
    when kops talks to a Kaggle emulator on this machine (``KOPS_KAGGLE_ENDPOINT`` on loopback)."""
    if "://" not in url:
        if re.match(r"^[\w.-]+@[\w.-]+:|^[\w-]+\.[\w.-]+:[^/\\]", url):  # scp-like: git@github.com:alice/p.git
            return "an SSH URL: a Kaggle session has no SSH key to clone it with"
        return "a path on this machine: a Kaggle session cannot reach it"
    parts = urlsplit(url)
    if parts.scheme == "file":
        return "a path on this machine: a Kaggle session cannot reach it"
    if parts.scheme not in CLONABLE_SCHEMES:
        return f"a {parts.scheme}:// URL: a Kaggle session clones only http(s):// and git:// URLs"
    host = parts.hostname or ""
    emulated = _is_local_host(urlsplit(kaggle_endpoint).hostname or "") if kaggle_endpoint else False
    if _is_local_host(host) and not emulated:
        return f"on {host}, which only this machine's network reaches: a Kaggle session cannot"
    return None


def _origin(root: Path) -> str:
    try:
        out = run_git(["config", "--get", "remote.origin.url"], root)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    url = out.stdout.strip() if out is not None and out.returncode == 0 else ""
    if not url:
        raise GitSourceError(f"{root} has no `origin` remote: the Kaggle kernel clones the commit it trains from "
                             "there.", "Push the project to a git host and add it: git remote add origin "
                             "https://github.com/OWNER/REPO.git && git push -u origin HEAD")
    return url


def _remote_git(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    try:
        return run_git(args, root, GIT_REMOTE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise GitSourceError(f"git {args[0]} origin timed out after {GIT_REMOTE_TIMEOUT_S} s.",
                             "Check the network and: git ls-remote origin") from None


def _contains(root: Path, commit: str, tips: set[str]) -> bool:
    return commit in tips or any(
        run_git(["merge-base", "--is-ancestor", commit, tip], root).returncode == 0 for tip in tips)


def check_on_origin(root: Path, commit: str, url: str, branch: str | None) -> None:
    """Raise unless ``origin`` has ``commit`` (a branch or tag there contains it). Reads the remote's refs with
    ``git ls-remote``; fetches only when a tip there is unknown here."""
    listed = _remote_git(["ls-remote", "origin"], root)
    if listed.returncode != 0:
        reason = (listed.stderr.strip().splitlines() or ["no output"])[-1].replace(url, strip_credentials(url))
        raise GitSourceError(f"Cannot read origin ({strip_credentials(url)}): {reason}",
                             "Check its URL and your access: git ls-remote origin")
    tips = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    known = {t for t in tips if run_git(["cat-file", "-e", f"{t}^{{commit}}"], root).returncode == 0}
    if _contains(root, commit, known):
        return
    if known != tips and _remote_git(["fetch", "--quiet", "origin"], root).returncode == 0 \
            and _contains(root, commit, tips):
        return
    raise GitSourceError(f"Commit {commit[:12]} is not on origin ({strip_credentials(url)}): the Kaggle kernel "
                         "clones it from there.", f"Push it first: git push origin {branch or 'HEAD'}")


def pushed_commit(cfg: KopsConfig, notify: Callable[[str], None] | None = None) -> GitSpec:
    """This folder's HEAD as a ``URL@commit`` a Kaggle session can clone; refused (one line, next command) when
    ``origin`` is not clonable from Kaggle or does not hold the commit. Credentials are stripped from the URL."""
    head = run_git(["rev-parse", "HEAD"], cfg.root)
    if head.returncode != 0:
        raise GitSourceError(f"{cfg.root} is not a git repository with a commit.",
                             "kops train --on kaggle trains a pushed commit: git init, commit and push first.")
    commit = head.stdout.strip()
    url = _origin(cfg.root)
    problem = clone_problem(url, cfg.resolved_kaggle_endpoint)
    if problem:
        raise GitSourceError(f"origin is {strip_credentials(url)}, {problem}.",
                             "Push the project to a git host Kaggle can reach and use its https URL: git remote "
                             "set-url origin https://github.com/OWNER/REPO.git && git push origin HEAD")
    branch = run_git(["rev-parse", "--abbrev-ref", "HEAD"], cfg.root).stdout.strip()
    check_on_origin(cfg.root, commit, url, None if branch in ("", "HEAD") else branch)
    if notify is not None and run_git(["status", "--porcelain", "--untracked-files=no"], cfg.root).stdout.strip():
        notify(f"kops: uncommitted changes are not trained: the kernel trains commit {commit[:12]} as pushed")
    return GitSpec(strip_credentials(url), commit)


# ---- the kernel ---------------------------------------------------------------------------------------------


def kops_requirements() -> dict[str, str]:
    """kops' declared dependencies as installed here, ``{name: version}``: the kernel installs those its image
    lacks at these versions (the image's own, e.g. torch/transformers, stay)."""
    from importlib import metadata

    out = {}
    for requirement in runtime_requirements():
        name = re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0]
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def required_secrets(cfg: KopsConfig) -> list[str]:
    """The secrets a session cannot train without: the tracking URI, unless kops.yaml names a server."""
    return [] if cfg.tracking_uri.startswith(("http://", "https://")) else [TRACKING_SECRET]


def render_training_kernel(cfg: KopsConfig, ref: KernelRef, spec: GitSpec, folds: list[int] | None,
                           machine_shape: str, folder: Path, runtime: RuntimeDataset, docker_image: str | None = None,
                           resume: bool = False, web_base: str | None = None) -> Path:
    """Write kernel.py + kernel-metadata.json for training ``spec`` on Kaggle into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = {"kops_version": __version__, "git": str(spec), "competition": cfg.competition, "folds": folds,
            "resume": resume, "secret_names": list(SECRET_NAMES), "required_secrets": required_secrets(cfg),
            "kernel_url": ref.url(web_base) if web_base else ref.url(),
            "runtime": {"dataset": runtime.dataset, "version": runtime.version,
                        "content_sha256": runtime.content_sha256, "wheel": runtime.wheel},
            "requirements": kops_requirements()}
    source = kernel_template(TEMPLATE).format(
        kops_version=__version__, competition=cfg.competition, commit=spec.rev, repo_url=spec.url,
        secret_names=", ".join(SECRET_NAMES), runtime_dataset=runtime.dataset, plan_json=json.dumps(plan, indent=2))
    compile(source, "kernel.py", "exec")
    (folder / "kernel.py").write_text(source)
    metadata = {"id": ref.ref, "title": ref.slug.replace("-", " ").title(), "code_file": "kernel.py",
                "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
                "enable_tpu": False, "enable_internet": True, "dataset_sources": [runtime.dataset],
                "competition_sources": [cfg.competition], "kernel_sources": [], "model_sources": [],
                "machine_shape": machine_shape,
                **({"docker_image_pinning_type": docker_image} if docker_image else {})}
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2))
    return folder


def training_kernel_ref(cfg: KopsConfig) -> KernelRef:
    return KernelRef(cfg.kaggle_owner, f"{slugify(cfg.experiment_name, 40)}-train")


def _secrets_line(cfg: KopsConfig, ref: KernelRef, web_base: str) -> str:
    required = required_secrets(cfg)
    names = f"{' and '.join(required)} (your team server's URL), and {AUTH_SECRETS} if it asks for them" \
        if required else f"{AUTH_SECRETS} if your server asks for them"
    return f"open {ref.url(web_base)}/edit, Add-ons > Secrets, and attach {names}"


def _check_not_running(kaggle: Kaggle, ref: KernelRef, latest: int) -> None:
    status, _ = kaggle.kernel_status(KernelRef(ref.owner, ref.slug, latest))
    if status in ACTIVE:
        raise KernelError(f"Training kernel {ref.ref} v{latest} is still {status}: a second session would train "
                          "beside it.", f"Wait until it ends, or follow it: kaggle kernels status {ref.ref}")


def train_on_kaggle(cfg: KopsConfig, folds: list[int] | None = None, machine_shape: str | None = None,
                    wait: bool = False, kaggle: Kaggle | None = None, allow_retired: bool = False,
                    docker_image: str | None = None, notify: Callable[[str], None] | None = None,
                    resume: bool = False) -> RemoteTrainResult:
    """Push the training kernel for this folder's pushed HEAD commit; with ``wait``, follow it and read its run ids.

    ``resume``: the kernel continues the unfinished runs (a killed session's) from their last checkpoint.

    Example:
        >>> train_on_kaggle(load_config(), folds=[0], wait=True)  # doctest: +SKIP
    """
    say = notify or (lambda _line: None)
    shape = resolve_accelerator(cfg, machine_shape, allow_retired, notify)
    docker_image = docker_pinning(docker_image)
    spec = pushed_commit(cfg, notify)  # before any call to Kaggle
    kaggle = kaggle or Kaggle.from_config(cfg)
    ref = training_kernel_ref(cfg)
    latest = kaggle.kernel_version(ref)
    if latest is not None:
        _check_not_running(kaggle, ref, latest)
    runtime = ensure_runtime_dataset(cfg, kaggle)
    folder = render_training_kernel(cfg, ref, spec, folds, shape.name, cfg.root / ".kops" / "kernels" / ref.slug,
                                    runtime, docker_image, resume, kaggle.web_base)
    if latest is None and required_secrets(cfg):
        say(f"kops: {ref.ref} is a new Kaggle notebook, and Kaggle attaches no secrets to a new notebook: saving it "
            "without running it")
        version = kaggle.push_kernel(folder, no_run=True)
        raise KernelError(f"Training kernel {ref.ref} v{version} was saved on Kaggle but not run: "
                          f"{_secrets_line(cfg, ref, kaggle.web_base)}.",
                          f"Then: kops train --on kaggle{' --resume' if resume else ''}{' --wait' if wait else ''}")
    if latest is None:
        say(f"kops: {ref.ref} is a new Kaggle notebook: {_secrets_line(cfg, ref, kaggle.web_base)}")
    if wait and notify is not None:
        from kaggleops.stages.kernel import show_quota

        show_quota(kaggle, shape.kind, notify)
    version = kaggle.push_kernel(folder)
    result = RemoteTrainResult(ref.ref, version, ref.url(kaggle.web_base), str(spec), machine_shape=shape.name,
                               docker_image=docker_image, runtime=runtime.as_dict(), resume=resume)
    if wait:
        pinned = KernelRef(ref.owner, ref.slug, version)
        result.status = follow_session(cfg, kaggle, pinned, say)
        result.run_ids = [r["run_id"] for r in session_result(kaggle, pinned).get("runs", [])]
    return result


# ---- following a session ------------------------------------------------------------------------------------


def session_result(kaggle: Kaggle, ref: KernelRef) -> dict:
    """The session's ``kops-train-result.json`` (``{"runs": [...]}``), or {} when it left none."""
    with tempfile.TemporaryDirectory(prefix="kops-train-out-") as tmp:
        try:
            kaggle.kernel_output(ref, Path(tmp))
        except KopsError:
            return {}
        path = Path(tmp) / RESULT_FILE
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            return {}


def session_runs(kaggle: Kaggle, ref: KernelRef, log: list[str]) -> list[str]:
    """The run ids a session trained in: from its result file, else from its log."""
    runs = [str(r["run_id"]) for r in session_result(kaggle, ref).get("runs", []) if r.get("run_id")]
    return runs or list(dict.fromkeys(m.group(1) for line in log if (m := SESSION_RUN_LINE.match(line.strip()))))


def close_runs(cfg: KopsConfig, run_ids: list[str], status: str) -> list[str]:
    """Mark the runs (and their k-fold parents) still RUNNING as ``status``; one phrase per run saying its state."""
    from kaggleops.adapters.tracking import open_tracker

    try:
        tracker = open_tracker(cfg)
    except KopsError as e:
        return [f"run {r} (state unknown: {e.message})" for r in run_ids]
    states = []
    for run_id in run_ids:
        try:
            run = tracker.get_run(run_id)
            for record in [run, *([tracker.get_run(run.parent)] if run.parent else [])]:
                if record.status == "RUNNING":
                    tracker.end_run(record.id, status)
            states.append(f"run {run_id} was {run.status}, now {status}" if run.status == "RUNNING"
                          else f"run {run_id} is {run.status}")
        except RunNotFound:
            states.append(f"run {run_id} (not in this machine's tracking store {tracker.uri})")
        except KopsError as e:
            states.append(f"run {run_id} (state unknown: {e.message})")
    return states


def status_line(ref: KernelRef, notify: Callable[[str], None],
                clock: Callable[[], float] = time.monotonic) -> Callable[[str], None]:
    """An on-status callback: ``kernel REF vN: STATUS (ELAPSED s)`` on each change and every HEARTBEAT_S."""
    start, last = clock(), {"status": "", "at": 0.0}

    def on_status(status: str) -> None:
        now = clock()
        if status != last["status"] or now - last["at"] >= HEARTBEAT_S:
            last.update(status=status, at=now)
            notify(f"kernel {ref.ref} v{ref.version}: {status} ({now - start:.0f} s)")

    return on_status


def follow_session(cfg: KopsConfig, kaggle: Kaggle, ref: KernelRef, notify: Callable[[str], None],
                   timeout_s: float = WAIT_TIMEOUT_S, poll_s: float = POLL_S) -> str:
    """Poll until the session ends; COMPLETE is returned. ERROR / cancelled: its runs still RUNNING are marked
    FAILED / KILLED and KernelRunFailed names them, their state and the command that continues them."""
    on_status, seen = status_line(ref, notify), {"status": "", "failure": ""}

    def ended() -> str | None:
        status, failure = kaggle.kernel_status(ref)
        seen.update(status=status, failure=failure)
        on_status(status)
        return status if status not in ACTIVE else None

    status = poll(ended, timeout_s, poll_s,
                  lambda: TimedOut(f"Training kernel {ref} still {seen['status']} after {timeout_s:.0f} s."))
    if status == "COMPLETE":
        return status
    try:
        log = kaggle.kernel_log(ref)
    except KopsError:
        log = []
    runs = session_runs(kaggle, ref, log)
    states = close_runs(cfg, runs, ENDED_BADLY.get(status, "FAILED")) if runs else ["no run was started"]
    raise KernelRunFailed(f"Training kernel {ref} ended in {status}: {failure_line(seen['failure']).rstrip('.')}; "
                          f"{'; '.join(states)}.",
                          "Continue from the last checkpoint: kops train --on kaggle --resume --wait"
                          if runs else f"Full log: kaggle kernels logs {ref}", log[-LOG_TAIL_LINES:])
