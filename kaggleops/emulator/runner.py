"""Real execution of pushed Python kernels in a background thread.

Layout of one run, ``<root>/kernels/<owner>/<slug>/<version>/``:

* ``source/<slug>.py``     the pushed script (notebooks: their code cells joined into a script)
* ``input/<source-slug>/``  one folder per attached dataset, competition or kernel source
* ``working/``              the process's cwd; every file left here (minus ``__pycache__``) is an output

The process gets ``KOPS_KAGGLE_INPUT``/``KOPS_KAGGLE_WORKING`` pointing at those folders,
``KAGGLE_KERNEL_RUN_TYPE=Batch`` and the parent environment (PATH, PYTHONPATH, HOME, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .common import utc_now
from .state import KernelVersion

FAILURE_TAIL_LINES = 20
# Variables that would make the child talk to the emulator as the parent does, or leak credentials.
_DROPPED_ENV = ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME")


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

    def __init__(self, lock: threading.RLock, timeout_s: float) -> None:
        self.lock = lock
        self.timeout_s = timeout_s
        self._procs: dict[int, subprocess.Popen[str]] = {}
        self._stopping = False

    def start(self, kv: KernelVersion, slug: str, sources: dict[str, Path | dict[str, Path]]) -> None:
        """Start running ``kv`` in a daemon thread; ``sources`` maps input folder name to files."""
        thread = threading.Thread(target=self._run, args=(kv, slug, sources), daemon=True,
                                  name=f"kernel-{slug}-v{kv.number}")
        thread.start()

    def stop(self) -> None:
        """Kill every kernel process still running."""
        self._stopping = True
        for proc in list(self._procs.values()):
            if proc.poll() is None:
                proc.kill()

    # ---- internals -----------------------------------------------------------------------------

    def _run(self, kv: KernelVersion, slug: str, sources: dict[str, Path | dict[str, Path]]) -> None:
        try:
            script = self._prepare(kv, slug, sources)
        except Exception as e:  # noqa: BLE001 - any setup failure fails the run
            self._finish(kv, 1, [f"emulator could not prepare the run: {type(e).__name__}: {e}"])
            return
        if script is None:
            return
        with self.lock:
            kv.status = "RUNNING"
        code, stderr_tail = self._execute(kv, script)
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

    def _env(self, kv: KernelVersion) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update({
            "KOPS_KAGGLE_INPUT": str(kv.input),
            "KOPS_KAGGLE_WORKING": str(kv.working),
            "KAGGLE_KERNEL_RUN_TYPE": "Batch",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def _timeout(self, kv: KernelVersion) -> float:
        requested = kv.setting("sessionTimeoutSeconds")
        if isinstance(requested, int) and requested > 0:
            return min(float(requested), self.timeout_s)
        return self.timeout_s

    def _execute(self, kv: KernelVersion, script: Path) -> tuple[int, list[str]]:
        """Run the script, streaming stdout/stderr into the log; returns (exit code, stderr tail)."""
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(script)], cwd=kv.working, env=self._env(kv),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, encoding="utf-8", errors="replace")
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
            proc.kill()
            proc.wait()
            code = -9
            stderr_lines.append(f"Kernel exceeded its run time limit of {timeout:g} seconds and was stopped.")
        for r in readers:
            r.join(timeout=5)
        self._procs.pop(id(kv), None)
        if self._stopping and code != 0:
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
        with self.lock:
            kv.outputs = outputs
            kv.finished = utc_now()
            if code == 0:
                kv.status = "COMPLETE"
                kv.failure_message = None
            else:
                kv.status = "ERROR"
                tail = "\n".join(line for line in stderr_tail if line.strip())
                kv.failure_message = tail or f"Kernel process exited with status {code}"


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
