"""The TSE ensemble as the task interface's ``predict``: per-character start/end probabilities averaged over
models (so folds may use different tokenizers), decoded to the best span, optionally rescored by the reranker.

Runs inside the offline kernel (installed with the kops runtime): stdlib, torch, transformers and pandas.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggleops.task import PredictContext

INFER_MODULE = "kaggleops.tasks.tse.infer"
RERANK_MODULE = "kaggleops.tasks.tse.rerank_infer"


def choose_device() -> tuple[Any, Any]:
    """(device, dtype): CUDA with bf16 where supported else fp16; CPU with fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


def _stage(ctx: PredictContext, name: str) -> Any:
    return ctx.stage(name) if ctx.stage is not None else contextlib.nullcontext()


def char_totals(model_dirs: Sequence[Path], rows: list[dict[str, str]], ctx: PredictContext) -> tuple[Any, Any]:
    """Weighted mean of each model's per-character start/end probabilities (``[rows, chars]`` tensors), one model
    in memory at a time; the character tables are built batch by batch on the model's device
    (``infer.predict_char_probs``)."""
    import torch

    infer = importlib.import_module(ctx.options.get("runtime_module", INFER_MODULE))
    device, dtype = choose_device()
    max_len = int(ctx.options.get("max_len", 128))
    batch_size = int(ctx.options.get("batch_size", 64))
    texts = [r["text"] for r in rows]
    width = infer.char_width(texts)
    totals = (torch.zeros(len(rows), width), torch.zeros(len(rows), width))
    labels = ctx.labels or [f"m{i}" for i in range(len(model_dirs))]
    for folder, w, name in zip(model_dirs, ctx.weights, labels, strict=True):
        with _stage(ctx, f"load {name}"):
            model, tokenizer = infer.load_model(folder, device)
            model.to(dtype=dtype)
        with _stage(ctx, f"tokenize {name}"):
            features = infer.encode_rows(tokenizer, rows, max_len)
        with _stage(ctx, f"forward + char probabilities {name}"):
            infer.predict_char_probs(model, features, texts, tokenizer.pad_token_id, batch_size, totals, w)
        del model, features
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ctx.log(f"kops: {len(model_dirs)} model(s) on {device.type} ({str(dtype).replace('torch.', '')})")
    return totals


def post_processing(model_dirs: Sequence[Path]) -> Any:
    """The post-processing the (first) model was validated with (its ``kops_infer.json``; defaults without one)."""
    infer = importlib.import_module(INFER_MODULE)
    trained = infer.read_infer_config(model_dirs[0]).get("post_processing") if model_dirs else None
    return infer.PostProcessing.from_dict(trained)


def decode(rows: list[dict[str, str]], totals: tuple[Any, Any], model_dirs: Sequence[Path] = ()) -> list[str]:
    """Best character span per row with the models' post-processing: ``infer.decode_spans``, the decoder
    training's validation uses, so the kernel answers as validation scored."""
    infer = importlib.import_module(INFER_MODULE)
    return infer.decode_spans(rows, totals[0], totals[1], post_processing(model_dirs))


def rerank(rows: list[dict[str, str]], totals: tuple[Any, Any], reranker_dirs: Sequence[Path],
           ctx: PredictContext, post: Any = None) -> list[str]:
    """The reranker's answer per row: the ensemble's top-``n`` character spans rescored by its fold models.
    ``post``: the base models' post-processing (:func:`post_processing`), applied to every candidate's text as
    training's validation applied it to the OOF candidates the reranker learned from."""
    rr = importlib.import_module(ctx.options.get("rerank_module", RERANK_MODULE))
    infer = importlib.import_module(INFER_MODULE)
    cfg = rr.read_rerank_config(reranker_dirs[0])
    w, n = float(ctx.options.get("w", cfg["w"])), int(ctx.options.get("n", cfg["n"]))
    ps, pe = totals
    post = post if post is not None else infer.PostProcessing()
    with _stage(ctx, "candidates"):
        cands = [infer.answer_candidates(row["text"], row["sentiment"], rr.top_k_char_spans(row["text"], ps[i], pe[i],
                                                                                         k=n), post)
                 for i, row in enumerate(rows)]
    with _stage(ctx, "rerank"):
        answers = rr.rerank_candidates([str(d) for d in reranker_dirs], rows, cands, w=w, n=n,
                                       batch_size=int(ctx.options.get("rerank_batch_size", 128)))
    ctx.log(f"kops: reranked {len(rows)} row(s) with {len(reranker_dirs)} reranker model(s), w {w:g}, n {n}")
    return answers


def post_process(rows: list[dict[str, str]], preds: list[str], neutral_full_text: bool = True) -> list[str]:
    """A neutral tweet (when asked) or an empty answer becomes the whole tweet."""
    return [row["text"] if (neutral_full_text and row["sentiment"] == "neutral") or not p.strip() else p
            for row, p in zip(rows, preds, strict=True)]


def rows_of(test: Any) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in r.items()} for r in test.to_dict("records")]
