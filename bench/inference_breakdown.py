"""CPU seconds of each piece of kernel inference, each timed alone (best of 5, ``process_time``, 1 thread).

    .venv/bin/python -m bench.inference_breakdown [--rows 1000]

Tiny model, the real test rows (as bench_inference). Pieces: the forward on the kernel's batches, tokenizing
(``encode_rows``), collate, the batched character tables + best spans + post-processing (the kernel now), and the
per-row Python decoding it replaced (``bench_inference.per_row_decoding``'s loop) on the same logits.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any


def clock(fn: Any, n: int = 5) -> float:
    best = float("inf")
    for _ in range(n):
        c = time.process_time()
        fn()
        best = min(best, time.process_time() - c)
    return best


def main() -> None:
    import torch

    from bench.bench_inference import BATCH, FIXED_LEN, load_rows, tiny_model
    from kaggleops.tasks.tse import infer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, _ = load_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = tiny_model(rows, Path(tmp))
    texts = [r["text"] for r in rows]
    feats = infer.encode_rows(tok, rows, FIXED_LEN)
    order = infer.length_batches(feats, BATCH)
    collated = [infer.collate([feats[i] for i in idx], tok.pad_token_id) for idx in order]
    with torch.inference_mode():
        outs = [model(**b) for b in collated]
    width = infer.char_width(texts)

    def forward() -> None:
        with torch.inference_mode():
            for b in collated:
                model(**b)

    def batched() -> None:
        s, e, o = [], [], []
        for idx, res in zip(order, outs, strict=True):
            bs, be = infer.batch_char_probs([feats[i] for i in idx], res.start_logits, res.end_logits, width)
            s.append(bs)
            e.append(be)
            o += idx
        infer.decode_spans(rows, infer.in_input_order(s, o), infer.in_input_order(e, o),
                           infer.PostProcessing(start_shift=True))

    def per_row() -> None:
        for idx, res in zip(order, outs, strict=True):
            for j, i in enumerate(idx):
                f, text = feats[i], texts[i]
                s, e = res.start_logits[j, :len(f)].float().cpu(), res.end_logits[j, :len(f)].float().cpu()
                ps, pe = [0.0] * len(text), [0.0] * len(text)
                span = f.span_tokens()
                if span:
                    pos = torch.tensor(span)
                    for t, a, b in zip(span, torch.softmax(s[pos], 0).tolist(), torch.softmax(e[pos], 0).tolist(),
                                       strict=True):
                        ps[f.offsets[t][0]] += a
                        pe[f.offsets[t][1] - 1] += b
                best, start = -1.0, 0
                for k in range(len(text)):
                    start = k if ps[k] > ps[start] else start
                    best = max(best, ps[start] * pe[k])

    pieces = [("model forward", forward), ("tokenizing (encode_rows)", lambda: infer.encode_rows(tok, rows, FIXED_LEN)),
              ("collate", lambda: [infer.collate([feats[i] for i in idx], tok.pad_token_id) for idx in order]),
              ("char tables + spans + post (batched, now)", batched), ("the same per row in Python (before)", per_row)]
    for name, fn in pieces:
        print(f"{name:<44} {clock(fn) * 1000:8.1f} CPU ms per {len(rows)} rows", flush=True)


if __name__ == "__main__":
    main()
