"""Training benchmarks, every ratio measured in this one run (`.venv/bin/python -m bench.bench_training`).

1. Train step time with kops tracking (the non-blocking MetricLogger, per-step metrics, against a SQLite store
   and a loopback `mlflow server`) / without tracking. Goal: ≤ 1.02.
2. Training samples/s with length bucketing / without (real train.csv rows when ../shared/data is present,
   else the bundled sample; tiny model; `--tokenizer roberta` for the real roberta-base vocabulary).
3. Time to log 1000 metric points to a loopback `mlflow server`: kops' batched logger vs per-call `log_metric`.

Variants are interleaved (A B A B …) and the median is reported, because the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_TRAIN = SHARED / "tweet-sentiment-extraction" / "train.csv"
ROBERTA_TOKENIZER = SHARED / "roberta-base-tokenizer"



@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """`mlflow server --workers 1` on 127.0.0.1 with a SQLite backend; yields its URL."""
    from kaggleops.adapters.mlflow_server import serve_mlflow

    server = serve_mlflow(f"sqlite:///{root / 'server.db'}", ["--artifacts-destination", str(root / "art")], root,
                          root / "server.log", timeout_s=180)
    try:
        yield server.base
    finally:
        server.stop()


def _tracker(uri: str, root: Path) -> Any:
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.config import KopsConfig

    return Tracker(KopsConfig(competition="tweet-sentiment-extraction", tracking_uri=uri, root=root))


def _step_seconds(df: Any, settings: Any, out: Path, log: Callable[[dict[str, float], int], None],
                  in_log: list[float] | None = None) -> list[float]:
    """Seconds between consecutive training steps' log calls (validation and set-up left out); the time spent
    inside ``log`` itself is appended to ``in_log``."""
    from kaggleops.tasks.tse.train import train_fold

    stamps: list[float] = []

    def timed_log(metrics: dict[str, float], step: int) -> None:
        now = time.perf_counter()
        if "train_loss" in metrics:
            stamps.append(now)
        log(metrics, step)
        if in_log is not None:
            in_log.append(time.perf_counter() - now)

    train_fold(df, settings, 0, out, timed_log)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def bench_tracking(df: Any, root: Path, url: str, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per step (over every step of every repeat) without tracking, with a SQLite store and
    with the loopback server."""
    from kaggleops.tasks.tse.train import TrainSettings

    settings = TrainSettings(max_steps=steps, eval_every=steps, checkpoint_every=None, device="cpu")
    stores = {"sqlite": _tracker(f"sqlite:///{root / 'bench.db'}", root), "server": _tracker(url, root)}
    times: dict[str, list[float]] = {"none": [], "sqlite": [], "server": []}
    in_log: dict[str, list[float]] = {"none": [], "sqlite": [], "server": []}
    for r in range(repeats):
        for name in times:
            if name == "none":
                times[name] += _step_seconds(df, settings, root / f"t{r}{name}", lambda m, s: None, in_log[name])
                continue
            tracker = stores[name]
            run_id = tracker.start_run(f"bench-{name}-{r}", {"repeat": r})
            with tracker.metric_logger(run_id) as log:
                times[name] += _step_seconds(df, settings, root / f"t{r}{name}", log, in_log[name])
            tracker.end_run(run_id)
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update({f"{k}_in_log": sum(v) / len(times[k]) for k, v in in_log.items()})  # per step, in the loop
    return out


def bench_bucketing(root: Path, rows: int, steps: int, repeats: int,
                    tokenizer: str = "trained") -> tuple[dict[str, float], str]:
    """Median training samples/s with and without length bucketing.

    ``tokenizer``: ``trained`` (a 2,000-token BPE trained on the fly: the encoder dominates the step) or
    ``roberta`` (../shared/data's 50,265-token vocabulary: the tiny model's step is then mostly the embedding's
    optimizer update, which padding does not change)."""
    from kaggleops.tasks import get_task
    from kaggleops.tasks.tse.train import TrainSettings

    task = get_task("tweet-sentiment-extraction")
    real = REAL_TRAIN.is_file()
    df = task.load_train(REAL_TRAIN if real else task.sample_dir() / "train.csv")
    df = df.sample(n=min(rows, len(df)), random_state=0) if real else df
    what = f"{'real train.csv' if real else 'bundled sample'} ({len(df)} rows), tiny model, {tokenizer} tokenizer"
    extra = {"tokenizer": str(ROBERTA_TOKENIZER)} if tokenizer == "roberta" else {}
    rates: dict[str, list[float]] = {"bucketing": [], "no_bucketing": []}
    for r in range(repeats):
        for name in rates:
            settings = TrainSettings(max_steps=steps, eval_every=steps, checkpoint_every=None, device="cpu",
                                     length_bucketing=name == "bucketing", max_len=128, **extra)
            seconds = _step_seconds(df, settings, root / f"b{r}{name}", lambda m, s: None)
            rates[name] += [settings.batch_size / t for t in seconds]
    return {k: statistics.median(v) for k, v in rates.items()}, what


