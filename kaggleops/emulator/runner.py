"""Real execution of pushed Python kernels in a background thread, as strict as a Kaggle session.

Layout of one run, ``<root>/kernels/<owner>/<slug>/<version>/``:

* ``source/<slug>.py``     the pushed script (notebooks: their code cells joined into a script)
* ``input/…``               the attached sources (``competitions/<slug>/``, ``datasets/<owner>/<slug>/``,
                            ``models/<owner>/<model>/<framework>/<variation>/<version>/``; see ``input_layout``)
* ``working/``              the process's cwd; every file left here (minus ``__pycache__``) is an output
* ``tmp/``                  the session's own, fresh ``TMPDIR``
* ``image/``                what the session's image adds on ``PYTHONPATH``: ``kaggle_secrets`` (notebook_secrets.py)

Where the machine can make namespaces (``unshare -rmn``: a user, mount and network namespace, no root needed),
the session runs inside one, as on Kaggle:

* ``input/`` is bind-mounted **read-only** (a write fails with EROFS, also for root);
* with ``kaggle_root`` (``/kaggle`` when that folder exists; a stand-in folder in tests) a tmpfs is mounted
  there with ``input/`` (read-only) and ``working/`` bound under it, and the session's cwd is
  ``<kaggle_root>/working``; otherwise the folders stay where they are and the kernel is told where by
  ``KOPS_KAGGLE_INPUT`` / ``KOPS_KAGGLE_WORKING`` (set in both cases; kops' own code reads them);
* with internet off (``enableInternet`` false) the network namespace has only loopback: every other connection fails.

Without namespaces (``isolation="guard"``, or ``unshare`` refused) the input folders are made read-only by
permission bits (root ignores them), and a ``sitecustomize`` socket guard refuses non-loopback connections.
Either way only ``working/`` becomes output, and a session whose output exceeds ``max_output_bytes`` (Kaggle:
20 GiB) ends as ERROR. The process gets ``KAGGLE_KERNEL_RUN_TYPE=Batch`` and the parent environment without
credentials (Kaggle's, MLflow's, Google's): a session knows only what its notebook secrets give it. Git fetches
only over http(s) and git:// (``GIT_ALLOW_PROTOCOL``): a local path or file:// URL cannot be cloned, as on Kaggle,
where nothing on the pushing machine is reachable. A session runs in its own process group; a timeout or
:meth:`KernelRunner.stop_version` ends all of it (children such as a training process too), as a lost VM would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .common import utc_now
from .notebook_secrets import SESSION_MODULE
from .state import KernelVersion

FAILURE_TAIL_LINES = 20
MAX_OUTPUT_BYTES = 20 * 1024 ** 3  # Kaggle keeps up to 20 GiB of /kaggle/working
KAGGLE_ROOT = Path("/kaggle")
SOCKET_GUARD = '''"""kops emulator socket guard: this kernel session has internet off."""
import socket

_ALLOWED = ("127.0.0.1", "::1", "localhost")


def _guard(orig):
    def connect(self, address, *rest):
        host = address[0] if isinstance(address, tuple) and address else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in _ALLOWED:
            raise OSError(101, f"Network is unreachable (internet is off in this session): {{address}}")
        return orig(self, address, *rest)
    return connect


socket.socket.connect = _guard(socket.socket.connect)
socket.socket.connect_ex = _guard(socket.socket.connect_ex)
'''.replace("{{", "{").replace("}}", "}")
# Variables that would make the child talk to the emulator as the parent does, or leak credentials.
_DROPPED_ENV = ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
                "GOOGLE_APPLICATION_CREDENTIALS_JSON", "GIT_ALLOW_PROTOCOL")
GIT_PROTOCOLS = "http:https:git"  # what a Kaggle session can fetch from: the internet, no local paths, no SSH keys
STOP_MESSAGES = {"cancel": "Kernel run was cancelled by the user.",
                 "error": "Kernel session was stopped: the machine running it was lost."}


def notebook_to_script(text: str) -> str:
    """Join a notebook's code cells into a Python script; IPython magics become comments."""
    nb = json.loads(text)
    chunks = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else str(src)
        lines = [f"# {ln}" if ln.lstrip().startswith(("!", "%")) else ln for ln in src.splitlines()]
        chunks.append("\n".join(lines))
    return "\n\n".join(chunks) + "\n"


