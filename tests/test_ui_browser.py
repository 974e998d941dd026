"""`kops ui` in a real browser: the printed URL shows the runs with their lb_public values (headless Chromium).

Skips when /usr/bin/chromium is absent (Debian: ``apt-get install -y --no-install-recommends chromium``).
With ``KOPS_TEST_SCREENSHOTS=1`` the pages are also saved as PNGs under tests/artifacts/ (ignored by git), for a
person to look at; the DOM checks run either way.
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
from kaggleops.refs import RunRef
from kaggleops.stages.ui import runs_url

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
SCREENSHOTS = os.environ.get("KOPS_TEST_SCREENSHOTS") == "1"
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
        if SCREENSHOTS:
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
    for column in ("Dataset", "Models"):  # MLflow's own columns kops' view turns on
        assert f">{column}<" in dom.stdout, column
    assert "0.73412" in dom.stdout and "0.71234" in dom.stdout
    assert dom.stdout.index("submission-best") < dom.stdout.index("submission-second"), "not sorted by lb_public"
    assert not SCREENSHOTS or (shot.is_file() and shot.stat().st_size > 10_000)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install chromium)")
def test_run_page_is_model_training_and_models_tab_lists_published_weights(tmp_path: Path) -> None:
    """MLflow 3 knows what kops logged: a fold run's page is a model-training run (not GenAI's "Evaluation runs"),
    and the Models tab lists the published weight set with its lb_public (issue 30)."""
    import json

    work = tmp_path / "work"
    work.mkdir()
    (work / "kops.yaml").write_text("competition: tiny-comp\nowner: testuser\nexperiment: ui-models\n")
    tracker = Tracker(load_config(work / "kops.yaml"))
    run_id = tracker.start_run("fold-0", {"lr": 0.001}, {"kops.kind": "fold"})
    tracker.end_run(run_id)
    model_id = tracker.published_model(run_id, "ui-models-fold-0-v3", {
        "kops.published.ref": "testuser/ui-models-fold-0", "kops.published.version": "3",
        "kops.published.kind": "dataset", "kops.published.url": "http://127.0.0.1:8765/datasets/testuser/ui-models-fold-0"},
        {"lr": "0.001"}, "kaggle-dataset")
    tracker.log_metrics(run_id, {"lb_public": 0.81234}, step=1, model_id=model_id)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kaggleops", "ui", "--port", str(port), "--json"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while proc.stdout and (not lines or lines[-1].rstrip() != "}"):  # the JSON object, printed before serving
            lines.append(proc.stdout.readline())
        printed = json.loads("".join(lines))
        base = f"http://127.0.0.1:{port}"
        assert printed.get("models_url") == (f"{base}/#/experiments/{tracker.experiment_id}/models"
                                             "?workflowType=machine_learning"), proc.stderr
        run_page = RunRef(run_id, base).url(tracker.experiment_id)  # the run link kops writes
        assert run_page is not None
        run_dom = chromium(run_page, "--dump-dom")
        wide = "--window-size=3400,1000"  # the grid draws only the columns in view; the metric group is far right
        models_dom = chromium(printed["models_url"], wide, "--dump-dom")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / ".gitignore").write_text("*\n")
        shots = {"run": ARTIFACTS / "kops-ui-run-page.png", "models": ARTIFACTS / "kops-ui-models-tab.png"}
        if SCREENSHOTS:
            chromium(run_page, f"--screenshot={shots['run']}")
            chromium(printed["models_url"], wide, f"--screenshot={shots['models']}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"screenshots: {shots}")
    assert "fold-0" in run_dom.stdout, run_dom.stderr[-2000:]
    assert "Evaluation runs" not in run_dom.stdout and "Model training" in run_dom.stdout
    assert "ui-models-fold-0-v3" in run_dom.stdout  # under "Logged models"
    assert "ui-models-fold-0-v3" in models_dom.stdout, models_dom.stderr[-2000:]
    assert "0.81234" in models_dom.stdout  # its lb_public, in the Models tab
    assert not SCREENSHOTS or all(shot.is_file() and shot.stat().st_size > 10_000 for shot in shots.values())
