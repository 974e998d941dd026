"""The demand-forecasting gateway: one date at a time, that date's rows plus the previous date's demand.

Each call is ``predict(test, lags)``: ``test`` the date's rows (row_id, date_id, series_id, x0, x1), ``lags`` the
previous date's demand per series (date_id, series_id, target_lag_1), revealed only now. The answer: a DataFrame
(pandas or polars) with a numeric ``target`` column, one row per test row, in their order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from kaggle_evaluation.core import templates
from kaggle_evaluation.core.base_gateway import GatewayRuntimeError, GatewayRuntimeErrorType

HERE = Path(__file__).resolve().parent
DEFAULT_RESPONSE_TIMEOUT_SECONDS = 5 * 60


class DemandGateway(templates.Gateway):
    def __init__(self, data_paths: tuple[str, ...] | None = None) -> None:
        super().__init__(data_paths, target_column_name="target", row_id_column_name="row_id")
        timeout = os.getenv("KAGGLE_EVALUATION_RESPONSE_TIMEOUT_SECONDS")
        self.set_response_timeout_seconds(float(timeout) if timeout else DEFAULT_RESPONSE_TIMEOUT_SECONDS)

    def unpack_data_paths(self) -> None:
        if not self.data_paths:  # the public test files beside this package
            self.test_path, self.lags_path = HERE.parent / "test.csv", HERE.parent / "lags.csv"
        else:
            self.test_path, self.lags_path = map(Path, self.data_paths)

    def generate_data_batches(self) -> Generator[tuple[tuple[Any, ...], Any], None, None]:
        import pandas as pd

        test, lags = pd.read_csv(self.test_path), pd.read_csv(self.lags_path)
        for date_id in sorted(test["date_id"].unique()):
            batch = test[test["date_id"] == date_id].reset_index(drop=True)
            lag = lags[lags["date_id"] == date_id].reset_index(drop=True)
            yield (batch, lag), batch["row_id"]

    def competition_specific_validation(self, prediction_batch: Any, row_ids: Any, data_batch: Any) -> None:
        columns = list(getattr(prediction_batch, "columns", []))
        if "target" not in columns:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION,
                                      f"predictions need a `target` column; got columns {columns}")
        values = prediction_batch["target"].to_list()
        bad = [v for v in values if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION,
                                      f"`target` must be finite numbers; got {bad[:3]}")