def collect_outputs(working: Path) -> list[str]:
    """Relative names of all files under ``working`` (recursively, skipping ``__pycache__``)."""
    names = []
    for path in sorted(working.rglob("*")):
        rel = path.relative_to(working)
        if path.is_file() and "__pycache__" not in rel.parts:
            names.append(rel.as_posix())
    return names


class KernelRunner:
    """Runs kernel versions as subprocesses and records status, log and outputs."""

    def __init__(self, lock: threading.RLock, timeout_s: float, isolation: str = "namespace",
                 kaggle_root: Path | None = KAGGLE_ROOT, max_output_bytes: int = MAX_OUTPUT_BYTES) -> None:
        self.lock = lock
        self.timeout_s = timeout_s
        self.isolation = isolation  # "namespace" (where unshare works, else guard) | "guard"
        self.kaggle_root = kaggle_root
        self.max_output_bytes = max_output_bytes
        self._procs: dict[int, subprocess.Popen[str]] = {}
        self._stopping = False

    def start(self, kv: KernelVersion, slug: str, sources: dict[str, Path | dict[str, Path]],
              session_env: dict[str, str] | None = None) -> None:
        """Start running ``kv`` in a daemon thread; ``sources`` maps input folder name to files; ``session_env``:
        what Kaggle sets for this session (its user-secrets token and service URL)."""
        thread = threading.Thread(target=self._run, args=(kv, slug, sources, dict(session_env or {})), daemon=True,
                                  name=f"kernel-{slug}-v{kv.number}")
        thread.start()

    def stop(self) -> None:
        """Kill every kernel process still running."""
        self._stopping = True
        for proc in list(self._procs.values()):
            _kill_group(proc)

    def stop_version(self, kv: KernelVersion, reason: str = "cancel") -> bool:
        """End a running session now, all its processes: ``cancel`` (the editor's Cancel run: the version ends
        CANCEL_ACKNOWLEDGED) or ``error`` (the session's machine was lost: ERROR). False when it is not running."""
        if reason not in STOP_MESSAGES:
            raise ValueError(f"reason must be one of {', '.join(STOP_MESSAGES)}, not {reason!r}")
        proc = self._procs.get(id(kv))
        if proc is None or proc.poll() is not None:
            return False
        with self.lock:
            kv.stop_reason = reason
            if reason == "cancel":
                kv.status = "CANCEL_REQUESTED"
        _kill_group(proc)
        return True

    # ---- internals -----------------------------------------------------------------------------

    def _run(self, kv: KernelVersion, slug: str, sources: dict[str, Path | dict[str, Path]],
             session_env: dict[str, str]) -> None:
        try:
            script = self._prepare(kv, slug, sources)
        except Exception as e:  # noqa: BLE001 - any setup failure fails the run
            self._finish(kv, 1, [f"emulator could not prepare the run: {type(e).__name__}: {e}"])
            return
        if script is None:
            return
        with self.lock:
            kv.status = "RUNNING"
        code, stderr_tail = self._execute(kv, script, session_env)
        self._finish(kv, code, stderr_tail)

    def _prepare(self, kv: KernelVersion, slug: str, sources: dict[str, Path | dict[str, Path]]) -> Path | None:
        """Write the script and populate ``input/``; returns None if the kernel cannot run here."""
        kv.working.mkdir(parents=True, exist_ok=True)
        kv.input.mkdir(parents=True, exist_ok=True)
        for folder, files in sources.items():
            _populate(kv.input / folder, files)
        language = str(kv.setting("language", "python")).lower()
        if language != "python":
            self._finish(kv, 1, [f"the emulator only executes python kernels, not {language!r}"])
            return None
        text = str(kv.setting("text", ""))
        if str(kv.setting("kernelType", "script")).lower() == "notebook":
            text = notebook_to_script(text)
        script = kv.run_dir / "source" / f"{slug}.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text, encoding="utf-8")
        return script

    def _env(self, kv: KernelVersion, input_dir: Path, working: Path, session_env: dict[str, str]) -> dict[str, str]:
        # a Kaggle session sees nothing of the host's tracking setup (MLflow reads every MLFLOW_* variable)
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV and not k.startswith("MLFLOW_")}
        tmp, image = kv.run_dir / "tmp", kv.run_dir / "image"
        tmp.mkdir(parents=True, exist_ok=True)
        image.mkdir(parents=True, exist_ok=True)
        (image / "kaggle_secrets.py").write_text(SESSION_MODULE)
        env.update({
            "KOPS_KAGGLE_INPUT": str(input_dir),
            "KOPS_KAGGLE_WORKING": str(working),
            "KAGGLE_KERNEL_RUN_TYPE": "Batch",
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(tmp),
            "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
            "PYTHONPATH": os.pathsep.join(p for p in (str(image), env.get("PYTHONPATH", "")) if p),
            # a bundled evaluation API's relay serves this port (no two sessions meet on 50051 without namespaces)
            "KAGGLE_EVALUATION_PORT": str(free_port()),
            **session_env,
        })
        return env

    def _command(self, kv: KernelVersion, script: Path,
                 session_env: dict[str, str]) -> tuple[list[str], Path, dict[str, str]]:
        """(argv, cwd, env) of a session: in namespaces where possible (see the module docstring)."""
        internet = bool(kv.setting("enableInternet", False))
        if self.isolation == "namespace" and namespaces_available():
            root = self.kaggle_root if self.kaggle_root is not None and self.kaggle_root.is_dir() else None
            inp, work = (root / "input", root / "working") if root else (kv.input, kv.working)
            steps = ['mount --bind "$IN" "$IN"', 'mount -o remount,bind,ro "$IN"',
                     "(ip link set lo up 2>/dev/null || true)"]  # loopback, as on Kaggle: a gRPC server on localhost
            if root:
                steps += ['mount -t tmpfs kops-kaggle "$ROOT"', 'mkdir "$ROOT/input" "$ROOT/working"',
                          'mount --bind "$IN" "$ROOT/input"', 'mount -o remount,bind,ro "$ROOT/input"',
                          'mount --bind "$WORK" "$ROOT/working"']
            shell = " && ".join([*steps, 'cd "$CWD"', 'exec "$PY" "$SCRIPT"'])
            env = self._env(kv, inp, work, session_env)
            env.update({"IN": str(kv.input), "WORK": str(kv.working), "ROOT": str(root or ""), "CWD": str(work),
                        "PY": sys.executable, "SCRIPT": str(script)})
            flags = "-rm" if internet else "-rmn"
            with self.lock:
                kv.isolation = f"namespace ({'kaggle root ' + str(root) if root else 'mapped by env'})"
            return ["unshare", flags, "--", "sh", "-c", shell], kv.working, env
        _read_only(kv.input)
        env = self._env(kv, kv.input, kv.working, session_env)
        if not internet:
            guard = kv.run_dir / "guard"
            guard.mkdir(exist_ok=True)
            (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(guard), env.get("PYTHONPATH", "")) if p)
        with self.lock:
            kv.isolation = "guard (mapped by env)"
        return [sys.executable, str(script)], kv.working, env

    def _timeout(self, kv: KernelVersion) -> float:
        requested = kv.setting("sessionTimeoutSeconds")
        if isinstance(requested, int) and requested > 0:
            return min(float(requested), self.timeout_s)
        return self.timeout_s

    def _execute(self, kv: KernelVersion, script: Path, session_env: dict[str, str]) -> tuple[int, list[str]]:
        """Run the script, streaming stdout/stderr into the log; returns (exit code, stderr tail)."""
        start = time.monotonic()
        argv, cwd, env = self._command(kv, script, session_env)
        proc = subprocess.Popen(argv, cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, encoding="utf-8", errors="replace", start_new_session=True)
        self._procs[id(kv)] = proc
        stderr_lines: list[str] = []
        readers = [
            threading.Thread(target=self._pump, args=(kv, proc.stdout, "stdout", start, None), daemon=True),
            threading.Thread(target=self._pump, args=(kv, proc.stderr, "stderr", start, stderr_lines.append),
                             daemon=True),
        ]
        for r in readers:
            r.start()
        timeout = self._timeout(kv)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            code = -9
            stderr_lines.append(f"Kernel exceeded its run time limit of {timeout:g} seconds and was stopped.")
        _kill_group(proc)  # what the session left running dies with it
        for r in readers:
            r.join(timeout=5)
        self._procs.pop(id(kv), None)
        if kv.stop_reason:
            stderr_lines.append(STOP_MESSAGES[kv.stop_reason])
        elif self._stopping and code != 0:
            stderr_lines.append("Kernel was stopped because the emulator shut down.")
        return code, stderr_lines[-FAILURE_TAIL_LINES:]

    def _pump(self, kv: KernelVersion, stream: IO[str] | None, name: str, start: float,
              sink: Callable[[str], None] | None) -> None:
        if stream is None:
            return
        for line in stream:
            entry = {"stream_name": name, "time": round(time.monotonic() - start, 3), "data": line}
            with self.lock:
                kv.log.append(entry)
            if sink is not None:
                sink(line.rstrip("\n"))

    def _finish(self, kv: KernelVersion, code: int, stderr_tail: list[str]) -> None:
        outputs = collect_outputs(kv.working) if kv.working.is_dir() else []
        size = sum((kv.working / name).stat().st_size for name in outputs)
        if code == 0 and size > self.max_output_bytes:
            code = 1
            stderr_tail = [*stderr_tail, f"Your notebook tried to allocate more disk than is available: its output "
                                         f"in /kaggle/working is {size} bytes, over the {self.max_output_bytes} "
                                         "allowed."]
        with self.lock:
            kv.outputs = outputs
            kv.finished = utc_now()
            if kv.stop_reason == "cancel":
                kv.status = "CANCEL_ACKNOWLEDGED"
                kv.failure_message = STOP_MESSAGES["cancel"]
            elif code == 0 and not kv.stop_reason:
                kv.status = "COMPLETE"
                kv.failure_message = None
            else:
                kv.status = "ERROR"
                tail = "\n".join(line for line in stderr_tail if line.strip())
                kv.failure_message = tail or f"Kernel process exited with status {code}"


