"""What the TSE span model and its reranker share for training: AdamW groups, the LR schedule, mixed precision."""

from __future__ import annotations

from typing import Any


def autocast(device: Any) -> Any:
    import contextlib

    import torch

    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def scheduler(optimizer: Any, total: int, schedule: str, warmup_ratio: float) -> Any:
    """``transformers.get_scheduler`` for ``schedule`` (a key of SCHEDULES), warming up over ``warmup_ratio``
    of ``total`` steps. Shared with the reranker (:mod:`kaggleops.tasks.tse.rerank`)."""
    from transformers import get_scheduler

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    warmup = int(total * warmup_ratio)
    return get_scheduler(SCHEDULES[schedule], optimizer, num_warmup_steps=warmup, num_training_steps=total)


def optimizer(model: Any, lr: float, weight_decay: float) -> Any:
    """AdamW without weight decay on biases and LayerNorm weights. Shared with the reranker."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)
