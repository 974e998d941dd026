"""Span-extraction inference for Tweet Sentiment Extraction.

SELF-CONTAINED: imports only the standard library, torch and transformers, because it runs inside the
offline inference kernel (installed there with the kops runtime wheel). Do not import pandas here.

Input is the pair ``tokenizer(sentiment, text)`` (roberta: ``<s> sentiment </s></s> text </s>``).
The tweet's tokens are found with ``sequence_ids() == 1`` (never by ``(0, 0)`` offsets: double
spaces make zero-width tokens); the best span ``start <= end`` over those tokens maximises
``start_logit + end_logit`` and is cut out of the raw tweet with the character offsets, so
leading and odd whitespace inside the span stay as the tweet has them.

Post-processing rule (switchable with ``neutral_full_text``): a neutral tweet's answer is the
whole tweet, which is what the competition's labels almost always say.

Example::

    model, tokenizer = load_model("out/fold0/model")
    preds = predict_spans(model, tokenizer, [{"text": " so happy today", "sentiment": "positive"}])
"""

# No `from __future__ import annotations` here: kernels embed this source after other code, where a
# __future__ import is a SyntaxError. Annotations below are valid at runtime on Python >= 3.10.
from dataclasses import dataclass
from typing import Any

TWEET_SEQUENCE = 1


@dataclass
class Encoded:
    """One tokenized row: model inputs, character offsets and the positions of the tweet's tokens."""

    inputs: dict[str, list[int]]
    offsets: list[tuple[int, int]]
    tweet: list[int]

    def __len__(self) -> int:
        return len(self.inputs["input_ids"])

    def span_tokens(self) -> list[int]:
        """The tweet's tokens that cover at least one character (the candidates for a span's ends)."""
        return [j for j in self.tweet if self.offsets[j][1] > self.offsets[j][0]]


