"""The Kaggle API emulator, driven by the REAL official ``kaggle`` client (KaggleApi), offline."""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from kaggleops.emulator import Emulator

from harness import KEY, USER, accuracy, interrupt_a_helper_thread, kops

COMP = "tiny-comp"
# Solution in order: even positions (0, 2, 4) are public, odd positions (1, 3, 5) private.
SOLUTION = [{"id": str(i), "label": lab} for i, lab in enumerate(["a", "b", "a", "b", "b", "a"])]
# The kernel predicts the "hint" column: public rows 0,2,4 -> a,a,a vs a,a,b (2/3); private all right.
HINTS = ["a", "b", "a", "b", "a", "a"]

KERNEL_SCRIPT = """
import csv, os
inp = os.environ["KOPS_KAGGLE_INPUT"]
print("inputs:", sorted(os.listdir(inp)))
with open(os.path.join(inp, "competitions", "tiny-comp", "test.csv")) as f:  # Kaggle's current input layout
    rows = list(csv.DictReader(f))
with open("submission.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "label"])
    for r in rows:
        w.writerow([r["id"], r["hint"]])
os.makedirs("extra", exist_ok=True)
open(os.path.join("extra", "note.txt"), "w").write("run type " + os.environ.get("KAGGLE_KERNEL_RUN_TYPE", ""))
print("done writing", len(rows), "rows")
"""


@pytest.fixture(autouse=True)
def kaggle_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate HOME, the kaggle config dir and TMPDIR (upload resume state) per test."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_COMPETITION", "KAGGLE_PATH", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp_path


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator], tmp_path: Path) -> Emulator:
    """A running emulator with the tiny competition seeded (the client is aimed at it by make_api, not the env)."""
    emu = start_emulator(aim=False, kernel_timeout_s=30, tokens={"tok-abc": USER})
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("id,hint\n" + "".join(f"{i},{h}\n" for i, h in enumerate(HINTS)))
    emu.add_competition(COMP, {"test.csv": test_csv}, SOLUTION, "id", "label", accuracy)
    return emu


def make_api(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import the real client (env already set) and aim it at the emulator."""
    import kagglesdk.kaggle_env as ke
    from kaggle.api.kaggle_api_extended import KaggleApi

    if "--local" not in KaggleApi.args:  # kaggle was imported before LOCALHOST was set
        monkeypatch.setattr(KaggleApi, "args", [*KaggleApi.args, "--local"])
    monkeypatch.setattr(KaggleApi, "config_dir", os.environ["KAGGLE_CONFIG_DIR"])
    monkeypatch.setattr(KaggleApi, "config", os.path.join(os.environ["KAGGLE_CONFIG_DIR"], "kaggle.json"))
    monkeypatch.setitem(ke._env_to_endpoint, ke.KaggleEnv.LOCAL, emulator.url)
    api = KaggleApi()
    api.authenticate()
    return api


@pytest.fixture
def api(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An authenticated KaggleApi talking to the emulator."""
    return make_api(emulator, monkeypatch)


def write_dataset(folder: Path, slug: str, files: dict[str, bytes]) -> Path:
    """A dataset folder with metadata and the given files."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"id": f"{USER}/{slug}", "title": "Kops Test Dataset", "licenses": [{"name": "CC0-1.0"}]}
    (folder / "dataset-metadata.json").write_text(json.dumps(meta))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def write_kernel(folder: Path, slug: str, script: str, **meta: Any) -> Path:
    """A script-kernel folder with kernel-metadata.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(script)
    metadata = {"id": f"{USER}/{slug}", "title": slug, "code_file": "main.py", "language": "python",
                "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_internet": False,
                "competition_sources": [COMP], "dataset_sources": [], **meta}
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata))
    return folder


def wait_kernel(api: Any, ref: str, timeout: float = 20.0) -> Any:
    """Poll kernels_status until the run leaves QUEUED/RUNNING."""
    deadline = time.monotonic() + timeout
    while True:
        status = api.kernels_status(ref)
        if status.status.name not in ("QUEUED", "RUNNING") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def log_entries(emulator: Emulator) -> list[dict[str, Any]]:
    """The emulator's JSON-lines request log."""
    return [json.loads(line) for line in (emulator.root / "requests.log").read_text().splitlines()]


# ---- datasets ----------------------------------------------------------------------------------


