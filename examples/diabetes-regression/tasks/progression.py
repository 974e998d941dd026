"""The example's task: predict diabetes progression (RMSE, lower is better) with a linear model.

Written only against kops' public task interface (``kaggleops.task``); ``linear.py`` and ``knn.py`` beside it hold
the models (``model: ridge`` or ``model: knn`` in kops.yaml). Its predictions are numbers, so blends of its runs need
no code: kops averages the OOF ``progression`` column with weights (:meth:`TaskBase.combine`'s default) and ``predict``
averages its model folders with ``ctx.weights`` the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from knn import MODEL_FILE as KNN_FILE
from knn import Neighbours
from linear import Linear, fit, rmse

from kaggleops.task import (
    FoldContext,
    FoldResult,
    Metric,
    PredictContext,
    Submission,
    TaskBase,
    check_columns,
    check_settings,
)

ID, TARGET = "id", "progression"
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
DEFAULTS = {"model": "ridge", "alpha": 0.01, "lr": 0.1, "steps": 300, "log_every": 10, "squares": False, "k": 20,
            "features": None}
SQUARED = "^2"  # a feature name ending so is the square of that feature (``squares: true``)


def design(table: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The model's input columns: each named feature, or its square (``bmi^2``)."""
    return np.column_stack([table[n[: -len(SQUARED)]].to_numpy(float) ** 2 if n.endswith(SQUARED)
                            else table[n].to_numpy(float) for n in names])


def load_model(folder: Path) -> Linear | Neighbours:
    """A fold's model folder: the k-NN (``knn.json``) or the linear model."""
    return Neighbours.load(folder) if (Path(folder) / KNN_FILE).is_file() else Linear.load(folder)


def table_rmse(truth: pd.DataFrame, prediction: pd.DataFrame) -> float:
    """RMSE of ``prediction`` against ``truth``, rows matched by ``id``."""
    merged = truth[[ID, TARGET]].merge(prediction[[ID, TARGET]], on=ID, suffixes=("", "_pred"), validate="1:1")
    if len(merged) != len(truth):
        raise ValueError(f"{len(truth) - len(merged)} id(s) have no prediction")
    return rmse(merged[TARGET], merged[f"{TARGET}_pred"])


class ProgressionRidge(TaskBase):
    """Linear regression with an L2 penalty; k folds, test predictions averaged over the fold models."""

    name = "diabetes-progression"
    submission = Submission(ID, (TARGET,))
    metric = Metric("rmse", higher_is_better=False, fn=table_rmse)
    kernel_requires = ("numpy", "pandas")

    def load_train(self, path: Path) -> pd.DataFrame:
        return check_columns(pd.read_csv(path), [ID, *FEATURES, TARGET], path)

    def load_test(self, path: Path) -> pd.DataFrame:
        return check_columns(pd.read_csv(path), [ID, *FEATURES], path)

    def make_folds(self, train: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
        order = np.random.RandomState(seed).permutation(len(train))
        folds = np.empty(len(train), dtype=int)
        folds[order] = np.arange(len(train)) % n_folds
        return train.assign(fold=folds)

    def settings(self, mapping: dict) -> dict:
        settings = check_settings(mapping, DEFAULTS)
        if settings["model"] not in ("ridge", "knn"):
            raise ValueError(f"model must be ridge or knn, not {settings['model']!r}")
        unknown = sorted(set(settings["features"] or ()) - set(FEATURES))
        if unknown:
            raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(FEATURES)}")
        return settings

    def columns(self, settings: dict) -> list[str]:
        names = list(settings["features"] or FEATURES)
        return names + [n + SQUARED for n in names] if settings["squares"] else names

    def train_fold(self, train: pd.DataFrame, settings: dict, ctx: FoldContext) -> FoldResult:
        fit_rows, valid = train[train["fold"] != ctx.fold], train[train["fold"] == ctx.fold]
        names = self.columns(settings)
        x_fit, x_valid = design(fit_rows, names), design(valid, names)
        if settings["model"] == "knn":
            model = Neighbours.fit(names, x_fit, fit_rows[TARGET].to_numpy(float), int(settings["k"]))
            oof = pd.DataFrame({ID: valid[ID].to_numpy(), TARGET: model.predict(x_valid)})
            score = self.metric(valid, oof)
            ctx.log({"val_rmse": score}, 1)
            return FoldResult(model.save(ctx.out_dir / "model"), oof, score, steps=1)

        def on_step(step: int, model: Linear) -> None:
            if step % settings["log_every"] == 0 or step == settings["steps"]:
                ctx.log({"train_rmse": rmse(fit_rows[TARGET], model.predict(x_fit)),
                         "val_rmse": rmse(valid[TARGET], model.predict(x_valid))}, step)

        model = fit(names, x_fit, fit_rows[TARGET].to_numpy(float),
                    float(settings["alpha"]), float(settings["lr"]), int(settings["steps"]), on_step)
        model_dir = model.save(ctx.out_dir / "model")
        oof = pd.DataFrame({ID: valid[ID].to_numpy(), TARGET: model.predict(x_valid)})
        return FoldResult(model_dir, oof, self.metric(valid, oof), steps=int(settings["steps"]))

    def predict(self, model_dirs: list[Path], test: pd.DataFrame, ctx: PredictContext) -> pd.DataFrame:
        models = [load_model(d) for d in model_dirs]  # each folder says its own model and features: runs blend
        total = sum(w * m.predict(design(test, m.features)) for m, w in zip(models, ctx.weights, strict=True))
        return pd.DataFrame({ID: test[ID].to_numpy(), TARGET: np.round(total / sum(ctx.weights), 4)})
