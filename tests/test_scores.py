"""Submissions and scores, end to end against the emulator: the real kaggle client, a real MLflow SQLite store.

The kernel is a tiny script (no model): it copies a hint column into submission.csv and writes a kops plan
naming source runs created directly with the Tracker, so each test costs seconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggleops.adapters.kaggle import Kaggle
from kaggleops.adapters.session import Session
from kaggleops.adapters.tracking import Tracker
from kaggleops.config import load_config
from kaggleops.emulator import Emulator
from kaggleops.errors import QuotaExceeded, UnknownSortKey
from kaggleops.refs import CompetitionRef, KernelRef
from kaggleops.schema import (
    TAG_DATASET,
    TAG_DATASET_VERSION,
    TAG_GIT_COMMIT,
    TAG_SUBMISSION_ERROR,
    TAG_SUBMISSION_KEY,
    TAG_SUBMISSION_ORIGIN,
    TAG_SUBMISSION_REF,
    TAG_SUBMISSION_STATUS,
)
from kaggleops.stages.leaderboard import leaderboard
from kaggleops.stages.scores import identify_kernel, scores
from kaggleops.stages.submit import submit

from harness import USER, accuracy, kops

COMP = "tiny-comp"
KERNEL = f"{USER}/tiny-infer"
SOLUTION = [{"id": str(i), "label": lab} for i, lab in enumerate(["a", "b", "a", "b", "b", "a"])]
HINTS = ["a", "b", "a", "b", "a", "a"]  # public (even rows) 2/3 right, private all right
KERNEL_SCRIPT = """
import csv, json, os
inp = os.environ["KOPS_KAGGLE_INPUT"]
folder = os.path.join(inp, "competitions", "tiny-comp")  # Kaggle's current layout (older: input/tiny-comp)
with open(os.path.join(folder if os.path.isdir(folder) else os.path.join(inp, "tiny-comp"), "test.csv")) as f:
    rows = list(csv.DictReader(f))
