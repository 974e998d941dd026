"""Span-extraction inference for Tweet Sentiment Extraction: one decoder for validation and the kernel.

SELF-CONTAINED: imports only the standard library, torch and transformers, because it runs inside the
offline inference kernel (installed there with the kops runtime wheel). Do not import pandas here.

Input is the pair ``tokenizer(sentiment, text)`` (roberta: ``<s> sentiment </s></s> text </s>``).
The tweet's tokens are found with ``sequence_ids() == 1`` (never by ``(0, 0)`` offsets: double
spaces make zero-width tokens). Each model's softmaxed start/end probabilities over those tokens are moved
onto the tweet's characters (:func:`predict_char_probs`, batched tensor ops), so models with different
tokenizers average per character; :func:`decode_spans` takes the best character span (``start <= end``,
maximising start × end probability, the same ranking as the logit sum) out of the raw tweet, so leading and odd
whitespace inside the span stay as the tweet has them, and applies :class:`PostProcessing` (neutral → whole
tweet; optionally the extra-spaces start shift). Training's validation and the kernel both call these.

Example::

    model, tokenizer = load_model("out/fold0/model")
    preds = predict_spans(model, tokenizer, [{"text": " so happy today", "sentiment": "positive"}])
"""

# No `from __future__ import annotations` here: kernels embed this source after other code, where a
# __future__ import is a SyntaxError. Annotations below are valid at runtime on Python >= 3.10.
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

TWEET_SEQUENCE = 1
INFER_CONFIG = "kops_infer.json"


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


TOKENIZER_SUBDIR = "tokenizer"
TOKENIZER_MARKERS = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json")


def tokenizer_dir(model_dir: Path) -> Path:
    """Where a model folder's tokenizer files are: the folder itself (``save_pretrained`` of both), or its
    ``tokenizer/`` sub-folder when only that holds them (a checkpoint's layout, published as tokenizer.zip)."""
    sub = model_dir / TOKENIZER_SUBDIR
    if sub.is_dir() and not any((model_dir / m).is_file() for m in TOKENIZER_MARKERS):
        return sub
    return model_dir


def load_model(model_dir: Any, device: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a ``save_pretrained`` folder, in eval mode on ``device`` (with the
    ``head_layers`` its ``kops_infer.json`` records, see :func:`span_logits`)."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir(Path(model_dir))))
    model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir))
    model.kops_head_layers = int(read_infer_config(model_dir).get("head_layers", 1))
    model.to(resolve_device(device)).eval()
    return model, tokenizer


