"""Every test runs with HOME, Kaggle config, TMPDIR and tracking settings pointed at its own temp folder.

The shared fixtures on top of ``harness.py``: ``start_emulator`` (in-process Kaggle emulators aimed at through the
environment), ``emulator`` (one such, with harness.USER/KEY), ``project`` (a kops.yaml folder aimed at it), and
``mlflow_server``. A test module changes what ``emulator`` or ``project`` hold by overriding ``emulator`` (built on
``start_emulator``) or ``project_settings``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness import KEY, USER, write_config

if TYPE_CHECKING:
    from kaggleops.emulator import Emulator

ISOLATED_VARS = (
    "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT", "MLFLOW_TRACKING_URI",
    "KOPS_KAGGLE_ENDPOINT", "KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "COLAB_GPU",
)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The test workers share the machine's cores (2 here; `make test` runs one worker more than the cores): each test
# process and every kops it starts uses one torch/OpenMP thread. More per process only oversubscribe the cores:
# tests/test_kernel_rerank.py took 58 s of user CPU with torch's default threads and 32 s with one (wall 63 s -> 42 s).
# A test may still set its own.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# ---- longest files first (the two workers finish together) ----------------------------------------------------------
# `--dist loadfile` hands a worker a whole file at a time, and by default the files with the MOST TESTS first: a file
# of one 20-s test (the example regression) came last and one worker ran it alone while the other sat idle. Files are
# ordered by their measured seconds instead (tests/file_seconds.json, written by `make test-seconds`; a file not in
# it counts as the slowest, so a new file is not left for the end), the longest first: LPT scheduling.
FILE_SECONDS = Path(__file__).with_name("file_seconds.json")
# Files that keep both cores busy on their own (8 `kops train` processes at once) go LAST instead: run beside another
# worker's training they took 100 s instead of 62 (two fresh clones, 11:45 vs 10:01 in all); at the end the other
# worker is done with its short files and they have the machine.
LAST = ("tests/test_server_mode.py",)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order below, not "most tests first"
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import json

    try:
        seconds = {str(k): float(v) for k, v in json.loads(FILE_SECONDS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return
    unknown = max(seconds.values(), default=0.0) + 1.0
    rank = {name: i for i, name in enumerate(dict.fromkeys(item.nodeid.split("::")[0] for item in items))}

    def key(item: pytest.Item) -> tuple[bool, float, int]:
        name = item.nodeid.split("::")[0]
        return name in LAST, -seconds.get(name, unknown), rank[name]

    items.sort(key=key)  # stable: a file's tests keep their order


_FILE_TIMES: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Seconds per file (setup + call + teardown), gathered where the reports arrive (the xdist controller too)."""
    if os.environ.get("KOPS_TEST_SECONDS"):
        name = report.nodeid.split("::")[0]
        _FILE_TIMES[name] = _FILE_TIMES.get(name, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """``KOPS_TEST_SECONDS=FILE``: write the seconds per file there (the controller's view: every worker's tests)."""
    import json

    out = os.environ.get("KOPS_TEST_SECONDS")
    if out and _FILE_TIMES and not os.environ.get("PYTEST_XDIST_WORKER"):
        Path(out).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_FILE_TIMES.items())}, indent=1) + "\n")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    tmp = tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    for var in ISOLATED_VARS:
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def start_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Emulator]]:
    """Starts in-process Kaggle emulators for this test; all are stopped after it.

    ``start_emulator(name="emu", aim=True, username=USER, key=KEY, **options)`` returns a running
    ``Emulator(tmp_path / name, username, key, **options)``. With ``aim`` the test's environment points kops and the
    official client at it (KOPS_KAGGLE_ENDPOINT, KAGGLE_USERNAME, KAGGLE_KEY; NO_PROXY for the loopback).
    """
    from kaggleops.emulator import Emulator

    started: list[Emulator] = []

    def start(name: str = "emu", aim: bool = True, username: str = USER, key: str = KEY,
              **options: Any) -> Emulator:
        emu = Emulator(tmp_path / name, username=username, key=key, **options)
        started.append(emu)
        emu.start()
        if aim:
            for var, value in {"KOPS_KAGGLE_ENDPOINT": emu.url, "KAGGLE_USERNAME": username, "KAGGLE_KEY": key,
                               "NO_PROXY": "127.0.0.1,localhost"}.items():
                monkeypatch.setenv(var, value)
        return emu

    try:
        yield start
    finally:
        for emu in reversed(started):
            emu.stop()


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator]) -> Emulator:
    """A running in-process emulator (``tmp_path / "emu"``, harness.USER/KEY) the environment is aimed at."""
    return start_emulator()


@pytest.fixture
def project_settings() -> dict[str, str]:
    """``write_config`` keywords for the ``project`` fixture's kops.yaml; a module overrides this fixture to change
    them (e.g. ``{"experiment": "acc"}``)."""
    return {}


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator, project_settings: dict[str, str]) -> Path:
    """A project folder (``tmp_path / "proj"``) with a kops.yaml (``write_config``: tweet-sentiment-extraction, owner
    harness.USER), aimed at ``emulator`` through the environment."""
    return write_config(tmp_path / "proj", **project_settings).parent


@pytest.fixture
def shared_data() -> Path:
    """The real competition data beside the project; tests using it skip when it is absent."""
    if not (SHARED_DATA / "tweet-sentiment-extraction" / "train.csv").is_file():
        pytest.skip(f"real competition data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server --workers 1` on 127.0.0.1, SQLite backend, proxied artifacts in its own folder."""
    from kaggleops.adapters.mlflow_server import serve_mlflow

    srv = tmp_path / "server"
    srv.mkdir()
    server = serve_mlflow(f"sqlite:///{srv / 'mlflow.db'}", ["--artifacts-destination", str(srv / "artifacts")],
                          srv, srv / "server.log", timeout_s=120)
    try:
        yield server.base
    finally:
        server.stop()
