"""Scoring candidate spans with the second-stage reranker (Tweet Sentiment Extraction).

Imports only the standard library, torch, transformers, kaggleops.schema (standard library only) and
:mod:`kaggleops.tasks.tse.infer` (the candidates), so that the offline kernel can run it (installed with the kops
runtime wheel). Do not import pandas here.

The reranker is an ``AutoModelForSequenceClassification`` with one output. Its input is the tokenizer's
pair template of the sentiment and ``tweet SEP candidate`` (SEP = the tokenizer's ``sep_token``), so a
roberta tokenizer gives ``<s> sentiment </s></s> tweet </s> candidate </s>`` and a BERT one
``[CLS] sentiment [SEP] tweet [SEP] candidate [SEP]``; only the second part is truncated. It was trained
to regress the candidate's Jaccard with the true span (binary cross-entropy on the logit), so its
prediction is ``sigmoid(logit)`` in [0, 1]. A row's answer is the candidate among its ``n`` best (by base
score) that maximises ``prediction + w × base score``; ``w`` and ``n`` were tuned on out-of-fold rows and
are stored in the model folder's ``kops_rerank.json``.

Example::

    cands = [top_k_char_spans(r["text"], ps, pe, k=5) for r, (ps, pe) in zip(rows, char_probs)]
    answers = rerank_candidates(["/kaggle/input/rr-f0/model", "/kaggle/input/rr-f1/model"], rows, cands)
"""

# No `from __future__ import annotations`: kernels may embed this source after other code.
import json
import math
import os
from typing import Any

from kaggleops.tasks.tse.infer import top_k_char_spans  # noqa: F401  (the candidates; the kernel calls it here)

DEFAULT_MAX_LEN = 192

RERANK_CONFIG = "kops_rerank.json"  # the tuned w/n (and inference settings) inside a reranker fold's model folder


def read_rerank_config(model_dir: Any) -> dict[str, Any]:
    """The ``kops_rerank.json`` of a reranker folder (``w``, ``n``, ``max_len``, ``neutral_full_text``)."""
    path = os.path.join(str(model_dir), RERANK_CONFIG)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_reranker(model_dir: Any, device: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of a saved reranker, in eval mode on ``device`` (default: CUDA if present)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    model.to(torch.device(device)).eval()
    return model, tokenizer


def _max_len(tokenizer: Any, max_len: int) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    return min(max_len, limit) if isinstance(limit, int) and 0 < limit < 100_000 else max_len


def encode_pairs(tokenizer: Any, triples: list[tuple[str, str, str]], max_len: int = DEFAULT_MAX_LEN) -> list[dict]:
    """Tokenize ``(sentiment, tweet, candidate)`` triples as ``pair(sentiment, tweet SEP candidate)``."""
    if not triples:
        return []
    sep = tokenizer.sep_token or tokenizer.eos_token or "|"
    firsts = [str(s) for s, _, _ in triples]
    seconds = [f"{t} {sep} {c}" for _, t, c in triples]
    enc = tokenizer(firsts, seconds, truncation="only_second", max_length=_max_len(tokenizer, max_len))
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: list(enc[k][i]) for k in keys} for i in range(len(triples))]


def collate_pairs(features: list[dict], pad_id: int) -> dict[str, Any]:
    """Pad a batch of encoded pairs to its own longest row and return long tensors."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    batch = {}
    for key in features[0]:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features], dtype=torch.long)
    return batch


def predict_pairs(model: Any, features: list[dict], pad_id: int, batch_size: int = 128) -> list[float]:
    """``sigmoid(logit)`` per encoded pair, in input order (length-sorted batches, inference mode)."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out = [0.0] * len(features)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs([features[i] for i in idx], pad_id).items()}
            probs = torch.sigmoid(model(**batch).logits.float()[:, 0]).cpu().tolist()
            for i, p in zip(idx, probs, strict=True):
                out[i] = float(p)
    return out


def choose(candidates: list[dict], preds: list[float], w: float, n: int) -> int:
    """Index of the candidate among the first ``n`` maximising ``pred + w × score`` (ties: the earlier one)."""
    best, best_value = 0, -math.inf
    for i, (cand, pred) in enumerate(zip(candidates[:n], preds[:n], strict=False)):
        value = pred + w * float(cand["score"])
        if value > best_value:
            best, best_value = i, value
    return best


def _reranked_rows(rows: list[dict], candidates: list[list[dict]], neutral_full_text: bool) -> list[int]:
    return [i for i, (r, c) in enumerate(zip(rows, candidates, strict=True))
            if c and not (neutral_full_text and str(r["sentiment"]) == "neutral")]


def rerank_candidates(model_dirs: list[Any], rows: list[dict], candidates: list[list[dict]],
                      w: float | None = None, n: int | None = None, batch_size: int = 128,
                      device: Any = None) -> list[str]:
    """The answer of each row: its best candidate by ``reranker prediction + w × base score``.

    ``rows``: dicts with ``text`` and ``sentiment``; ``candidates[i]``: row i's candidate spans, best base
    score first, each ``{"start", "end", "text", "score"}`` (as :func:`top_k_char_spans` makes them).
    ``model_dirs``: the reranker's fold folders; their predictions are averaged, one model in memory at a time.
    ``w``/``n`` default to the tuned values in the first folder's
    ``kops_rerank.json``. A neutral row (when the config's ``neutral_full_text`` is on) or a row without
    candidates gets the whole tweet.

    Example:
        >>> rerank_candidates(["rr/f0/model", "rr/f1/model"], rows, cands)  # doctest: +SKIP
        ['happy', 'so sad']
    """
    if not model_dirs:
        raise ValueError("rerank_candidates: no reranker model folders given")
    cfg = read_rerank_config(model_dirs[0])
    w = float(cfg["w"] if w is None else w)
    n = int(cfg["n"] if n is None else n)
    todo = _reranked_rows(rows, candidates, bool(cfg.get("neutral_full_text", True)))
    triples, owners = [], []
    for i in todo:
        for cand in candidates[i][:n]:
            triples.append((str(rows[i]["sentiment"]), str(rows[i]["text"]), str(cand["text"])))
            owners.append(i)
    sums = [0.0] * len(triples)
    for model_dir in model_dirs:
        model, tokenizer = load_reranker(model_dir, device)
        feats = encode_pairs(tokenizer, triples, int(cfg.get("max_len", DEFAULT_MAX_LEN)))
        preds = predict_pairs(model, feats, tokenizer.pad_token_id, batch_size)
        sums = [a + b for a, b in zip(sums, preds, strict=True)]
        del model
    per_row: dict[int, list[float]] = {}
    for owner, total in zip(owners, sums, strict=True):
        per_row.setdefault(owner, []).append(total / len(model_dirs))
    answers = [str(r["text"]) for r in rows]
    for i, preds in per_row.items():
        answers[i] = str(candidates[i][choose(candidates[i], preds, w, n)]["text"])
    return answers
