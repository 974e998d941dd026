"""kaggleops.adapters.kaggle.Kaggle: the real `kaggle` client against the emulator, with injected faults.

Retries (429 with Retry-After, 5xx, dropped connections, timeouts) on every call kops uses; non-idempotent
calls (push kernel, submit) never duplicated when their answer is lost; errors translated once, exact text.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.emulator import Emulator
from kaggleops.errors import CredentialsMissing, DatasetNotFound, QuotaExceeded, RulesNotAccepted, TimedOut
from kaggleops.refs import KAGGLE_WEB, CompetitionRef, DatasetRef, KernelRef

from harness import KEY, USER, accuracy

COMP = CompetitionRef("tiny-comp")
KERNEL = KernelRef(USER, "tiny-kernel")
SCRIPT = "open('submission.csv', 'w').write('id,label\\n0,a\\n1,b\\n')\n"


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator], tmp_path: Path) -> Emulator:
    emu = start_emulator(kernel_timeout_s=30, score_delay_polls=0)
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("id\n0\n1\n")
    emu.add_competition(COMP.slug, {"test.csv": test_csv}, [{"id": "0", "label": "a"}, {"id": "1", "label": "b"}],
                        "id", "label", accuracy)
    return emu


class Sleeps(list):
    """A sleep function that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def kaggle_for(emulator: Emulator, **kwargs: Any) -> Kaggle:
    return Kaggle(emulator.url, **{"sleep": Sleeps(), **kwargs})


def rpc_statuses(emulator: Emulator, method: str) -> list[int]:
    lines = (emulator.root / "requests.log").read_text().splitlines()
    return [e["status"] for e in map(json.loads, lines) if str(e.get("rpc", "")).endswith("/" + method)]


def write_kernel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(SCRIPT)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": KERNEL.ref, "title": "tiny kernel", "code_file": "main.py", "language": "python",
        "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_internet": False,
        "competition_sources": [COMP.slug], "dataset_sources": []}))
    return folder


def pushed_kernel(kaggle: Kaggle, tmp_path: Path) -> KernelRef:
    version = kaggle.push_kernel(write_kernel(tmp_path / "kernel"))
    ref = KernelRef(KERNEL.owner, KERNEL.slug, version)
    assert kaggle.wait_kernel(ref, timeout_s=30, poll_s=0.1) == "COMPLETE"
    return ref


# ---- retries --------------------------------------------------------------------------------------------


def test_429_waits_for_retry_after_and_5xx_backs_off_with_jitter(emulator: Emulator) -> None:
    emulator.inject_fault("GetDatasetStatus", 429)
    for status in (503, 502, 500):
        emulator.inject_fault("GetDatasetStatus", status)
    kaggle = kaggle_for(emulator, backoff_s=1.0, max_attempts=6)
    assert kaggle.dataset_info(DatasetRef(USER, "no-such-set")) is None
    sleeps = kaggle._sleep_fn
    assert sleeps[0] == 1.0  # Retry-After: 1
    for attempt, delay in enumerate(sleeps[1:], start=2):
        base = 2 ** (attempt - 1)
        assert base / 2 <= delay <= base
    assert rpc_statuses(emulator, "GetDatasetStatus") == [429, 503, 502, 500, 404]


@pytest.mark.parametrize("status", [429, 503, 0], ids=["429", "503", "connection-dropped"])
def test_every_call_kops_uses_survives_faults_without_duplicates(emulator: Emulator, tmp_path: Path,
                                                                 status: int) -> None:
    calls = ["GetKernel", "SaveKernel", "GetKernelSessionStatus", "ListKernelSessionOutput",
             "CreateCodeSubmission", "ListSubmissions", "GetSubmission"]
    for rpc in calls:
        emulator.inject_fault(rpc, status)
    kaggle = kaggle_for(emulator, backoff_s=0.01)
    ref = pushed_kernel(kaggle, tmp_path)
    assert "submission.csv" in [p.name for p in kaggle.kernel_output(ref, tmp_path / "out")]
    sub = kaggle.submit_code(COMP, ref, "submission.csv", "kops:abcdef012345 first")
    assert kaggle.get_submission(sub).status == "COMPLETE"
    assert [s.ref for s in kaggle.list_submissions(COMP)] == [sub]
    assert emulator.api.faults.pending() == {}
    state = emulator.state_summary()
    assert len(state["kernels"][KERNEL.ref]["versions"]) == 1 and len(state["submissions"]) == 1