def test_dataset_create_version_status_files_and_download(api: Any, tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "ds", "kops-ds-one", {"data.csv": b"a,b\n1,2\n", "w.bin": b"\x00\x01" * 999})
    created = api.dataset_create_new(str(folder), quiet=True)
    assert created.status == "ok" and created.ref == f"{USER}/kops-ds-one"
    (folder / "w.bin").write_bytes(b"\x07" * 4321)
    (folder / "new.txt").write_text("hello")
    version = api.dataset_create_version(str(folder), "second version", quiet=True)
    assert version.status == "ok"

    status = json.loads(api.dataset_status(f"{USER}/kops-ds-one", format="json"))
    assert status == {"status": "ready", "current_version_number": 2}
    names = sorted(f.name for f in api.dataset_list_files(f"{USER}/kops-ds-one").dataset_files)
    assert names == ["data.csv", "new.txt", "w.bin"]

    out = tmp_path / "dl"
    api.dataset_download_file(f"{USER}/kops-ds-one", "w.bin", path=str(out), quiet=True)
    assert (out / "w.bin").read_bytes() == b"\x07" * 4321
    api.dataset_download_files(f"{USER}/kops-ds-one/1", path=str(out / "v1"), quiet=True)
    with zipfile.ZipFile(out / "v1" / "kops-ds-one.zip") as zf:
        assert sorted(zf.namelist()) == ["data.csv", "w.bin"]
        assert zf.read("w.bin") == b"\x00\x01" * 999


def test_create_existing_dataset_reports_error_in_body(api: Any, tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "ds", "kops-ds-dup", {"x.csv": b"x\n1\n"})
    assert api.dataset_create_new(str(folder), quiet=True).status == "ok"
    again = api.dataset_create_new(str(folder), quiet=True)
    assert again.status == "error" and "already in use" in again.error


def test_new_version_refused_while_previous_is_processing(api: Any, emulator: Emulator, tmp_path: Path) -> None:
    emulator.config.dataset_processing_s = 60.0
    folder = write_dataset(tmp_path / "ds", "kops-ds-slow", {"x.csv": b"x\n1\n"})
    assert api.dataset_create_new(str(folder), quiet=True).status == "ok"
    assert api.dataset_status(f"{USER}/kops-ds-slow") != "ready"
    with pytest.raises(requests.HTTPError) as err:
        api.dataset_create_version(str(folder), "too soon", quiet=True)
    assert err.value.response.status_code == 403 and "processing" in str(err.value)


def test_injected_429_is_survived_by_client_retry(api: Any, emulator: Emulator, tmp_path: Path) -> None:
    emulator.inject_fault("CreateDataset", 429)
    folder = write_dataset(tmp_path / "ds", "kops-ds-retry", {"x.csv": b"x\n1\n"})
    assert api.dataset_create_new(str(folder), quiet=True).status == "ok"
    statuses = [e["status"] for e in log_entries(emulator) if e.get("rpc", "").endswith("/CreateDataset")]
    assert statuses == [429, 200]


def test_dropped_upload_is_resumed_by_client(api: Any, emulator: Emulator, tmp_path: Path) -> None:
    emulator.inject_fault("Upload", 503)
    payload = os.urandom(100_000)
    folder = write_dataset(tmp_path / "ds", "kops-ds-resume", {"big.bin": payload})
    assert api.dataset_create_new(str(folder), quiet=True).status == "ok"
    puts = [e for e in log_entries(emulator) if e["method"] == "PUT"]
    assert [e["status"] for e in puts] == [503, 308, 200]
    out = tmp_path / "dl"
    api.dataset_download_file(f"{USER}/kops-ds-resume", "big.bin", path=str(out), quiet=True)
    assert (out / "big.bin").read_bytes() == payload


# ---- auth --------------------------------------------------------------------------------------


