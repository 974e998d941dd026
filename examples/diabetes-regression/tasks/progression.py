"""The example's task: predict diabetes progression (RMSE, lower is better) with a linear model.

Written only against kops' public task interface (``kaggleops.task``); ``linear.py`` beside it holds the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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
DEFAULTS = {"alpha": 0.01, "lr": 0.1, "steps": 300, "log_every": 10}


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
        return check_settings(mapping, DEFAULTS)

    def train_fold(self, train: pd.DataFrame, settings: dict, ctx: FoldContext) -> FoldResult:
        fit_rows, valid = train[train["fold"] != ctx.fold], train[train["fold"] == ctx.fold]
        x_valid = valid[FEATURES].to_numpy(float)

        def on_step(step: int, model: Linear) -> None:
            if step % settings["log_every"] == 0 or step == settings["steps"]:
                ctx.log({"train_rmse": rmse(fit_rows[TARGET], model.predict(fit_rows[FEATURES].to_numpy(float))),
                         "val_rmse": rmse(valid[TARGET], model.predict(x_valid))}, step)

        model = fit(FEATURES, fit_rows[FEATURES].to_numpy(float), fit_rows[TARGET].to_numpy(float),
                    float(settings["alpha"]), float(settings["lr"]), int(settings["steps"]), on_step)
        model_dir = model.save(ctx.out_dir / "model")
        oof = pd.DataFrame({ID: valid[ID].to_numpy(), TARGET: model.predict(x_valid)})
        return FoldResult(model_dir, oof, self.metric(valid, oof), steps=int(settings["steps"]))

    def predict(self, model_dirs: list[Path], test: pd.DataFrame, ctx: PredictContext) -> pd.DataFrame:
        x = test[FEATURES].to_numpy(float)
        total = sum(w * Linear.load(d).predict(x) for d, w in zip(model_dirs, ctx.weights, strict=True))
        return pd.DataFrame({ID: test[ID].to_numpy(), TARGET: np.round(total / sum(ctx.weights), 4)})