@pytest.mark.parametrize("status", [503, 429, 0], ids=["503", "429", "connection-dropped"])
def test_lost_answers_of_push_and_submit_make_no_duplicates(emulator: Emulator, tmp_path: Path,
                                                            status: int) -> None:
    """The call took effect on Kaggle, its answer was lost: kops finds the result instead of repeating it."""
    kaggle = kaggle_for(emulator, backoff_s=0.01)
    emulator.inject_fault("SaveKernel", status, after=True)
    ref = pushed_kernel(kaggle, tmp_path)
    assert ref.version == 1 and rpc_statuses(emulator, "SaveKernel") == [status]
    emulator.inject_fault("CreateCodeSubmission", status, after=True)
    sub = kaggle.submit_code(COMP, ref, "submission.csv", "kops:0123456789ab lost answer")
    assert rpc_statuses(emulator, "CreateCodeSubmission") == [status]
    subs = emulator.state_summary()["submissions"]
    assert [s["ref"] for s in subs] == [sub]


def test_timeout_on_a_hung_call(emulator: Emulator) -> None:
    emulator.inject_fault("GetDatasetStatus", 200, times=2, delay_s=1.5)
    kaggle = kaggle_for(emulator, timeout_s=0.3, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(TimedOut) as err:
        kaggle.dataset_info(DatasetRef(USER, "slow-set"))
    assert str(err.value) == (f"Status of dataset {USER}/slow-set: no answer from {emulator.url} within 0.3 s. "
                              "Retry later, or raise KOPS_KAGGLE_TIMEOUT.")
    assert time.monotonic() - started < 1.4 * 2


# ---- translated errors, exact text ----------------------------------------------------------------------


def test_dataset_not_found(emulator: Emulator) -> None:
    with pytest.raises(DatasetNotFound) as err:
        kaggle_for(emulator).dataset_files(DatasetRef(USER, "no-such-set"))
    assert str(err.value) == f"Dataset {USER}/no-such-set not found. Create it with: kops publish RUN_ID"
    assert err.value.ref == f"{USER}/no-such-set"


def test_rules_not_accepted(emulator: Emulator, tmp_path: Path) -> None:
    kaggle = kaggle_for(emulator, backoff_s=0.01)
    ref = pushed_kernel(kaggle, tmp_path)
    emulator.inject_fault("CreateCodeSubmission", 403, message="You must accept this competition's rules")
    with pytest.raises(RulesNotAccepted) as err:
        kaggle.submit_code(COMP, ref, "submission.csv", "kops:aaaaaaaaaaaa")
    assert str(err.value) == ("Submit to tiny-comp: Kaggle refused access to competition tiny-comp (403). "
                              f"Accept the rules at {emulator.url}/competitions/tiny-comp/rules and retry.")
    # the rules page of the site the client talks to (the emulator here), not kaggle.com
    assert emulator.state_summary()["submissions"] == []


def test_daily_quota_is_reported_with_reset_time_not_slept_through(emulator: Emulator, tmp_path: Path) -> None:
    kaggle = kaggle_for(emulator, backoff_s=0.01)
    ref = pushed_kernel(kaggle, tmp_path)
    emulator.config.daily_submission_limit = 0
    with pytest.raises(QuotaExceeded) as err:
        kaggle.submit_code(COMP, ref, "submission.csv", "kops:bbbbbbbbbbbb")
    assert re.fullmatch(r"Submit to tiny-comp: Kaggle rate or quota limit reached \(429\); it resets at "
                        r"\d{4}-\d\d-\d\d (00:00|23:59) UTC\. Retry the same command after that\.", str(err.value))
    assert kaggle._sleep_fn == []


def test_missing_credentials(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(CredentialsMissing) as err:
        kaggle_for(emulator).dataset_info(DatasetRef(USER, "any-set"))
    home = tmp_path / "home"
    assert str(err.value) == (
        f"No Kaggle credentials found (looked in KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY, "
        f"{home / '.kaggle' / 'kaggle.json'}, {home / '.kaggle' / 'access_token'}). Set KAGGLE_USERNAME and "
        f"KAGGLE_KEY, or save kaggle.json from {KAGGLE_WEB}/settings there.")


def test_wrong_key(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    with pytest.raises(CredentialsMissing) as err:
        kaggle_for(emulator).list_submissions(COMP)
    assert str(err.value) == ("Submissions of tiny-comp: Kaggle rejected the credentials (401). Check "
                              f"KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json (a new key: {KAGGLE_WEB}/settings).")


# ---- wire faithfulness: every field the emulator answers exists in kagglesdk's response type ------------


def sdk_response_types() -> dict[str, type]:
    """``"service/Method"`` → the kagglesdk response class, read from kagglesdk's own service modules."""
    import importlib
    import pkgutil

    import kagglesdk

    call = re.compile(r'_client\.call\("([\w.]+)", "(\w+)", request, (\w+)\)')
    out: dict[str, type] = {}
    for info in pkgutil.walk_packages(kagglesdk.__path__, "kagglesdk."):
        if ".services." not in info.name:
            continue
        module = importlib.import_module(info.name)
        for service, method, type_name in call.findall(Path(module.__file__).read_text()):
            if type_name != "None" and hasattr(module, type_name):
                out[f"{service}/{method}"] = getattr(module, type_name)
    return out


def unknown_fields(payload: Any, cls: type, where: str) -> list[str]:
    """Keys of ``payload`` that ``cls`` (a KaggleObject) does not declare, recursively."""
    fields = {f.json_name: f for f in getattr(cls, "_fields", [])}
    if not fields or not isinstance(payload, dict):
        return []
    problems = [f"{where}.{k}" for k in payload if k not in fields]
    for key, value in payload.items():
        field = fields.get(key)
        if field is None or not hasattr(field.field_type, "_fields"):
            continue
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            problems += unknown_fields(item, field.field_type, f"{where}.{key}[{i}]")
    return problems


def test_emulator_answers_only_fields_kagglesdk_declares(emulator: Emulator, tmp_path: Path) -> None:
    captured: list[tuple[str, Any]] = []
    for rpc, handler in list(emulator.api.routes.items()):
        def wrapped(ctx: Any, body: Any, _rpc: str = rpc, _h: Any = handler) -> Any:
            result = _h(ctx, body)
            captured.append((_rpc, result))
            return result
        emulator.api.routes[rpc] = wrapped
    kaggle = kaggle_for(emulator, backoff_s=0.01)
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"\x00" * 1000)
    (folder / "dataset-metadata.json").write_text(json.dumps(
        {"id": f"{USER}/wire-check", "title": "Wire check", "licenses": [{"name": "CC0-1.0"}]}))
    ref = DatasetRef(USER, "wire-check")
    kaggle.create_dataset(folder, public=False)
    kaggle.create_dataset_version(folder, "v2")
    assert kaggle.wait_dataset_ready(ref, 2, poll_s=0.05) == 2 and kaggle.dataset_files(ref) == ["w.bin"]
    kernel = pushed_kernel(kaggle, tmp_path)
    kaggle.kernel_output(kernel, tmp_path / "out")
    sub = kaggle.submit_code(COMP, kernel, "submission.csv", "kops:cccccccccccc")
    kaggle.get_submission(sub)
    kaggle.list_submissions(COMP)
    kaggle.api.competition_get_submission_limits(COMP.slug)
    types = sdk_response_types()
    seen = {rpc for rpc, _ in captured}
    assert {"datasets.DatasetApiService/CreateDataset", "datasets.DatasetApiService/GetDataset",
            "kernels.KernelsApiService/SaveKernel", "competitions.CompetitionApiService/ListSubmissions"} <= seen
    problems = [p for rpc, payload in captured if rpc in types
                for p in unknown_fields(payload, types[rpc], rpc.rsplit("/", 1)[-1])]
    assert problems == []
    assert seen - set(types) <= {"datasets.DatasetApiService/DownloadDataset"}, seen - set(types)


def test_credentials_from_kaggle_secrets_add_on_and_no_global_env(emulator: Emulator,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """In a Kaggle notebook the key can live only in the Secrets add-on: the adapter finds it there. Aiming a
    client at an emulator changes nothing process-wide (a later client must still be free to reach kaggle.com)."""
    import os
    import sys
    import types

    from kaggleops.adapters import credentials

    class UserSecretsClient:
        def get_secret(self, name: str) -> str:
            return {"KAGGLE_USERNAME": USER, "KAGGLE_KEY": KEY}[name]

    fake = types.ModuleType("kaggle_secrets")
    fake.UserSecretsClient = UserSecretsClient  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kaggle_secrets", fake)
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    credentials.clear_cache()
    assert kaggle_for(emulator).list_submissions(COMP) == []
    assert "KAGGLE_API_ENVIRONMENT" not in os.environ
    credentials.clear_cache()
