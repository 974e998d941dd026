"""The span model's own loss (used when a span-loss lever is on; otherwise the model's own cross-entropy).

Cross-entropy over the tweet's tokens only, with label smoothing, Jaccard targets (the metric-aware part of the
target), multi-sample dropout and a head on the mean of the last hidden layers. See :class:`TrainSettings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kaggleops.tasks.tse import infer
from kaggleops.tasks.tse.metric import jaccard

if TYPE_CHECKING:
    from kaggleops.tasks.tse.train import TrainSettings

SPAN_MASK = "span_mask"  # a training batch's extra key: the positions the own span loss spreads over
SPREAD_KEYS = ("spread_start", "spread_end")  # ... and the Jaccard spread of the start / end target


def jaccard_spread(text: str, selected: str, feature: infer.Encoded,
                   label: tuple[int, int]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """Per tweet token, the word-level Jaccard (against ``selected``) of the span it gives as the start with the
    gold end, and as the end with the gold start: ``([(token, jaccard)], [(token, jaccard)])``. The metric-aware
    part of the span target (``TrainSettings.jaccard_targets``): a start one word off the gold one still scores."""
    a, b = label
    tokens = feature.span_tokens()
    if not tokens:
        return [], []
    first, last = feature.offsets[a][0], feature.offsets[b][1]
    starts = [(j, jaccard(selected, text[feature.offsets[j][0]:last])) for j in tokens if j <= b]
    ends = [(k, jaccard(selected, text[first:feature.offsets[k][1]])) for k in tokens if k >= a]
    return starts, ends


Spread = tuple[list[tuple[int, float]], list[tuple[int, float]]]


def normalised(spread: Spread) -> Spread:
    """Each side's weights divided by their sum (a target distribution); a side summing to 0 becomes empty, and
    its row keeps that share of the target on the gold token."""
    def one(pairs: list[tuple[int, float]]) -> list[tuple[int, float]]:
        total = sum(w for _, w in pairs)
        return [(j, w / total) for j, w in pairs] if total > 0 else []

    return one(spread[0]), one(spread[1])


def own_span_loss(settings: TrainSettings) -> bool:
    """Whether the settings need :func:`span_loss` rather than the model's own (HF's cross-entropy)."""
    return (settings.label_smoothing > 0 or settings.jaccard_targets > 0 or settings.dropout_samples > 1
            or settings.head_layers > 1)


def _smoothed_nll(logits: Any, target: Any, mask: Any, smoothing: float, spread: Any = None,
                  spread_share: float = 0.0) -> Any:
    """Cross-entropy over the ``mask``ed positions against the gold position, with ``smoothing`` of the target
    spread evenly over them and ``spread_share`` spread as ``spread`` says (rows with an empty ``spread`` keep
    that share on the gold position)."""
    import torch

    logp = torch.log_softmax(logits.float().masked_fill(~mask, -1e4), dim=-1)
    nll = -logp.gather(1, target[:, None])[:, 0]
    loss = (1 - smoothing - spread_share) * nll
    if smoothing > 0:
        loss = loss + smoothing * (-(logp * mask).sum(-1) / mask.sum(-1))
    if spread_share > 0 and spread is not None:
        loss = loss + spread_share * torch.where(spread.sum(-1) > 0, -(spread * logp).sum(-1), nll)
    return loss.mean()


def span_loss(forward: Any, head: Any, batch: dict[str, Any], settings: TrainSettings) -> Any:
    """The span loss with the settings' levers: cross-entropy over the tweet's tokens only, label smoothing
    (``label_smoothing`` of each target spread over the tweet) and multi-sample dropout (``dropout_samples``
    dropout masks on the encoder's last hidden states through the model's own ``qa_outputs`` head, losses
    averaged), the head reading the mean of the last ``head_layers`` hidden layers (as :func:`infer.span_logits`
    does at inference). Without dropout the samples are the model's own logits, so the saved model is a standard
    ``AutoModelForQuestionAnswering``. ``forward`` is the (possibly DDP-wrapped) model, ``head``
    the unwrapped model's ``qa_outputs``."""
    import torch

    inputs = {k: v for k, v in batch.items() if k not in ("start_positions", "end_positions", SPAN_MASK,
                                                          *SPREAD_KEYS)}
    layers = forward(**inputs, output_hidden_states=True).hidden_states
    hidden = torch.stack(layers[-settings.head_layers:]).mean(0) if settings.head_layers > 1 else layers[-1]
    mask = batch[SPAN_MASK]
    samples = []
    for _ in range(max(1, settings.dropout_samples)):
        h = torch.nn.functional.dropout(hidden, settings.sample_dropout, training=True) \
            if settings.dropout_samples > 1 else hidden
        start, end = head(h).split(1, dim=-1)
        ls, share = settings.label_smoothing, settings.jaccard_targets
        samples.append((_smoothed_nll(start[..., 0], batch["start_positions"], mask, ls, batch.get(SPREAD_KEYS[0]),
                                      share)
                        + _smoothed_nll(end[..., 0], batch["end_positions"], mask, ls, batch.get(SPREAD_KEYS[1]),
                                        share)) / 2)
    return torch.stack(samples).mean()