with open("submission.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "label"])
    w.writerows([r["id"], r["hint"]] for r in rows)
json.dump(PLAN, open("kops-kernel.json", "w"))
"""


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator], tmp_path: Path) -> Emulator:
    emu = start_emulator(kernel_timeout_s=30, score_delay_polls=1)
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("id,hint\n" + "".join(f"{i},{h}\n" for i, h in enumerate(HINTS)))
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,label\n" + "".join(f"{i},a\n" for i in range(len(HINTS))))
    emu.add_competition(COMP, {"test.csv": test_csv, "sample_submission.csv": sample}, SOLUTION, "id", "label",
                        accuracy)
    return emu


@pytest.fixture
def project_settings() -> dict[str, str]:
    return {"competition": COMP, "experiment": "scores-test", "text": "tracking_uri: sqlite:///mlflow.db\n"}


@pytest.fixture
def cfg(project: Path) -> Any:
    return load_config(project / "kops.yaml")


def source_run(cfg: Any, name: str, cv: float, dataset: str = f"{USER}/ds-a") -> str:
    """A finished 'fold' run with a CV metric, a dataset version and a commit, as training+publish leave it."""
    tracker = Tracker(cfg)
    run_id = tracker.start_run(name, {}, {"kops.kind": "fold", TAG_DATASET: dataset, TAG_DATASET_VERSION: "1",
                                          TAG_GIT_COMMIT: "c0ffee1234567890"})
    tracker.log_metrics(run_id, {"best_val_jaccard": cv})
    tracker.end_run(run_id)
    return run_id


def push_tiny_kernel(tmp_path: Path, run_ids: list[str]) -> int:
    """Push the script kernel (plan naming ``run_ids``), wait until COMPLETE; return its version."""
    plan = {"competition": COMP, "id_column": "id", "target_column": "label",
            "models": [{"run_id": r, "dataset": f"{USER}/ds-a", "dataset_version": 1} for r in run_ids]}
    folder = tmp_path / "kernel"
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text(f"PLAN = {json.dumps(plan)}\n{KERNEL_SCRIPT}")
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": KERNEL, "title": "tiny infer", "code_file": "main.py", "language": "python", "kernel_type": "script",
        "is_private": True, "enable_gpu": False, "enable_internet": False, "competition_sources": [COMP],
        "dataset_sources": []}))
    kaggle = Kaggle(os.environ["KOPS_KAGGLE_ENDPOINT"])
    version = kaggle.push_kernel(folder)
    assert kaggle.wait_kernel(KernelRef.parse(f"{KERNEL}/{version}"), timeout_s=30, poll_s=0.1) == "COMPLETE"
    return version


def expected(emulator: Emulator, labels: list[str]) -> tuple[float, float]:
    public, private = emulator.expected_scores(COMP, [{"id": str(i), "label": v} for i, v in enumerate(labels)])
    return float(public), float(private)


def store_snapshot(cfg: Any) -> tuple[list[Any], ...]:
    """Every metric, tag and run row of the SQLite store: equal snapshots mean nothing was written."""
    db = cfg.resolved_tracking_uri.removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:
        return tuple(sorted(con.execute(f"SELECT * FROM {table}").fetchall())  # noqa: S608
                     for table in ("metrics", "latest_metrics", "tags", "runs"))


def history(cfg: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in Tracker(cfg).client.get_metric_history(run_id, key))


# ---- code submission: scored later, private LB after the deadline, idempotent ------------------------


@pytest.mark.slow  # the emulator runs a kernel
def test_code_submission_scored_later_then_private_lb_and_idempotent(cfg: Any, emulator: Emulator,
                                                                     tmp_path: Path) -> None:
    run_a = source_run(cfg, "fold-0", 0.61)
    version = push_tiny_kernel(tmp_path, [run_a])
    result = submit(Session(cfg), KERNEL, version, "first")
    public, private = expected(emulator, HINTS)
    emulator.set_submission_result(result.submission_ref, f"{public:.5f}", None)  # private hidden until deadline
    tracker = Tracker(cfg)
    sub_run = tracker.get_run(result.submission_run_id)
    assert sub_run.tags[TAG_SUBMISSION_STATUS] == "PENDING"
    assert sub_run.tags[TAG_SUBMISSION_REF] == str(result.submission_ref)
    assert result.remaining_today == 4

    [row] = scores(Session(cfg))  # still PENDING on Kaggle: status written, no scores yet
    assert (row.status, row.lb_public) == ("PENDING", None)
    [row] = scores(Session(cfg))
    assert (row.status, row.lb_public, row.lb_private, row.changed) == ("COMPLETE", public, None, True)
    for run_id in (result.submission_run_id, run_a):
        run = tracker.get_run(run_id)
        assert run.metrics["lb_public"] == public and "lb_private" not in run.metrics
        assert run.tags[TAG_SUBMISSION_STATUS] == "COMPLETE"

    emulator.set_submission_result(result.submission_ref, f"{public:.5f}", f"{private:.5f}")  # after the deadline
    [row] = scores(Session(cfg))
    assert (row.lb_private, row.changed) == (private, True)
    assert tracker.get_run(run_a).metrics["lb_private"] == private

    before = store_snapshot(cfg)
    [row] = scores(Session(cfg))
    assert not row.changed
    assert store_snapshot(cfg) == before, "a second `kops scores` wrote to the store"


# ---- file submission that ERRORs, quota refusal -------------------------------------------------------


def test_error_submission_carries_its_description(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    run_a = source_run(cfg, "fold-0", 0.61)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n0,a\n1,b\n")  # 4 ids missing
    result = submit(Session(cfg), file=bad, runs=[run_a], message="partial file", check=False)  # the server's own ERROR
    assert result.file == str(bad) and result.kernel == ""
    rows = scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    assert [(r.status, r.lb_public) for r in rows] == [("ERROR", None)]
    assert "missing 4 id(s)" in rows[0].error
    tracker = Tracker(cfg)
    for run_id in (result.submission_run_id, run_a):
        tags = tracker.get_run(run_id).tags
        assert tags[TAG_SUBMISSION_STATUS] == "ERROR" and "missing 4 id(s)" in tags[TAG_SUBMISSION_ERROR]
    assert tracker.list_artifacts(result.submission_run_id, "submission") == ["submission/bad.csv"]


def test_no_submissions_left_is_refused_with_reset_time(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    run_a = source_run(cfg, "fold-0", 0.61)
    good = tmp_path / "good.csv"
    good.write_text("id,label\n" + "".join(f"{i},{v['label']}\n" for i, v in enumerate(SOLUTION)))
    submit(Session(cfg), file=good, runs=[run_a])
    emulator.config.daily_submission_limit = 1
    runs_before = len(Tracker(cfg).search())
    with pytest.raises(QuotaExceeded, match=r"No submissions left today for tiny-comp \(1 used\); the limit "
                                            r"resets at \d{4}-\d\d-\d\d 00:00 UTC \(in \d+h\d\dm\)"):
        submit(Session(cfg), file=good, runs=[run_a], again=True)
    assert len(Tracker(cfg).search()) == runs_before, "a refused submit must not leave a submission run"


# ---- two submissions of the same runs ----------------------------------------------------------------


@pytest.mark.slow  # the emulator runs a kernel
def test_two_submissions_of_the_same_runs(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    run_a, run_b = source_run(cfg, "fold-0", 0.60), source_run(cfg, "fold-1", 0.70)
    version = push_tiny_kernel(tmp_path, [run_a, run_b])
    first = submit(Session(cfg), KERNEL, version, "kernel")
    perfect = tmp_path / "perfect.csv"
    perfect.write_text("id,label\n" + "".join(f"{i},{v['label']}\n" for i, v in enumerate(SOLUTION)))
    second = submit(Session(cfg), file=perfect, runs=[run_a, run_b], message="hand-fixed")
    rows = scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    kernel_public, _ = expected(emulator, HINTS)
    assert {r.submission_ref: r.lb_public for r in rows} == {first.submission_ref: kernel_public,
                                                             second.submission_ref: 1.0}
    tracker = Tracker(cfg)
    for run_id in (run_a, run_b):  # history keeps both (step = submission ref); the newest is the latest value
        assert history(cfg, run_id, "lb_public") == [(first.submission_ref, kernel_public),
                                                     (second.submission_ref, 1.0)]
        run = tracker.get_run(run_id)
        assert run.metrics["lb_public"] == 1.0 and run.tags[TAG_SUBMISSION_REF] == str(second.submission_ref)

    board = leaderboard(cfg, sort="lb_public")
    assert [r.submission_ref for r in board] == [second.submission_ref, first.submission_ref]
    top = board[1]
    assert top.cv == pytest.approx(0.65) and top.models == ["fold-0", "fold-1"]
    assert top.kernel == f"{KERNEL}/{version}" and top.datasets == [f"{USER}/ds-a/1", f"{USER}/ds-a/1"]
    assert top.commits == ["c0ffee12"] and board[0].kernel == "perfect.csv"
    assert [r.submission_ref for r in leaderboard(cfg, sort="ref")] == [second.submission_ref, first.submission_ref]
    with pytest.raises(UnknownSortKey, match="Use --sort one of: lb_public, lb_private, cv, date, ref"):
        leaderboard(cfg, sort="jaccard")


# ---- a kill between submit and recording -------------------------------------------------------------

KILLED_SUBMIT = """
import os, sys
from kaggleops.config import load_config
from kaggleops.adapters.session import Session
from kaggleops.stages.submit import TAG_SUBMISSION_REF, submit
from kaggleops.adapters.tracking import Tracker

real = Tracker.set_tags
def set_tags(self, run_id, tags):
    if TAG_SUBMISSION_REF in tags:  # Kaggle has accepted the submission; die before recording its ref
        os._exit(9)
    return real(self, run_id, tags)
Tracker.set_tags = set_tags
submit(Session(load_config(sys.argv[1])), sys.argv[2], int(sys.argv[3]), "killed")
"""


@pytest.mark.slow  # the emulator runs a kernel
def test_kill_between_submit_and_recording_is_completed_by_scores(cfg: Any, emulator: Emulator,
                                                                  tmp_path: Path) -> None:
    run_a = source_run(cfg, "fold-0", 0.61)
    version = push_tiny_kernel(tmp_path, [run_a])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_SUBMIT), str(cfg.root / "kops.yaml"),
                           KERNEL, str(version)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    [orphan] = [r for r in Tracker(cfg).search() if r.tags.get("kops.kind") == "submission"]
    assert orphan.status == "RUNNING" and orphan.tags[TAG_SUBMISSION_STATUS] == "SUBMITTING"
    assert TAG_SUBMISSION_REF not in orphan.tags
    [sub] = Kaggle(os.environ["KOPS_KAGGLE_ENDPOINT"]).list_submissions(CompetitionRef(COMP))
    assert f"kops:{orphan.tags[TAG_SUBMISSION_KEY]}" in sub.description

    [row] = scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    run = Tracker(cfg).get_run(orphan.id)
    assert row.submission_run_id == orphan.id and run.status == "FINISHED"
    assert run.tags[TAG_SUBMISSION_REF] == str(sub.ref) and run.tags[TAG_SUBMISSION_STATUS] == "COMPLETE"
    assert Tracker(cfg).get_run(run_a).metrics["lb_public"] == expected(emulator, HINTS)[0]


# ---- submissions made outside kops --------------------------------------------------------------------


@pytest.mark.slow  # the emulator runs a kernel
def test_outside_submissions_are_reported_then_adopted_with_all(cfg: Any, emulator: Emulator,
                                                                tmp_path: Path) -> None:
    run_a = source_run(cfg, "fold-0", 0.61)
    version = push_tiny_kernel(tmp_path, [run_a])
    kaggle = Kaggle(os.environ["KOPS_KAGGLE_ENDPOINT"])
    by_hand = kaggle.submit_code(CompetitionRef(COMP), KernelRef.parse(f"{KERNEL}/{version}"), "submission.csv",
                                 f"{KERNEL}/{version} from the web page")
    csv = tmp_path / "mine.csv"
    csv.write_text("id,label\n" + "".join(f"{i},a\n" for i in range(6)))
    loose = kaggle.submit_file(CompetitionRef(COMP), csv, "my own csv")
    rows = scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    assert {(r.submission_ref, r.origin, r.kernel, r.submission_run_id) for r in rows} == {
        (by_hand, "unrecorded", f"{KERNEL}/{version}", ""), (loose, "unrecorded", "", "")}
    assert not [r for r in Tracker(cfg).search() if r.tags.get("kops.kind") == "submission"]

    rows = scores(Session(cfg), adopt=True)
    adopted = {r.submission_ref: r for r in rows}
    assert adopted[by_hand].source_runs == [run_a] and adopted[loose].source_runs == []
    assert Tracker(cfg).get_run(adopted[by_hand].submission_run_id).tags[TAG_SUBMISSION_ORIGIN] == "outside"
    assert Tracker(cfg).get_run(run_a).metrics["lb_public"] == adopted[by_hand].lb_public
    before = store_snapshot(cfg)
    assert not any(r.changed for r in scores(Session(cfg), adopt=True))
    assert store_snapshot(cfg) == before


@pytest.mark.parametrize(("description", "known", "found"), [
    ("alice/tse-infer/3 tuned", set(), "alice/tse-infer/3"),
    ("alice/tse-infer v4", set(), "alice/tse-infer/4"),
    ("alice/tse-infer Version 5", set(), "alice/tse-infer/5"),
    ("Version 6", {"alice/tse-infer"}, "alice/tse-infer/6"),
    ("Version 6", {"alice/tse-infer", "alice/other"}, None),  # which kernel? ambiguous
    ("alice/a-b/1 vs alice/a-b/2", set(), None),  # two versions named: ambiguous
    ("blend of my csvs", {"alice/tse-infer"}, None),
])
def test_identify_kernel(description: str, known: set[str], found: str | None) -> None:
    ref = identify_kernel(description, known)
    assert (str(ref) if ref else None) == found


# ---- CLI ----------------------------------------------------------------------------------------------


# kops' environment: a pipe without COLUMNS/LINES, as a script sees it (pytest-xdist workers and terminals may set
# them)
AS_A_PIPE = {"COLUMNS": None, "LINES": None}


def test_cli_leaderboard_table_json_and_bad_sort(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    run_a = source_run(cfg, "fold-0", 0.61)
    good = tmp_path / "good.csv"
    good.write_text("id,label\n" + "".join(f"{i},{v['label']}\n" for i, v in enumerate(SOLUTION)))
    out = kops("submit", "--file", str(good), "--run", run_a, cwd=cfg.root, env=AS_A_PIPE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Submitted {good}: submission ") and "(4 left today)" in out.stdout
    out = kops("scores", "--wait", "--json", cwd=cfg.root, env=AS_A_PIPE)
    assert out.returncode == 0, out.stderr
    assert [(r["status"], r["lb_public"]) for r in json.loads(out.stdout)] == [("COMPLETE", 1.0)]
    out = kops("leaderboard", cwd=cfg.root, env=AS_A_PIPE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "ref" and "1.00000" in out.stdout and "0.61000" in out.stdout
    assert run_a[:8] in out.stdout  # the models cell: the run id a user types next, not its name
    [row] = json.loads(kops("leaderboard", "--json", "--sort", "cv", cwd=cfg.root, env=AS_A_PIPE).stdout)
    assert (row["lb_public"], row["cv"], row["models"], row["kernel"]) == (1.0, 0.61, ["fold-0"], "good.csv")
    out = kops("leaderboard", "--sort", "jaccard", cwd=cfg.root, env=AS_A_PIPE)
    assert out.returncode == 2  # a usage mistake, refused while parsing
    assert out.stderr == ("kops leaderboard: error: Invalid value for '--sort': 'jaccard' is not one of lb_public, "
                          "lb_private, cv, date, ref.\nTry 'kops leaderboard --help' for help.\n")


@pytest.mark.slow  # the emulator runs a kernel
def test_kfold_parent_gets_the_lb_scores_of_its_folds(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    tracker = Tracker(cfg)
    parent = tracker.start_run("kfold-tiny", {}, {"kops.kind": "kfold"})
    folds = [tracker.start_run(f"fold-{k}", {}, {"kops.kind": "fold", TAG_DATASET: f"{USER}/ds-a",
                                                 TAG_DATASET_VERSION: "1"}, parent_run_id=parent) for k in (0, 1)]
    for run_id in (*folds, parent):
        tracker.end_run(run_id)
    version = push_tiny_kernel(tmp_path, folds)
    submit(Session(cfg), KERNEL, version, "kernel")
    [row] = scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    assert tracker.get_run(parent).metrics["lb_public"] == row.lb_public == expected(emulator, HINTS)[0]


def test_ref_fallback_never_takes_a_submission_of_another_kops_run(cfg: Any, emulator: Emulator,
                                                                  tmp_path: Path) -> None:
    """A submission run whose key is not found matches by its recorded ref only when the submission listed under
    that ref carries no other kops key (refs can name another submission, e.g. on another server)."""
    run_a = source_run(cfg, "fold-0", 0.60)
    good = tmp_path / "good.csv"
    good.write_text("id,label\n" + "".join(f"{i},{v['label']}\n" for i, v in enumerate(SOLUTION)))
    mine = submit(Session(cfg), file=good, runs=[run_a], message="mine")
    stray = Tracker(cfg).start_run("submission-stray", {}, {"kops.kind": "submission",
                                                            TAG_SUBMISSION_KEY: "0123456789ab",
                                                            TAG_SUBMISSION_REF: str(mine.submission_ref)})
    rows = scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    assert [(r.submission_run_id, r.submission_ref) for r in rows] == [(mine.submission_run_id, mine.submission_ref)]
    assert "lb_public" not in Tracker(cfg).get_run(stray).metrics


LEADERBOARD_ROWS = [  # (ref, status, public, private, cv, models, datasets, kernel, commits)
    (50003, "COMPLETE", 0.71234, 0.70001, 0.70555, ["kfold-tse-roberta-base"], ["alice/kfold-tse-rob-1/2"],
     "alice/tse-roberta-base-inference/12", ["c0ffee1234567890"]),
    (50002, "ERROR", None, None, 0.61, ["fold-0"], ["alice/fold-0-3f2a9c1e/1"], "alice/tse-demo-inference/3",
     ["deadbeef00000000"]),
    (50001, "COMPLETE", 0.5, 0.45, None, [], [], "submission.csv", []),
]


def _board_rows() -> list[Any]:
    from kaggleops.stages.leaderboard import LeaderboardRow

    return [LeaderboardRow(ref, f"run{ref}", f"2026-12-0{ref - 50000}T10:1{ref - 50000}:00", status, pub, priv, cv,
                           models=models, datasets=datasets, kernel=kernel, commits=commits,
                           error="kernel ended with ERROR: CUDA out of memory" if status == "ERROR" else "")
            for ref, status, pub, priv, cv, models, datasets, kernel, commits in LEADERBOARD_ROWS]


def test_leaderboard_fits_80_columns_keeping_the_columns_that_matter() -> None:
    from kaggleops.cli.submissions import render_leaderboard

    out = render_leaderboard(_board_rows(), 80)
    assert out == (
        "  ref  status        LB public  LB private       CV  models        kernel / file\n"
        "-----  ------------  ---------  ----------  -------  ------------  -------------\n"
        "50003  COMPLETE        0.71234     0.70001  0.70555  kfold-tse-r…  alice/tse…/12\n"  # the version kept
        "50002  ERROR: kern…          -           -  0.61000  fold-0        alice/tse-…/3\n"
        "50001  COMPLETE        0.50000     0.45000        -  -             submission.c…\n"
        "(not shown at 80 columns: date, datasets, commit; see --json)")
    assert max(len(line) for line in out.splitlines()) == 80


def test_leaderboard_at_120_columns_adds_date_and_commit() -> None:
    from kaggleops.cli.submissions import render_leaderboard

    out = render_leaderboard(_board_rows(), 120)
    assert out == (
        "  ref  date              status            LB public  LB private       CV  models            kernel / file"
        "      commit\n"
        "-----  ----------------  ----------------  ---------  ----------  -------  ----------------  -----------------"
        "  --------\n"
        "50003  2026-12-03 10:13  COMPLETE            0.71234     0.70001  0.70555  kfold-tse-rober…  alice/tse-rob…/12"
        "  c0ffee12\n"
        "50002  2026-12-02 10:12  ERROR: kernel e…          -           -  0.61000  fold-0            alice/tse-demo…/3"
        "  deadbeef\n"
        "50001  2026-12-01 10:11  COMPLETE            0.50000     0.45000        -  -                 submission.csv"
        "     -\n"
        "(not shown at 120 columns: datasets; see --json)")
    assert max(len(line) for line in out.splitlines()) == 120


def test_cli_leaderboard_uses_the_terminal_width(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    """The installed command at COLUMNS=80: every line fits; without COLUMNS (a pipe) every column is shown."""
    run_a = source_run(cfg, "fold-0", 0.61)
    good = tmp_path / "good.csv"
    good.write_text("id,label\n" + "".join(f"{i},{v['label']}\n" for i, v in enumerate(SOLUTION)))
    submit(Session(cfg), file=good, runs=[run_a], message="mine")
    scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    narrow = kops("leaderboard", cwd=cfg.root, env={"COLUMNS": "80"})
    assert narrow.returncode == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 80
    wide = kops("leaderboard", cwd=cfg.root, env=AS_A_PIPE)
    assert wide.stdout.splitlines()[0].split() == ["ref", "date", "status", "LB", "public", "LB", "private", "CV",
                                                   "models", "datasets", "kernel", "/", "file", "commit"]


def test_submit_with_a_wrong_kaggle_key_is_one_line(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    """The installed `kops submit` with a key the server refuses: exit 1, one line (+ at most a hint), no traceback."""
    good = tmp_path / "good.csv"
    good.write_text("id,label\n" + "".join(f"{i},{v['label']}\n" for i, v in enumerate(SOLUTION)))
    out = kops("submit", "--file", str(good), cwd=cfg.root, env={"KAGGLE_KEY": "wrong-key"}, script=True)
    assert out.returncode == 1 and out.stdout == "", out.stderr
    assert "Traceback" not in out.stderr and "benchmark_task_slug" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kops: error: "), out.stderr


# ---- a submission is never spent for nothing (issue 27) ---------------------------------------------------


def submission_runs(cfg: Any) -> list[Any]:
    return [r for r in Tracker(cfg).search() if r.tags.get("kops.kind") == "submission"]


@pytest.mark.parametrize(("content", "problem"), [
    ("id,label\n0,a\n1,b\n2,a\n", "bad.csv would be refused by Kaggle: it has 3 rows, sample_submission.csv has 6: "
                                  "3 of the 6 ids of sample_submission.csv are missing (first: 3)."),
    ("id,label\n0,a\n1,\n2,a\n3,b\n4,nan\n5,a\n", "bad.csv would be refused by Kaggle: 2 empty or NaN label cell(s) "
                                                 "(Kaggle reads them as NaN; first id: 1)."),
    ("id,target\n0,a\n1,b\n2,a\n3,b\n4,b\n5,a\n", "bad.csv would be refused by Kaggle: its columns are ['id', "
                                                  "'target'], sample_submission.csv has ['id', 'label'] (missing "
                                                  "['label']) (unexpected ['target'])."),
    ("id,label\n0,a\n1,b\n1,a\n3,b\n4,b\n5,a\n", "bad.csv would be refused by Kaggle: id 1 appears more than once."),
])
def test_submit_file_refused_before_upload_when_kaggle_would_refuse_it(cfg: Any, emulator: Emulator,
                                                                       tmp_path: Path, content: str,
                                                                       problem: str) -> None:
    """The installed `kops submit --file`: checked against the competition's sample_submission.csv (downloaded
    alone: the project has no data_dir); one line naming the first problem; nothing uploaded, no run recorded."""
    run_a = source_run(cfg, "fold-0", 0.61)
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    out = kops("submit", "--file", str(bad), "--run", run_a, cwd=cfg.root, env=AS_A_PIPE)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == f"kops: error: {problem} Fix the file (nothing was uploaded), or skip this check with " \
                         "--no-check\n"
    assert emulator.store.submissions == {} and submission_runs(cfg) == []
    forced = kops("submit", "--file", str(bad), "--run", run_a, "--no-check", cwd=cfg.root, env=AS_A_PIPE)
    assert forced.returncode == 0, forced.stderr
    assert len(emulator.store.submissions) == 1


def test_numeric_column_must_hold_numbers(tmp_path: Path) -> None:
    from kaggleops.stages.submission_file import first_problem

    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,target\n1,0.5\n2,0.5\n")
    sub = tmp_path / "sub.csv"
    sub.write_text("id,target\n2,0.3\n1,high\n")
    assert first_problem(sub, sample) == ("column target is numeric in sample_submission.csv but holds 'high' (id 1; "
                                          "1 such cell(s))")
    sub.write_text("id,target\n2,0.3\n1,7e-3\n")  # any order of ids is fine for a file submission
    assert first_problem(sub, sample) is None


@pytest.mark.slow  # the emulator runs a kernel
def test_the_same_file_or_kernel_version_is_not_submitted_twice(cfg: Any, emulator: Emulator,
                                                                tmp_path: Path) -> None:
    run_a = source_run(cfg, "fold-0", 0.61)
    good = tmp_path / "good.csv"
    good.write_text("id,label\n" + "".join(f"{i},{v['label']}\n" for i, v in enumerate(SOLUTION)))
    assert kops("submit", "--file", str(good), "--run", run_a, cwd=cfg.root, env=AS_A_PIPE).returncode == 0
    [first] = submission_runs(cfg)
    again = kops("submit", "--file", str(good.rename(tmp_path / "same-bytes.csv")), cwd=cfg.root, env=AS_A_PIPE)
    assert again.returncode == 1 and len(emulator.store.submissions) == 1 and len(submission_runs(cfg)) == 1
    ref = first.tags[TAG_SUBMISSION_REF]
    assert again.stderr.startswith("kops: error: same-bytes.csv (sha256 ") and (
        f"was already submitted: submission {ref} (PENDING) on ") in again.stderr
    assert again.stderr.rstrip().endswith(f"submission run {first.id}. A second copy spends one of the "
                                          "day's submissions for the same score; to do it anyway: --again")
    forced = kops("submit", "--file", str(tmp_path / "same-bytes.csv"), "--again", cwd=cfg.root, env=AS_A_PIPE)
    assert forced.returncode == 0, forced.stderr
    assert len(emulator.store.submissions) == 2

    version = push_tiny_kernel(tmp_path, [run_a])
    submit(Session(cfg), KERNEL, version, "kernel")
    scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    twice = kops("submit", "--kernel", KERNEL, "--version", str(version), cwd=cfg.root, env=AS_A_PIPE)
    assert twice.returncode == 1 and len(emulator.store.submissions) == 3
    assert f"Kernel {KERNEL}/{version} was already submitted: submission " in twice.stderr
    assert "(COMPLETE, public " in twice.stderr


@pytest.mark.slow  # the emulator runs a kernel
def test_kernel_output_fetches_the_submission_file_to_submit(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    """`kops kernel output` downloads a kernel version's files; its next: line is the command that submits them."""
    run_a = source_run(cfg, "fold-0", 0.61)
    version = push_tiny_kernel(tmp_path, [run_a])
    out = kops("kernel", "output", KERNEL, "--version", str(version), cwd=cfg.root, env=AS_A_PIPE)
    assert out.returncode == 0, out.stderr
    csv_path = cfg.root / ".kops" / "output" / "tiny-infer" / f"v{version}" / "submission.csv"
    assert out.stdout.splitlines()[-1] == f"next: kops submit --file {csv_path}"
    assert csv_path.read_text().splitlines() == ["id,label", *(f"{i},{h}" for i, h in enumerate(HINTS))]
    short = kops("submit", "--file", str(csv_path), "--run", run_a[:5], cwd=cfg.root, env=AS_A_PIPE)
    assert short.returncode == 1 and short.stderr == (
        f"kops: error: Run id prefix '{run_a[:5]}' is too short: a prefix needs 6+ characters. Copy more of the id "
        "from `kops leaderboard --json` or `kops ui`.\n")
    # a unique prefix
    sent = kops("submit", "--file", str(csv_path), "--run", run_a[:8], "--json", cwd=cfg.root, env=AS_A_PIPE)
    assert sent.returncode == 0, sent.stderr
    submission_run = Tracker(cfg).get_run(json.loads(sent.stdout)["submission_run_id"])
    assert submission_run.tags["kops.source_runs"] == run_a
    no_version = (f"kops: error: Kernel {KERNEL} has no version 99 (not found on {emulator.url}). Pass a version "
                  "it has: --version N (the runs' kops.kernel.version tags name the ones kops pushed)\n")
    missing = kops("kernel", "output", KERNEL, "--version", "99", cwd=cfg.root, env=AS_A_PIPE)
    assert (missing.returncode, missing.stderr) == (1, no_version)
    submitted = kops("submit", "--kernel", KERNEL, "--version", "99", cwd=cfg.root, env=AS_A_PIPE)
    assert (submitted.returncode, submitted.stderr) == (1, no_version)
    assert len(emulator.store.submissions) == 1  # only the file above


def test_file_submission_of_a_kfold_parent_scores_every_fold(cfg: Any, emulator: Emulator, tmp_path: Path) -> None:
    """`kops submit --file F --run PARENT`: the fold runs get lb_* as in a kernel submission, and the parent too."""
    tracker = Tracker(cfg)
    parent = tracker.start_run("kfold-tiny", {}, {"kops.kind": "kfold"})
    folds = [tracker.start_run(f"fold-{k}", {}, {"kops.kind": "fold"}, parent_run_id=parent) for k in (0, 1)]
    for run_id in (*folds, parent):
        tracker.end_run(run_id)
    good = tmp_path / "good.csv"
    good.write_text("id,label\n" + "".join(f"{i},{v['label']}\n" for i, v in enumerate(SOLUTION)))
    out = kops("submit", "--file", str(good), "--run", parent[:8], cwd=cfg.root, env=AS_A_PIPE)
    assert out.returncode == 0, out.stderr
    [row] = scores(Session(cfg), wait=True, poll_s=0.05, timeout_s=30)
    assert sorted(row.source_runs) == sorted(folds)
    for run_id in (*folds, parent, row.submission_run_id):
        assert tracker.get_run(run_id).metrics["lb_public"] == 1.0, run_id
