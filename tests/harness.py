"""The test harness every test file shares: the installed ``kops`` as a subprocess, emulators, small readers.

Fixtures built on these live in ``conftest.py`` (``start_emulator``, ``emulator``, ``project``, ``project_settings``,
``mlflow_server``); test files import the plain helpers (``from harness import kops, read_csv``) — pytest puts
``tests/`` on ``sys.path``. A test that trains a model or starts a server or a kops kernel is marked
``@pytest.mark.slow`` (``make test-fast`` leaves it out); a test that trains says where its data comes from
(``--sample``, ``sample=True`` or ``data_dir:``): kops has no test-only data fallback.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
USER, KEY = "testuser", "testkey"
KOPS_TIMEOUT_S = 900
# Colab's `google.colab.userdata` as a notebook's secret store holds it: it answers only in the notebook's own process
# (ipykernel loaded), from a secrets.json beside it (tests/test_notebooks.py, tests/test_colab_notebook.py).
FAKE_COLAB_USERDATA = """import json, sys
from pathlib import Path
def get(name):
    if "ipykernel" not in sys.modules:
        raise RuntimeError("userdata is only available inside the notebook")
    secrets = json.loads((Path(__file__).parent / "secrets.json").read_text())
    if name not in secrets:
        raise KeyError(name)
    return secrets[name]
"""
KOPS_SCRIPT = Path(sys.executable).with_name("kops")  # the console script `pip install` made beside this Python


def environment(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process' environment plus ``env``; a ``None`` value removes that variable."""
    merged = {**os.environ, **(env or {})}
    return {name: value for name, value in merged.items() if value is not None}


def kops(*args: str, cwd: Path | None = None, env: Mapping[str, str | None] | None = None,
         timeout: float = KOPS_TIMEOUT_S, input: str | None = None,
         script: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed kops as a user would, in this process' environment plus ``env`` (see :func:`environment`).

    ``python -m kaggleops`` by default: a child forked from a warm ``python -m kaggleops`` that has MLflow imported
    already (``tests/forkserver.py``: the same entry point, environment, folder, argv and stdin, ~2.5 s less CPU per
    call); a fresh interpreter where start-up settings differ, or with ``KOPS_TEST_FORK=0``. ``script=True``: the
    ``kops`` console script itself, always a fresh process (the test skips where the environment has none).
    """
    if script and not KOPS_SCRIPT.is_file():
        pytest.skip(f"no installed kops script at {KOPS_SCRIPT} (run `make setup`)")
    command = [str(KOPS_SCRIPT)] if script else [sys.executable, "-m", "kaggleops"]
    return _call(command, args, cwd, env, timeout, input, fork=not script)


def python_script(script: Path, *args: str, cwd: Path, env: Mapping[str, str | None] | None = None,
                  timeout: float = KOPS_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``python SCRIPT ARGS`` in ``cwd``: a test's own wrapper around kops' entry point (one that patches a step to
    kill itself, say). Forked from the warm server as :func:`kops` is, else a fresh interpreter."""
    return _call([sys.executable, str(script)], args, cwd, env, timeout, None, fork=True, script=script)


def _call(command: list[str], args: Sequence[str], cwd: Path | None, env: Mapping[str, str | None] | None,
          timeout: float, stdin: str | None, fork: bool,
          script: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``COMMAND ARGS``: forked from this process' warm server where it can run it (``fork``), else fresh."""
    full_env = environment(env)
    started = time.monotonic()
    server = _fork_server(full_env, pythonpath=True) if fork else None
    out = None
    if server is not None:
        out = server.run(list(args), Path(cwd or os.getcwd()), full_env, stdin, timeout, [*command, *args], script)
    if out is None:  # a fresh interpreter (no server, or its PYTHONPATH would shadow what the server preloaded)
        server = None
        out = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, env=full_env,
                             timeout=timeout, input=stdin)
    if log := os.environ.get("KOPS_TEST_CALL_LOG"):  # where the suite's time goes: one line per call
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{time.monotonic() - started:.2f}\t{os.environ.get('PYTEST_CURRENT_TEST', '')}\t"
                    f"{' '.join(args[:2])}\t{'fork' if server else 'fresh'}\n")
    return out


