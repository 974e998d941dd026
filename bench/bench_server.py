"""Team server throughput: metric points/s into `mlflow server` on PostgreSQL + gs:// (README's scale command).

Run: .venv/bin/python -m bench.bench_server [--trainers 8] [--steps 2000] [--per-call 400]

The stack (kaggleops.emulator.stack): PostgreSQL 16 (pgserver) on 127.0.0.1, gcp-storage-emulator, and
`mlflow server --workers 2 --backend-store-uri postgresql://… --artifacts-destination gs://…`. Each trainer is its
own process logging what a kops training step logs (4 metrics a step: train_loss, lr, samples_per_s, epoch)
through kops' MetricLogger (batched log_batch, <= 500 points a call), as fast as it can; every log_batch call is
timed. Measured in the same run: 1 trainer alone; TRAINERS trainers at once; and 1 trainer calling
MlflowClient.log_metric once per point (the baseline). Figures: points/s and the p95 latency of a batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEYS = ("train_loss", "lr", "samples_per_s", "epoch")


def worker(server: str, mode: str, steps: int, start_at: float) -> dict[str, Any]:
    """One trainer process: create a run, wait for ``start_at``, log ``steps`` steps; report timings."""
    from mlflow.tracking import MlflowClient

    from kaggleops.adapters.metric_logger import MetricLogger

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("bench-server")
    run_id = client.create_run(exp.experiment_id).info.run_id
    latencies: list[float] = []
    real = client.log_batch

    def timed_batch(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = real(*args, **kwargs)
        latencies.append(time.perf_counter() - t0)
        return out

    client.log_batch = timed_batch  # type: ignore[method-assign]
    while time.time() < start_at:
        time.sleep(0.01)
    t0 = time.perf_counter()
    if mode == "per-call":
        for step in range(steps):
            for k in KEYS:
                t1 = time.perf_counter()
                client.log_metric(run_id, k, 1.0 / (step + 1), step=step)
                latencies.append(time.perf_counter() - t1)
    else:
        with MetricLogger(client, run_id) as log:
            for step in range(steps):
                log({k: 1.0 / (step + 1) for k in KEYS}, step)
    elapsed = time.perf_counter() - t0
    stored = sum(len(client.get_metric_history(run_id, k)) for k in KEYS)
    return {"points": steps * len(KEYS), "stored": stored, "elapsed": elapsed, "latencies": latencies}


def _spawn(server: str, mode: str, steps: int, n: int) -> tuple[list[dict[str, Any]], float]:
    """n worker processes starting together; returns their reports and the wall time from start to last end."""
    start_at = time.time() + 20 + 2 * n  # every process has imported mlflow and created its run by then
    procs = [subprocess.Popen([sys.executable, "-m", "bench.bench_server", "--worker", server, mode, str(steps),
                               str(start_at)], stdout=subprocess.PIPE, text=True, env={**os.environ})
             for _ in range(n)]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        assert p.returncode == 0, f"worker exit {p.returncode}"
        reports.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(r["elapsed"] for r in reports)
    return reports, wall


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.95 * len(values)))] if values else float("nan")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        server, mode, steps, start_at = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(worker(server, mode, steps, start_at)))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000, help="steps per trainer (4 points a step)")
    parser.add_argument("--per-call", type=int, default=400, help="steps of the per-call log_metric baseline")
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    from kaggleops.adapters.mlflow_server import serve_mlflow
    from kaggleops.adapters.storage import gcs_client
    from kaggleops.emulator.stack import start_gcs, start_postgres

    root = Path(tempfile.mkdtemp(prefix="kops-bench-server-"))
    gcs = start_gcs()
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    pg = server = None
    try:
        gcs_client().create_bucket("kops-bench")
        pg = start_postgres("bench-pw")
        server = serve_mlflow(pg.url, ["--artifacts-destination", "gs://kops-bench/mlflow-artifacts"], root,
                              root / "mlflow-server.log", workers=2, timeout_s=180)
        MlflowClient(server.base).create_experiment("bench-server")
        one, t_one = _spawn(server.base, "batched", args.steps, 1)
        many, t_many = _spawn(server.base, "batched", args.steps, args.trainers)
        per_call, t_call = _spawn(server.base, "per-call", args.per_call, 1)
    finally:
        for service in (server, pg, gcs):
            if service is not None:
                service.stop()
        shutil.rmtree(root, ignore_errors=True)
    for reports in (one, many, per_call):
        assert all(r["stored"] == r["points"] for r in reports), "points lost or duplicated"
    rate_one = one[0]["points"] / t_one
    rate_many = sum(r["points"] for r in many) / t_many
    rate_call = per_call[0]["points"] / t_call
    lat_many = [x for r in many for x in r["latencies"]]
    print(f"mlflow server (2 workers) on PostgreSQL 16 + gs:// (emulator), {os.cpu_count()} CPUs")
    print(f"1 trainer, batched      : {one[0]['points']:>7,} points  {t_one:7.2f} s  {rate_one:9,.0f} points/s  "
          f"p95 batch {_p95(one[0]['latencies']) * 1000:6.1f} ms  ({len(one[0]['latencies'])} batches)")
    print(f"{args.trainers} trainers, batched     : {sum(r['points'] for r in many):>7,} points  {t_many:7.2f} s  "
          f"{rate_many:9,.0f} points/s  p95 batch {_p95(lat_many) * 1000:6.1f} ms  ({len(lat_many)} batches)")
    print(f"1 trainer, log_metric   : {per_call[0]['points']:>7,} points  {t_call:7.2f} s  {rate_call:9,.0f} points/s  "
          f"p95 call {_p95(per_call[0]['latencies']) * 1000:6.1f} ms")
    print(f"ratios: {args.trainers} trainers / 1 trainer = {rate_many / rate_one:.2f}x; "
          f"batched / per-call = {rate_one / rate_call:.1f}x")


if __name__ == "__main__":
    main()
