"""Training one fold of the span-extraction model (the Tweet Sentiment Extraction base model).

No MLflow, no Kaggle: the caller passes paths and a ``log(metrics, step)`` callback.

Under ``torchrun`` (see :mod:`kaggleops.distributed`) the model is wrapped in DistributedDataParallel: every rank
walks the same global batches and trains on its shard of each, gradients are all-reduced, ``batch_size`` stays
the GLOBAL batch (per rank: ``batch_size / world_size``), so a config means the same training on 1 or N GPUs.
Rank 0 alone validates, logs and checkpoints (the unwrapped model); the others wait at a barrier.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggleops import distributed as dist
from kaggleops.tasks.tse import infer
from kaggleops.tasks.tse.loss import SPAN_MASK, SPREAD_KEYS, jaccard_spread, normalised, own_span_loss, span_loss
from kaggleops.tasks.tse.metric import jaccard
from kaggleops.tasks.tse.modeling import TINY
from kaggleops.tasks.tse.optim import autocast, optimizer, scheduler
from kaggleops.tasks.tse.sampler import BUCKET_WINDOW, epoch_batches, step_groups  # noqa: F401  (public here too)

if TYPE_CHECKING:
    import pandas as pd

LogFn = Callable[[dict[str, float], int], None]
CheckpointFn = Callable[[Path, int], None]
OOF_COLUMNS = ["textID", "sentiment", "text", "selected_text", "pred", "jaccard", "candidates"]


@dataclass
class TrainSettings:
    """Settings of one fold's training.

    ``model``: ``"tiny"`` (a 2-layer RoBERTa built from a config, tokenizer trained on the fly) or a
    model name / local folder for ``AutoModelForQuestionAnswering.from_pretrained``. The defaults
    (lr 5e-4, 6 epochs) suit the tiny model trained from scratch: on the bundled sample they reach
    ~0.82 mean val Jaccard over 5 folds (whole tweet: ~0.58) in ~5 s per fold on 2 CPU threads.
    For a small pretrained encoder (all-MiniLM-L6-v2) on CPU use README's MiniLM preset (2 epochs, lr 3e-4,
    ``train_neutral=False``, ``jaccard_targets=0.3``, ``start_shift=True``, ``shift_min_spaces=1``): lr 3e-5
    undertrains it (BENCHMARKS.md, "Training quality").

    A step is one optimizer step over ``batch_size × grad_accum`` rows; ``max_steps``, ``eval_every`` and
    ``checkpoint_every`` count those.
    """

    model: str = TINY
    tokenizer: str | None = None  # folder with a tokenizer; None: the model's own, or trained on the fly
    max_len: int = 96
    epochs: int = 6
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    schedule: str = "linear"  # lr after warm-up: "linear" (decay to 0), "cosine" or "constant" (SCHEDULES)
    warmup_ratio: float = 0.1  # share of the optimizer steps spent warming the lr up from 0
    train_neutral: bool = True  # False: neutral rows are left out of training (answered by the whole-tweet rule)
    grad_clip: float = 1.0
    label_smoothing: float = 0.0  # share of the start/end target spread evenly over the tweet's tokens
    jaccard_targets: float = 0.0  # share of the start/end target spread by the Jaccard of the span each token gives
    dropout_samples: int = 1  # multi-sample dropout: > 1 averages the span loss over this many dropout masks
    sample_dropout: float = 0.1  # ... the dropout rate of each sample (on the encoder's last hidden states)
    head_layers: int = 1  # the span head reads the mean of the encoder's last this-many hidden layers
    n_folds: int = 5
    seed: int = 42
    vocab_size: int = 2000
    eval_every: int | None = None  # steps between validations; None: once per epoch
    eval_batch_size: int = 64
    max_steps: int | None = None  # stop early after this many optimizer steps (tests, smoke runs)
    device: str = "auto"
    neutral_full_text: bool = True  # post-processing: a neutral tweet's answer is the whole tweet
    start_shift: bool = False  # post-processing: move the start left over extra spaces (infer.PostProcessing)
    shift_min_spaces: int = 2  # ... only when the tweet has at least this many extra spaces before the span
    progress: bool | str = False  # a bar; a string names it (kops hands FoldContext.progress, e.g. "fold 0 (1/5)")
    grad_accum: int = 1  # micro-batches of ``batch_size`` per optimizer step
    length_bucketing: bool = True  # training batches of similar length (less padding), shuffled
    checkpoint_every: int | None = 500  # optimizer steps between resumable checkpoints; None: none
    oof_top_k: int = 10  # candidate spans per OOF row (the reranker's input)
    tiny: dict[str, Any] = field(default_factory=lambda: {
        "hidden": 128, "layers": 2, "heads": 2, "intermediate": 256, "dropout": 0.1})


@dataclass(frozen=True)
class FoldResult:
    """What one fold's training left behind."""

    model_dir: Path
    oof_path: Path
    val_jaccard: float
    best_step: int
    steps: int
    n_train: int
    n_valid: int
    seconds: float = 0.0