class ForkServer:
    """The client of one ``tests/forkserver.py`` (started on first use, per test process; see that module)."""

    def __init__(self) -> None:
        import atexit
        import tempfile

        # a short folder: a Unix socket path holds 107 bytes, and the test that starts the server may have a long
        # TMPDIR (its own tmp_path)
        short = "/tmp" if os.path.isdir("/tmp") else None
        self.socket = Path(tempfile.mkdtemp(prefix="kops-fork-", dir=short)) / "server.sock"
        self.env = environment(None)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("forkserver.py")), str(self.socket)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=self.env)
        ready = (self.proc.stdout.readline() if self.proc.stdout else "").split(maxsplit=1)
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"tests/forkserver.py did not start (exit {self.proc.wait()})")
        atexit.register(self.proc.kill)
        # what the server's preloaded imports set themselves: their defaults, not a caller's setting, and this process
        # gets its own once it imports the same libraries (TORCHINDUCTOR_CACHE_DIR from its TMPDIR of the moment):
        # left out of the comparison
        self.set_by_imports = set(json.loads(ready[1]))

    def accepts(self, env: Mapping[str, str], pythonpath: bool = False) -> bool:
        """Whether a fork can run a call with ``env``: its start-up settings are the server's (``pythonpath``: but
        for PYTHONPATH, which the child adds to its ``sys.path`` or refuses with ``SHADOWED``: see forkserver.py)."""
        from forkserver import STARTUP_PREFIXES, STARTUP_VARIABLES

        from kaggleops.cli import QUIET_LIBRARIES  # kops sets these itself where unset, before MLflow is imported

        def startup(values: Mapping[str, str], name: str) -> str | None:
            return values.get(name, QUIET_LIBRARIES.get(name))

        names = [*STARTUP_VARIABLES, *sorted({v for v in (*env, *self.env) if v.startswith(STARTUP_PREFIXES)})]
        differ = [v for v in names if startup(env, v) != startup(self.env, v) and v not in self.set_by_imports
                  and not (pythonpath and v == "PYTHONPATH")]
        if differ and os.environ.get("KOPS_TEST_FORK_DEBUG"):
            print(f"forkserver: a fresh process for this call ({', '.join(differ)} differ)", file=sys.stderr)
        return self.proc.poll() is None and not differ

    def start(self, args: list[str], cwd: Path, env: dict[str, str], stdin: str | None,
              argv: list[str], script: Path | None = None) -> ForkedProcess:
        """A forked child running ``python -m kaggleops ARGS`` (``script``: ``python SCRIPT ARGS``), returned at
        once (see :class:`ForkedProcess`)."""
        return ForkedProcess(self.socket, args, cwd, env, stdin, argv, script)

    def run(self, args: list[str], cwd: Path, env: dict[str, str], stdin: str | None, timeout: float,
            argv: list[str], script: Path | None = None) -> subprocess.CompletedProcess[str] | None:
        """The call's result; None when the child refused its PYTHONPATH (``SHADOWED``: run it fresh instead)."""
        from forkserver import SHADOWED

        proc = self.start(args, cwd, env, stdin, argv, script)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            proc.close()
            raise
        if proc.returncode == SHADOWED and not out and not err:
            return None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class ForkedProcess:
    """A kops call forked by the fork server, used like a text-mode :class:`subprocess.Popen` with ``stdout`` and
    ``stderr`` captured: ``pid``, ``poll``, ``wait``, ``communicate``, ``send_signal``/``terminate``/``kill``,
    ``returncode`` (negative: the signal that ended it). The output is read once the process has ended."""

    def __init__(self, socket_path: Path, args: list[str], cwd: Path, env: dict[str, str], stdin: str | None,
                 argv: list[str], script: Path | None = None) -> None:
        import socket
        import tempfile

        self.args = argv
        self.returncode: int | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="kops-call-"))
        self._files = {name: self._tmp / name for name in ("stdin", "stdout", "stderr")}
        if stdin is not None:
            self._files["stdin"].write_text(stdin, encoding="utf-8")
        request = {"args": args, "cwd": str(cwd), "env": env,
                   "stdin": str(self._files["stdin"]) if stdin is not None else None,
                   "stdout": str(self._files["stdout"]), "stderr": str(self._files["stderr"])}
        if script is not None:
            request["script"] = str(script)  # as given: relative to cwd, as `python SCRIPT` takes it
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(str(socket_path))
        self._conn.sendall(json.dumps(request).encode() + b"\n")
        self._replies = self._conn.makefile("rb", buffering=0)  # unbuffered: select() sees what is left to read
        self.pid = int(json.loads(self._replies.readline())["pid"])

    def poll(self) -> int | None:
        import select

        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._settle(self._replies.readline())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                line = self._replies.readline()
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
            self._settle(line)
        return int(self.returncode or 0)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        out, err = (self._files[name].read_text(encoding="utf-8", errors="replace") if self._files[name].exists()
                    else "" for name in ("stdout", "stderr"))
        self.close()
        return out, err

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)

    def close(self) -> None:
        import shutil

        self._replies.close()
        self._conn.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _settle(self, line: bytes) -> None:
        self.returncode = json.loads(line)["returncode"] if line else -9


