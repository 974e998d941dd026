"""A ridge-penalised linear model fitted by full-batch gradient descent on standardised features (numpy only).

A local module beside the task file: kops ships it with the task into the offline kernel.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = "linear.json"


@dataclass
class Linear:
    """``y = ((x - mean) / std) @ weights + bias``."""

    features: list[str]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std) @ self.weights + self.bias

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        data = {"features": self.features, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias}
        (folder / MODEL_FILE).write_text(json.dumps(data, indent=1))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Linear:
        data = json.loads((Path(folder) / MODEL_FILE).read_text())
        return cls(data["features"], np.array(data["mean"]), np.array(data["std"]), np.array(data["weights"]),
                   float(data["bias"]))


def rmse(truth: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(truth, float) - np.asarray(pred, float)) ** 2)))


def fit(features: list[str], x: np.ndarray, y: np.ndarray, alpha: float, lr: float, steps: int,
        on_step: Callable[[int, Linear], None]) -> Linear:
    """Gradient descent on mean squared error + ``alpha`` × the squared weights; ``on_step(step, model)`` each step."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    z = (x - mean) / std
    model = Linear(features, mean, std, np.zeros(x.shape[1]), float(y.mean()))
    for step in range(1, steps + 1):
        err = z @ model.weights + model.bias - y
        model.weights = model.weights - lr * (2 * z.T @ err / len(y) + 2 * alpha * model.weights)
        model.bias -= lr * 2 * float(err.mean())
        on_step(step, model)
    return model
