"""`kops leaderboard --plot / --pick`: CV against LB with the line of equal ranks and the public noise band.

The store is built directly (no training, no kernel): the example regression project (RMSE, lower is better, 100
test rows of which the emulator's half is public), three single-model submissions whose source runs log OOF
predictions (the truth plus noise of a chosen size) and one blend (a ``kops.kind=ensemble`` run with its in-sample
and nested CV). With RMSE ≈ 40 on 50 public rows the public score's noise is about ±8:

====  =========  ==========  ======  ========================================
sub   CV (rmse)  public      gain    marked
====  =========  ==========  ======  ========================================
1  A  ~40        45          best CV
2  B  ~50        42          +3      within noise
3  C  ~60        30          +15     outside: a public gain chance hardly explains
4  E  41.5 (nested; 38 in-sample)  43.5  +1.5   within noise; the best nested-CV blend
====  =========  ==========  ======  ========================================
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config
from kaggleops.schema import (
    TAG_COMPETITION,
    TAG_KIND,
    TAG_METRIC,
    TAG_METRIC_HIGHER,
    TAG_SOURCE_RUNS,
    TAG_SUBMISSION_REF,
    TAG_SUBMISSION_STATUS,
    Kind,
)
from kaggleops.stages.leaderboard_noise import PublicNoise, within_noise
from kaggleops.stages.leaderboard_pick import board_view, pick

from harness import REPO, kops

EXAMPLE = REPO / "examples" / "diabetes-regression"
METRIC_TAGS = {TAG_METRIC: "rmse", TAG_METRIC_HIGHER: "false"}
# name: (OOF noise sd, public, private); E is the blend: (in-sample cv, nested cv, public, private)
SINGLES = {"A": (40.0, 45.0, 44.0), "B": (50.0, 42.0, 51.0), "C": (60.0, 30.0, 58.0)}
BLEND = (38.0, 41.5, 43.5, 42.0)


def _source(tracker: Tracker, name: str, truth: pd.DataFrame, sd: float, tmp: Path) -> str:
    oof = truth[["id"]].assign(progression=truth["progression"] + np.random.default_rng(len(name) + int(sd))
                               .normal(0, sd, len(truth)))
    run_id = tracker.start_run(f"fold-{name}", {}, {TAG_KIND: Kind.FOLD, **METRIC_TAGS})
    rmse = float(np.sqrt(((oof["progression"] - truth["progression"]) ** 2).mean()))
    tracker.log_metrics(run_id, {"best_val_rmse": rmse})
    (tmp / name).mkdir()
    oof.to_csv(tmp / name / "oof.csv", index=False)
    tracker.log_artifact(run_id, tmp / name / "oof.csv", "oof")
    tracker.end_run(run_id)
    return run_id


def _submission(tracker: Tracker, ref: int, sources: list[str], public: float, private: float) -> str:
    run_id = tracker.record_run(f"submission-{ref}", {
        TAG_KIND: Kind.SUBMISSION, TAG_COMPETITION: "diabetes-progression", TAG_SOURCE_RUNS: ",".join(sources),
        TAG_SUBMISSION_REF: str(ref), TAG_SUBMISSION_STATUS: "COMPLETE"})
    tracker.log_metrics(run_id, {"lb_public": public, "lb_private": private})
    return run_id


@pytest.fixture
def board(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The example project with submissions A, B, C (single models) and E (a blend of A and B); their run ids."""
    work = tmp_path / "proj"
    shutil.copytree(EXAMPLE, work)
    tracker = Tracker(load_config(work / "kops.yaml"))
    truth = pd.read_csv(work / "competition" / "train.csv")
    (tmp_path / "oof").mkdir()
    sources = {n: _source(tracker, n, truth, sd, tmp_path / "oof") for n, (sd, _, _) in SINGLES.items()}
    subs = {n: _submission(tracker, i, [sources[n]], pub, priv)
            for i, (n, (_, pub, priv)) in enumerate(SINGLES.items(), 1)}
    blend = tracker.start_run("blend", {}, {TAG_KIND: Kind.ENSEMBLE, **METRIC_TAGS})
    tracker.log_metrics(blend, {"cv_rmse": BLEND[0], "nested_cv_rmse": BLEND[1]})
    tracker.end_run(blend)
    # as push-kernel --run ENSEMBLE_RUN records it: the members' fold runs, then the ensemble run
    subs["E"] = _submission(tracker, 4, [sources["A"], sources["B"], blend], BLEND[2], BLEND[3])
    return work, subs


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_png_and_html_with_the_noise_marks_and_two_picks(board: tuple[Path, dict[str, str]]) -> None:
    work, subs = board
    out = kops("leaderboard", "--plot", "cv_vs_lb.png", "--pick", "2", "--json", cwd=work)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert png_size(work / "cv_vs_lb.png") == (880, 660) and (work / "cv_vs_lb.png").stat().st_size > 20_000
    noise = result["noise"]
    assert (noise["public_rows"], noise["public_fraction"], noise["fraction_assumed"]) == (50, 0.5, True)
    assert 4 < noise["half_width"] < 12 and noise["run_id"] == subs["A"]  # ≈ 1.96 × 0.1 × 40: see the docstring
    assert result["best_cv"] == subs["A"]
    assert set(result["within_noise"]) == {subs["B"], subs["E"]}
    assert [p["submission_run_id"] for p in result["picks"]] == [subs["A"], subs["E"]]
    assert result["picks"][0]["why"].startswith("best CV (cv rmse ")
    assert result["picks"][1]["why"].startswith("best nested-CV blend (rmse 41.50000)")

    page = kops("leaderboard", "--plot", str(work / "view.html"), "--public-rows", "400", cwd=work)
    assert page.returncode == 0, page.stderr
    assert page.stdout.startswith(f"Wrote {work / 'view.html'}: 4 submissions, ")
    html = (work / "view.html").read_text()
    assert "<script" not in html and not re.search(r"(src|href)=[\"']?https?:", html)  # opens offline
    tooltips = [t for t in re.findall(r"<title>(.*?)</title>", html) if t.startswith("submission ")]
    assert sorted(t.split(" (")[0] for t in tooltips) == sorted(f"submission {i}" for i in range(1, 5) for _ in "abc")
    assert sum(f'<g id="kops-point-{i}">' in html for i in range(5)) == 4  # one point per submission (+ private, link)
    # 400 public rows: the band narrows below B's gain of 3; E's 1.5 stays inside it
    assert {t.split(" (")[0] for t in tooltips if "within noise" in t} == {"submission 4"}
    assert next(t for t in tooltips if t.startswith("submission 4")).startswith(
        f"submission 4 (run {subs['E'][:8]}, blend): nested cv 41.50000, public 43.50000, private 42.00000; blend ")