def resolve_device(device: Any = None) -> Any:
    """``None``/``"auto"`` → CUDA when available, else CPU; anything else → ``torch.device(device)``."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(model_dir: Any, device: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a ``save_pretrained`` folder, in eval mode on ``device``."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir))
    model.to(resolve_device(device)).eval()
    return model, tokenizer


def _max_len(tokenizer: Any, max_len: int) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    return min(max_len, limit) if isinstance(limit, int) and 0 < limit < 100_000 else max_len


def encode_rows(tokenizer: Any, rows: list[dict[str, Any]], max_len: int = 128) -> list[Encoded]:
    """Tokenize rows (``text``, ``sentiment``) as pairs, truncating only the tweet."""
    if not rows:
        return []
    texts = [str(r["text"]) for r in rows]
    sentiments = [str(r["sentiment"]) for r in rows]
    enc = tokenizer(sentiments, texts, truncation="only_second", max_length=_max_len(tokenizer, max_len),
                    return_offsets_mapping=True)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    out = []
    for i in range(len(rows)):
        seq = enc.sequence_ids(i)
        tweet = [j for j, s in enumerate(seq) if s == TWEET_SEQUENCE]
        offsets = [tuple(o) for o in enc["offset_mapping"][i]]
        out.append(Encoded({k: list(enc[k][i]) for k in keys}, offsets, tweet))
    return out


def length_batches(features: list[Encoded], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sequence bucketing: fewer pad tokens)."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(features: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Pad a batch to its own longest row (dynamic padding) and return tensors."""
    import torch

    width = max(len(f) for f in features)
    batch: dict[str, Any] = {}
    for key in features[0].inputs:
        fill = pad_id if key == "input_ids" else 0
        rows = [f.inputs[key] + [fill] * (width - len(f)) for f in features]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def best_span(start_logits: Any, end_logits: Any, tweet: list[int]) -> tuple[int, int]:
    """Token positions ``(start, end)``, ``start <= end``, both in ``tweet``, maximising the logit sum."""
    import torch

    idx = torch.tensor(tweet, dtype=torch.long)
    s = start_logits.float().cpu()[idx]
    e = end_logits.float().cpu()[idx]
    scores = s[:, None] + e[None, :]
    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).tril(-1), float("-inf"))
    flat = int(torch.argmax(scores))
    return tweet[flat // len(tweet)], tweet[flat % len(tweet)]


def top_k_spans(text: str, feature: Encoded, start_logits: Any, end_logits: Any, k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` best candidate spans of one row, best first (the reranker's input; also the OOF ``candidates``).

    Each candidate is ``{"start": int, "end": int, "text": str, "score": float}``: ``start``/``end`` are character
    offsets into the raw ``text`` (``text[start:end]`` is the span) and ``score`` = softmaxed start probability ×
    softmaxed end probability over the tweet's tokens (zero-width tokens left out, ``start <= end``). The first
    candidate is always the best span (the one :func:`best_span` picks: the product of softmaxes ranks spans like
    the logit sum). Character spans are unique: token spans sharing characters keep their best score. A tweet
    with no scorable token yields the whole text with score 1.0.

    Example:
        >>> top_k_spans("so happy", feature, s, e, k=2)  # doctest: +SKIP
        [{'start': 3, 'end': 8, 'text': 'happy', 'score': 0.61}, {'start': 0, 'end': 8, ...}]
    """
    import torch

    tokens = feature.span_tokens()
    if not tokens or k < 1:
        return [{"start": 0, "end": len(text), "text": text, "score": 1.0}] if k >= 1 else []
    idx = torch.tensor(tokens, dtype=torch.long)
    ps = torch.softmax(start_logits.float().cpu()[idx], 0)
    pe = torch.softmax(end_logits.float().cpu()[idx], 0)
    scores = (ps[:, None] * pe[None, :]).triu()
    n = len(tokens)
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    out: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    for flat in order.tolist():
        i, j = divmod(flat, n)
        a, b = feature.offsets[tokens[i]][0], feature.offsets[tokens[j]][1]
        if i > j or (a, b) in seen:
            continue
        seen.add((a, b))
        out.append({"start": a, "end": b, "text": text[a:b], "score": float(scores[i, j])})
        if len(out) == k:
            break
    return out


def span_text(text: str, feature: Encoded, start: int, end: int) -> str:
    """Cut the tokens ``start..end`` out of the raw tweet through their character offsets."""
    return text[feature.offsets[start][0] : feature.offsets[end][1]]


def decode_span(row: dict[str, Any], feature: Encoded, start_logits: Any, end_logits: Any,
                neutral_full_text: bool = True) -> str:
    """The predicted selected_text of one row from its start/end logits."""
    text = str(row["text"])
    if neutral_full_text and str(row["sentiment"]) == "neutral":
        return text
    candidates = feature.span_tokens()
    if not candidates:
        return text
    start, end = best_span(start_logits, end_logits, candidates)
    return span_text(text, feature, start, end)


def predict_logits(model: Any, features: list[Encoded], pad_id: int,
                   batch_size: int = 64) -> list[tuple[Any, Any]]:
    """Per-row ``(start_logits, end_logits)`` CPU tensors, trimmed to each row's own length.

    Runs on the model's device, in length-sorted batches under ``torch.inference_mode()``.
    """
    import torch

    device = next(model.parameters()).device
    out: list[Any] = [None] * len(features)
    with torch.inference_mode():
        for idx in length_batches(features, batch_size):
            batch = {k: v.to(device) for k, v in collate([features[i] for i in idx], pad_id).items()}
            res = model(**batch)
            for j, i in enumerate(idx):
                n = len(features[i])
                out[i] = (res.start_logits[j, :n].float().cpu(), res.end_logits[j, :n].float().cpu())
    return out


def predict_spans(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 64,
                  max_len: int = 128, device: Any = None, neutral_full_text: bool = True) -> list[str]:
    """Predicted selected_text for each row (dicts with ``text`` and ``sentiment``), in input order.

    Example:
        >>> predict_spans(model, tokenizer, [{"text": "I hate mondays", "sentiment": "negative"}])  # doctest: +SKIP
        ['hate']
    """
    if device is not None:
        model.to(resolve_device(device))
    features = encode_rows(tokenizer, rows, max_len)
    logits = predict_logits(model, features, tokenizer.pad_token_id, batch_size)
    return [decode_span(r, f, s, e, neutral_full_text) for r, f, (s, e) in zip(rows, features, logits, strict=True)]


def char_scores(text: str, feature: Encoded, start_logits: Any,
                end_logits: Any) -> tuple[list[float], list[float]]:
    """Softmaxed start/end probabilities of the tweet's tokens, moved onto the tweet's characters.

    A token's start probability lands on its first character, its end probability on its last one;
    zero-width tokens are left out (as in :func:`decode_span`). Models with different tokenizers can
    then be averaged per character.
    """
    import torch

    ps, pe = [0.0] * len(text), [0.0] * len(text)
    idx = feature.span_tokens()
    if not idx:
        return ps, pe
    pos = torch.tensor(idx, dtype=torch.long)
    sp = torch.softmax(start_logits.float()[pos], 0).tolist()
    ep = torch.softmax(end_logits.float()[pos], 0).tolist()
    for j, a, b in zip(idx, sp, ep, strict=True):
        ps[feature.offsets[j][0]] += a
        pe[feature.offsets[j][1] - 1] += b
    return ps, pe


def best_char_span(ps: list[float], pe: list[float]) -> tuple[int, int]:
    """Character slice ``(start, stop)`` maximising ``ps[start] * pe[stop - 1]`` with start < stop."""
    best, best_start, span = -1.0, 0, (0, len(ps))
    for k in range(len(ps)):
        if ps[k] > ps[best_start]:
            best_start = k
        if ps[best_start] * pe[k] > best:
            best, span = ps[best_start] * pe[k], (best_start, k + 1)
    return span


def predict_file_rows(model_dirs: list[Any], rows: list[dict[str, Any]], plan: dict[str, Any] | None = None,
                      batch_size: int = 64, max_len: int = 128, device: Any = None) -> list[str]:
    """Ensemble prediction of several saved models (e.g. the folds), one model in memory at a time.

    Each model's start/end probabilities are averaged per character (:func:`char_scores`), so the
    models may use different tokenizers. ``plan`` may set ``neutral_full_text`` (default True).

    Example:
        >>> predict_file_rows(["/kaggle/input/f0", "/kaggle/input/f1"], rows)  # doctest: +SKIP
    """
    neutral_full_text = bool((plan or {}).get("neutral_full_text", True))
    totals: list[tuple[list[float], list[float]]] = [([0.0] * len(str(r["text"])),) * 2 for r in rows]
    for model_dir in model_dirs:
        model, tokenizer = load_model(model_dir, device)
        features = encode_rows(tokenizer, rows, max_len)
        logits = predict_logits(model, features, tokenizer.pad_token_id, batch_size)
        for i, (row, feature, (s, e)) in enumerate(zip(rows, features, logits, strict=True)):
            ps, pe = char_scores(str(row["text"]), feature, s, e)
            totals[i] = ([a + b for a, b in zip(totals[i][0], ps, strict=True)],
                         [a + b for a, b in zip(totals[i][1], pe, strict=True)])
        del model
    out = []
    for row, (ps, pe) in zip(rows, totals, strict=True):
        text = str(row["text"])
        if (neutral_full_text and str(row["sentiment"]) == "neutral") or not any(ps):
            out.append(text)
        else:
            start, stop = best_char_span(ps, pe)
            out.append(text[start:stop])
    return out