def free_port() -> int:
    """A TCP port free on the loopback now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_namespaces: list[bool] = []


def namespaces_available() -> bool:
    """Whether ``unshare -rmn`` can make a user + mount + network namespace with a read-only bind mount here."""
    if not _namespaces:
        ok = False
        if shutil.which("unshare") and shutil.which("mount"):
            try:
                probe = subprocess.run(["unshare", "-rmn", "--", "sh", "-c", "mount --bind / / 2>/dev/null; "
                                        "mount -t tmpfs t /mnt 2>/dev/null; true"], capture_output=True, timeout=10)
                ok = probe.returncode == 0 and subprocess.run(
                    ["unshare", "-rmn", "--", "sh", "-c", 'd=$(mktemp -d) && mount --bind "$d" "$d" && '
                     'mount -o remount,bind,ro "$d" && ! touch "$d/x" 2>/dev/null'], capture_output=True,
                    timeout=10).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        _namespaces.append(ok)
    return _namespaces[0]


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the session's whole process group (it leads its own: ``start_new_session``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_only(folder: Path) -> None:
    """Drop write permission on every file and folder under ``folder`` (the fallback without namespaces)."""
    for path in [*folder.rglob("*"), folder]:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)


def _populate(folder: Path, files: Path | dict[str, Path]) -> None:
    """Copy a source's files into ``folder`` (a directory tree, or a name -> path mapping)."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(files, Path):
        shutil.copytree(files, folder, dirs_exist_ok=True)
        return
    for name, path in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
