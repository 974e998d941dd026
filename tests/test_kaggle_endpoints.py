"""The Kaggle adapter's endpoint is per instance: two clients in one process, aimed at two endpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.config import load_config
from kaggleops.emulator import Emulator
from kaggleops.errors import KaggleError
from kaggleops.refs import CompetitionRef

from harness import accuracy

USER, KEY = "twouser", "twokey"


def start(start_emulator: Callable[..., Emulator], tmp_path: Path, name: str) -> Emulator:
    """An emulator in ``tmp_path / name`` serving competition ``comp-<name>``; the environment is NOT aimed at it."""
    emu = start_emulator(name, aim=False, username=USER, key=KEY, score_delay_polls=0)
    test_csv = tmp_path / f"{name}.csv"
    test_csv.write_text("id\n0\n")
    emu.add_competition(f"comp-{name}", {"test.csv": test_csv}, [{"id": "0", "label": "a"}], "id", "label", accuracy)
    return emu


@pytest.fixture
def two(start_emulator: Callable[..., Emulator], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> tuple[Emulator, Emulator]:
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return start(start_emulator, tmp_path, "a"), start(start_emulator, tmp_path, "b")


def rpc_count(emu: Emulator) -> int:
    log = emu.root / "requests.log"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def test_two_clients_in_one_process_reach_their_own_endpoints(two: tuple[Emulator, Emulator]) -> None:
    import kagglesdk.kaggle_env as kaggle_env

    a, b = two
    table = dict(kaggle_env._env_to_endpoint)
    ka, kb = Kaggle(a.url, max_attempts=1), Kaggle(b.url, max_attempts=1)
    assert ka.submission_limits(CompetitionRef("comp-a"))["num_allowed_now"] > 0
    assert kb.submission_limits(CompetitionRef("comp-b"))["num_allowed_now"] > 0
    before_b = rpc_count(b)
    assert ka.list_submissions(CompetitionRef("comp-a")) == []  # a, built first, still talks to a
    assert rpc_count(b) == before_b
    with pytest.raises(KaggleError):
        kb.list_submissions(CompetitionRef("comp-a"))  # b does not know a's competition
    assert dict(kaggle_env._env_to_endpoint) == table  # the SDK's module-wide table was never written


def test_one_constructor_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kops.yaml").write_text("competition: comp-a\nowner: twouser\nkaggle_endpoint: http://127.0.0.1:9\n")
    cfg = load_config(tmp_path / "kops.yaml")
    assert Kaggle.from_config(cfg).endpoint == "http://127.0.0.1:9"
    monkeypatch.setenv("KOPS_KAGGLE_ENDPOINT", "http://127.0.0.1:8/")
    assert Kaggle.from_config(cfg).endpoint == "http://127.0.0.1:8"
