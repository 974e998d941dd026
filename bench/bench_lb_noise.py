"""The cost and size of `kops leaderboard --plot`'s public noise band on real data (Tweet Sentiment Extraction).

A synthetic OOF over every train row (the selected text on 70 % of rows, the whole tweet on the rest: Jaccard
0.88) is scored on ``--draws`` random subsets of the public size (``--public-fraction`` × test.csv's
3,534 rows) with the task's own metric, exactly as the band is made (``subset_spread``). Prints the seconds it took,
the band's half width, and the binomial-style check: the sd of the per-row Jaccard / sqrt(public rows), which the
band should match for a mean-of-rows metric.

    .venv/bin/python -m bench.bench_lb_noise [--public-fraction 0.3] [--draws 200]

Needs ../shared/data/tweet-sentiment-extraction; skips (exit 0) without it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweet-sentiment-extraction"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--public-fraction", type=float, default=0.3)
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    if not (DATA / "train.csv").is_file():
        print(f"skipped: no {DATA / 'train.csv'}")
        return
    import numpy as np

    from kaggleops.stages.leaderboard_noise import Z, count_rows, subset_spread
    from kaggleops.tasks import get_task

    task = get_task("tweet-sentiment-extraction")
    truth = task.load_train(DATA / "train.csv").reset_index(drop=True)
    rng = np.random.default_rng(0)
    whole = rng.random(len(truth)) < 0.3
    oof = truth[[task.submission.id_column]].assign(
        selected_text=np.where(whole, truth["text"], truth["selected_text"]))
    n_public = round(args.public_fraction * count_rows(DATA / "test.csv"))
    started = time.perf_counter()
    sd = subset_spread(lambda ix: task.metric(truth.iloc[ix], oof.iloc[ix]), len(oof), n_public, args.draws)
    seconds = time.perf_counter() - started
    per_row = np.array([task.metric(truth.iloc[[i]], oof.iloc[[i]]) for i in range(0, len(oof), 7)])
    print(f"OOF rows {len(oof)}, Jaccard {task.metric(truth, oof):.4f}; public rows {n_public}; draws {args.draws}: "
          f"{seconds:.1f} s")
    expected = per_row.std() / math.sqrt(n_public)
    print(f"band ±{Z * sd:.4f} (sd {sd:.4f}); per-row sd / sqrt(public rows) = {expected:.4f}")


if __name__ == "__main__":
    main()