def span_logits(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """``(start_logits, end_logits)`` ``[B, T]`` of a question-answering model. With ``model.kops_head_layers``
    k > 1 the model's own ``qa_outputs`` head reads the mean of the encoder's last k hidden layers (so the saved
    weights stay a standard ``AutoModelForQuestionAnswering``; training and the kernel both go through here)."""
    k = int(getattr(model, "kops_head_layers", 1))
    if k <= 1:
        out = model(**inputs)
        return out.start_logits, out.end_logits
    import torch

    hidden = model(**inputs, output_hidden_states=True).hidden_states
    start, end = model.qa_outputs(torch.stack(hidden[-k:]).mean(0)).split(1, dim=-1)
    return start[..., 0], end[..., 0]


def write_infer_config(model_dir: Any, post: "PostProcessing", max_len: int, head_layers: int = 1) -> None:
    """Record in a trained model folder how its answers are decoded (``kops_infer.json``; the kernel reads it)."""
    import json
    import os

    config: dict[str, Any] = {"post_processing": post.as_dict(), "max_len": max_len}
    if head_layers > 1:
        config["head_layers"] = head_layers
    with open(os.path.join(str(model_dir), INFER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def read_infer_config(model_dir: Any) -> dict[str, Any]:
    """A model folder's ``kops_infer.json`` (``{}`` for folders trained before it existed)."""
    import json
    import os

    path = os.path.join(str(model_dir), INFER_CONFIG)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def span_text(text: str, feature: Encoded, start: int, end: int) -> str:
    """Cut the tokens ``start..end`` out of the raw tweet through their character offsets."""
    return text[feature.offsets[start][0] : feature.offsets[end][1]]



@dataclass(frozen=True)
class PostProcessing:
    """How a best character span becomes the answer (the same in validation and in the kernel).

    ``neutral_full_text``: a neutral tweet's answer is the whole tweet. ``start_shift``: the competition's
    labels were cut at offsets that ignore a tweet's leading and doubled spaces, so when the tweet has at least
    ``shift_min_spaces`` such extra spaces before the predicted start, the gold span starts that many characters
    further left (often mid-word); the start is moved left by that number. An empty or blank span → whole tweet.
    """

    neutral_full_text: bool = True
    start_shift: bool = False
    shift_min_spaces: int = 2

    @classmethod
    def from_dict(cls, raw: Any) -> "PostProcessing":
        """From a plan's / settings' ``post_processing`` mapping; unknown keys are ignored, absent ones default."""
        raw = raw or {}
        return cls(bool(raw.get("neutral_full_text", True)), bool(raw.get("start_shift", False)),
                   int(raw.get("shift_min_spaces", 2)))

    def as_dict(self) -> dict[str, Any]:
        return {"neutral_full_text": self.neutral_full_text, "start_shift": self.start_shift,
                "shift_min_spaces": self.shift_min_spaces}

    def answer(self, text: str, sentiment: str, start: int, stop: int) -> str:
        """The answer for the character slice ``text[start:stop]`` (``start < 0``: no span found)."""
        if start < 0 or (self.neutral_full_text and sentiment == "neutral"):
            return text
        if self.start_shift:
            extra = extra_spaces(text[:start])
            if extra >= self.shift_min_spaces:
                start = max(0, start - extra)
        span = text[start:stop]
        return span if span.strip() else text


def answer_candidates(text: str, sentiment: str, candidates: list[dict[str, Any]],
                      post: PostProcessing) -> list[dict[str, Any]]:
    """``candidates`` (``top_k_char_spans``) with each ``text`` as ``post`` answers that span (its neutral rule
    aside): the reranker scores, trains on and answers with the same text the base model would answer with."""
    rules = replace(post, neutral_full_text=False)
    return [{**c, "text": rules.answer(text, sentiment, int(c["start"]), int(c["end"]))} for c in candidates]


def extra_spaces(prefix: str) -> int:
    """Spaces of ``prefix`` that lead it or follow another space (what collapsing whitespace removes)."""
    import re

    return len(prefix) - len(re.sub("  +", " ", prefix).lstrip(" "))


def batch_char_probs(features: list[Encoded], start_logits: Any, end_logits: Any,
                     width: int) -> tuple[Any, Any]:
    """Softmaxed start/end probabilities of a batch's tweet tokens, moved onto the tweets' characters.

    ``start_logits``/``end_logits``: the model's ``[B, T]`` output for ``features`` (any device). Returns two
    ``[B, width]`` float tensors on the same device: a token's start probability lands on its first character,
    its end probability on its last; zero-width tokens are left out; a row without such tokens is all zeros.
    Models with different tokenizers can then be averaged per character. One pass of tensor ops per batch.
    """
    import torch

    device = start_logits.device
    idx = [(r, j, f.offsets[j][0], f.offsets[j][1] - 1) for r, f in enumerate(features) for j in f.span_tokens()]
    n = len(features)
    ps = torch.zeros(n, width, device=device)
    pe = torch.zeros(n, width, device=device)
    if not idx:
        return ps, pe
    t = torch.tensor(idx, dtype=torch.long, device=device)
    rows, pos = t[:, 0], t[:, 1]
    for logits, out, chars in ((start_logits, ps, t[:, 2]), (end_logits, pe, t[:, 3])):
        masked = torch.full(logits.shape, float("-inf"), device=device)
        masked[rows, pos] = logits.float()[rows, pos]
        out[rows, chars] = torch.softmax(masked, 1)[rows, pos]  # tokens never share a first / last character
    return ps, pe


def char_width(texts: list[str]) -> int:
    """Columns of a per-character probability table for ``texts`` (at least 1)."""
    return max([1] + [len(t) for t in texts])


def in_input_order(parts: list[Any], order: list[int]) -> Any:
    """Per-batch ``[B, width]`` tables (batches in ``length_batches`` order) as one CPU table in input order:
    one concatenation, one device→host copy and one scatter for the whole set, not one per batch."""
    import torch

    done = torch.cat(parts).cpu()
    out = torch.empty_like(done)
    out[torch.tensor(order, dtype=torch.long)] = done
    return out


def predict_char_probs(model: Any, features: list[Encoded], texts: list[str], pad_id: int, batch_size: int = 64,
                       into: tuple[Any, Any] | None = None, weight: float = 1.0) -> tuple[Any, Any]:
    """Per-character start/end probabilities ``[len(texts), char_width(texts)]`` (CPU) of one model.

    Runs on the model's device in length-sorted, dynamically padded batches under ``torch.inference_mode()``;
    the character tables are made on that device, batch by batch, and put back in input order once. ``into``:
    tables to add ``weight ×`` these probabilities to (an ensemble's running sum), returned.
    """
    import torch

    device = next(model.parameters()).device
    width = char_width(texts)
    starts, ends, order = [], [], []
    with torch.inference_mode():
        for idx in length_batches(features, batch_size):
            batch = [features[i] for i in idx]
            start, end = span_logits(model, {k: v.to(device) for k, v in collate(batch, pad_id).items()})
            bs, be = batch_char_probs(batch, start, end, width)
            starts.append(bs)
            ends.append(be)
            order += idx
    if not order:
        return into if into is not None else (torch.zeros(0, width), torch.zeros(0, width))
    ps, pe = in_input_order(starts, order), in_input_order(ends, order)
    if into is None:
        return (ps * weight, pe * weight) if weight != 1.0 else (ps, pe)
    into[0].add_(ps, alpha=weight)
    into[1].add_(pe, alpha=weight)
    return into


def best_char_spans(ps: Any, pe: Any) -> tuple[list[int], list[int]]:
    """Per row, the character slice ``(start, stop)`` maximising ``ps[start] × pe[stop - 1]``, start < stop.

    Vectorised over rows (a running maximum of ``ps``); a row with no positive score gets ``(-1, -1)``.
    """
    import torch

    run_max, arg = torch.cummax(ps, dim=1)
    score = run_max * pe
    stop = torch.argmax(score, dim=1, keepdim=True)
    found = score.gather(1, stop)[:, 0] > 0
    start = arg.gather(1, stop)[:, 0]
    stop = stop[:, 0] + 1
    start = torch.where(found, start, -1)
    stop = torch.where(found, stop, -1)
    return start.tolist(), stop.tolist()


def decode_spans(rows: list[dict[str, Any]], ps: Any, pe: Any, post: PostProcessing = PostProcessing()) -> list[str]:
    """THE span decoder (validation and kernel): best character span per row, then ``post``'s rules.

    ``rows``: dicts with ``text`` and ``sentiment``; ``ps``/``pe``: ``[len(rows), width]`` per-character
    probabilities (one model's or an ensemble's mean, see :func:`predict_char_probs`).
    """
    starts, stops = best_char_spans(ps, pe)
    return [post.answer(str(r["text"]), str(r["sentiment"]), a, b)
            for r, a, b in zip(rows, starts, stops, strict=True)]


def top_k_char_spans(text: str, ps: Any, pe: Any, k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` best character spans from one row's per-character start/end probabilities, best first.

    The reranker's candidates (the OOF ``candidates`` and the kernel's). ``ps[i]``/``pe[i]``: probability that
    the span starts at / ends on character ``i`` (a tensor or list; pass an ensemble's MEAN so scores are on the
    scale ``w`` was tuned on). Span ``text[a:b + 1]`` scores ``ps[a] × pe[b]`` with ``a <= b``; characters with
    zero probability are never span ends, so the first candidate is :func:`best_char_spans`' span. Returns
    ``[{"start", "end", "text", "score"}]`` with ``end`` exclusive; a text without any scorable character gives
    the whole text with score 1.0.

    Example:
        >>> top_k_char_spans("so happy", ps, pe, k=2)  # doctest: +SKIP
        [{'start': 3, 'end': 8, 'text': 'happy', 'score': 0.61}, {'start': 0, 'end': 8, ...}]
    """
    import torch

    whole = [{"start": 0, "end": len(text), "text": text, "score": 1.0}] if k >= 1 else []
    ps, pe = torch.as_tensor(ps, dtype=torch.float32), torch.as_tensor(pe, dtype=torch.float32)
    starts, ends = torch.nonzero(ps > 0)[:, 0], torch.nonzero(pe > 0)[:, 0]
    if not len(starts) or not len(ends) or k < 1:
        return whole
    scores = ps[starts][:, None] * pe[ends][None, :]
    scores = scores.masked_fill(starts[:, None] > ends[None, :], -1.0).flatten()
    top = torch.topk(scores, min(k, scores.numel()))
    out = []
    for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        if value < 0:
            break
        a, b = int(starts[flat // len(ends)]), int(ends[flat % len(ends)]) + 1
        out.append({"start": a, "end": b, "text": text[a:b], "score": float(value)})
    return out or whole


def predict_spans(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 64,
                  max_len: int = 128, device: Any = None, post: PostProcessing = PostProcessing()) -> list[str]:
    """Predicted selected_text for each row (dicts with ``text`` and ``sentiment``), in input order.

    Example:
        >>> predict_spans(model, tokenizer, [{"text": "I hate mondays", "sentiment": "negative"}])  # doctest: +SKIP
        ['hate']
    """
    if device is not None:
        model.to(resolve_device(device))
    features = encode_rows(tokenizer, rows, max_len)
    texts = [str(r["text"]) for r in rows]
    ps, pe = predict_char_probs(model, features, texts, tokenizer.pad_token_id, batch_size)
    return decode_spans(rows, ps, pe, post)
