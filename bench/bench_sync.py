"""kops sync against gcp-storage-emulator: cost of a push/pull vs what changed.

Run: .venv/bin/python -m bench.bench_sync [--runs 200] [--points 5000] [--grow 1000]

One store logs RUNS finished runs of POINTS metric points each (one key); then, timed in this order:
first push; unchanged re-push (goal: 0 bytes, <= 5 % of the first push's time); one run grown by GROW points and
pushed (goal: bytes ~ the new points, <= 5 % of the first push's time); first pull into an empty store; repeat
pull; pull of the grown run. The baseline of every ratio is the first push/pull measured in the same run.
Exits non-zero when the unchanged re-push uploaded anything or a repeat pull changed anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _machine(root: Path, name: str, bucket: str) -> Any:
    from kaggleops.config import load_config, render_template

    folder = root / name
    folder.mkdir()
    (folder / "kops.yaml").write_text(render_template(owner="bench", experiment="bench-sync")
                                      + f"\nstorage:\n  bucket: {bucket}\n")
    return load_config(folder / "kops.yaml")


def _log(tracker: Any, run_id: str, start: int, points: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", 1.0 / (s + 1), now + s, s) for s in range(start, start + points)]
    for j in range(0, len(metrics), 1000):
        tracker.client.log_batch(run_id, metrics=metrics[j:j + 1000])


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    """Print one table of figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--grow", type=int, default=1000)
    args = parser.parse_args()
    from kaggleops.adapters.storage import gcs_client
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.emulator.stack import start_gcs
    from kaggleops.sync import pull, push

    gcs = start_gcs()
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    root = Path(tempfile.mkdtemp(prefix="kops-bench-sync-"))
    try:
        gcs_client().create_bucket("kops-bench")
        a, c = _machine(root, "a", "gs://kops-bench/team"), _machine(root, "c", "gs://kops-bench/team")
        ta = Tracker(a)
        run_ids, t0 = [], time.perf_counter()
        for i in range(args.runs):
            run_ids.append(ta.start_run(f"run-{i}", {"i": i, "lr": 1e-3}))
            _log(ta, run_ids[-1], 0, args.points)
            if i:
                ta.end_run(run_ids[-1])
        print(f"(set-up: {args.runs} runs logged in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        _ = Tracker(c).experiment_id  # c's empty store first: pull time excludes MLflow's schema set-up
        first, t_first = _timed(lambda: push(a))
        again, t_again = _timed(lambda: push(a))
        _log(ta, run_ids[0], args.points, args.grow)  # run 0 is still RUNNING: it grows
        grown, t_grown = _timed(lambda: push(a))
        pulled, t_pull = _timed(lambda: pull(c))
        repull, t_repull = _timed(lambda: pull(c))
        _log(ta, run_ids[0], args.points + args.grow, args.grow)
        push(a)
        regrown, t_regrown = _timed(lambda: pull(c))
    finally:
        gcs.stop()
        shutil.rmtree(root, ignore_errors=True)
    point_bytes = first.uploaded_bytes / max(1, args.runs * args.points)
    print(f"kops sync: {args.runs} runs x {args.points} metric points, gcp-storage-emulator on 127.0.0.1")
    print(f"first push        : {len(first.uploaded):>4} runs  {first.uploaded_bytes:>12,} B  {t_first:7.2f} s")
    print(f"unchanged re-push : {len(again.uploaded):>4} runs  {again.uploaded_bytes:>12,} B  {t_again:7.2f} s"
          f"  ({t_again / t_first:.3f} of first push)")
    print(f"1 run +{args.grow} points : {len(grown.uploaded):>4} runs  {grown.uploaded_bytes:>12,} B  "
          f"{t_grown:7.2f} s  ({t_grown / t_first:.3f} of first push; the new points alone "
          f"~{args.grow * point_bytes:,.0f} B at the first push's bytes/point)")
    print(f"first pull        : {len(pulled.created):>4} runs  {pulled.points_added:>12,} pts {t_pull:7.2f} s")
    print(f"repeat pull       : {len(repull.created) + len(repull.updated):>4} runs  {repull.points_added:>12,} pts "
          f"{t_repull:7.2f} s  ({t_repull / t_pull:.3f} of first pull)")
    print(f"pull of grown run : {len(regrown.updated):>4} runs  {regrown.points_added:>12,} pts {t_regrown:7.2f} s"
          f"  ({t_regrown / t_pull:.3f} of first pull)")
    sys.exit(1 if again.uploaded_bytes or repull.created or repull.updated else 0)


if __name__ == "__main__":
    main()