def test_the_picture_is_logged_on_one_leaderboard_run(board: tuple[Path, dict[str, str]]) -> None:
    work, _ = board
    for name in ("a.png", "cv_vs_lb.html"):
        assert kops("leaderboard", "--plot", name, cwd=work).returncode == 0
    tracker = Tracker(load_config(work / "kops.yaml"))
    [run] = tracker.search(f"tags.`{TAG_KIND}` = '{Kind.LEADERBOARD}'")
    assert sorted(tracker.list_artifacts(run.id, "leaderboard")) == [
        "leaderboard/cv_vs_lb.html", "leaderboard/cv_vs_lb.png", "leaderboard/points.json"]


def test_picks_without_a_blend_take_a_public_gain_beyond_noise_else_other_models(
        board: tuple[Path, dict[str, str]]) -> None:
    work, subs = board
    view = board_view(load_config(work / "kops.yaml"))
    view.points = [p for p in view.points if not p.blend]
    first, second = pick(view, 2)
    assert (first.point.row.submission_run_id, second.point.row.submission_run_id) == (subs["A"], subs["C"])
    assert "beyond the ±" in second.why
    view.points = [p for p in view.points if p.row.submission_run_id != subs["C"]]
    assert [p.point.row.submission_run_id for p in pick(view, 2)] == [subs["A"], subs["B"]]
    assert pick(view, 2)[1].why.endswith("on other models: a hedge (its public score is within noise of the best CV's)")


def test_within_noise_is_inclusive_of_the_band_edge_only() -> None:
    from types import SimpleNamespace as S

    best = S(submission_run_id="best", lb_public=0.80)
    rows = [best, S(submission_run_id="edge", lb_public=0.8125), S(submission_run_id="out", lb_public=0.8126),
            S(submission_run_id="worse", lb_public=0.79), S(submission_run_id="unscored", lb_public=None)]
    noise = PublicNoise(1000, 0.5, False, half_width=0.0125)
    assert within_noise(rows, best, noise) == {"edge", "worse"}  # type: ignore[arg-type]
    assert within_noise(rows, best, PublicNoise(None, None, True, reason="no data")) == set()  # type: ignore


def test_bad_input_is_one_line(tmp_path: Path, board: tuple[Path, dict[str, str]]) -> None:
    work, _ = board
    out = kops("leaderboard", "--plot", "cv_vs_lb.svg", cwd=work)
    assert out.returncode == 2 and "'--plot': cv_vs_lb.svg is neither .png nor .html." in out.stderr
    out = kops("leaderboard", "--plot", "x.png", "--public-fraction", "1.5", cwd=work)
    assert (out.returncode, out.stderr.count("\n")) == (1, 1) and "--public-fraction 1.5 is not in (0, 1]" in out.stderr
    empty = tmp_path / "empty"
    shutil.copytree(EXAMPLE, empty)
    out = kops("leaderboard", "--plot", "x.png", cwd=empty)
    assert (out.returncode, out.stderr) == (1, "kops: error: No scored submission to plot: the plot needs a public "
                                            "score and a CV. Pull the scores with: kops scores --wait\n")
    assert not (empty / "x.png").exists()
    out = kops("leaderboard", "--pick", "2", cwd=empty)
    assert (out.returncode, out.stdout) == (0, "No scored submission to pick from. Pull the scores with: kops scores "
                                               "--wait\n")


def test_without_local_train_rows_the_picture_says_why_it_has_no_band(board: tuple[Path, dict[str, str]]) -> None:
    work, subs = board
    (work / "kops.yaml").write_text((work / "kops.yaml").read_text().replace("data_dir: competition", "data_dir: null"))
    out = kops("leaderboard", "--plot", "x.png", "--pick", "2", "--json", cwd=work)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["noise"]["half_width"] is None and "kops data" in result["noise"]["reason"]
    assert result["within_noise"] == [] and png_size(work / "x.png") == (880, 660)
    assert [p["submission_run_id"] for p in result["picks"]] == [subs["A"], subs["E"]]  # no band: no public-gain pick
