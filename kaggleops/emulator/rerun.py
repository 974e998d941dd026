"""The hidden rerun of an evaluation-API competition's submission, as Kaggle runs it.

A competition seeded with an ``evaluation`` section (``competition.json``: the gateway's ``module:Class`` in the
competition's own ``kaggle_evaluation`` package and the hidden test files it serves) takes notebook submissions
this way: ``CreateCodeSubmission`` answers at once with a PENDING submission, then, in a background thread,

* the submitted kernel version's script runs again on its inputs with ``KAGGLE_IS_COMPETITION_RERUN=True``, in a
  fresh ``working/`` (``<root>/reruns/<ref>/``), sandboxed as any session (``runner.py``: namespaces or the guard);
* the competition's gateway runs in its own process beside it (same network namespace: the notebook's server is
  reached on loopback), from ``gateway/``: a copy of the competition's public files with the hidden test files, which
  the notebook's ``/kaggle/input`` does not hold. It waits for the server within the startup limit, sends every
  batch with the per-call timeout, checks row counts and writes ``submission.parquet`` and ``result.json``;
* when the gateway exits the notebook is stopped (``serve()`` never returns), as Kaggle ends the session; a
  notebook that exits before its server answered ends the gateway's wait at once (``KAGGLE_EVALUATION_SERVER_PID``:
  SERVER_NEVER_STARTED), as Kaggle sees the notebook's container stop;
* ``result.json`` decides: ``Succeeded`` → ``submission.parquet`` is scored against the hidden solution; otherwise
  the submission ends ERROR with ``Evaluation API error <ErrorName>: <ErrorDetails>``.

Limits: the package's own (15 min startup, the gateway's per-call timeout), unless the emulator sets
``evaluation_startup_s`` / ``evaluation_timeout_s`` (``KAGGLE_EVALUATION_STARTUP_LIMIT_SECONDS`` /
``KAGGLE_EVALUATION_RESPONSE_TIMEOUT_SECONDS`` for the gateway) so a test's failure costs seconds. The rerun as a
whole is bounded by the kernel time limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .common import EmulatorConfig
from .runner import SOCKET_GUARD, KernelRunner, _kill_group, _read_only, free_port, namespaces_available
from .scoring import SubmissionInvalid, score_rows
from .state import Competition, KernelVersion, Store, Submission

RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"
RESULT_FILE = "result.json"
SUBMISSION_PARQUET = "submission.parquet"
GATEWAY_LOG, NOTEBOOK_LOG = "gateway.log", "notebook.log"
GATEWAY_CODE = """import importlib, sys
root = sys.argv[1]
sys.path[:0] = [root, root + '/kaggle_evaluation']
module, _, name = sys.argv[2].partition(':')
getattr(importlib.import_module(module), name)(tuple(sys.argv[3:])).run()
"""


@dataclass
class EvaluationSpec:
    """An evaluation-API competition's gateway (``module:Class``) and its hidden files (name → stored path)."""

    gateway: str
    data_paths: dict[str, Path] = field(default_factory=dict)


def _gateway_dir(comp: Competition, spec: EvaluationSpec, folder: Path) -> Path:
    for name, path in [*comp.files.items(), *spec.data_paths.items()]:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return folder


def outcome(gateway_dir: Path, comp: Competition, code: int) -> tuple[str | None, str | None, str | None]:
    """(public, private, error) of a finished rerun from the gateway's result.json and submission.parquet."""
    result_path = gateway_dir / RESULT_FILE
    if not result_path.is_file():
        log = (gateway_dir / GATEWAY_LOG).read_text(errors="replace").strip().splitlines()[-3:] \
            if (gateway_dir / GATEWAY_LOG).is_file() else []
        return None, None, (f"Evaluation API error GATEWAY_RAISED_EXCEPTION: the gateway exited with status {code} "
                            f"without a {RESULT_FILE}: {' | '.join(log)}")
    result = json.loads(result_path.read_text())
    if not result.get("Succeeded"):
        details = str(result.get("ErrorDetails") or "").strip().splitlines()
        return None, None, (f"Evaluation API error {result.get('ErrorName', 'UNSPECIFIED')}"
                            f"{': ' + details[-1][:300] if details else ''}")
    try:
        import pandas as pd

        frame = pd.read_parquet(gateway_dir / SUBMISSION_PARQUET)
    except (OSError, ValueError, ImportError) as e:
        return None, None, f"Evaluation API error INVALID_SUBMISSION: {SUBMISSION_PARQUET} is unreadable: {e}"
    rows = [{str(k): "" if v is None else str(v) for k, v in row.items()} for row in frame.to_dict("records")]
    try:
        public, private = score_rows(comp.spec, rows)
    except SubmissionInvalid as e:
        return None, None, str(e)
    return public, private, None


