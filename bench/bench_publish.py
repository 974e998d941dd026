"""kops publish: bytes uploaded and wall time for a ~200 MB model folder, first publish vs identical re-publish.

Run: .venv/bin/python -m bench.bench_publish [--mb 200]
Against the in-process Kaggle emulator with the real `kaggle` client and a real MLflow SQLite store. The
baseline is the first publish, measured in the same run; the identical re-publish must upload 0 bytes and make
no version. Bytes on the wire are counted from the emulator's request log (every PUT body it stored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

CHUNK = 1 << 20


def _write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left > 0:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n


def make_model(folder: Path, total_mb: int) -> int:
    """A model folder: one big weights file, a checkpoint sub-folder and a small tokenizer sub-folder."""
    total = total_mb * CHUNK
    _write_random(folder / "model.safetensors", int(total * 0.8))
    _write_random(folder / "checkpoints" / "last.pt", int(total * 0.2) - 3 * 4096)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        _write_random(folder / "tokenizer" / name, 4096)
    (folder / "config.json").write_text(json.dumps({"hidden": 768}))
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _put_bytes(log: Path, since: int) -> int:
    """Bytes the emulator stored from PUT bodies after line ``since`` of its request log."""
    total = 0
    for line in log.read_text().splitlines()[since:]:
        entry = json.loads(line)
        match = re.match(r"<(?:injected \d+; kept )?(\d+) bytes @", str(entry.get("body", "")))
        if entry.get("method") == "PUT" and match:
            total += int(match.group(1))
    return total


def _lines(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="model folder size in MiB")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kops-bench-publish-"))
    os.environ.update({"HOME": str(root / "home"), "KAGGLE_CONFIG_DIR": str(root / "home" / ".kaggle"),
                       "TMPDIR": str(root / "tmp"), "KAGGLE_USERNAME": "bench", "KAGGLE_KEY": "bench-key",
                       "NO_PROXY": "127.0.0.1,localhost"})
    (root / "tmp").mkdir()
    tempfile.tempdir = None
    try:
        run(root, args.mb)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, mb: int) -> None:
    from kaggleops.adapters.kaggle import Kaggle
    from kaggleops.adapters.session import Session
    from kaggleops.adapters.tracking import Tracker
    from kaggleops.config import load_config
    from kaggleops.emulator import Emulator
    from kaggleops.stages.publish import publish

    size = make_model(root / "model", mb)
    (root / "kops.yaml").write_text("competition: tweet-sentiment-extraction\nowner: bench\nexperiment: bench\n")
    cfg = load_config(root / "kops.yaml")
    tracker = Tracker(cfg)
    run_id = tracker.start_run("bench", {})
    tracker.log_artifacts(run_id, root / "model", "model")
    tracker.end_run(run_id)
    with Emulator(root / "emu", username="bench", key="bench-key") as emulator:
        os.environ["KOPS_KAGGLE_ENDPOINT"] = emulator.url
        log = emulator.root / "requests.log"
        rows = []
        for label in ("first publish", "identical re-publish"):
            before = _lines(log)
            started = time.perf_counter()
            result = publish(Session(cfg, kaggle=Kaggle(emulator.url)), run_id, poll_s=0.1)
            seconds = time.perf_counter() - started
            rows.append((label, result, _put_bytes(log, before), seconds))
        versions = len(emulator.state_summary()["datasets"][result.dataset]["versions"])
    base = rows[0][3]
    print(f"model folder: {size:,} B ({mb} MiB; weights, checkpoints/, tokenizer/), run {run_id}")
    print(f"{'what':<22} {'bytes on the wire':>18} {'version':>8} {'seconds':>8} {'ratio':>6}")
    for label, res, sent, seconds in rows:
        print(f"{label:<22} {sent:>18,} {res.dataset_version:>8} {seconds:>8.2f} {seconds / base:>6.2f}")
    print(f"dataset versions after both: {versions} (must be 1); re-publish uploaded {rows[1][2]} B (must be 0)")


if __name__ == "__main__":
    main()
