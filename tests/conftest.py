"""Every test runs with HOME, Kaggle config, TMPDIR and tracking settings pointed at its own temp folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ISOLATED_VARS = (
    "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT", "MLFLOW_TRACKING_URI",
    "KOPS_KAGGLE_ENDPOINT", "KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "COLAB_GPU",
)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Runs with no data_dir and nothing cached train on the bundled sample instead of downloading (set for the whole
# session: module-scoped fixtures train before the per-test isolation below). tests/test_data.py removes it.
os.environ["KOPS_DATA_FALLBACK"] = "sample"


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
def shared_data() -> Path:
    """The real competition data beside the project; tests using it skip when it is absent."""
    if not (SHARED_DATA / "tweet-sentiment-extraction" / "train.csv").is_file():
        pytest.skip(f"real competition data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server --workers 1` on 127.0.0.1, SQLite backend, proxied artifacts in its own folder."""
    from kaggleops.stages.ui import serve_mlflow

    srv = tmp_path / "server"
    srv.mkdir()
    server = serve_mlflow(f"sqlite:///{srv / 'mlflow.db'}", ["--artifacts-destination", str(srv / "artifacts")],
                          srv, srv / "server.log", timeout_s=120)
    try:
        yield server.base
    finally:
        server.stop()