class Rerunner:
    """Starts and finishes evaluation-API reruns (one background thread each)."""

    def __init__(self, store: Store, config: EmulatorConfig, runner: KernelRunner) -> None:
        self.store, self.config, self.runner = store, config, runner

    def start(self, kv: KernelVersion, slug: str, comp: Competition, sub: Submission) -> None:
        sub.running = True
        threading.Thread(target=self._run, args=(kv, slug, comp, sub), daemon=True,
                         name=f"rerun-{sub.ref}").start()

    def _env(self, kv: KernelVersion, input_dir: Path, working: Path, folder: Path) -> dict[str, str]:
        env = self.runner._env(kv, input_dir, working, {})
        env.update({RERUN_ENV: "True", "KAGGLE_EVALUATION_PORT": str(free_port()), "TMPDIR": str(folder / "tmp")})
        if self.config.evaluation_startup_s is not None:
            env["KAGGLE_EVALUATION_STARTUP_LIMIT_SECONDS"] = str(self.config.evaluation_startup_s)
        if self.config.evaluation_timeout_s is not None:
            env["KAGGLE_EVALUATION_RESPONSE_TIMEOUT_SECONDS"] = str(self.config.evaluation_timeout_s)
        return env

    def command(self, kv: KernelVersion, script: Path, folder: Path, gateway: Path,
                spec: EvaluationSpec) -> tuple[list[str], dict[str, str]]:
        """(argv, env): the notebook in the background, the gateway in the foreground, the notebook stopped after it.
        In a namespace (as ``runner.py``) the input is bound read-only and loopback brought up: no other network."""
        working = folder / "working"
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        paths = " ".join(f'"$GW/{name}"' for name in spec.data_paths)
        both = ['cd "$WORK"', '"$PY" "$SCRIPT" > "$NBLOG" 2>&1 &', "NB=$!",
                f'(cd "$GW" && KAGGLE_EVALUATION_SERVER_PID=$NB exec "$PY" -c "$GWCODE" "$GW" "$GWSPEC" {paths} '
                '> "$GWLOG" 2>&1)', "rc=$?",
                "kill -9 $NB 2>/dev/null", "exit $rc"]
        env = self._env(kv, kv.input, working, folder)
        env.update({"PY": sys.executable, "SCRIPT": str(script), "NBLOG": str(folder / NOTEBOOK_LOG),
                    "GW": str(gateway),
                    "GWCODE": GATEWAY_CODE, "GWSPEC": spec.gateway, "GWLOG": str(gateway / GATEWAY_LOG),
                    "WORK": str(working), "IN": str(kv.input)})
        if self.runner.isolation == "namespace" and namespaces_available():
            setup = ['mount --bind "$IN" "$IN" || exit 1', 'mount -o remount,bind,ro "$IN" || exit 1',
                     "ip link set lo up 2>/dev/null"]
            return ["unshare", "-rmn", "--", "sh", "-c", "\n".join([*setup, *both])], env
        _read_only(kv.input)
        if not kv.setting("enableInternet", False):  # the notebook's sitecustomize refuses non-loopback connections
            guard = folder / "guard"
            guard.mkdir(exist_ok=True)
            (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(guard), env.get("PYTHONPATH", "")) if p)
        return ["sh", "-c", "\n".join(both)], env

    def _run(self, kv: KernelVersion, slug: str, comp: Competition, sub: Submission) -> None:
        folder = self.store.dir("reruns", str(sub.ref))
        try:
            spec: EvaluationSpec = comp.evaluation  # type: ignore[assignment]
            (folder / "working").mkdir(exist_ok=True)
            gateway = _gateway_dir(comp, spec, folder / "gateway")
            argv, env = self.command(kv, kv.run_dir / "source" / f"{slug}.py", folder, gateway, spec)
            proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            self.runner._procs[id(sub)] = proc  # the emulator's stop() ends a rerun too
            try:
                code = proc.wait(timeout=self.runner.timeout_s)
            except subprocess.TimeoutExpired:
                code = -9
            _kill_group(proc)
            self.runner._procs.pop(id(sub), None)
            public, private, error = outcome(gateway, comp, code)
            if code == -9 and error is None:
                public = private = None
                error = f"Notebook Timeout: the rerun exceeded {self.runner.timeout_s:g} seconds"
        except Exception as e:  # noqa: BLE001 - the emulator's own failure ends the submission, not the server
            public = private = None
            error = f"Evaluation API error UNSPECIFIED: the emulator could not rerun the notebook: {e}"
        with self.store.lock:
            sub.public_score, sub.private_score, sub.error = public, private, error
            sub.running = False