def test_bad_key_is_401(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key")
    api = make_api(emulator, monkeypatch)
    with pytest.raises(requests.HTTPError) as err:
        api.dataset_list_files(f"{USER}/anything")
    assert err.value.response.status_code == 401


def test_bearer_token_and_log_has_no_secrets(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok-abc")
    api = make_api(emulator, monkeypatch)
    limits = api.competition_get_submission_limits(COMP)
    assert limits.num_allowed_now == 5
    entries = log_entries(emulator)
    assert any(e.get("rpc") == "security.OAuthService/IntrospectToken" for e in entries)
    assert any(e.get("auth") == "bearer" and e["status"] == 200 for e in entries)
    text = (emulator.root / "requests.log").read_text()
    assert "tok-abc" not in text and KEY not in text


# ---- kernels -----------------------------------------------------------------------------------


def test_kernel_push_runs_and_outputs_download(api: Any, emulator: Emulator, tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", "kops-ds-in", {"params.json": b"{}"})
    api.dataset_create_new(str(ds), quiet=True)
    check = f"\nassert os.path.exists(os.path.join(inp, 'datasets', '{USER}', 'kops-ds-in', 'params.json'))\n"
    folder = write_kernel(tmp_path / "k", "kops-kernel-ok", KERNEL_SCRIPT + check,
                          dataset_sources=[f"{USER}/kops-ds-in"])
    pushed = api.kernels_push(str(folder))
    assert not pushed.error and pushed.version_number == 1
    status = wait_kernel(api, f"{USER}/kops-kernel-ok/1")
    assert status.status.name == "COMPLETE", status.failure_message

    out = tmp_path / "out"
    files, _ = api.kernels_output(f"{USER}/kops-kernel-ok/1", str(out), quiet=True)
    assert (out / "submission.csv").read_text().splitlines()[1:] == [f"{i},{h}" for i, h in enumerate(HINTS)]
    assert (out / "extra" / "note.txt").read_text() == "run type Batch"
    log = json.loads((out / "kops-kernel-ok.log").read_text())
    assert any("done writing 6 rows" in e["data"] and e["stream_name"] == "stdout" for e in log)
    assert any("['competitions', 'datasets']" in e["data"] for e in log)


def test_kernel_that_raises_is_error_with_message(api: Any, tmp_path: Path) -> None:
    folder = write_kernel(tmp_path / "k", "kops-kernel-bad", "print('hi')\nraise ValueError('boom at step 3')\n")
    assert api.kernels_push(str(folder)).version_number == 1
    status = wait_kernel(api, f"{USER}/kops-kernel-bad")
    assert status.status.name == "ERROR"
    assert "ValueError: boom at step 3" in status.failure_message
    streamed = [e.get("data", "") for e in api.kernels_logs_stream(f"{USER}/kops-kernel-bad/1")]
    assert "hi\n" in streamed and any("boom at step 3" in d for d in streamed)


def test_kernel_timeout_is_error(api: Any, emulator: Emulator, tmp_path: Path) -> None:
    emulator.runner.timeout_s = 0.5
    folder = write_kernel(tmp_path / "k", "kops-kernel-slow", "import time\ntime.sleep(30)\n")
    api.kernels_push(str(folder))
    status = wait_kernel(api, f"{USER}/kops-kernel-slow/1")
    assert status.status.name == "ERROR" and "time limit" in status.failure_message


def test_notebook_kernel_runs_code_cells(api: Any, tmp_path: Path) -> None:
    folder = tmp_path / "nb"
    cells = [{"cell_type": "code", "source": ["!pip install nothing\n", "x = 41\n"], "outputs": [],
              "metadata": {}, "execution_count": None},
             {"cell_type": "markdown", "source": "# notes", "metadata": {}},
             {"cell_type": "code", "source": "open('answer.txt', 'w').write(str(x + 1))", "outputs": [],
              "metadata": {}, "execution_count": None}]
    folder.mkdir()
    (folder / "nb.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                                  "nbformat_minor": 5}))
    write_kernel(folder, "kops-notebook", "", code_file="nb.ipynb", kernel_type="notebook")
    api.kernels_push(str(folder))
    assert wait_kernel(api, f"{USER}/kops-notebook/1").status.name == "COMPLETE"
    api.kernels_output(f"{USER}/kops-notebook/1", str(tmp_path / "out"), quiet=True)
    assert (tmp_path / "out" / "answer.txt").read_text() == "42"


# ---- competitions ------------------------------------------------------------------------------


def test_code_submission_is_scored_and_listed(api: Any, emulator: Emulator, tmp_path: Path) -> None:
    folder = write_kernel(tmp_path / "k", "kops-kernel-sub", KERNEL_SCRIPT)
    version = api.kernels_push(str(folder)).version_number
    assert wait_kernel(api, f"{USER}/kops-kernel-sub/{version}").status.name == "COMPLETE"

    result = api.competition_submit_code("submission.csv", "code v1", COMP, kernel=f"{USER}/kops-kernel-sub",
                                         kernel_version=version, quiet=True)
    assert result.ref > 0
    first = api.get_submission(result.ref)
    assert first.status.name == "PENDING" and not first.public_score
    done = api.get_submission(result.ref)
    assert done.status.name == "COMPLETE"
    rows = [{"id": str(i), "label": h} for i, h in enumerate(HINTS)]
    assert (done.public_score, done.private_score) == emulator.expected_scores(COMP, rows) == ("0.66667", "1.00000")

    listed = api.competition_submissions(COMP)
    assert [s.ref for s in listed] == [result.ref] and listed[0].description == "code v1"


def test_code_submission_rules(api: Any, tmp_path: Path) -> None:
    folder = write_kernel(tmp_path / "k", "kops-kernel-net", KERNEL_SCRIPT, enable_internet=True)
    api.kernels_push(str(folder))
    assert wait_kernel(api, f"{USER}/kops-kernel-net/1").status.name == "COMPLETE"
    with pytest.raises(requests.HTTPError) as err:
        api.competition_submit_code("submission.csv", "m", COMP, kernel=f"{USER}/kops-kernel-net", kernel_version=1)
    assert err.value.response.status_code == 400 and "internet" in str(err.value)
    with pytest.raises(requests.HTTPError) as err:
        api.competition_submit_code("preds.csv", "m", COMP, kernel=f"{USER}/kops-kernel-net", kernel_version=1)
    assert err.value.response.status_code == 400


def test_bad_file_submission_errors_and_daily_limit(api: Any, emulator: Emulator, tmp_path: Path) -> None:
    emulator.config.daily_submission_limit = 2
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n0,a\n0,b\n")
    ref = api.competition_submit(str(bad), "dupes", COMP, quiet=True).ref
    assert api.get_submission(ref).status.name == "PENDING"
    failed = api.get_submission(ref)
    assert failed.status.name == "ERROR" and "duplicate id" in failed.error_description

    good = tmp_path / "submission.csv"
    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "label"], *[[r["id"], r["label"]] for r in SOLUTION]])
    good.write_text(buf.getvalue())
    api.competition_submit(str(good), "perfect", COMP, quiet=True)
    assert api.competition_get_submission_limits(COMP).num_allowed_now == 0
    with pytest.raises(requests.HTTPError) as err:
        api.competition_submit(str(good), "one too many", COMP, quiet=True)
    assert err.value.response.status_code == 429 and err.value.response.headers.get("Retry-After")
    subs = api.competition_submissions(COMP, page_size=1)
    assert len(subs) == 1 and subs[0].description == "perfect"


# ---- raw HTTP: proxy-style targets and the resumable upload subset -------------------------------


def _auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()}