@dataclass
class _Split:
    rows: list[dict[str, Any]]
    features: list[infer.Encoded]
    labels: list[tuple[int, int]]
    spread: list[tuple[list[tuple[int, float]], list[tuple[int, float]]]] | None = None  # normalised (starts, ends)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy comes with pandas
        pass


def _tokenizer_and_model(settings: TrainSettings, texts: list[str], work_dir: Path,
                         resume_from: Path | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from kaggleops.tasks.tse import modeling
    from kaggleops.tasks.tse.checkpoint import TOKENIZER_DIR

    if resume_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(resume_from) / TOKENIZER_DIR))
    elif not dist.is_main():
        tokenizer = None  # rank 0's, below: a tokenizer trained on the fly must be the same on every rank
    elif settings.tokenizer:
        tokenizer = modeling.load_tokenizer(settings.tokenizer)
    elif settings.model == TINY:
        tokenizer = modeling.build_tokenizer(texts, work_dir / "tokenizer", settings.vocab_size)
    else:
        tokenizer = modeling.load_pretrained_tokenizer(settings.model)
    if resume_from is None:
        tokenizer = dist.broadcast(tokenizer)
    if settings.model == TINY:
        model = modeling.build_tiny_model(tokenizer, seed=settings.seed, **settings.tiny)
    else:
        model = AutoModelForQuestionAnswering.from_pretrained(settings.model)
    return tokenizer, model


def _split(tokenizer: Any, df: pd.DataFrame, max_len: int, spread: bool = False) -> _Split:
    from kaggleops.tasks.tse.modeling import char_span, token_span

    rows = df[["textID", "text", "selected_text", "sentiment"]].to_dict("records")
    features = infer.encode_rows(tokenizer, rows, max_len)
    labels = [token_span(f.offsets, f.tweet, char_span(r["text"], r["selected_text"]))
              for r, f in zip(rows, features, strict=True)]
    spreads = [normalised(jaccard_spread(str(r["text"]), str(r["selected_text"]), f, lab))
               for r, f, lab in zip(rows, features, labels, strict=True)] if spread else None
    return _Split(rows, features, labels, spreads)


def _batch(split: _Split, idx: list[int], pad_id: int, device: Any, width: int | None = None,
           span_mask: bool = False) -> dict[str, Any]:
    """Rows ``idx`` as tensors with labels; ``width``: pad to it (a DDP shard is padded as its whole batch would
    be: the span loss's softmax runs over the padded positions too, so padding changes the loss).
    ``span_mask``: add ``SPAN_MASK`` (the tweet's tokens and the labels) for :func:`span_loss`."""
    import torch

    batch = infer.collate([split.features[i] for i in idx], pad_id)
    extra = (width or 0) - batch["input_ids"].shape[1]
    if extra > 0:
        batch = {k: torch.nn.functional.pad(v, (0, extra), value=pad_id if k == "input_ids" else 0)
                 for k, v in batch.items()}
    batch["start_positions"] = torch.tensor([split.labels[i][0] for i in idx])
    batch["end_positions"] = torch.tensor([split.labels[i][1] for i in idx])
    if span_mask:
        mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for row, i in enumerate(idx):
            mask[row, split.features[i].tweet] = True
            mask[row, list(split.labels[i])] = True
        batch[SPAN_MASK] = mask
        if split.spread is not None:
            for key, which in zip(SPREAD_KEYS, (0, 1), strict=True):
                spread = torch.zeros(mask.shape)
                for row, i in enumerate(idx):
                    if pairs := split.spread[i][which]:
                        spread[row, [j for j, _ in pairs]] = torch.tensor([w for _, w in pairs])
                batch[key] = spread
    return {k: v.to(device) for k, v in batch.items()}