def kops_process(args: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Any:
    """``kops ARGS`` started in the background, as :class:`subprocess.Popen` would (text, stdout/stderr captured),
    for tests that run several at once or signal one: forked from the warm server where :func:`kops` would fork
    (~3 s less CPU each), else the installed console script in a fresh process. Read its output with
    ``communicate()``; a test that streams a line as it comes uses :class:`subprocess.Popen` itself."""
    full_env = dict(env)
    server = _fork_server(full_env)
    if server is not None:
        return server.start(list(args), Path(cwd), full_env, None, [sys.executable, "-m", "kaggleops", *args])
    return subprocess.Popen([str(KOPS_SCRIPT), *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


_FORK_SERVERS: dict[int, ForkServer] = {}


def _fork_server(env: Mapping[str, str], pythonpath: bool = False) -> ForkServer | None:
    """This process' fork server when it can run a call with ``env``; None: start a fresh interpreter.
    ``pythonpath``: the caller falls back to a fresh interpreter itself when the child refuses its PYTHONPATH."""
    if os.environ.get("KOPS_TEST_FORK", "1") == "0":
        return None
    server = _FORK_SERVERS.get(os.getpid())
    if server is None:
        server = _FORK_SERVERS[os.getpid()] = ForkServer()
    return server if server.accepts(env, pythonpath) else None


def kops_json(*args: str, cwd: Path | None = None, env: Mapping[str, str | None] | None = None,
              timeout: float = KOPS_TIMEOUT_S, script: bool = False) -> Any:
    """``kops … --json``, asserted to succeed; its stdout parsed."""
    out = kops(*args, "--json", cwd=cwd, env=env, timeout=timeout, script=script)
    assert out.returncode == 0, f"kops {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts (header → cell)."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def accuracy(truths: Sequence[str], preds: Sequence[str]) -> float:
    """Exact-match accuracy (the metric the emulator's tiny test competitions score with)."""
    return sum(t == p for t, p in zip(truths, preds, strict=True)) / len(truths)


def git(cwd: Path, *args: str) -> str:
    """``git`` with a fixed identity and branch name (tests make commits in throw-away repositories); asserted to
    succeed; its stdout, stripped."""
    out = subprocess.run(["git", "-c", "user.name=kops test", "-c", "user.email=test@kops.invalid",
                          "-c", "init.defaultBranch=main", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def write_config(folder: Path, text: str = "", competition: str = "tweet-sentiment-extraction",
                 owner: str = USER, experiment: str = "tse-test") -> Path:
    """A kops.yaml in ``folder`` (created): competition, owner, experiment, plus ``text`` (more YAML lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kops.yaml"
    path.write_text(f"competition: {competition}\nowner: {owner}\nexperiment: {experiment}\n{text}")
    return path


@dataclass(frozen=True)
class Emulated:
    """A running emulator: its state folder, URL and the environment that aims kops and the kaggle client at it."""

    root: Path
    url: str
    username: str = USER
    key: str = KEY

    @property
    def env(self) -> dict[str, str]:
        return {"KOPS_KAGGLE_ENDPOINT": self.url, "KAGGLE_USERNAME": self.username, "KAGGLE_KEY": self.key}


@contextlib.contextmanager
def start_emulator_process(root: Path, username: str = USER, key: str = KEY, kops: Sequence[str] | None = None,
                           env: dict[str, str] | None = None, args: Sequence[str] = ()) -> Iterator[Emulated]:
    """``kops emulator start --json --root ROOT`` as its own process (as a user starts it); stopped afterwards."""
    cmd = [*(kops or [sys.executable, "-m", "kaggleops"]), "emulator", "start", "--json", "--root", str(root),
           "--username", username, "--key", key, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise AssertionError(f"emulator did not start: {proc.stderr.read() if proc.stderr else ''}")
        data = json.loads(line)
        yield Emulated(Path(data["root"]), data["url"], username, key)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def interrupt_a_helper_thread(pid: int, sig: int = 2) -> None:
    """Send ``sig`` (SIGINT) to a thread of process ``pid`` other than its main one (``tgkill``): a signal sent to
    the process may land on any of its threads, and one on a server thread must stop a command as well."""
    import ctypes
    import platform

    helpers = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert helpers, f"process {pid} has no thread besides its main one"
    tgkill = {"x86_64": 234, "aarch64": 131}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(tgkill, pid, helpers[0], sig) == 0, os.strerror(ctypes.get_errno())


# ---- run-local in the Kaggle image environment -----------------------------------------------------------

WHEEL_SKIPPED = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


def shared_cache(factory: pytest.TempPathFactory) -> Path:
    """``<session temp>/kops-cache``: shared by the session's tests (and its xdist workers)."""
    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "kops-cache"
    path.mkdir(exist_ok=True)
    return path


def image_python(cache: Path) -> Path:
    """The interpreter of the one Kaggle image environment built under ``cache``."""
    found = sorted((cache / "kaggle-image").glob("*/kops-image.json"))
    assert len(found) == 1, found
    return found[0].parent / "bin" / "python"


def wheel_of_installed(name: str, dst: Path) -> Path:
    """``dst/<name>-<version>-py3-none-any.whl`` from the installed files of ``name`` (pure Python only)."""
    dist = md.distribution(name)
    files = [f for f in dist.files or [] if not f.as_posix().startswith("..") and "__pycache__" not in f.parts
             and not (f.parent.name.endswith(".dist-info") and f.name in WHEEL_SKIPPED)]
    info = next(f.parent.as_posix() for f in files if f.parent.name.endswith(".dist-info"))
    assert "Root-Is-Purelib: true" in (dist.read_text("WHEEL") or ""), f"{name} is not pure Python"
    dst.mkdir(parents=True, exist_ok=True)
    wheel = dst / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(files, key=lambda f: f.as_posix()):
            data = Path(str(dist.locate_file(rel))).read_bytes()
            zf.writestr(rel.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel.as_posix()},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def report(stdout: str) -> dict:
    """The JSON report `kops kernel run-local --json` printed."""
    return json.loads(stdout)
