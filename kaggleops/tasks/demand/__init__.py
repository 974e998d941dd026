"""The built-in demand-forecasting task: an evaluation-API competition (``datasets/demand-forecasting/``).

The gateway serves the hidden test set one date per call: ``predict(test, lags)`` with that date's rows and the
previous date's demand per series. The model is a ridge regression of demand on yesterday's demand and the two
known features (numpy only; trains in milliseconds); folds are contiguous blocks of dates. The task implements
:class:`kaggleops.task.BatchPredict`: ``load_models`` once on the first call, then ``predict_batch`` per date,
remembering each series' last revealed demand (a series that opens during the test starts from the mean).

Written only against :mod:`kaggleops.task`. Importing this package imports no numpy/pandas.

Example:
    >>> from kaggleops.tasks import get_task
    >>> get_task("demand-forecasting").submission.header
    ['row_id', 'target']
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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

__all__ = ["DemandForecast", "rmse"]

ID, TARGET, LAG = "row_id", "target", "target_lag_1"
FEATURES = ("x0", "x1")
TEST_COLUMNS = (ID, "date_id", "series_id", *FEATURES)
COEF_FILE = "coef.json"


def rmse(truth: Any, prediction: Any) -> float:
    """Root mean squared error of ``target``, rows matched by ``row_id``."""
    merged = truth[[ID, TARGET]].merge(prediction[[ID, TARGET]], on=ID, suffixes=("", "_pred"), validate="1:1")
    if len(merged) != len(truth):
        raise ValueError(f"no prediction for {len(truth) - len(merged)} row_id(s)")
    return float(((merged[TARGET] - merged[f"{TARGET}_pred"]) ** 2).mean() ** 0.5)


def _design(lag: Any, table: Any) -> Any:
    import numpy as np

    return np.column_stack([np.ones(len(table)), lag, *(table[c].to_numpy(float) for c in FEATURES)])


class DemandForecast(TaskBase):
    """Ridge on [1, yesterday's demand, x0, x1]; ensemble = coefficients averaged with the kernel's weights."""

    name = "demand-forecasting"
    submission = Submission(ID, (TARGET,))
    metric = Metric("rmse", higher_is_better=False, fn=rmse)
    kernel_requires: tuple[str, ...] = ("numpy", "pandas")
    train_columns = (*TEST_COLUMNS, TARGET)
    test_columns = TEST_COLUMNS

    def sample_dir(self) -> Path:
        """The bundled competition (``datasets/demand-forecasting``)."""
        from kaggleops.resources import bundled_competition

        return bundled_competition(self.name)

    def load_train(self, path: str | Path) -> Any:
        """train.csv with ``target_lag_1`` (each series' previous date); a series' first date is dropped."""
        import pandas as pd

        df = check_columns(pd.read_csv(path), self.train_columns, path).sort_values(["series_id", "date_id"])
        df[LAG] = df.groupby("series_id")[TARGET].shift(1)
        return df.dropna(subset=[LAG]).sort_values(["date_id", "series_id"]).reset_index(drop=True)

    def load_test(self, path: str | Path) -> Any:
        """test.csv (the rows the gateway serves), checked."""
        import pandas as pd

        return check_columns(pd.read_csv(path), self.test_columns, path)

    def make_folds(self, train: Any, n_folds: int, seed: int) -> Any:
        """Contiguous blocks of dates (a time series: no shuffling)."""
        dates = sorted(train["date_id"].unique())
        block = {d: i * n_folds // len(dates) for i, d in enumerate(dates)}
        return train.assign(fold=train["date_id"].map(block).astype(int))

    def settings(self, mapping: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``ridge``: the L2 penalty (the intercept is not penalised)."""
        return check_settings(mapping or {}, {"ridge": 1.0})

    def train_fold(self, train: Any, settings: Any, ctx: FoldContext) -> FoldResult:
        """Fit on the other folds, score the held-out one; ``model/coef.json`` holds the coefficients."""
        import numpy as np

        started = time.perf_counter()
        fit, valid = train[train["fold"] != ctx.fold], train[train["fold"] == ctx.fold]
        x, y = _design(fit[LAG].to_numpy(float), fit), fit[TARGET].to_numpy(float)
        penalty = settings["ridge"] * np.eye(x.shape[1])
        penalty[0, 0] = 0.0
        coef = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        oof = valid[[ID]].assign(**{TARGET: _design(valid[LAG].to_numpy(float), valid) @ coef})
        score = self.metric(valid, oof)
        ctx.log({"val_rmse": score}, 1)
        model_dir = ctx.out_dir / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / COEF_FILE).write_text(json.dumps({"coef": coef.tolist(), "series": sorted(
            int(s) for s in train["series_id"].unique()), "mean": float(fit[TARGET].mean())}))
        return FoldResult(model_dir, oof, score, steps=1, best_step=1,
                          metrics={"n_train": float(len(fit)), "train_seconds": time.perf_counter() - started})

    # ---- the evaluation API: kaggleops.task.BatchPredict ------------------------------------------------------

    def load_models(self, model_dirs: Sequence[Path], ctx: PredictContext) -> dict[str, Any]:
        """The weighted mean of the folds' coefficients, and an empty memory of each series' last demand."""
        import numpy as np

        saved = [json.loads((Path(d) / COEF_FILE).read_text()) for d in model_dirs]
        coef = sum(w * np.array(s["coef"]) for w, s in zip(ctx.weights, saved, strict=True))
        ctx.log(f"demand: {len(saved)} model(s) loaded")
        return {"coef": coef, "mean": saved[0]["mean"], "series": set(saved[0]["series"]), "last": {}}

    def predict_batch(self, models: dict[str, Any], test: Any, lags: Any, ctx: PredictContext) -> Any:
        """One date: remember the revealed demand (``lags``), predict each row from its series' last demand."""
        import pandas as pd

        models["last"].update(zip(lags["series_id"].astype(int), lags[LAG].astype(float), strict=True))
        lag = [models["last"].get(int(s), models["mean"]) for s in test["series_id"]]
        return pd.DataFrame({ID: test[ID].to_numpy(), TARGET: _design(lag, test) @ models["coef"]})

    def gateway_data_paths(self, competition_dir: Path) -> tuple[Path, Path]:
        """The public mock test the local gateway serves: ``test.csv`` and ``lags.csv``."""
        return (Path(competition_dir) / "test.csv", Path(competition_dir) / "lags.csv")

    def predict(self, model_dirs: Sequence[Path], test: Any, ctx: PredictContext) -> Any:
        """Offline predictions for a table that already holds ``target_lag_1`` (e.g. train rows)."""
        import pandas as pd

        models = self.load_models(model_dirs, ctx)
        return pd.DataFrame({ID: test[ID].to_numpy(), TARGET: _design(test[LAG].to_numpy(float), test)
                             @ models["coef"]})