@dataclass
class _Eval:
    loss: float
    preds: list[str]
    metrics: dict[str, float]
    char_probs: tuple[Any, Any]  # [rows, chars] start/end probabilities (infer.predict_char_probs' tables)


def post_processing(settings: TrainSettings) -> infer.PostProcessing:
    """The settings' post-processing rules (what validation applies and the kernel is told to apply)."""
    return infer.PostProcessing(settings.neutral_full_text, settings.start_shift, settings.shift_min_spaces)


def evaluate(model: Any, split: _Split, pad_id: int, settings: TrainSettings) -> _Eval:
    """Validation loss, predicted spans (the kernel's decoder), Jaccard (overall, per sentiment) on one split."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    total, n = 0.0, 0
    width = infer.char_width([str(r["text"]) for r in split.rows])
    starts, ends, order = [], [], []
    with torch.inference_mode(), autocast(device):
        for idx in infer.length_batches(split.features, settings.eval_batch_size):
            batch = _batch(split, idx, pad_id, device)
            labels = batch.pop("start_positions"), batch.pop("end_positions")
            start, end = infer.span_logits(model, batch)
            loss = (torch.nn.functional.cross_entropy(start.float(), labels[0])
                    + torch.nn.functional.cross_entropy(end.float(), labels[1])) / 2
            total, n = total + float(loss) * len(idx), n + len(idx)
            bs, be = infer.batch_char_probs([split.features[i] for i in idx], start, end, width)
            starts.append(bs)
            ends.append(be)
            order += idx
    model.train()
    ps, pe = infer.in_input_order(starts, order), infer.in_input_order(ends, order)
    preds = infer.decode_spans(split.rows, ps, pe, post_processing(settings))
    return _Eval(total / max(1, n), preds, _jaccard_metrics(split.rows, preds), (ps, pe))


def _jaccard_metrics(rows: list[dict[str, Any]], preds: list[str]) -> dict[str, float]:
    scores: dict[str, list[float]] = {}
    for r, p in zip(rows, preds, strict=True):
        scores.setdefault(str(r["sentiment"]), []).append(jaccard(r["selected_text"], p))
    every = [s for group in scores.values() for s in group]
    metrics = {"val_jaccard": sum(every) / max(1, len(every))}
    metrics.update({f"val_jaccard_{k}": sum(v) / len(v) for k, v in sorted(scores.items())})
    return metrics


@dataclass
class _Best:
    score: float = -1.0
    step: int = 0
    state: dict[str, Any] | None = None
    preds: list[str] = field(default_factory=list)
    candidates: list[list[dict[str, Any]]] = field(default_factory=list)


@dataclass
class _Loop:
    """The mutable pieces of one training run; ``epoch``/``group`` is the sampler position of the next step."""

    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    settings: TrainSettings
    pad_id: int
    log: LogFn
    total: int
    best: _Best = field(default_factory=_Best)
    step: int = 0
    epoch: int = 0
    group: int = 0
    ddp: Any = None  # the DistributedDataParallel wrapper of ``model`` under torchrun

    @property
    def forward(self) -> Any:
        return self.ddp if self.ddp is not None else self.model


def _train_step(loop: _Loop, batches: list[tuple[dict[str, Any], float, int]]) -> float:
    """One optimizer step over ``batches`` (gradient accumulation): this rank's ``(batch, weight, global rows)``
    of each micro-batch (see :func:`kaggleops.distributed.shard`); returns the mean loss over all ranks' rows."""
    import contextlib

    import torch

    loop.optimizer.zero_grad(set_to_none=True)
    rows = sum(n for _, _, n in batches)
    total = 0.0
    for i, (batch, weight, n) in enumerate(batches):
        last = i == len(batches) - 1
        sync = loop.ddp.no_sync() if loop.ddp is not None and not last else contextlib.nullcontext()
        share = n / rows
        with sync:  # no all-reduce before the last micro-batch of the step
            with autocast(batch["input_ids"].device):
                loss = span_loss(loop.forward, loop.model.qa_outputs, batch, loop.settings) \
                    if SPAN_MASK in batch else loop.forward(**batch).loss
            loop.scaler.scale(loss * weight * share).backward()
        total += float(loss.detach()) * weight / dist.world_size() * share
    total = dist.all_sum(total, batch["input_ids"].device)
    loop.scaler.unscale_(loop.optimizer)
    torch.nn.utils.clip_grad_norm_(loop.model.parameters(), loop.settings.grad_clip)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.scheduler.step()
    return total


