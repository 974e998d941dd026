"""The emulator's metric registry against scikit-learn (dev-only) and hand-computed values; competition seeds
(competition.json) chosen by name, file vs code competitions, and seeds kept across a persistent restart."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggleops.emulator import ApiError, Emulator, SeedError, SubmissionInvalid
from kaggleops.emulator.metrics import METRICS, get_metric
from kaggleops.emulator.scoring import score_bytes
from kaggleops.resources import bundled_competition

sklearn_metrics = pytest.importorskip("sklearn.metrics")

RNG = random.Random(7)
N = 60


def strs(values: list) -> list[str]:
    return [repr(float(v)) if isinstance(v, float) else str(v) for v in values]


def test_registry_names_and_directions() -> None:
    assert {"accuracy", "rmse", "log_loss", "roc_auc", "macro_f1", "jaccard"} <= set(METRICS)
    assert [n for n, m in sorted(METRICS.items()) if not m.higher_is_better] == ["log_loss", "mae", "rmse"]
    with pytest.raises(ValueError, match="Unknown metric 'f2'; known: accuracy, jaccard"):
        get_metric("f2")


def test_accuracy_matches_sklearn() -> None:
    truth = [RNG.randrange(10) for _ in range(N)]
    pred = [t if RNG.random() < 0.7 else RNG.randrange(10) for t in truth]
    expected = sklearn_metrics.accuracy_score(truth, pred)
    assert get_metric("accuracy").fn(strs(truth), strs(pred)) == pytest.approx(expected, abs=1e-12)
    assert get_metric("accuracy").fn(["3", "4"], [" 3", "5"]) == 0.5  # by hand


def test_rmse_and_mae_match_sklearn() -> None:
    truth = [RNG.uniform(-50, 300) for _ in range(N)]
    pred = [t + RNG.gauss(0, 20) for t in truth]
    rmse = math.sqrt(sklearn_metrics.mean_squared_error(truth, pred))
    assert get_metric("rmse").fn(strs(truth), strs(pred)) == pytest.approx(rmse, rel=1e-12)
    assert get_metric("mae").fn(strs(truth), strs(pred)) == pytest.approx(
        sklearn_metrics.mean_absolute_error(truth, pred), rel=1e-12)
    assert get_metric("rmse").fn(["1", "3"], ["2", "5"]) == pytest.approx(math.sqrt((1 + 4) / 2))  # by hand


def test_binary_log_loss_matches_sklearn() -> None:
    truth = [RNG.randrange(2) for _ in range(N)]
    pred = [min(0.99, max(0.01, 0.6 * t + 0.4 * RNG.random())) for t in truth]
    expected = sklearn_metrics.log_loss(truth, pred, labels=[0, 1])
    assert get_metric("log_loss").fn(strs(truth), strs(pred)) == pytest.approx(expected, rel=1e-9)
    # by hand: -(log 0.8 + log(1 - 0.4)) / 2
    assert get_metric("log_loss").fn(["1", "0"], ["0.8", "0.4"]) == pytest.approx(
        -(math.log(0.8) + math.log(0.6)) / 2)


def test_multiclass_log_loss_one_hot_columns_matches_sklearn() -> None:
    labels = [RNG.randrange(3) for _ in range(N)]
    probs = []
    for y in labels:
        raw = [RNG.random() + (1.5 if k == y else 0.0) for k in range(3)]
        probs.append([v / sum(raw) for v in raw])
    expected = sklearn_metrics.log_loss(labels, probs, labels=[0, 1, 2])
    truths = [tuple("1" if k == y else "0" for k in range(3)) for y in labels]
    preds = [tuple(repr(p) for p in row) for row in probs]
    assert get_metric("log_loss").fn(truths, preds) == pytest.approx(expected, rel=1e-9)


def test_roc_auc_matches_sklearn_with_ties_and_columns() -> None:
    truth = [RNG.randrange(2) for _ in range(N)]
    pred = [round(0.3 * t + RNG.random(), 1) for t in truth]  # rounding makes ties
    expected = sklearn_metrics.roc_auc_score(truth, pred)
    assert get_metric("roc_auc").fn(strs(truth), strs(pred)) == pytest.approx(expected, rel=1e-12)
    other = [1 - t for t in truth]
    two_cols_truth = list(zip(strs(truth), strs(other), strict=True))
    two_cols_pred = list(zip(strs(pred), strs(pred), strict=True))
    mean = (expected + sklearn_metrics.roc_auc_score(other, pred)) / 2
    assert get_metric("roc_auc").fn(two_cols_truth, two_cols_pred) == pytest.approx(mean, rel=1e-12)
    assert get_metric("roc_auc").fn(["0", "0", "1", "1"], ["0.1", "0.4", "0.35", "0.8"]) == 0.75  # by hand


def test_macro_f1_matches_sklearn() -> None:
    truth = [RNG.choice("abcd") for _ in range(N)]
    pred = [t if RNG.random() < 0.6 else RNG.choice("abcde") for t in truth]  # "e" only predicted
    expected = sklearn_metrics.f1_score(truth, pred, average="macro")
    assert get_metric("macro_f1").fn(truth, pred) == pytest.approx(expected, rel=1e-12)


def test_jaccard_word_level_by_hand() -> None:
    fn = get_metric("jaccard").fn
    assert fn(["Sooo SAD", "a b"], ["sooo sad i will miss you", "A  B"]) == pytest.approx((1 / 3 + 1) / 2)
    assert fn([""], [""]) == 1.0 and fn(["x"], [""]) == 0.0


@pytest.mark.parametrize("name,bad,message", [
    ("rmse", "abc", "non-numeric prediction 'abc'"),
    ("rmse", "nan", "non-finite prediction 'nan'"),
    ("log_loss", "1.5", "probability outside [0, 1]"),
])
def test_unreadable_predictions_are_submission_errors(name: str, bad: str, message: str) -> None:
    with pytest.raises(SubmissionInvalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        get_metric(name).fn(["1", "0"], ["0.5", bad])


# ---- seeds ----------------------------------------------------------------------------------------------------


def kaggle_api(emu: Emulator) -> Any:
    """The official client (through kops' adapter) aimed at ``emu``."""
    from kaggleops.adapters.kaggle import Kaggle

    return Kaggle(emu.url).api


def write_regression(folder: Path, kind: str = "file") -> Path:
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("id,x,y\n1,0.5,2.0\n")
    (folder / "test.csv").write_text("id,x\n10,1\n11,2\n12,3\n13,4\n")
    (folder / "sample_submission.csv").write_text("id,y\n10,0\n11,0\n12,0\n13,0\n")
    (folder / "solution.csv").write_text("id,y\n10,1\n11,2\n12,3\n13,4\n")
    (folder / "competition.json").write_text(json.dumps(
        {"metric": "rmse", "id_column": "id", "target_columns": ["y"], "kind": kind}))
    return folder


def test_seed_folder_scores_with_the_named_metric(tmp_path: Path) -> None:
    emu = Emulator(tmp_path / "emu")
    seed = emu.seed_folder(write_regression(tmp_path / "reg"))
    assert (seed.slug, seed.metric, seed.kind) == ("reg", "rmse", "file")
    spec = emu.store.competition("reg").spec
    assert spec.higher_is_better is False
    # public = rows 0, 2 (ids 10, 12): errors 1, 1 -> 1.0; private = ids 11, 13: errors 0, 2 -> sqrt(2)
    assert score_bytes(spec, b"id,y\n10,2\n11,2\n12,4\n13,6\n") == ("1.00000", "1.41421")
    assert emu.competition_rows("reg") == 4
    assert sorted(emu.store.competition("reg").files) == ["sample_submission.csv", "test.csv", "train.csv"]


def test_bundled_competitions_have_seeds(tmp_path: Path) -> None:
    emu = Emulator(tmp_path / "emu")
    digits = emu.seed_folder(bundled_competition("digit-recognizer"))
    tse = emu.seed_folder(bundled_competition("tweet-sentiment-extraction"))
    assert (digits.metric, digits.id_column, digits.target_columns, digits.kind) == (
        "accuracy", "ImageId", ("Label",), "file")
    assert (tse.metric, tse.id_column, tse.target_columns, tse.kind) == (
        "jaccard", "textID", ("selected_text",), "code")


@pytest.mark.parametrize("change,message", [
    ({"metric": "f2"}, "unknown metric 'f2'; known: accuracy"),
    ({"kind": "notebook"}, "kind must be one of file, code, not 'notebook'"),
    ({"target": "y"}, "unknown key(s) target; known:"),
    ({"target_columns": "y"}, "target_columns must be a list of column names"),
    ({"files": ["train.csv", "extra.csv"]}, "names extra.csv, which is not in"),
])
def test_bad_seed_names_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    folder = write_regression(tmp_path / "reg")
    data = json.loads((folder / "competition.json").read_text())
    data.update(change)
    (folder / "competition.json").write_text(json.dumps(data))
    with pytest.raises(SeedError) as err:
        Emulator(tmp_path / "emu").seed_folder(folder)
    assert message in str(err.value) and "competition.json" in str(err.value)


def test_code_competition_refuses_file_uploads(tmp_path: Path, start_emulator: Callable[..., Emulator]) -> None:
    emu = start_emulator(score_delay_polls=0)
    emu.seed_folder(write_regression(tmp_path / "code-reg", kind="code"))
    emu.seed_folder(write_regression(tmp_path / "file-reg", kind="file"))
    good = tmp_path / "sub.csv"
    good.write_text("id,y\n10,1\n11,2\n12,3\n13,4\n")
    api = kaggle_api(emu)
    with pytest.raises(Exception, match="code competition"):
        api.competition_submit(str(good), "file", "code-reg", quiet=True)
    api.competition_submit(str(good), "file", "file-reg", quiet=True)
    subs = api.competition_submissions("file-reg")
    assert [(s.public_score, s.private_score) for s in subs] == [("0.00000", "0.00000")]


def test_lower_is_better_sorts_best_first(tmp_path: Path, start_emulator: Callable[..., Emulator]) -> None:
    emu = start_emulator(score_delay_polls=0)
    emu.seed_folder(write_regression(tmp_path / "reg"))
    api = kaggle_api(emu)
    for i, offset in enumerate((3, 0, 1)):
        sub = tmp_path / f"s{i}.csv"
        sub.write_text("id,y\n" + "".join(f"{k},{k - 9 + offset}\n" for k in (10, 11, 12, 13)))
        api.competition_submit(str(sub), f"offset {offset}", "reg", quiet=True)
    from kagglesdk.competitions.types.competition_enums import SubmissionSortBy

    ranked = api.competition_submissions("reg", sort=SubmissionSortBy.SUBMISSION_SORT_BY_PUBLIC_SCORE)
    assert [s.public_score for s in ranked] == ["0.00000", "1.00000", "3.00000"]


def test_seeds_survive_a_persistent_restart(tmp_path: Path) -> None:
    root = tmp_path / "emu"
    source = write_regression(tmp_path / "reg")
    first = Emulator(root, persist=True)
    first.seed_folder(source)
    first.stop()
    shutil.rmtree(source)  # the restart must not need the original folder
    again = Emulator(root, persist=True)
    assert again.store.competition("reg").spec.higher_is_better is False
    assert again.expected_scores("reg", [{"id": k, "y": k - 9} for k in (10, 11, 12, 13)]) == ("0.00000", "0.00000")
    with pytest.raises(ApiError):
        Emulator(tmp_path / "fresh").store.competition("reg")


def _start_cli(args: list[str]) -> tuple[dict, object]:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "kaggleops", "emulator", "start", "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return json.loads(proc.stdout.readline() or "{}"), proc


def _stop_cli(proc) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def test_cli_emulator_serves_a_bundled_competition_and_keeps_it_on_restart(tmp_path: Path) -> None:
    import requests

    root = tmp_path / "emu-state"
    info, proc = _start_cli(["--root", str(root), "--competition", "digit-recognizer"])
    try:
        assert info["competitions"] == ["digit-recognizer"], info
    finally:
        _stop_cli(proc)
    info, proc = _start_cli(["--root", str(root)])  # no --competition: the kept seed comes back
    try:
        assert info["competitions"] == ["digit-recognizer"], info
        url = f"{info['url']}/api/v1/competitions.CompetitionApiService/ListDataFiles"
        files = requests.post(url, json={"competitionName": "digit-recognizer"}, auth=("testuser", "testkey"),
                              timeout=10).json()["files"]
        assert sorted(f["name"] for f in files) == ["sample_submission.csv", "test.csv", "train.csv"]
    finally:
        _stop_cli(proc)
    info, proc = _start_cli([])  # a throw-away root: the default competition
    try:
        assert info["competitions"] == ["tweet-sentiment-extraction"], info
    finally:
        _stop_cli(proc)
