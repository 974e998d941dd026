"""A blend of runs that trained different task code: what one process per version costs in the kernel.

The example regression (examples/diabetes-regression, 2 folds) on a loopback Kaggle emulator, through the INSTALLED
`kops`: a ridge run and a k-NN run on one version of the task's code → `kops ensemble` (one version: the kernel's
usual path); then the task's ``predict`` changes, a k-NN run trains on it → `kops ensemble` of the ridge and that
run (two versions: each predicted in its own `python`, combined by the task's `combine`). Each blend's kernel runs
here with `kops kernel run-local --python <this interpreter>` (the model/runtime/code datasets downloaded and cached
first by a warm-up run); printed: the kernel's wall seconds and its timing table's rows for the version groups.

    .venv/bin/python -m bench.bench_mixed_code [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "diabetes-regression"
USER, KEY = "benchuser", "benchkey"


def _kops(work: Path, *args: str) -> Any:
    exe = Path(sys.executable).with_name("kops")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "kaggleops"]
    out = subprocess.run([*cmd, *args, "--json"], cwd=work, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"kops {' '.join(args)} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def _git(work: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=work, check=True,
                   capture_output=True)


def _kernel_seconds(work: Path, ensemble: str, repeat: int) -> tuple[float, dict[str, float]]:
    """(median wall seconds of run-local over ``repeat`` runs after a warm-up, the last run's timing rows)."""
    folder = _kops(work, "push-kernel", "--run", ensemble, "--no-push")["folder"]
    _kops(work, "kernel", "run-local", folder, "--python", sys.executable)  # downloads cached from here on
    seconds, timings = [], {}
    for _ in range(repeat):
        report = _kops(work, "kernel", "run-local", folder, "--python", sys.executable)
        seconds.append(float(report["seconds"]))
        timings = report.get("timings") or {}
    return statistics.median(seconds), timings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="run-local runs per kernel (median reported)")
    args = p.parse_args()
    from kaggleops.emulator import Emulator

    with tempfile.TemporaryDirectory(prefix="kops-bench-mixed-") as tmp:
        work = Path(tmp) / "diabetes"
        shutil.copytree(EXAMPLE, work)
        yaml = work / "kops.yaml"
        yaml.write_text(yaml.read_text().replace("n_folds: 5", "n_folds: 2"))
        _git(work, "init", "-q")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", "example")
        emu = Emulator(Path(tmp) / "emu", username=USER, key=KEY, score_delay_polls=0)
        emu.start()
        try:
            emu.seed_folder(work / "competition")
            os.environ.update({"KOPS_KAGGLE_ENDPOINT": emu.url, "KAGGLE_USERNAME": USER, "KAGGLE_KEY": KEY,
                               "NO_PROXY": "127.0.0.1,localhost", "KOPS_CACHE_DIR": str(Path(tmp) / "cache")})
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            ridge = _kops(work, "train")["run_id"]
            knn_settings = yaml.read_text().replace("model: ridge", "model: knn").replace(
                "features: null", "features: [bmi, bp, s5]")
            yaml.write_text(knn_settings)
            _git(work, "commit", "-q", "-am", "knn")
            knn = _kops(work, "train")["run_id"]
            one = _kops(work, "ensemble", ridge, knn, "--method", "hill")["run_id"]
            single_s, single_rows = _kernel_seconds(work, one, args.repeat)  # the working tree ran both: one path
            task = work / "tasks" / "progression.py"
            task.write_text(task.read_text().replace("np.round(total / sum(ctx.weights), 4)",
                                                     "np.round(total / sum(ctx.weights) + 1.0, 4)"))
            _git(work, "commit", "-q", "-am", "predict adds 1")
            knn2 = _kops(work, "train")["run_id"]
            two = _kops(work, "ensemble", ridge, knn2, "--method", "hill")["run_id"]
            other_s, _ = _kernel_seconds(work, one, args.repeat)  # both members ran the other version: 1 process
            two_s, rows = _kernel_seconds(work, two, args.repeat)
        finally:
            emu.stop()
    groups = {k: round(v, 2) for k, v in rows.items() if k.startswith(("code ", "combine"))}
    print(f"one-version kernel's timing rows: { {k: round(v, 2) for k, v in single_rows.items()} }")
    print(f"kernel wall (run-local, median of {args.repeat}): one version, today's path {single_s:.2f} s; the same "
          f"blend after the code changed (1 version in its own process) {other_s:.2f} s; two versions {two_s:.2f} s, "
          f"its version groups {groups}")


if __name__ == "__main__":
    main()