def _validate(loop: _Loop, valid: _Split, step: int) -> None:
    result = evaluate(loop.model, valid, loop.pad_id, loop.settings)
    loop.log({**result.metrics, "val_loss": result.loss}, step)
    if result.metrics["val_jaccard"] > loop.best.score:
        state = {k: v.detach().to("cpu", copy=True) for k, v in loop.model.state_dict().items()}
        ps, pe = result.char_probs
        post = post_processing(loop.settings)
        candidates = [infer.answer_candidates(str(r["text"]), str(r["sentiment"]), infer.top_k_char_spans(
            str(r["text"]), ps[i], pe[i], loop.settings.oof_top_k), post) for i, r in enumerate(valid.rows)]
        loop.best = _Best(result.metrics["val_jaccard"], step, state, result.preds, candidates)


def _new_loop(model: Any, settings: TrainSettings, pad_id: int, total: int, log: LogFn) -> _Loop:
    import torch

    device = next(model.parameters()).device
    fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    opt = optimizer(model, settings.lr, settings.weight_decay)
    return _Loop(model, opt, scheduler(opt, total, settings.schedule, settings.warmup_ratio),
                 torch.amp.GradScaler("cuda", enabled=fp16), settings, pad_id, log, total)


def _loop_state(loop: _Loop) -> dict[str, Any]:
    b = loop.best
    return {"step": loop.step, "epoch": loop.epoch, "group": loop.group, "total": loop.total,
            "world_size": dist.world_size(), "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(), "scaler": loop.scaler.state_dict(),
            "best": {"score": b.score, "step": b.step, "state": b.state, "preds": b.preds,
                     "candidates": b.candidates}}


