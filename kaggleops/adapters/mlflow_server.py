"""``mlflow server`` started and stopped by kops: `kops ui`, the emulator stack, the server-mode tests and benchmarks.

Lean settings: one worker and no job execution (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``) start in ~7 s
with ~0.5 GB instead of ~17 s and ~3 GB.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kaggleops.errors import KopsError, TimedOut
from kaggleops.interrupts import wait_interruptibly
from kaggleops.polling import poll

DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
HEALTH_POLL_S = 0.3
LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass
class UiServer:
    """A started ``mlflow server`` (``process`` is None when the tracking store already is a server)."""

    url: str
    base: str
    process: subprocess.Popen[bytes] | None = None
    log: str = ""
    models_url: str = ""  # MLflow 3's Models tab of the experiment: the published weight sets, with their LB scores

    def wait(self) -> int:
        """Block until the server exits; Ctrl-C or SIGTERM stops it (never leaving it orphaned)."""
        if self.process is None:
            return 0

        def interrupt(*_: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            return wait_interruptibly(self.process)  # Ctrl-C on any thread stops it
        except KeyboardInterrupt:
            self.stop()
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait_healthy(base: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    def healthy() -> bool | None:
        if process.poll() is not None:
            raise KopsError(f"mlflow server exited with code {process.returncode} before serving {base}.",
                            f"See its log: {log}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                return True if resp.status == 200 else None
        except OSError:
            return None

    try:
        poll(healthy, timeout_s, HEALTH_POLL_S, lambda: TimedOut(
            f"mlflow server did not answer on {base} within {timeout_s:.0f} s.", "Retry: kops ui"))
    except TimedOut:
        process.terminate()
        raise


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_mlflow(backend_uri: str, artifact_args: list[str], cwd: Path, log: Path, port: int = 0,
                 host: str = DEFAULT_HOST, timeout_s: float = START_TIMEOUT_S, workers: int = 1) -> UiServer:
    """``mlflow server`` with the lean settings (one worker, no job execution), started and answering /health.

    ``artifact_args``: e.g. ``["--default-artifact-root", uri]`` or ``["--artifacts-destination", path]``.
    ``port=0`` picks a free one. Used by `kops ui`, and by the server-mode tests and benchmarks.
    """
    port = port or free_port(host)
    base = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, *artifact_args,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env={**os.environ, **LEAN_ENV}, cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_healthy(base, process, timeout_s, log)
    except BaseException:
        UiServer(base, base, process).stop()
        raise
    return UiServer(base, base, process, str(log))
