"""Training throughput with 1 vs N data-parallel processes (torchrun + DDP), ratio against 1 process.

CPU (gloo), the tiny model, each process pinned to 1 thread:
    .venv/bin/python -m bench.bench_ddp
On a 2-GPU machine (Kaggle T4×2; NCCL, AMP), e.g. with a pretrained encoder and real data:
    python -m bench.bench_ddp --model roberta-base --batch-size 64 --steps 60 \
        --data /kaggle/input/tweet-sentiment-extraction

Each setting is a real ``kops train`` (1 process: ``python -m kaggleops train``; N: under
``torch.distributed.run``) into its own temporary MLflow store; the figure is the median of the logged
``samples_per_s`` (global rows per optimizer step / step time) over the steps after the first 20 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
YAML = """competition: tweet-sentiment-extraction
tracking_uri: sqlite:///mlflow.db
train:
  model: {model}
  epochs: 50
  batch_size: {batch}
  max_steps: {steps}
  checkpoint_every: null
  eval_every: {steps}
"""


def _run(nproc: int, args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix=f"kops-bench-ddp{nproc}-") as tmp:
        (Path(tmp) / "kops.yaml").write_text(YAML.format(model=args.model, batch=args.batch_size, steps=args.steps))
        train = ["-m", "kaggleops", "train", "--fold", "0", "--json", *(["--data", args.data] if args.data else [])]
        cmd = [sys.executable, *train] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        run_id = json.loads(proc.stdout)["run_id"]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "samples_per_s"))
        return statistics.median(v for _, v in hist[len(hist) // 5:]), wall


def main() -> None:
    """Print samples/s and wall time for each process count, and the ratio to 1 process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=64, help="GLOBAL batch (per process: / nproc)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process (CPU)")
    parser.add_argument("--data", default=None, help="folder with train.csv (default: the bundled sample)")
    args = parser.parse_args()
    base = None
    print(f"model={args.model} global batch={args.batch_size} steps={args.steps} threads/process={args.threads}")
    for n in args.nproc:
        rate, wall = _run(n, args)
        base = base or rate
        print(f"nproc={n}: {rate:8.1f} samples/s (median step)  wall {wall:6.1f} s  ratio vs first {rate / base:.2f}")


if __name__ == "__main__":
    main()