def test_absolute_form_target_and_competition_files(emulator: Emulator, tmp_path: Path) -> None:
    host, port = emulator.url.rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    body = json.dumps({"competitionName": COMP})
    conn.request("POST", "http://localhost/api/v1/competitions.CompetitionApiService/ListDataFiles", body,
                 {"Content-Type": "application/json", **_auth()})
    resp = conn.getresponse()
    files = json.loads(resp.read())["files"]
    assert resp.status == 200 and [f["name"] for f in files] == ["test.csv"]
    got = requests.get(files[0]["url"], timeout=5)
    assert got.text.startswith("id,hint") and "GMT" in got.headers["Last-Modified"]


def test_resumable_upload_protocol(emulator: Emulator) -> None:
    start = requests.post(f"{emulator.url}/api/v1/blobs.BlobApiService/StartBlobUpload", headers=_auth(),
                          json={"type": "DATASET", "name": "f.bin", "contentLength": 200}, timeout=5).json()
    url, data = start["createUrl"], bytes(range(200))
    part = requests.put(url, data=data[:120], headers={"Content-Range": "bytes 0-119/200"}, timeout=5)
    assert part.status_code == 308 and part.headers["Range"] == "bytes=0-119"
    query = requests.put(url, headers={"Content-Range": "bytes */200", "Content-Length": "0"}, timeout=5)
    assert query.status_code == 308 and query.headers["Range"] == "bytes=0-119"
    rest = requests.put(url, data=data[120:], headers={"Content-Range": "bytes 120-199/200"}, timeout=5)
    assert rest.status_code == 200
    assert (emulator.root / "blobs" / start["token"]).read_bytes() == data
    gone = requests.put(f"{emulator.url}/upload/no-such-token", data=b"x", timeout=5)
    assert gone.status_code == 404


