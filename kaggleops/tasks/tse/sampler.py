"""The training sampler: which rows form each optimizer step, a pure function of ``(seed, epoch)``.

A resumed run replays the same batches from its recorded position (epoch + next step group). The batches are
GLOBAL: under DDP every rank walks the same ones and trains on its shard of each (``kaggleops.distributed``),
so the position means the same thing on any number of processes.
"""

from __future__ import annotations

import random
from typing import Any

BUCKET_WINDOW = 50  # length bucketing sorts windows of this many batches


def epoch_batches(features: list[Any], batch_size: int, seed: int, epoch: int,
                  bucketing: bool = True) -> list[list[int]]:
    """The training batches of one epoch, a pure function of ``(seed, epoch)`` (so a resumed run replays them).

    With ``bucketing`` the shuffled rows are cut into windows of ``BUCKET_WINDOW`` batches, each window is
    sorted by length and cut into batches, and the batches are shuffled: similar lengths, little padding.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(features)))
    rng.shuffle(order)
    if not bucketing:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * BUCKET_WINDOW
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: len(features[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def step_groups(features: list[Any], settings: Any, epoch: int) -> list[list[list[int]]]:
    """One epoch's optimizer steps, each a list of ``grad_accum`` micro-batches."""
    batches = epoch_batches(features, settings.batch_size, settings.seed, epoch, settings.length_bucketing)
    k = max(1, settings.grad_accum)
    return [batches[i : i + k] for i in range(0, len(batches), k)]
