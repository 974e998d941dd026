"""A small CNN for square digit images (8 × 8 here, 28 × 28 on Kaggle's MNIST), saved as a plain folder.

A model folder holds ``model.pt`` (the state dict) and ``config.json`` (``side``, ``channels``, ``dropout``,
``n_classes``): torch alone loads it, inside an offline kernel too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS, CONFIG = "model.pt", "config.json"


class DigitCNN(nn.Module):
    """conv-conv-pool-conv-pool, then dropout and a linear classifier (about 60 k weights at 32 channels)."""

    def __init__(self, side: int, channels: int = 32, dropout: float = 0.25, n_classes: int = 10) -> None:
        super().__init__()
        self.config = {"side": side, "channels": channels, "dropout": dropout, "n_classes": n_classes}
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * c * 4, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a ``(batch, 1, side, side)`` tensor."""
        return self.head(self.features(x))


def save(model: DigitCNN, folder: Path, state: dict[str, Any] | None = None) -> Path:
    """Write ``model.pt`` (``state`` or the model's own weights) and ``config.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state if state is not None else model.state_dict(), folder / WEIGHTS)
    (folder / CONFIG).write_text(json.dumps(model.config, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def load(folder: Path, device: str | torch.device = "cpu") -> DigitCNN:
    """The model saved in ``folder``, in eval mode on ``device``."""
    folder = Path(folder)
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a digits model folder: {name} is missing")
    model = DigitCNN(**json.loads((folder / CONFIG).read_text(encoding="utf-8")))
    model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
    return model.to(device).eval()


@torch.no_grad()
def probabilities(model: DigitCNN, x: Any, batch_size: int = 512) -> torch.Tensor:
    """Softmax class probabilities of ``x`` (numpy ``(n, 1, side, side)``), on the CPU."""
    device = next(model.parameters()).device
    tensor = torch.as_tensor(x)
    out = [torch.softmax(model(tensor[i:i + batch_size].to(device)), dim=1).cpu()
           for i in range(0, len(tensor), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, model.config["n_classes"]))
