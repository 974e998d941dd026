"""`kops sweep` on this machine: trials per hour with 1 vs W workers, and the sweep machinery's cost per trial.

Run: .venv/bin/python -m bench.bench_sweep [--trials 9] [--workers 3] [--plain 3]

The digits task at its tiniest (2 folds of 3, 3 epochs, 4 channels, bundled sample), SQLite for both MLflow and
the study (one machine). Every trial trains the SAME settings (each parameter has one choice, no pruner), so a
trial is exactly the training `kops train` does:

- plain: ``train()`` of those settings, in this process, PLAIN times after one warm-up; mean seconds;
- sweep, 1 worker: one `kops sweep` process runs TRIALS trials; a trial's cycle = the time between consecutive trial
  starts (ask, the trial's training run, tags, tell, the study run's metrics, the stale-trial check);
- sweep, W workers: W `kops sweep` processes at once on one study of TRIALS trials.

Trials per hour come from the trials' own start/complete times (process start-up left out). Overhead per trial =
mean 1-worker cycle - mean plain training. Prints `uptime` with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG = """competition: digit-recognizer
owner: bench
experiment: bench-sweep
tracking_uri: sqlite:///mlflow.db
train:
  n_folds: 3
  folds: [0, 1]
  seed: 42
  epochs: 3
  channels: 4
  batch_size: 128
  cpu_threads: 1
  lr: 0.01
  dropout: 0.0
sweep:
  n_trials: {trials}
  pruner: none
  heartbeat_s: 5
  params:
    lr: [0.01]
    dropout: [0.0]
"""


def _trials(folder: Path, study: str) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{folder / '.kops' / 'sweep.db'}"
    return [t for t in optuna.load_study(study_name=study, storage=storage).get_trials()
            if t.state.name == "COMPLETE"]


def _sweep(folder: Path, study: str, workers: int) -> list[Any]:
    exe = Path(sys.executable).with_name("kops")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(exe), "sweep", "--study", study, "--sample", "--json"], cwd=folder, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode:
            raise SystemExit(f"kops sweep failed ({p.returncode}): {err[-2000:]}")
    return _trials(folder, study)


def _per_hour(trials: list[Any]) -> float:
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return len(trials) / (end - start).total_seconds() * 3600


def _cycles(trials: list[Any]) -> list[float]:
    starts = sorted(t.datetime_start for t in trials)
    return [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]


def _plain(folder: Path, times: int) -> list[float]:
    from kaggleops.config import load_config
    from kaggleops.stages.train import train

    cfg = load_config(folder / "kops.yaml")
    seconds = []
    for i in range(times + 1):
        t0 = time.perf_counter()
        train(cfg, progress=False, sample=True)
        if i:  # the first call warms imports and caches up
            seconds.append(time.perf_counter() - t0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--plain", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="kops-bench-sweep-") as tmp:
        folder = Path(tmp)
        (folder / "kops.yaml").write_text(CONFIG.format(trials=args.trials))
        os.chdir(folder)
        plain = _plain(folder, args.plain)
        one = _sweep(folder, "one-worker", 1)
        many = _sweep(folder, "many-workers", args.workers)
    cycle, train_s = statistics.mean(_cycles(one)), statistics.mean(plain)
    one_rate, many_rate = _per_hour(one), _per_hour(many)
    print(f"plain train (mean of {len(plain)}):            {train_s:6.2f} s")
    print(f"sweep trial cycle, 1 worker (mean of {len(one) - 1}): {cycle:6.2f} s")
    print(f"sweep overhead per trial:                {cycle - train_s:6.2f} s ({(cycle - train_s) / train_s:.0%})")
    print(f"trials/hour, 1 worker:                   {one_rate:8.0f}")
    print(f"trials/hour, {args.workers} workers:                  {many_rate:8.0f} (ratio {many_rate / one_rate:.2f})")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
