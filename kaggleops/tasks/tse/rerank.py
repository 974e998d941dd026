"""The second stage: a candidate reranker trained on the base model's out-of-fold (OOF) candidates.

No MLflow, no Kaggle: the caller passes OOF frames, paths and a ``log(metrics, step)`` callback.

Flow (the 2nd-place TSE recipe):
  1. :func:`merge_oof` joins the base model(s)' OOF frames (one row per tweet, its base ``fold``, a JSON
     ``candidates`` list sorted by start×end score); several base models are averaged per character span.
  2. :func:`build_candidates` keeps each reranked row's top ``top_n`` candidates (the base's best is rank 0)
     with target = Jaccard(candidate, selected_text). Neutral rows keep the whole tweet (the base rule) and
     are neither trained on nor reranked, unless ``neutral_full_text`` is off.
  3. :func:`train_rerank_fold` trains fold k on the candidates of rows whose base fold is not k and scores
     the rows of fold k, the same folds as the base: a row is only scored by a model that never saw it.
  4. :func:`tune` picks ``w`` and ``n`` maximising the OOF Jaccard of ``prediction + w × base score`` over
     the ``n`` best candidates; it also reports a nested estimate (w, n tuned on the other folds only).

Example:
    >>> rows, cands = build_candidates(merge_oof([oof_df]), top_n=5)  # doctest: +SKIP
    >>> res = train_rerank_fold(cands, RerankSettings(), fold=0, out_dir=Path("rr/f0"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops.task import DataError, SecondStageFold, SecondStageTuning
from kaggleops.tasks.tse import rerank_infer
from kaggleops.tasks.tse.metric import jaccard
from kaggleops.tasks.tse.modeling import TINY, TINY_MAX_TOKENS

if TYPE_CHECKING:
    import pandas as pd

LogFn = Callable[[dict[str, float], int], None]
OOF_REQUIRED = ("textID", "sentiment", "text", "selected_text", "candidates", "fold")
W_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass
class RerankSettings:
    """Settings of the reranker.

    ``model``: ``"tiny"`` (a 2-layer RoBERTa from a config, tokenizer trained on the fly) or any HF encoder
    name / local folder (``AutoModelForSequenceClassification``, ``num_labels=1``). ``top_n``: candidates per
    row that are trained on and scored; ``n_grid``: the ``n`` values tuned (each ≤ ``top_n``).
    """

    model: str = TINY
    tokenizer: str | None = None
    top_n: int = 5
    n_grid: tuple[int, ...] = (2, 3, 5)
    w_grid: tuple[float, ...] = W_GRID
    max_len: int = 192
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    schedule: str = "linear"  # as the span model's (kaggleops.tasks.tse.optim.SCHEDULES)
    warmup_ratio: float = 0.1
    seed: int = 42
    vocab_size: int = 2000
    max_steps: int | None = None
    eval_batch_size: int = 128
    device: str = "auto"
    neutral_full_text: bool = True
    tiny: dict[str, Any] = field(default_factory=lambda: {
        "hidden": 128, "layers": 2, "heads": 2, "intermediate": 256, "dropout": 0.1})


RerankFoldResult = SecondStageFold
"""What one reranker fold left behind: its model, the rows it trained on and the candidates it scored (``scored``:
the fold's candidates + ``rerank_pred`` and ``scored_by``)."""

TuneResult = SecondStageTuning
"""The chosen ``w`` and ``n`` and the OOF metrics (base-only, reranked, per sentiment, nested)."""


def _merge_key(df: pd.DataFrame) -> dict[str, Any]:
    return dict(zip(df["textID"], df["fold"], strict=True))


def _merge_candidates(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean score per character span over models (a span a model did not list counts 0), best first."""
    merged: dict[tuple[int, int], dict[str, Any]] = {}
    for cands in lists:
        for c in cands:
            key = (int(c["start"]), int(c["end"]))
            merged.setdefault(key, {**c, "score": 0.0})["score"] += float(c["score"]) / len(lists)
    return sorted(merged.values(), key=lambda c: -c["score"])


def merge_oof(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One OOF frame from one or more base models' OOF frames (same rows, same folds), candidates parsed.

    Raises DataError when a column is missing, a textID appears twice, or the models' folds differ.
    """
    if not frames:
        raise DataError("no base OOF frames to rerank")
    for df in frames:
        missing = [c for c in OOF_REQUIRED if c not in df.columns]
        if missing:
            raise DataError(f"base OOF lacks column(s) {', '.join(missing)}; it needs {', '.join(OOF_REQUIRED)}")
        if df["textID"].duplicated().any():
            raise DataError("base OOF has duplicate textIDs: two fold runs validated the same row")
    first = frames[0]
    key = _merge_key(first)
    for df in frames[1:]:
        if _merge_key(df) != key:
            raise DataError("base models disagree on the rows or folds of their OOF; rerank models with the "
                            "same folds (same n_folds and seed)")
    out = first.drop(columns=["candidates"]).copy().reset_index(drop=True)
    per_model = [dict(zip(df["textID"], df["candidates"], strict=True)) for df in frames]
    out["candidates"] = [_merge_candidates([_parse(m[t]) for m in per_model]) for t in out["textID"]]
    return out


def _parse(raw: Any) -> list[dict[str, Any]]:
    cands = json.loads(raw) if isinstance(raw, str) else list(raw)
    return sorted(cands, key=lambda c: -float(c["score"]))


def _is_reranked(sentiment: str, settings_neutral: bool) -> bool:
    return not (settings_neutral and sentiment == "neutral")


def build_candidates(oof: pd.DataFrame, top_n: int = 5,
                     neutral_full_text: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows, candidates)`` from a merged OOF frame.

    ``rows``: one per tweet with ``base_pred`` (the base's best candidate, or the whole tweet for a neutral
    row under the rule) and ``base_jaccard``. ``candidates``: one per (reranked row, candidate) with
    ``rank`` (0 = the base's best), ``start``, ``end``, ``cand``, ``score`` and ``target`` = Jaccard with
    ``selected_text``; sorted by textID then rank.
    """
    import pandas as pd

    rows, cands = [], []
    for r in oof.itertuples(index=False):
        text, sentiment, truth = str(r.text), str(r.sentiment), str(r.selected_text)
        listed = _parse(r.candidates)[:top_n]
        reranked = bool(listed) and _is_reranked(sentiment, neutral_full_text)
        base = str(listed[0]["text"]) if reranked else text
        rows.append({"textID": r.textID, "fold": int(r.fold), "sentiment": sentiment, "text": text,
                     "selected_text": truth, "base_pred": base, "base_jaccard": jaccard(truth, base),
                     "reranked": reranked})
        for rank, c in enumerate(listed if reranked else []):
            cands.append({"textID": r.textID, "fold": int(r.fold), "sentiment": sentiment, "text": text,
                          "rank": rank, "start": int(c["start"]), "end": int(c["end"]), "cand": str(c["text"]),
                          "score": float(c["score"]), "target": jaccard(truth, str(c["text"]))})
    columns = ["textID", "fold", "sentiment", "text", "rank", "start", "end", "cand", "score", "target"]
    return pd.DataFrame(rows), pd.DataFrame(cands, columns=columns)


def _tokenizer_and_model(settings: RerankSettings, texts: list[str], work_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kaggleops.tasks.tse import modeling

    if settings.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(settings.tokenizer)
    elif settings.model == TINY:
        tokenizer = modeling.build_tokenizer(texts, work_dir / "tokenizer", settings.vocab_size)
    else:
        tokenizer = modeling.load_pretrained_tokenizer(settings.model)
    if settings.model == TINY:
        return tokenizer, modeling.build_tiny_model(tokenizer, seed=settings.seed, head="score", **settings.tiny)
    torch.manual_seed(settings.seed)
    return tokenizer, AutoModelForSequenceClassification.from_pretrained(settings.model, num_labels=1)


def effective_max_len(settings: RerankSettings) -> int:
    """``max_len``, capped at the tiny model's positions when the model is tiny."""
    return min(settings.max_len, TINY_MAX_TOKENS) if settings.model == TINY else settings.max_len


def _triples(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(zip(df["sentiment"].astype(str), df["text"].astype(str), df["cand"].astype(str), strict=True))


def _fit(model: Any, feats: list[dict], targets: list[float], settings: RerankSettings, pad_id: int,
         log: LogFn) -> int:
    import torch

    from kaggleops.tasks.tse import optim
    from kaggleops.tasks.tse.sampler import epoch_batches

    device = next(model.parameters()).device
    ids = [f["input_ids"] for f in feats]  # the sampler buckets by len()
    per_epoch = (len(feats) + settings.batch_size - 1) // settings.batch_size
    total = per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    opt = optim.optimizer(model, settings.lr, settings.weight_decay)
    sched = optim.scheduler(opt, total, settings.schedule, settings.warmup_ratio)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    step, t0 = 0, time.perf_counter()
    model.train()
    for epoch in range(settings.epochs):
        for idx in epoch_batches(ids, settings.batch_size, settings.seed, epoch):
            if step >= total:
                return step
            batch = {k: v.to(device) for k, v in rerank_infer.collate_pairs([feats[i] for i in idx], pad_id).items()}
            y = torch.tensor([targets[i] for i in idx], dtype=torch.float32, device=device)
            loss = loss_fn(model(**batch).logits.float()[:, 0], y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            log({"train_loss": float(loss.detach()), "lr": sched.get_last_lr()[0], "epoch": epoch,
                 "pairs_per_s": step * settings.batch_size / max(1e-9, time.perf_counter() - t0)}, step)
    return step


def train_rerank_fold(cands: pd.DataFrame, settings: RerankSettings, fold: int, out_dir: str | Path,
                      log: LogFn | None = None) -> RerankFoldResult:
    """Train reranker fold ``fold`` on candidates of rows whose base fold differs; score fold ``fold``'s rows.

    Writes ``out_dir/model/`` (``save_pretrained`` model + tokenizer + ``kops_rerank.json`` with
    ``w``/``n`` placeholders until :func:`write_rerank_config`). ``log`` gets ``train_loss``, ``lr``,
    ``epoch``, ``pairs_per_s`` per step and ``val_mse`` at the end. The returned ``train_ids`` are the
    textIDs of every candidate the model was fitted on, read from the training rows actually encoded.
    """
    import tempfile

    import torch

    from kaggleops.tasks.tse.modeling import save_tokenizer

    started = time.perf_counter()
    log = log or (lambda m, s: None)
    train_df, valid_df = cands[cands["fold"] != fold], cands[cands["fold"] == fold]
    if train_df.empty or valid_df.empty:
        raise DataError(f"rerank fold {fold}: {len(train_df)} training and {len(valid_df)} scored candidates; "
                        "need both (OOF of at least two base folds)")
    random.seed(settings.seed)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(auto if settings.device == "auto" else settings.device)
    with tempfile.TemporaryDirectory() as tmp:
        texts = train_df.drop_duplicates("textID")["text"].tolist()
        tokenizer, model = _tokenizer_and_model(settings, texts, Path(tmp))
    model.to(dev)
    max_len = effective_max_len(settings)
    feats = rerank_infer.encode_pairs(tokenizer, _triples(train_df), max_len)
    train_ids = sorted(set(train_df["textID"].astype(str)))
    steps = _fit(model, feats, train_df["target"].tolist(), settings, tokenizer.pad_token_id, log)
    model.eval()
    valid_feats = rerank_infer.encode_pairs(tokenizer, _triples(valid_df), max_len)
    preds = rerank_infer.predict_pairs(model, valid_feats, tokenizer.pad_token_id, settings.eval_batch_size)
    scored = valid_df.copy()
    scored["rerank_pred"] = preds
    scored["scored_by"] = fold
    log({"val_mse": float(((scored["rerank_pred"] - scored["target"]) ** 2).mean())}, steps)
    model_dir = Path(out_dir) / "model"
    model.save_pretrained(str(model_dir))
    save_tokenizer(tokenizer, model_dir)
    write_rerank_config(model_dir, settings, w=0.0, n=settings.top_n)
    return RerankFoldResult(fold, model_dir, train_ids, scored, steps, time.perf_counter() - started)


def write_rerank_config(model_dir: Path, settings: RerankSettings, w: float, n: int) -> Path:
    """Write ``kops_rerank.json`` (what :func:`rerank_infer.rerank_candidates` reads) into ``model_dir``."""
    path = Path(model_dir) / rerank_infer.RERANK_CONFIG
    path.write_text(json.dumps({
        "w": w, "n": n, "max_len": effective_max_len(settings), "neutral_full_text": settings.neutral_full_text,
        "input": "pair(sentiment, tweet SEP candidate)", "activation": "sigmoid", "target": "jaccard",
    }, indent=2) + "\n", encoding="utf-8")
    return path


def _choose(scored: pd.DataFrame, w: float, n: int) -> pd.Series:
    """Per textID, the Jaccard (target) of the candidate maximising ``rerank_pred + w × score`` in ranks < n."""
    c = scored[scored["rank"] < n].reset_index(drop=True)
    value = c["rerank_pred"] + w * c["score"]
    best = value.groupby(c["textID"], sort=False).idxmax()
    return c.loc[best.values].set_index("textID")["target"]


def _row_jaccards(rows: pd.DataFrame, scored: pd.DataFrame, w: float, n: int) -> pd.Series:
    chosen = _choose(scored, w, n)
    out = rows.set_index("textID")["base_jaccard"].copy()
    out.loc[chosen.index] = chosen.values
    return out


def _grid(rows: pd.DataFrame, scored: pd.DataFrame, settings: RerankSettings) -> list[dict[str, float]]:
    ns = sorted({min(n, settings.top_n) for n in settings.n_grid})
    return [{"n": n, "w": w, "jaccard": float(_row_jaccards(rows, scored, w, n).mean())}
            for n in ns for w in settings.w_grid]


def _best(grid: list[dict[str, float]]) -> dict[str, float]:
    return max(grid, key=lambda g: (round(g["jaccard"], 12), g["w"], -g["n"]))


def _nested(rows: pd.DataFrame, scored: pd.DataFrame, settings: RerankSettings) -> float:
    """OOF Jaccard with ``w``/``n`` tuned on the other folds' rows only, applied to each fold's rows."""
    parts = []
    for fold in sorted(rows["fold"].unique()):
        in_rows, in_scored = rows[rows["fold"] != fold], scored[scored["fold"] != fold]
        pick = _best(_grid(in_rows, in_scored, settings)) if len(in_rows) else {"w": 0.0, "n": settings.top_n}
        held = rows[rows["fold"] == fold]
        parts.append(_row_jaccards(held, scored[scored["fold"] == fold], pick["w"], int(pick["n"])))
    import pandas as pd

    return float(pd.concat(parts).mean())


def tune(rows: pd.DataFrame, scored: pd.DataFrame, settings: RerankSettings) -> TuneResult:
    """Pick ``w`` and ``n`` maximising the OOF Jaccard; metrics for base-only and reranked, per sentiment.

    Metrics: ``oof_jaccard_base``, ``oof_jaccard_reranked``, ``oof_jaccard_lift``, ``…_<sentiment>``,
    ``oof_jaccard_reranked_nested`` (w/n tuned without each fold: the honest estimate), ``best_w``,
    ``best_n``, ``oof_rows``, ``oof_reranked_rows``, ``oof_candidates``.
    """
    grid = _grid(rows, scored, settings)
    best = _best(grid)
    w, n = float(best["w"]), int(best["n"])
    final = _row_jaccards(rows, scored, w, n)
    by_id = rows.set_index("textID")
    metrics = {"oof_jaccard_base": float(by_id["base_jaccard"].mean()), "oof_jaccard_reranked": float(final.mean())}
    metrics["oof_jaccard_lift"] = metrics["oof_jaccard_reranked"] - metrics["oof_jaccard_base"]
    for sentiment, ids in by_id.groupby("sentiment").groups.items():
        metrics[f"oof_jaccard_base_{sentiment}"] = float(by_id.loc[ids, "base_jaccard"].mean())
        metrics[f"oof_jaccard_reranked_{sentiment}"] = float(final.loc[ids].mean())
    metrics.update({"oof_jaccard_reranked_nested": _nested(rows, scored, settings), "best_w": w,
                    "best_n": float(n), "oof_rows": float(len(rows)),
                    "oof_reranked_rows": float(rows["reranked"].sum()), "oof_candidates": float(len(scored))})
    return TuneResult(options={"w": w, "n": n}, metrics=metrics, grid=grid)


def fold_metrics(rows: pd.DataFrame, scored: pd.DataFrame, w: float, n: int, fold: int) -> dict[str, float]:
    """Base-only and reranked Jaccard of one fold's rows at the chosen ``w``/``n``."""
    held = rows[rows["fold"] == fold]
    final = _row_jaccards(held, scored[scored["fold"] == fold], w, n)
    return {"fold_jaccard_base": float(held["base_jaccard"].mean()), "fold_jaccard_reranked": float(final.mean())}
