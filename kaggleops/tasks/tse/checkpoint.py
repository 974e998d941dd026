"""Training checkpoints: everything needed to continue a fold exactly where it stopped.

A checkpoint is a folder: ``state.pt`` (model, optimizer, scheduler, grad scaler, sampler position =
epoch + next batch group, step, python/numpy/torch/CUDA RNG states, the best-so-far weights and their OOF
predictions, ``world_size`` that wrote it) and ``tokenizer/`` (so a tokenizer trained on the fly is reused, not
retrained). Under DDP rank 0 writes it from the unwrapped model; the sampler position counts GLOBAL batches, so
a checkpoint of 2 processes resumes in 1 (or N) unchanged.
No MLflow here: the caller decides where a finished checkpoint folder goes.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"  # step/total/epoch, readable without torch
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (when present) CUDA RNG states."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with pandas
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is available)."""
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, state: dict[str, Any], tokenizer: Any) -> Path:
    """Write ``state`` (+ the RNG states) and the tokenizer into ``folder``; ``state.pt`` appears last, whole."""
    import torch

    from kaggleops.tasks.tse.modeling import save_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, folder / TOKENIZER_DIR)
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save({**state, "rng": rng_state(), "format": FORMAT_VERSION}, tmp)
    (folder / PROGRESS_FILE).write_text(json.dumps({k: state[k] for k in ("step", "total", "epoch") if k in state}))
    os.replace(tmp, folder / STATE_FILE)
    return folder


def progress(folder: Path) -> dict[str, int]:
    """``{"step", "total", "epoch"}`` of a checkpoint folder, read without loading its state (empty if unknown)."""
    path = Path(folder) / PROGRESS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load(folder: Path) -> dict[str, Any]:
    """The state saved by :func:`save` (our own file: loaded with ``weights_only=False``)."""
    import torch

    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint folder {folder}")
    return torch.load(path, map_location="cpu", weights_only=False)


def is_checkpoint(folder: Path | None) -> bool:
    """Whether ``folder`` holds a complete checkpoint."""
    return folder is not None and (Path(folder) / STATE_FILE).is_file()
