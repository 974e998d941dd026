"""The emulator's kernel sessions are as strict as Kaggle's: read-only inputs in the current (or legacy) layout,
cwd = working, a fresh TMPDIR per session, no network with internet off, outputs only from working and capped;
competition rules must be accepted before submitting. Run with the REAL kaggle client through the kops adapter."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.emulator import Emulator
from kaggleops.emulator.runner import namespaces_available
from kaggleops.errors import RulesNotAccepted
from kaggleops.refs import CompetitionRef, KernelRef

from harness import USER

COMP = "tiny-comp"
PROBE = """
import errno, json, os, socket, tempfile
inp = os.environ["KOPS_KAGGLE_INPUT"]
report = {"cwd": os.getcwd(), "input": inp, "working": os.environ["KOPS_KAGGLE_WORKING"],
          "tmp": tempfile.gettempdir(), "listing": sorted(os.listdir(inp))}
target = os.path.join(inp, "competitions", "tiny-comp", "test.csv")
report["test_rows"] = len(open(target).read().splitlines())
try:
    open(target, "a").write("x")
    report["input_write"] = "allowed"
except OSError as e:
    report["input_write"] = errno.errorcode[e.errno]
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("10.255.255.1", 80))
    report["network"] = "connected"
except OSError as e:
    report["network"] = "blocked" if e.errno in (errno.ENETUNREACH, 101) else f"other {e}"
open("report.json", "w").write(json.dumps(report))
"""


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator], tmp_path: Path) -> Callable[..., Emulator]:
    """``emulator(**options)``: a running emulator (Emulator options as keywords) with the tiny competition."""
    def start(**kw: Any) -> Emulator:
        emu = start_emulator(kernel_timeout_s=60, **kw)
        test_csv = tmp_path / "test.csv"
        test_csv.write_text("id,hint\n0,a\n1,b\n")
        emu.add_competition(COMP, {"test.csv": test_csv}, [{"id": "0", "label": "a"}, {"id": "1", "label": "b"}],
                            "id", "label", lambda t, p: 1.0)
        return emu

    return start


def run_kernel(emu: Emulator, tmp_path: Path, slug: str, script: str, **meta: Any) -> tuple[str, Path]:
    folder = tmp_path / slug
    folder.mkdir()
    (folder / "main.py").write_text(script)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{USER}/{slug}", "title": slug, "code_file": "main.py", "language": "python", "kernel_type": "script",
        "is_private": True, "enable_gpu": False, "enable_internet": False, "competition_sources": [COMP], **meta}))
    kaggle = Kaggle(emu.url)
    version = kaggle.push_kernel(folder)
    status, _ = kaggle.kernel_status(KernelRef(USER, slug, version))
    while status in ("QUEUED", "RUNNING"):
        import time

        time.sleep(0.2)
        status, _ = kaggle.kernel_status(KernelRef(USER, slug, version))
    return status, emu.root / "kernels" / USER / slug / str(version)


needs_namespaces = pytest.mark.skipif(not namespaces_available(), reason="unshare -rmn is not permitted here")


@needs_namespaces
def test_session_under_a_kaggle_root(tmp_path: Path, emulator: Callable[..., Emulator]) -> None:
    """Where /kaggle exists (a stand-in folder here): inputs at <root>/input read-only, cwd <root>/working."""
    root = tmp_path / "kaggle"
    root.mkdir()
    with emulator(kaggle_root=root) as emu:
        status, run = run_kernel(emu, tmp_path, "probe-root", PROBE)
        assert status == "COMPLETE", emu.state_summary()
        report = json.loads((run / "working" / "report.json").read_text())
        assert report["cwd"] == str(root / "working") and report["input"] == str(root / "input")
        assert report["listing"] == ["competitions"] and report["test_rows"] == 3
        assert report["input_write"] == "EROFS" and report["network"] == "blocked"
        assert report["tmp"] == str(run / "tmp")
        assert not any(root.iterdir())  # the tmpfs lived in the session's namespace only
        assert emu.state_summary()["kernels"][f"{USER}/probe-root"]["versions"][0]["isolation"] == (
            f"namespace (kaggle root {root})")


@needs_namespaces
def test_session_mapped_by_environment_when_there_is_no_kaggle_root(tmp_path: Path,
                                                                     emulator: Callable[..., Emulator]) -> None:
    with emulator(kaggle_root=tmp_path / "no-such-folder") as emu:
        first, run1 = run_kernel(emu, tmp_path, "probe-env", PROBE)
        second, run2 = run_kernel(emu, tmp_path, "probe-env2", PROBE)
        assert (first, second) == ("COMPLETE", "COMPLETE")
        r1, r2 = (json.loads((r / "working" / "report.json").read_text()) for r in (run1, run2))
        assert r1["cwd"] == str(run1 / "working") and r1["input"] == str(run1 / "input")
        assert r1["input_write"] == "EROFS" and r1["network"] == "blocked"
        assert r1["tmp"] != r2["tmp"]  # a fresh temporary folder per session
        assert (run1 / "input" / "competitions" / COMP / "test.csv").read_text() == "id,hint\n0,a\n1,b\n"


def test_session_with_the_socket_guard(tmp_path: Path, emulator: Callable[..., Emulator]) -> None:
    """Without namespaces: the socket guard blocks the network, and the inputs lose their write bits."""
    with emulator(isolation="guard") as emu:
        status, run = run_kernel(emu, tmp_path, "probe-guard", PROBE)
        assert status == "COMPLETE", emu.state_summary()
        report = json.loads((run / "working" / "report.json").read_text())
        assert report["network"] == "blocked" and report["cwd"] == str(run / "working")
        target = run / "input" / "competitions" / COMP / "test.csv"
        assert target.stat().st_mode & 0o222 == 0
        # root ignores permission bits: only a namespace's read-only mount stops root from writing
        assert report["input_write"] == ("allowed" if __import__("os").geteuid() == 0 else "EACCES")


def test_legacy_input_layout(tmp_path: Path, emulator: Callable[..., Emulator]) -> None:
    script = ("import json, os\nopen('listing.json', 'w').write(json.dumps(sorted(os.listdir("
              "os.environ['KOPS_KAGGLE_INPUT']))))\n")
    with emulator(input_layout="legacy") as emu:
        status, run = run_kernel(emu, tmp_path, "probe-legacy", script)
        assert status == "COMPLETE"
        assert json.loads((run / "working" / "listing.json").read_text()) == [COMP]


def test_output_is_limited(tmp_path: Path, emulator: Callable[..., Emulator]) -> None:
    with emulator(max_output_bytes=1000) as emu:
        status, _ = run_kernel(emu, tmp_path, "big-output", "open('big.bin', 'wb').write(b'0' * 2000)\n")
        assert status == "ERROR"
        _, failure = Kaggle(emu.url).kernel_status(KernelRef(USER, "big-output", 1))
        assert "over the 1000 allowed" in failure


def test_submitting_needs_the_rules_accepted(tmp_path: Path, emulator: Callable[..., Emulator]) -> None:
    with emulator() as emu:
        emu.store.competition(COMP).rules_accepted.clear()
        sub = tmp_path / "submission.csv"
        sub.write_text("id,label\n0,a\n1,b\n")
        with pytest.raises(RulesNotAccepted, match=f"Accept the rules at .*/competitions/{COMP}/rules"):
            Kaggle(emu.url).submit_file(CompetitionRef(COMP), sub, "kops:abc test")
        emu.accept_rules(COMP)
        assert Kaggle(emu.url).submit_file(CompetitionRef(COMP), sub, "kops:abc test") > 0
