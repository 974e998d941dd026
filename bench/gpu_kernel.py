"""Time the offline kernel's inference (k-fold base ensemble + reranker) on the real test rows, on any CUDA machine.

    python -m bench.gpu_kernel                       # roberta-base architecture, 5 folds + 5 reranker folds, GPU
    python -m bench.gpu_kernel --arch tiny --rows 200 --folds 2   # a quick CPU smoke run

It lays out what the generated kernel sees (``input/<competition>/test.csv``, one ``input/<dataset>/`` folder per
model, each with a ``kops-manifest.json`` naming its run) and runs ``kaggleops.kernel.runtime.main`` — the exact
code the kernel runs — then prints its timing table. Models are randomly initialised with the real architecture
(roberta-base: 12 layers, hidden 768) and the real roberta-base tokenizer: inference time does not depend on the
weights, and no hub download is needed. Needs ``../shared/data`` (or ``--data``/``--tokenizer``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COMPETITION = "tweet-sentiment-extraction"


def build_models(arch: str, tokenizer_dir: Path, out: Path) -> tuple[Path, Path]:
    """One span model and one reranker model folder (save_pretrained + tokenizer)."""
    from transformers import RobertaConfig, RobertaForQuestionAnswering, RobertaForSequenceClassification

    from kaggleops.tasks.tse.modeling import build_tiny_model, load_tokenizer, save_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    if arch == "tiny":
        span = build_tiny_model(tokenizer)
        config = span.config
    else:
        config = RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=514, type_vocab_size=1,
                               pad_token_id=tokenizer.pad_token_id)
        span = RobertaForQuestionAnswering(config)
    rerank = RobertaForSequenceClassification(RobertaConfig(**{**config.to_dict(), "num_labels": 1}))
    folders = (out / "span", out / "rerank")
    for model, folder in zip((span, rerank), folders, strict=True):
        model.save_pretrained(str(folder))
        save_tokenizer(tokenizer, folder)
    (folders[1] / "kops_rerank.json").write_text(json.dumps({"w": 1.0, "n": 5, "max_len": 128}))
    return folders


def attach(source: Path, input_dir: Path, slug: str, run_id: str) -> dict[str, Any]:
    """An input dataset folder for ``run_id`` whose files link to ``source`` (no copies of big weights)."""
    folder = input_dir / slug
    folder.mkdir(parents=True)
    for f in source.iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "kops-manifest.json").write_text(json.dumps({"run_id": run_id, "files": {}}))
    return {"run_id": run_id, "dataset": f"bench/{slug}", "dataset_version": 1, "weight": 1.0}


def layout(test_csv: Path, rows: int | None, input_dir: Path) -> int:
    comp = input_dir / COMPETITION
    comp.mkdir(parents=True)
    with test_csv.open(newline="", encoding="utf-8") as f:
        test = list(csv.DictReader(f))[:rows]
    for name, cols in (("test.csv", ["textID", "text", "sentiment"]), ("sample_submission.csv",
                                                                        ["textID", "selected_text"])):
        with (comp / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, cols, extrasaction="ignore")
            w.writeheader()
            w.writerows({**r, "selected_text": ""} for r in test)
    return len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["roberta-base", "tiny"], default="roberta-base")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=None, help="test rows (default: all 3,534)")
    parser.add_argument("--data", type=Path, default=SHARED / COMPETITION / "test.csv")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "roberta-base-tokenizer")
    parser.add_argument("--no-rerank", action="store_true")
    args = parser.parse_args()
    import torch

    from kaggleops.kernel.runtime import Timings
    from kaggleops.kernel.runtime import main as kernel_main

    with tempfile.TemporaryDirectory(prefix="kops-gpu-bench-") as tmp:
        root = Path(tmp)
        span, rerank = build_models(args.arch, args.tokenizer, root / "models")
        n = layout(args.data, args.rows, root / "input")
        models = [attach(span, root / "input", f"base-f{k}", f"base{k}") for k in range(args.folds)]
        reranker = None if args.no_rerank else {
            "run_id": "rerank", "w": 1.0, "n": 5,
            "models": [attach(rerank, root / "input", f"rerank-f{k}", f"rerank{k}") for k in range(args.folds)]}
        plan = {"competition": COMPETITION, "models": models, "reranker": reranker,
                "task": {"spec": "kaggleops.tasks.tse:TweetSentimentExtraction",
                         "options": {"max_len": 128, "batch_size": 64}}}
        (root / "working").mkdir()
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA)"
        print(f"{args.arch}: {args.folds} fold(s){'' if args.no_rerank else ' + reranker'}, {n} rows on {device}")
        t0 = time.perf_counter()
        kernel_main(plan, root / "input", root / "working", Timings())
        print(f"wall {time.perf_counter() - t0:.1f} s for {n} rows")
        shutil.rmtree(root / "working", ignore_errors=True)


if __name__ == "__main__":
    main()
