"""k nearest neighbours on standardised features (numpy only): a second model family, so blends of this task's
runs (``kops ensemble``) have different errors to average. A local module beside the task file, like linear.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = "knn.json"


@dataclass
class Neighbours:
    """The mean target of the ``k`` training rows nearest (Euclidean, standardised ``features``) to each row."""

    features: list[str]
    mean: np.ndarray
    std: np.ndarray
    rows: np.ndarray  # the training rows, standardised
    targets: np.ndarray
    k: int

    @classmethod
    def fit(cls, features: list[str], x: np.ndarray, y: np.ndarray, k: int) -> Neighbours:
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0
        return cls(features, mean, std, (x - mean) / std, np.asarray(y, float), k)

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        dist = ((z[:, None, :] - self.rows[None, :, :]) ** 2).sum(axis=-1)
        nearest = np.argsort(dist, axis=1, kind="stable")[:, : self.k]
        return self.targets[nearest].mean(axis=1)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        data = {"features": self.features, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "rows": self.rows.tolist(), "targets": self.targets.tolist(), "k": self.k}
        (folder / MODEL_FILE).write_text(json.dumps(data))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Neighbours:
        data = json.loads((Path(folder) / MODEL_FILE).read_text())
        return cls(data["features"], np.array(data["mean"]), np.array(data["std"]), np.array(data["rows"]),
                   np.array(data["targets"]), int(data["k"]))
