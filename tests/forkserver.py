"""A warm ``python -m kaggleops``: imports kops' CLI, MLflow and torch once, then forks one child per kops call.

Every ``kops`` process spends ~2.5 s of CPU importing MLflow and its SQL store before it does anything, and every
one that trains, publishes or renders a kernel ~1.4 s more importing torch; the suite runs a few hundred of them on
2 cores. This server pays that once per test worker. Each call is still a process of
its own running the installed entry point (``kaggleops/__main__.py`` via ``runpy``, as ``python -m kaggleops``
does) in the caller's environment, folder, argv and stdin, exiting through the interpreter's normal shutdown
(atexit handlers, non-daemon threads), with its exit status read by ``waitpid``.

What a fork cannot redo, and so :func:`harness.kops` never sends here (it starts a fresh process instead): a call
whose environment changes what Python or the preloaded modules read at start-up (``STARTUP_VARIABLES``), a call of
the ``kops`` console script (``script=True``), and any call when ``KOPS_TEST_FORK=0``. One start-up variable is
redone: ``PYTHONPATH`` entries the server lacks go onto the child's ``sys.path`` where Python puts them (after the
current folder), unless they hold a start-up hook (``sitecustomize``) or a module or package named like one the
server already imported (a namespace package such as ``google`` excepted: it rescans ``sys.path``); then the child
exits at once with ``SHADOWED`` and the caller starts a fresh process (:func:`harness.kops` does so by itself).

Protocol (one Unix-socket connection per call): the client sends one JSON line ``{"args", "cwd", "env", "stdin",
"stdout", "stderr"}`` (the last three are file paths; an optional ``"script"`` path runs ``python SCRIPT ARGS``, a
test's own wrapper around kops' entry point, instead of ``python -m kaggleops ARGS``); the server answers
``{"pid": N}`` at once and ``{"returncode": R}`` when the child has exited (``R`` as :class:`subprocess.Popen`
reports it).

Usage: ``python tests/forkserver.py SOCKET`` (prints ``ready`` once listening, with the JSON object of the variables
the preloaded imports set themselves, e.g. torch's ``TORCHINDUCTOR_CACHE_DIR``, scikit-learn's ``KMP_INIT_AT_FORK``:
library defaults, not a caller's setting, which the caller leaves out of its comparison — a test process that
imported those libraries itself has them too; exits when its parent does).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys

#: Variables read when Python or a preloaded module starts: a call that sets any of them differently gets a fresh
#: process (harness.kops compares them with the server's own environment).
STARTUP_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONIOENCODING",
                     "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE", "PYTHONSAFEPATH", "LANG", "LC_ALL", "LC_CTYPE",
                     "MLFLOW_LOGGING_LEVEL", "MLFLOW_CONFIGURE_LOGGING")
#: Prefixes of the variables the preloaded libraries (torch and its native libraries: OpenMP, MKL, CUDA; dynamo's
#: sympy; scikit-learn, joblib, scipy) read when imported: a call whose variables of these prefixes differ from the
#: server's gets a fresh process too.
STARTUP_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_",
                    "SYMPY_", "MPMATH_", "SKLEARN_", "JOBLIB_", "SCIPY_")  # TORCH: TORCH_*, TORCHDYNAMO_*, …
#: Modules that read the environment when imported (their settings would be the server's, not the call's): the
#: server refuses to start if preloading pulled any of them in (torch is preloaded on purpose, guarded by the
#: prefixes above).
ENV_AT_IMPORT = ("huggingface_hub", "transformers", "kaggle", "kagglesdk", "google.cloud.storage")
#: Variables the preloaded libraries set themselves when imported (torch's inductor cache folder, from the TMPDIR of
#: the moment; scikit-learn's OpenMP defaults): the server drops any it inherited, so its imports set and report
#: them (see serve), and a test process that imported the same libraries has its own values.
LIBRARY_DEFAULTS = ("TORCHINDUCTOR_CACHE_DIR", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")
#: The exit status of a child whose PYTHONPATH would shadow a preloaded module (nothing ran: start a fresh process).
SHADOWED = 197
SERVER_PYTHONPATH = os.environ.get("PYTHONPATH", "")  # what the server itself started with


def preload() -> dict[str, str]:
    """What every kops command imports first (kops' CLI, MLflow, its SQL store) and most import next (torch and the
    parts of it transformers' model code pulls in), with kops' own start-up settings. Nothing here starts a thread
    (checked: a fork after it is safe)."""
    from kaggleops.cli import QUIET_LIBRARIES

    for var, value in QUIET_LIBRARIES.items():  # as kaggleops.cli.main sets them before anything imports MLflow
        os.environ.setdefault(var, value)
    for name in LIBRARY_DEFAULTS:
        os.environ.pop(name, None)
    before = dict(os.environ)
    import threading

    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.tracking  # noqa: F401
    import sklearn.metrics  # noqa: F401 - tasks' metrics and splits; it sets KMP_* defaults (reported, see serve)
    import sklearn.model_selection  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401 - what transformers' model code imports of torch: ~1 s of a training call
    import torch.distributed.tensor  # noqa: F401

    import kaggleops.cli  # noqa: F401

    loaded = [name for name in ENV_AT_IMPORT if name in sys.modules]
    if loaded:
        raise SystemExit(f"forkserver: preloading imported {loaded}, which read the environment at import")
    if threading.active_count() != 1:  # a fork copies only the forking thread: nothing may run beside it
        raise SystemExit(f"forkserver: preloading started threads {threading.enumerate()}")
    import gc

    gc.freeze()  # the preloaded objects stay out of every child's garbage collections (fewer pages copied)
    return {name: value for name, value in os.environ.items() if before.get(name) != value}


def run_child(request: dict, closing: list[socket.socket]) -> None:
    """In the forked child: become the requested ``python -m kaggleops`` call; never returns."""
    import runpy
    import tempfile

    for sock in closing:
        sock.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, request["stdin"] or os.devnull, os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    tempfile.tempdir = None  # gettempdir() reads this call's TMPDIR, not the server's
    if "numpy" in sys.modules:  # a fresh process would draw a fresh seed (the random module reseeds at fork)
        sys.modules["numpy"].random.seed()
    script = request.get("script")  # `python SCRIPT ARGS` instead of `python -m kaggleops ARGS`
    sys.path[0] = os.path.dirname(os.path.abspath(script)) if script else os.getcwd()  # where Python puts them
    added = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep)
             if p and p not in SERVER_PYTHONPATH.split(os.pathsep)]
    if any(shadows(entry) for entry in added):
        os._exit(SHADOWED)
    sys.path[1:1] = [os.path.abspath(p) for p in added]  # where a fresh interpreter puts PYTHONPATH's entries
    sys.argv = [script or "-m", *request["args"]]
    try:
        if script:
            runpy.run_path(script, run_name="__main__")
        else:
            runpy.run_module("kaggleops", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = exit_code(e.code)
    except BaseException:  # noqa: BLE001 - as the interpreter does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    # The interpreter's exit, less its module teardown (which only frees memory, but in a fork copies every page it
    # touches: ~0.8 s a call): join non-daemon threads, run atexit handlers (logging, weakref finalizers, MLflow's),
    # flush, exit.
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def shadows(entry: str) -> bool:
    """Whether folder ``entry`` holds a module or package named like one already imported (not a namespace one),
    or a start-up hook a fresh interpreter would run (``sitecustomize``/``usercustomize``)."""
    try:
        names = os.listdir(entry)
    except OSError:
        return False
    for name in names:
        top = name[:-3] if name.endswith(".py") else name
        if top in ("sitecustomize", "usercustomize"):
            return True
        module = sys.modules.get(top)
        if module is not None and getattr(module, "__file__", None) is not None:
            return True
    return False


def exit_code(code: object) -> int:
    """The status ``sys.exit(code)`` gives a process (a non-int is printed to stderr and gives 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def serve(path: str, set_by_imports: dict[str, str]) -> None:
    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection that asked for it
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    print("ready", json.dumps(set_by_imports), flush=True)
    while os.getppid() == parent:
        for _ in selector.select(timeout=0.02):
            conn, _ = server.accept()
            request = json.loads(conn.makefile("r", encoding="utf-8").readline())
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                run_child(request, [server, conn, *waiting.values()])
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass  # the caller gave up (timed out)
                conn.close()
    os.unlink(path)


if __name__ == "__main__":
    serve(sys.argv[1], preload())
