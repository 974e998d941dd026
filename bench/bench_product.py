"""The product path as one benchmark (`python -m bench.bench_quality --product`): what a user types, timed.

Builds the MLE-bench split's competition files in a temporary project (train.csv = the 90 % part, test.csv = the
held-out rows without labels, sample_submission.csv), registers them on a loopback Kaggle emulator, writes a
kops.yaml with the settings given to bench_quality (MiniLM preset by default; fold 0 of 5), then runs the
INSTALLED `kops` CLI: `kops train` (tracking on: a local MLflow SQLite store) → `kops publish` → `kops push-kernel
--wait` (the emulator executes the kernel) → `kops kernel run-local` on the held-out test file; scores run-local's
submission.csv with the competition metric and prints each stage's wall time.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COMPETITION = "tweet-sentiment-extraction"


def _kops() -> list[str]:
    exe = Path(sys.executable).with_name("kops")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "kaggleops"]


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, quoting=csv.QUOTE_ALL, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _competition_files(data: Path, train_part: Any, held: Any) -> list[dict[str, str]]:
    data.mkdir(parents=True)
    _write_csv(data / "train.csv", train_part.to_dict("records"), ["textID", "text", "selected_text", "sentiment"])
    _write_csv(data / "test.csv", held.to_dict("records"), ["textID", "text", "sentiment"])
    _write_csv(data / "sample_submission.csv", [{"textID": t, "selected_text": ""} for t in held["textID"]],
               ["textID", "selected_text"])
    return held[["textID", "selected_text"]].to_dict("records")


def _kops_yaml(work: Path, args: Any, model: str, user: str) -> None:
    import yaml

    train = {"model": model, "n_folds": 5, "folds": [int(f) for f in args.folds.split(",")], "epochs": args.epochs,
             "batch_size": args.batch_size,
             "lr": args.lr, "schedule": args.schedule, "warmup_ratio": args.warmup, "train_neutral": args.train_neutral,
             "start_shift": args.start_shift, "shift_min_spaces": args.shift_min_spaces,
             "label_smoothing": args.label_smoothing, "jaccard_targets": args.jaccard_targets,
             "dropout_samples": args.dropout_samples, "sample_dropout": args.sample_dropout,
             "head_layers": args.head_layers, "max_len": args.max_len,
             "seed": args.seed, "checkpoint_every": None}
    cfg = {"competition": COMPETITION, "owner": user, "experiment": "tse-product-bench", "data_dir": "data",
           "train": train, "kernel": {"enable_gpu": False}}
    (work / "kops.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    (work / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.emulator/\n.kaggle/\n.kops/\ndata/\n")
    git = ["git", "-c", "user.name=kops bench", "-c", "user.email=bench@kops.invalid"]
    for a in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "product bench"]):
        subprocess.run([*git, *a], cwd=work, check=True, capture_output=True)


def _run(stage: str, cmd: list[str], work: Path, env: dict[str, str], walls: dict[str, float]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    walls[stage] = time.perf_counter() - t0
    print(f"  {stage:<45} {walls[stage]:8.1f} s (exit {proc.returncode})", flush=True)
    if proc.returncode:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _submission(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        return {r["textID"]: r["selected_text"] for r in csv.DictReader(f)}


def _validation_files(work: Path, run_id: str) -> list[dict[str, str]]:
    """``data-val/``: a fold run's validation rows (its oof.csv artifact) as a test.csv without labels."""
    oof = next(p for p in (work / "mlartifacts").rglob("oof.csv") if run_id in p.parts)
    with oof.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["text"].strip()]  # an empty answer cell fails the kernel's check
    _write_csv_rows(work / "data-val", rows)
    return rows


def _write_csv_rows(folder: Path, rows: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / "test.csv", rows, ["textID", "text", "sentiment"])
    _write_csv(folder / "sample_submission.csv", [{"textID": r["textID"], "selected_text": ""} for r in rows],
               ["textID", "selected_text"])