def bench_logging(url: str, root: Path, points: int) -> dict[str, float]:
    """Seconds to store ``points`` metric points on the server: kops' batched logger vs per-call log_metric."""
    tracker = _tracker(url, root)
    batched_run = tracker.start_run("bench-log-batched", {})
    started = time.perf_counter()
    with tracker.metric_logger(batched_run) as log:
        for step in range(points):
            log({"loss": 1.0 / (step + 1)}, step)
    batched = time.perf_counter() - started
    per_call_run = tracker.start_run("bench-log-per-call", {})
    started = time.perf_counter()
    for step in range(points):
        tracker.client.log_metric(per_call_run, "loss", 1.0 / (step + 1), step=step)
    per_call = time.perf_counter() - started
    for run_id in (batched_run, per_call_run):
        assert len(tracker.client.get_metric_history(run_id, "loss")) == points
        tracker.end_run(run_id)
    return {"batched": batched, "per_call": per_call}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per timed loop")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each variant")
    parser.add_argument("--rows", type=int, default=6000, help="real rows for the bucketing benchmark")
    parser.add_argument("--points", type=int, default=1000, help="metric points for the logging benchmark")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--tokenizer", choices=["trained", "roberta"], default="trained",
                        help="tokenizer of the bucketing benchmark")
    parser.add_argument("--only", type=int, nargs="*", default=[1, 2, 3], help="benchmarks to run (1 2 3)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from kaggleops.tasks import get_task

    task = get_task("tweet-sentiment-extraction")
    df = task.load_train(task.sample_dir() / "train.csv")
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kops-bench-") as tmp, mlflow_server(Path(tmp)) as url:
        root = Path(tmp)
        if 1 in args.only:
            step = bench_tracking(df, root, url, args.steps, args.repeats)
            print(f"\n1. train step (tiny model, batch 32, {args.steps} steps × {args.repeats}, median step):")
            print(f"   no tracking {step['none'] * 1000:.1f} ms | SQLite store {step['sqlite'] * 1000:.1f} ms "
                  f"(ratio {step['sqlite'] / step['none']:.3f}) | loopback server {step['server'] * 1000:.1f} ms "
                  f"(ratio {step['server'] / step['none']:.3f})  goal ≤ 1.02", flush=True)
            print(f"   time inside log() per step: none {step['none_in_log'] * 1e6:.0f} µs | SQLite "
                  f"{step['sqlite_in_log'] * 1e6:.0f} µs | server {step['server_in_log'] * 1e6:.0f} µs "
                  f"({step['server_in_log'] / step['none']:.2%} of a step)", flush=True)
        if 2 in args.only:
            rates, what = bench_bucketing(root, args.rows, args.steps, args.repeats, args.tokenizer)
            print(f"\n2. training samples/s, {what}, median step of {args.steps} × {args.repeats}:")
            print(f"   bucketing {rates['bucketing']:.0f} | no bucketing {rates['no_bucketing']:.0f} "
                  f"(ratio {rates['bucketing'] / rates['no_bucketing']:.2f})", flush=True)
        if 3 in args.only:
            log = bench_logging(url, root, args.points)
            print(f"\n3. {args.points} metric points to the loopback server:")
            print(f"   batched (kops MetricLogger) {log['batched']:.2f} s | per-call log_metric "
                  f"{log['per_call']:.2f} s (per-call / batched {log['per_call'] / log['batched']:.0f}x)", flush=True)

if __name__ == "__main__":
    main()