def test_state_endpoint(emulator: Emulator) -> None:
    state = requests.get(f"{emulator.url}/state", timeout=5).json()
    assert state["competitions"] == [COMP] and state == emulator.state_summary()


# ---- fault injection, persistence and the command line ------------------------------------------------


def test_fault_after_effect_and_pure_delay(api: Any, emulator: Emulator, tmp_path: Path) -> None:
    emulator.inject_fault("CreateDataset", 503, after=True)
    folder = write_dataset(tmp_path / "ds", "kops-ds-after", {"x.csv": b"x\n1\n"})
    with pytest.raises(requests.HTTPError) as err:
        api.dataset_create_new(str(folder), quiet=True)
    assert err.value.response.status_code == 503
    assert f"{USER}/kops-ds-after" in emulator.state_summary()["datasets"]  # it took effect anyway
    emulator.inject_fault("GetDatasetStatus", 200, delay_s=0.3)
    started = time.monotonic()
    assert api.dataset_status(f"{USER}/kops-ds-after") == "ready"
    assert time.monotonic() - started >= 0.3


def test_fault_spec_parsing() -> None:
    from kaggleops.emulator.faults import parse_fault_spec

    spec = "datasets.DatasetApiService/CreateDatasetVersion=503,429"
    assert parse_fault_spec(spec) == [("datasets.DatasetApiService/CreateDatasetVersion", 503),
                                      ("datasets.DatasetApiService/CreateDatasetVersion", 429)]
    assert parse_fault_spec("Upload=drop") == [("Upload", 0)]
    for bad in ("CreateDataset", "CreateDataset=200", "=503", "CreateDataset=abc"):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)


def test_state_survives_a_restart_in_the_named_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "week"
    with Emulator(root, username=USER, key=KEY, persist=True) as first:
        api = make_api(first, monkeypatch)
        folder = write_dataset(tmp_path / "ds", "kops-ds-kept", {"w.bin": b"\x01" * 5000})
        assert api.dataset_create_new(str(folder), quiet=True).status == "ok"
        assert api.dataset_create_version(str(folder), "v2", quiet=True).status == "ok"
    with Emulator(root, username=USER, key=KEY, persist=True) as second:
        api = make_api(second, monkeypatch)
        assert json.loads(api.dataset_status(f"{USER}/kops-ds-kept", format="json"))["current_version_number"] == 2
        api.dataset_download_file(f"{USER}/kops-ds-kept", "w.bin", path=str(tmp_path / "dl"), quiet=True)
        assert (tmp_path / "dl" / "w.bin").read_bytes() == b"\x01" * 5000
        assert api.dataset_create_version(str(folder), "v3", quiet=True).status == "ok"
        assert [v["number"] for v in second.state_summary()["datasets"][f"{USER}/kops-ds-kept"]["versions"]] == \
            [1, 2, 3]


def test_cli_emulator_start_with_faults_and_state_folder(tmp_path: Path) -> None:
    import signal
    import subprocess

    root = tmp_path / "emu-state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaggleops", "emulator", "start", "--root", str(root), "--json",
         "--fault", "competitions.CompetitionApiService/ListSubmissions=503,429"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["url"].startswith("http://127.0.0.1:") and info["root"] == str(root.resolve())
        assert info["faults"] == ["competitions.CompetitionApiService/ListSubmissions=503",
                                  "competitions.CompetitionApiService/ListSubmissions=429"]
        url = f"{info['url']}/api/v1/competitions.CompetitionApiService/ListSubmissions"
        body = {"competitionName": "tweet-sentiment-extraction"}
        got = [requests.post(url, json=body, headers=_auth(), timeout=10).status_code for _ in range(3)]
        assert got == [503, 429, 200]
    finally:  # Ctrl-C, landing on the server's thread rather than the main one, stops it at once
        interrupt_a_helper_thread(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 130, proc.stderr.read() if proc.stderr else ""
    assert (root / "requests.log").is_file() and (root / "state.pickle").is_file()
    bad = kops("emulator", "start", "--fault", "Upload=200")
    assert bad.returncode == 2  # a usage mistake, refused while parsing
    assert bad.stderr == ("kops emulator start: error: Invalid value for '--fault': Fault status '200' in 'Upload=200' "
                          "must be an HTTP error status (400-599) or drop.\n"
                          "Try 'kops emulator start --help' for help.\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