def product_path(args: Any, model: str, train_part: Any, held: Any) -> None:
    from kaggleops.emulator import Emulator
    from kaggleops.kernel.local import RUN_DIR
    from kaggleops.stages.demo import DEMO_KEY, DEMO_USER
    from kaggleops.tasks.tse.metric import jaccard

    work = Path(args.keep or tempfile.mkdtemp(prefix="kops-product-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"product path in {work} (load average {os.getloadavg()[0]:.1f}); stage wall times:", flush=True)
    solution = _competition_files(work / "data", train_part, held)
    emulator = Emulator(work / ".emulator", username=DEMO_USER, key=DEMO_KEY, score_delay_polls=1)
    url = emulator.start()
    walls: dict[str, float] = {}
    try:
        files = {n: work / "data" / n for n in ("train.csv", "test.csv", "sample_submission.csv")}
        emulator.add_competition(COMPETITION, files, solution, "textID", "selected_text", "jaccard")
        _kops_yaml(work, args, model, DEMO_USER)
        env = {**os.environ, "KOPS_KAGGLE_ENDPOINT": url, "KAGGLE_USERNAME": DEMO_USER, "KAGGLE_KEY": DEMO_KEY,
               "KAGGLE_CONFIG_DIR": str(work / ".kaggle")}
        env.pop("MLFLOW_TRACKING_URI", None)
        kops = _kops()
        trained = _run("kops train", [*kops, "train", "--json"], work, env, walls)
        run_id, first = trained["run_id"], trained["runs"][0]
        _run("kops publish", [*kops, "publish", run_id, "--json"], work, env, walls)
        pushed = _run("kops push-kernel --wait (emulator runs it)", [*kops, "push-kernel", "--run", run_id, "--wait",
                                                                      "--json"], work, env, walls)
        folder = pushed["folder"]
        local = _run("kops kernel run-local", [*kops, "kernel", "run-local", folder, "--data", str(work / "data"),
                                               "--json"], work, env, walls)
        preds = _submission(Path(folder) / RUN_DIR / "working" / "submission.csv")
        user_path = sum(walls.values())
        # the check: fold 0's model alone, through the kernel, on fold 0's validation rows = its training-time figure
        one = folder if len(trained["runs"]) == 1 else _run(
            "  check: kops push-kernel --no-push (fold 0 alone)", [*kops, "push-kernel", "--run", first["run_id"],
                                                                  "--no-push", "--json"], work, env, walls)["folder"]
        val_rows = _validation_files(work, first["run_id"])
        _run("  check: kops kernel run-local (fold 0 val rows)", [*kops, "kernel", "run-local", one, "--data",
                                                                 str(work / "data-val"), "--json"], work, env, walls)
        val_preds = _submission(Path(one) / RUN_DIR / "working" / "submission.csv")
    finally:
        emulator.stop()
    truth = dict(zip(held["textID"], held["selected_text"], strict=True))
    score = sum(jaccard(truth[t], preds[t]) for t in truth) / len(truth)
    val_score = sum(jaccard(r["selected_text"], val_preds[r["textID"]]) for r in val_rows) / len(val_rows)
    trained_score = sum(jaccard(r["selected_text"], r["pred"]) for r in val_rows) / len(val_rows)
    differ = sum(val_preds[r["textID"]] != r["pred"] for r in val_rows)
    print(f"  {'total of the user path (without the checks)':<45} {user_path:8.1f} s")
    print(f"validation fold {first['fold']} ({len(val_rows)} rows with text), its model through the kernel: Jaccard "
          f"{val_score:.4f}; at training time (oof.csv, same rows): {trained_score:.4f}; answers that differ: "
          f"{differ} (must be 0); the run's val figure (incl. empty tweets): "
          f"{first['score']:.4f}")
    whole = sum(jaccard(s, t) for s, t in zip(held["selected_text"], held["text"], strict=True)) / len(held)
    folds = ", ".join(f"fold {r['fold']} val {r['score']:.4f}" for r in trained["runs"])
    print(f"{len(train_part)} rows in train.csv; trained {folds}; the kernel ensembles {len(trained['runs'])} "
          f"model(s) on {len(held)} held-out rows")
    print(f"  run-local kernel stages: {json.dumps(local.get('timings', {}))}")
    print(f"held-out rows {len(held)}: Jaccard {score:.4f} vs whole tweet {whole:.4f}")