def _restore(loop: _Loop, state: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint's state into ``loop``; returns its RNG states (restored just before the next step)."""
    if state["total"] != loop.total:
        raise ValueError(f"checkpoint was made for {state['total']} steps, these settings give {loop.total}")
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    loop.scaler.load_state_dict(state["scaler"])
    loop.step, loop.epoch, loop.group = state["step"], state["epoch"], state["group"]
    loop.best = _Best(**state["best"])
    return state["rng"]


@dataclass
class _Checkpointing:
    """Where checkpoints go: ``out_dir/checkpoints/step-N``, handed to ``on_checkpoint`` (which then owns it)."""

    out_dir: Path
    tokenizer: Any
    on_checkpoint: CheckpointFn | None
    last: Path | None = None

    def save(self, loop: _Loop) -> None:
        import shutil

        from kaggleops.tasks.tse import checkpoint

        folder = checkpoint.save(self.out_dir / "checkpoints" / f"step-{loop.step}", _loop_state(loop), self.tokenizer)
        if self.on_checkpoint is not None:
            self.on_checkpoint(folder, loop.step)
        else:
            if self.last is not None and self.last != folder:
                shutil.rmtree(self.last, ignore_errors=True)
            self.last = folder


def _total_steps(train: _Split, settings: TrainSettings) -> tuple[int, int]:
    batches = math.ceil(len(train.rows) / settings.batch_size)
    per_epoch = math.ceil(batches / max(1, settings.grad_accum))
    total = per_epoch * settings.epochs
    return (min(total, settings.max_steps) if settings.max_steps else total), per_epoch


def _shards(train: _Split, group: list[list[int]], pad_id: int, device: Any,
            settings: TrainSettings) -> list[tuple[dict[str, Any], float, int]]:
    """This rank's ``(batch, weight, global rows)`` of each global micro-batch of one step."""
    out = []
    for idx in group:
        mine, weight = dist.shard(idx)
        width = max(len(train.features[i]) for i in idx) if dist.world_size() > 1 else None
        out.append((_batch(train, mine, pad_id, device, width, span_mask=own_span_loss(settings)), weight, len(idx)))
    return out


def _after_step(loop: _Loop, valid: _Split, ckpt: _Checkpointing, eval_every: int, bar: Any,
                stopping: bool = False) -> None:
    """Rank 0 validates and checkpoints when due (every ``checkpoint_every`` steps, at each epoch's end, and when
    ``stopping``: the user asked to stop, ``ctx.should_stop()``); the other ranks wait for it."""
    evaluate_now = loop.step % eval_every == 0 or loop.step == loop.total
    save_now = bool(loop.settings.checkpoint_every) and (loop.step % (loop.settings.checkpoint_every or 1) == 0 or (
        loop.step < loop.total and (loop.group == 0 or stopping)))
    if dist.is_main():
        if evaluate_now:
            _validate(loop, valid, loop.step)
            bar.set_postfix(val_jaccard=f"{loop.best.score:.4f}")
        if save_now:
            ckpt.save(loop)
    if evaluate_now or save_now:
        dist.barrier()


def _fit(model: Any, train: _Split, valid: _Split, settings: TrainSettings, pad_id: int, log: LogFn,
         ckpt: _Checkpointing, resume: dict[str, Any] | None = None,
         should_stop: Callable[[], bool] = lambda: False) -> _Loop:
    """Train for ``settings.epochs`` (or ``max_steps``); validate every ``eval_every`` steps and at the end;
    checkpoint every ``checkpoint_every`` steps. With ``resume`` (a loaded checkpoint) continue from it."""
    from tqdm.auto import tqdm

    from kaggleops.tasks.tse.checkpoint import set_rng_state

    total, per_epoch = _total_steps(train, settings)
    eval_every = settings.eval_every or per_epoch
    loop = _new_loop(model, settings, pad_id, total, log)
    device = next(model.parameters()).device
    if resume is not None:
        set_rng_state(_restore(loop, resume))
    loop.ddp = dist.wrap(model, device, settings.seed, loop.step)
    label = settings.progress if isinstance(settings.progress, str) else "train"  # e.g. "fold 0 (1/5)"
    bar = tqdm(total=total, initial=loop.step, desc=label, disable=not settings.progress or not dist.is_main())
    model.train()
    while loop.step < total:
        groups = step_groups(train.features, settings, loop.epoch)
        bar.set_description(f"{label} epoch {min(loop.epoch + 1, settings.epochs)}/{settings.epochs}", refresh=False)
        for g in range(loop.group, len(groups)):
            started = time.perf_counter()
            lr = loop.scheduler.get_last_lr()[0]
            loss = _train_step(loop, _shards(train, groups[g], pad_id, device, settings))
            rows = sum(len(idx) for idx in groups[g])
            loop.step, loop.group = loop.step + 1, g + 1
            if loop.group == len(groups):
                loop.epoch, loop.group = loop.epoch + 1, 0
            bar.update(1)
            log({"train_loss": loss, "lr": lr, "samples_per_s": rows / (time.perf_counter() - started),
                 "epoch": loop.epoch + loop.group / len(groups)}, loop.step)
            stopping = should_stop() and loop.step < total
            _after_step(loop, valid, ckpt, eval_every, bar, stopping)
            if stopping:
                bar.close()
                raise KeyboardInterrupt  # stopped at a safe point, checkpoint saved (when checkpointing is on)
            if loop.step >= total or loop.group == 0:
                break
    bar.close()
    return loop


def _write_oof(valid: _Split, best: _Best, path: Path) -> Path:
    """The OOF file: one row per validation tweet, with ``candidates`` = JSON list of the top-k spans."""
    import json

    import pandas as pd

    df = pd.DataFrame(valid.rows)
    df["pred"] = best.preds
    df["jaccard"] = [jaccard(t, p) for t, p in zip(df["selected_text"], best.preds, strict=True)]
    df["candidates"] = [json.dumps(c, ensure_ascii=False) for c in best.candidates]
    df[OOF_COLUMNS].to_csv(path, index=False)
    return path


def _no_log(metrics: dict[str, float], step: int) -> None:
    return None


def train_fold(train_df: pd.DataFrame, settings: TrainSettings, fold: int, out_dir: str | Path,
               log: LogFn | None = None, on_checkpoint: CheckpointFn | None = None,
               resume_from: str | Path | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> FoldResult:
    """Train on every fold but ``fold``, validate on ``fold``, keep the checkpoint with the best val Jaccard.

    ``train_df`` needs the train columns; a ``fold`` column is made with :func:`make_folds` when absent.
    ``log(metrics, step)`` receives ``train_loss``, ``lr``, ``samples_per_s`` and ``epoch`` every step, and
    ``val_jaccard``, ``val_jaccard_<sentiment>`` and ``val_loss`` at each validation. Writes ``out_dir/model/``
    (model + tokenizer, ``save_pretrained``) and ``out_dir/oof.csv`` (with top-k ``candidates``).

    Every ``settings.checkpoint_every`` steps a resumable checkpoint folder is written
    and passed to ``on_checkpoint(folder, step)``, which then owns it. ``resume_from`` (such a folder)
    continues the fold from that checkpoint: same batches, same RNG, so the same final weights on CPU.

    Under torchrun every rank calls this with the same arguments (``resume_from`` a folder every rank can read);
    only rank 0 logs, checkpoints and writes ``model/`` and ``oof.csv``; every rank returns rank 0's best score.
    A checkpoint records the sampler position in global batches, so it resumes under any number of processes.
    ``should_stop()`` (kops hands ``ctx.should_stop``: the first Ctrl-C/SIGTERM of ``kops train``) is asked after
    every step; when True the fold checkpoints there and raises KeyboardInterrupt.

    Example:
        >>> res = train_fold(load_train("train.csv"), TrainSettings(), fold=0, out_dir="out/f0")  # doctest: +SKIP
        >>> res.val_jaccard  # doctest: +SKIP
    """
    import tempfile

    from kaggleops.tasks.tse import checkpoint
    from kaggleops.tasks.tse.data import make_folds
    from kaggleops.tasks.tse.modeling import save_tokenizer

    started = time.perf_counter()
    _seed_everything(settings.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = train_df if "fold" in train_df.columns else make_folds(train_df, settings.n_folds, settings.seed)
    tr_df, va_df = df[df["fold"] != fold], df[df["fold"] == fold]
    if not settings.train_neutral:
        tr_df = tr_df[tr_df["sentiment"] != "neutral"]
    if va_df.empty or tr_df.empty:
        raise ValueError(f"fold {fold}: {len(tr_df)} training and {len(va_df)} validation rows; need both")
    resume = checkpoint.load(Path(resume_from)) if resume_from is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, model = _tokenizer_and_model(settings, tr_df["text"].tolist(), Path(tmp),
                                                Path(resume_from) if resume_from is not None else None)
    model.kops_head_layers = settings.head_layers
    model.to(dist.device(settings.device))
    train = _split(tokenizer, tr_df, settings.max_len, spread=settings.jaccard_targets > 0)
    valid = _split(tokenizer, va_df, settings.max_len)
    ckpt = _Checkpointing(out_dir, tokenizer, on_checkpoint)
    loop = _fit(model, train, valid, settings, tokenizer.pad_token_id, log or _no_log, ckpt, resume, should_stop)
    best = loop.best
    model_dir, oof_path = out_dir / "model", out_dir / "oof.csv"
    if dist.is_main():
        model.load_state_dict(best.state)
        model.save_pretrained(str(model_dir))
        save_tokenizer(tokenizer, model_dir)
        infer.write_infer_config(model_dir, post_processing(settings), settings.max_len, settings.head_layers)
        _write_oof(valid, best, oof_path)
    score, best_step = dist.broadcast((best.score, best.step))
    return FoldResult(model_dir, oof_path, score, best_step, loop.step, len(train.rows), len(valid.rows),
                      time.perf_counter() - started)
