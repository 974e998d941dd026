"""kops sync: first push vs unchanged re-push (bytes, seconds, ratio), and pull time, against gcp-storage-emulator.

Run: .venv/bin/python -m bench.bench_sync [--runs 50] [--points 1000]
The baseline is the first push, measured in the same run; the re-push must upload 0 bytes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_emulator() -> subprocess.Popen[bytes]:
    port = _free_port()
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        time.sleep(0.05)
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    return proc


def _machine(root: Path, name: str, bucket: str) -> object:
    from kaggleops.config import load_config, render_template

    folder = root / name
    folder.mkdir()
    (folder / "kops.yaml").write_text(render_template(owner="bench", experiment="bench-sync")
                                      + f"\nstorage:\n  bucket: {bucket}\n")
    return load_config(folder / "kops.yaml")


def _log_runs(cfg: object, runs: int, points: int) -> None:
    from mlflow.entities import Metric

    from kaggleops.adapters.tracking import Tracker

    tracker = Tracker(cfg)  # type: ignore[arg-type]
    for i in range(runs):
        run_id = tracker.start_run(f"run-{i}", {"i": i, "lr": 1e-3})
        now = int(time.time() * 1000)
        metrics = [Metric("train_loss", 1.0 / (s + 1), now + s, s) for s in range(points)]
        for j in range(0, len(metrics), 1000):
            tracker.client.log_batch(run_id, metrics=metrics[j:j + 1000])
        tracker.end_run(run_id)


def main() -> None:
    """Print one table of figures; exit non-zero if the unchanged re-push uploaded anything."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    from kaggleops.adapters.storage import gcs_client
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.stages.sync import pull, push

    proc = _start_emulator()
    try:
        gcs_client().create_bucket("kops-bench")
        root = Path(tempfile.mkdtemp(prefix="kops-bench-sync-"))
        a, c = _machine(root, "a", "gs://kops-bench/team"), _machine(root, "c", "gs://kops-bench/team")
        _log_runs(a, args.runs, args.points)
        _ = Tracker(c).experiment_id  # create c's empty store first: pull time excludes MLflow's schema set-up
        t0 = time.perf_counter()
        first = push(a)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        again = push(a)  # type: ignore[arg-type]
        t2 = time.perf_counter()
        pulled = pull(c)  # type: ignore[arg-type]
        t3 = time.perf_counter()
        repull = pull(c)  # type: ignore[arg-type]
        t4 = time.perf_counter()
    finally:
        proc.terminate()
    print(f"kops sync: {args.runs} runs x {args.points} metric points, gcp-storage-emulator on 127.0.0.1")
    print(f"first push      : {len(first.uploaded):>3} runs  {first.uploaded_bytes:>10,} bytes  {t1 - t0:6.2f} s")
    print(f"unchanged push  : {len(again.uploaded):>3} runs  {again.uploaded_bytes:>10,} bytes  {t2 - t1:6.2f} s"
          f"  (time ratio {(t2 - t1) / (t1 - t0):.2f} of first push)")
    print(f"pull (new)      : {len(pulled.created):>3} runs  {pulled.points_added:>10,} points {t3 - t2:6.2f} s")
    print(f"pull (unchanged): {len(repull.created) + len(repull.updated):>3} runs  {t4 - t3:6.2f} s"
          f"  (time ratio {(t4 - t3) / (t3 - t2):.2f} of first pull)")
    sys.exit(1 if again.uploaded_bytes or repull.created or repull.updated else 0)


if __name__ == "__main__":
    main()
