"""The built-in Digit Recognizer task (Kaggle's MNIST "Getting Started" competition): a small torch CNN.

Files in Kaggle's format: ``train.csv`` (``label,pixel0..pixelN``), ``test.csv`` (pixels only),
``sample_submission.csv`` (``ImageId,Label``, ImageId counting test rows from 1); metric: accuracy. The
bundled copy (``datasets/digit-recognizer/``) holds scikit-learn's 1,797 real 8 × 8 digits in that format.

Written only against :mod:`kaggleops.task`. Importing this package imports no torch/pandas.

Example:
    >>> from kaggleops.tasks import get_task
    >>> task = get_task("digit-recognizer")
    >>> task.submission.header
    ['ImageId', 'Label']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kaggleops.task import FoldContext, FoldResult, Metric, PredictContext, SettingsError, Submission, TaskBase

__all__ = ["DigitRecognizer", "table_accuracy"]

ID, TARGET = "ImageId", "Label"


def table_accuracy(truth: Any, prediction: Any) -> float:
    """Share of ``truth`` rows whose ``Label`` (or train's ``label``) the prediction matches, rows matched by
    ``ImageId``."""
    column = TARGET if TARGET in truth.columns else "label"
    preds = dict(zip(prediction[ID].astype(int), prediction[TARGET].astype(int), strict=True))
    ids = truth[ID].astype(int).tolist()
    missing = [i for i in ids if i not in preds]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} ImageId(s), e.g. {missing[:3]}")
    hits = sum(preds[i] == int(t) for i, t in zip(ids, truth[column].tolist(), strict=True))
    return hits / len(ids)


class DigitRecognizer(TaskBase):
    """Digit Recognizer: k-fold small CNNs, test predictions = class probabilities averaged over the folds."""

    name = "digit-recognizer"
    submission = Submission(ID, (TARGET,))
    metric = Metric("accuracy", higher_is_better=True, fn=table_accuracy)
    kernel_requires: tuple[str, ...] = ("torch", "numpy", "pandas")
    blend_columns: tuple[str, ...] = tuple(f"p{k}" for k in range(10))
    """The OOF's class probabilities: a blend averages them (as ``predict`` does over folders) and takes the argmax."""

    def combine(self, tables: Sequence[Any], weights: Sequence[float]) -> Any:
        """The runs' class probabilities averaged with ``weights``; ``Label`` their argmax (what ``predict`` does)."""
        out = super().combine(tables, weights)
        out[TARGET] = out[list(self.blend_columns)].to_numpy().argmax(axis=1)
        return out

    def sample_dir(self) -> Path:
        """The bundled competition: 8 × 8 digits from scikit-learn's ``load_digits`` in Kaggle's format."""
        from kaggleops.resources import bundled_competition

        return bundled_competition(self.name)

    def load_train(self, path: str | Path) -> Any:
        """train.csv (``label`` + pixels), checked, with ``ImageId`` numbering its rows from 1."""
        from kaggleops.tasks.digits.data import load_train

        return load_train(path)

    def load_test(self, path: str | Path) -> Any:
        """test.csv (pixels), checked, with ``ImageId`` 1..n as Kaggle numbers the test rows."""
        from kaggleops.tasks.digits.data import load_test

        return load_test(path)

    def make_folds(self, train: Any, n_folds: int, seed: int) -> Any:
        """A ``fold`` column stratified by label."""
        from kaggleops.tasks.digits.data import make_folds

        return make_folds(train, n_folds, seed)

    def settings(self, mapping: Mapping[str, Any] | None = None) -> Any:
        """``DigitsSettings`` from the ``train:`` mapping; an unknown key or a value of the wrong type raises
        SettingsError naming it.

        Example:
            >>> DigitRecognizer().settings({"epochs": 3}).epochs
            3
        """
        from kaggleops.tasks.digits.train import DigitsSettings

        fields = {f.name: f for f in dataclasses.fields(DigitsSettings)}
        values = dict(mapping or {})
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise SettingsError(f"unknown train setting `{unknown[0]}`; known: {', '.join(sorted(fields))}")
        defaults = DigitsSettings()
        for key, value in values.items():
            kind = type(getattr(defaults, key))
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not ok or isinstance(value, bool):
                raise SettingsError(f"train setting `{key}` must be a {kind.__name__}, not {value!r}")
            if kind in (int, float) and value < 0:
                raise SettingsError(f"train setting `{key}` must not be negative, not {value!r}")
        return dataclasses.replace(defaults, **values)

    def train_fold(self, train: Any, settings: Any, ctx: FoldContext) -> FoldResult:
        """Train on the other folds, validate on ``ctx.fold`` after each epoch; the best epoch's weights are kept.

        Logs ``train_loss``/``lr``/``epoch`` every step and ``val_accuracy``/``val_loss`` every epoch; hands a
        checkpoint to ``ctx.checkpoint`` after each epoch and resumes from ``ctx.resume_from``.
        """
        from kaggleops.tasks.digits.train import train_fold

        res = train_fold(train, settings, ctx.fold, ctx.out_dir, seed=ctx.seed, log=ctx.log,
                         on_checkpoint=ctx.checkpoint, resume_from=ctx.resume_from)
        return FoldResult(res.model_dir, res.oof_path, res.score, steps=res.steps, best_step=res.best_step,
                          metrics={"n_train": float(res.n_train), "n_valid": float(res.n_valid),
                                   "train_seconds": res.seconds})

    def probabilities(self, model_dirs: Sequence[Path], test: Any, weights: Sequence[float] | None = None) -> Any:
        """Class probabilities ``(n, 10)`` of ``test``: each model's softmax, averaged with ``weights``."""
        import numpy as np
        import torch

        from kaggleops.tasks.digits import model as digit_model
        from kaggleops.tasks.digits.data import images

        if not model_dirs:
            raise ValueError("no model folders to predict with")
        weights = list(weights) if weights else [1.0 / len(model_dirs)] * len(model_dirs)
        x = images(test)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        total = np.zeros((len(x), 10))
        for folder, weight in zip(model_dirs, weights, strict=True):
            net = digit_model.load(Path(folder), device)
            total += weight * digit_model.probabilities(net, x).numpy()
        return total / sum(weights)

    def predict(self, model_dirs: Sequence[Path], test: Any, ctx: PredictContext) -> Any:
        """``ImageId,Label``: the digit with the highest averaged probability over the model folders; the averaged
        probabilities ride along as ``p0``…``p9`` (the blend columns), so a kernel blending runs of different code
        versions can ``combine`` these tables (the submission keeps only ``ImageId,Label``)."""
        import pandas as pd

        probs = self.probabilities(model_dirs, test, ctx.weights)
        ctx.log(f"digits: {len(test)} images, {len(model_dirs)} model(s), probabilities averaged")
        table = pd.DataFrame({ID: test[ID].astype(int).to_numpy(), TARGET: probs.argmax(axis=1)})
        return pd.concat([table, pd.DataFrame(probs, columns=list(self.blend_columns))], axis=1)

    def is_checkpoint(self, folder: Path) -> bool:
        """Whether ``folder`` holds a complete training checkpoint (kops resumes only from those)."""
        from kaggleops.tasks.digits.train import is_checkpoint

        return is_checkpoint(folder)
