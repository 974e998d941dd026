"""`kops ui` in a real browser: the printed URL shows the runs with their lb_public values (headless Chromium).

Skips when /usr/bin/chromium is absent (Debian: ``apt-get install -y --no-install-recommends chromium``).
The screenshot is kept under tests/artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config
from kaggleops.stages.ui import runs_url

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1800,1000", "--virtual-time-budget=20000"]


def test_runs_url_uses_mlflow_query_parameters() -> None:
    assert runs_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
        "&orderByKey=metrics.%60lb_public%60&orderByAsc=false")
    assert runs_url("http://h:1", "7", share_key="k") == (
        "http://h:1/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=k")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium(url: str, *mode: str) -> subprocess.CompletedProcess[str]:
    """Chromium with a new empty profile; short TMPDIR, since its singleton socket path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="kops-chromium-", dir="/tmp") as profile:
        return subprocess.run([str(CHROMIUM), *CHROME_FLAGS, f"--user-data-dir={profile}", *mode, url],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": profile})


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install chromium)")
def test_kops_ui_url_shows_runs_with_lb_public(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "kops.yaml").write_text("competition: tiny-comp\nowner: testuser\nexperiment: ui-test\n")
    cfg = load_config(work / "kops.yaml")
    tracker = Tracker(cfg)
    for name, lb in (("submission-best", 0.73412), ("submission-second", 0.71234)):
        run_id = tracker.start_run(name, {}, {"kops.kind": "submission"})
        tracker.log_metrics(run_id, {"lb_public": lb, "lb_private": lb + 0.001})
        tracker.end_run(run_id)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kaggleops", "ui", "--port", str(port)], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip() if proc.stdout else ""
        assert url == runs_url(f"http://127.0.0.1:{port}", tracker.experiment_id, share_key="kops-leaderboard"), \
            proc.stderr
        dom = chromium(url, "--dump-dom")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / ".gitignore").write_text("*\n")  # kept for a look, never committed
        shot = ARTIFACTS / "kops-ui-runs.png"
        chromium(url, f"--screenshot={shot}")
    finally:
        proc.terminate()  # kops ui stops its mlflow server on SIGTERM
        proc.wait(timeout=60)
    with socket.socket() as s, pytest.raises(OSError):
        s.connect(("127.0.0.1", port))  # nothing left serving
    print(f"screenshot: {shot}")
    assert "submission-best" in dom.stdout and "submission-second" in dom.stdout, dom.stderr[-3000:]
    assert "Sort: lb_public" in dom.stdout
    assert "metrics.`lb_public`" in dom.stdout  # the column is shown
    assert "0.73412" in dom.stdout and "0.71234" in dom.stdout
    assert dom.stdout.index("submission-best") < dom.stdout.index("submission-second"), "not sorted by lb_public"
    assert shot.is_file() and shot.stat().st_size > 10_000
