"""The competition-agnostic gateway: feeds batches to the server, checks each answer, writes the submission.

On the rerun (``KAGGLE_IS_COMPETITION_RERUN`` set) a failure does not raise: ``result.json`` records it as one of
:class:`GatewayRuntimeErrorType` (``Succeeded``, ``ErrorType``, ``ErrorName``, ``ErrorDetails``); locally
(``run_local_gateway``) the :class:`GatewayRuntimeError` is raised.
"""

from __future__ import annotations

import enum
import json
import os
import re
import sys
import traceback
from typing import Any

import grpc

from kaggle_evaluation.core import relay

IS_RERUN = os.getenv("KAGGLE_IS_COMPETITION_RERUN") is not None
SUBMISSION_FILE = "submission.parquet"
RESULT_FILE = "result.json"
MAX_DETAILS = 8000


class GatewayRuntimeErrorType(enum.Enum):
    """The error types a gateway reports (Kaggle shows each as a canned message)."""

    UNSPECIFIED = 0
    SERVER_NEVER_STARTED = 1
    SERVER_CONNECTION_FAILED = 2
    SERVER_RAISED_EXCEPTION = 3
    SERVER_MISSING_ENDPOINT = 4
    GATEWAY_RAISED_EXCEPTION = 5
    INVALID_SUBMISSION = 6
    GRPC_DEADLINE_EXCEEDED = 7


class GatewayRuntimeError(Exception):
    """A failure of the evaluation with its user-visible type and details."""

    def __init__(self, error_type: GatewayRuntimeErrorType, error_details: str | None = None) -> None:
        super().__init__(f"{error_type.name}: {error_details}" if error_details else error_type.name)
        self.error_type = error_type
        self.error_details = error_details


def _frame_types() -> tuple[type, ...]:
    import pandas as pd

    types: list[type] = [pd.DataFrame, pd.Series]
    if "polars" in sys.modules:
        import polars as pl

        types += [pl.DataFrame, pl.Series]
    return tuple(types)


class BaseGateway:
    """Runs the evaluation: ``unpack_data_paths``, every batch through ``predict``, ``write_submission``."""

    def __init__(self, data_paths: tuple[str, ...] | None = None, target_column_name: str | None = None,
                 row_id_column_name: str | None = None) -> None:
        self.client = relay.Client(os.getenv("KAGGLE_EVALUATION_SERVER_HOST", "localhost"))
        self.server = None
        self.data_paths = data_paths
        self.target_column_name = target_column_name
        self.row_id_column_name = row_id_column_name
        self.timeout_seconds: float = relay.DEFAULT_DEADLINE_SECONDS
        self.data_batch_counter = 0

    def set_response_timeout_seconds(self, timeout_seconds: float) -> None:
        """The deadline of every call after the first (the first, which loads models, has none)."""
        self.timeout_seconds = timeout_seconds
        self.client.endpoint_deadline_seconds = timeout_seconds

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """Send one batch to the server's ``predict`` endpoint; its answer."""
        try:
            return self.client.send("predict", *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every server failure is classified
            self.handle_server_error(e, "predict")

    def get_all_predictions(self) -> tuple[list[Any], list[Any]]:
        predictions, row_ids = [], []
        for data_batch, batch_row_ids in self.generate_data_batches():  # type: ignore[attr-defined]
            answer = self.predict(*data_batch)
            self.competition_agnostic_validation(answer, batch_row_ids)
            self.competition_specific_validation(answer, batch_row_ids, data_batch)  # type: ignore[attr-defined]
            predictions.append(answer)
            row_ids.append(batch_row_ids)
            self.data_batch_counter += 1
        return predictions, row_ids

    def run(self) -> None:
        """The whole evaluation; on the rerun the outcome goes to result.json, locally an error is raised."""
        error = None
        try:
            self.unpack_data_paths()  # type: ignore[attr-defined]
            predictions, row_ids = self.get_all_predictions()
            self.write_submission(predictions, row_ids)
        except GatewayRuntimeError as gre:
            error = gre
        except Exception:  # noqa: BLE001 - anything else is the gateway's own failure
            error = GatewayRuntimeError(GatewayRuntimeErrorType.GATEWAY_RAISED_EXCEPTION,
                                        "".join(traceback.format_exception(*sys.exc_info())))
        self.client.close()
        if IS_RERUN:
            self.write_result(error)
        elif error is not None:
            raise error

    def competition_agnostic_validation(self, prediction_batch: Any, row_ids: Any) -> None:
        """As many prediction rows as row ids were sent: a batch cannot be saved for later."""
        if prediction_batch is None:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION, "No prediction received")
        if isinstance(prediction_batch, (bool, int, float, str)):
            received = 1
        elif isinstance(prediction_batch, _frame_types()):
            received = len(prediction_batch)
        else:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION,
                                      f"Invalid prediction data type, received: {type(prediction_batch)}")
        expected = 1 if isinstance(row_ids, (str, int)) else len(row_ids)
        if expected == 0:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.GATEWAY_RAISED_EXCEPTION, "Missing row IDs for batch")
        if received != expected:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.INVALID_SUBMISSION,
                                      f"Invalid predictions: expected {expected} rows but received {received}")

    def write_submission(self, predictions: list[Any], row_ids: list[Any]) -> None:
        """``submission.parquet``: the row id column(s) first, then the predictions, batches in order."""
        import pandas as pd

        frames = [p.to_pandas() if hasattr(p, "to_pandas") and not isinstance(p, (pd.DataFrame, pd.Series)) else p
                  for p in predictions]
        frames = [f.to_frame(self.target_column_name) if isinstance(f, pd.Series) else f for f in frames]
        submission = pd.concat(frames, ignore_index=True)
        ids = pd.concat([r if isinstance(r, pd.DataFrame) else pd.DataFrame({self.row_id_column_name: r})
                         for r in row_ids], ignore_index=True)
        for column in ids.columns:
            submission[column] = ids[column].to_numpy()
        order = [*ids.columns, *(c for c in submission.columns if c not in ids.columns)]
        submission[order].to_parquet(SUBMISSION_FILE, index=False)

    def write_result(self, error: GatewayRuntimeError | None = None) -> None:
        """``result.json``: Succeeded, and on failure ErrorType (number), ErrorName, ErrorDetails."""
        result: dict[str, Any] = {"Succeeded": error is None}
        if error is not None:
            result.update(ErrorType=error.error_type.value, ErrorName=error.error_type.name,
                          ErrorDetails=str(error.error_details)[:MAX_DETAILS] if error.error_details else None)
        with open(RESULT_FILE, "w") as f:
            json.dump(result, f)

    def handle_server_error(self, exception: Exception, endpoint: str) -> None:
        """Raise the GatewayRuntimeError that classifies a failed call."""
        text = str(exception)
        if isinstance(exception, RuntimeError) and text.startswith("Failed to connect to server"):
            raise GatewayRuntimeError(GatewayRuntimeErrorType.SERVER_NEVER_STARTED, text) from None
        if isinstance(exception, relay.GRPCDeadlineError):
            raise GatewayRuntimeError(GatewayRuntimeErrorType.GRPC_DEADLINE_EXCEEDED, text) from None
        if f"No listener for {endpoint} was registered" in text:
            raise GatewayRuntimeError(GatewayRuntimeErrorType.SERVER_MISSING_ENDPOINT,
                                      f"Server did not register a listener for {endpoint}") from None
        if isinstance(exception, grpc.RpcError):
            details = exception.details() or text  # type: ignore[attr-defined]
            match = re.search(r"Exception calling application: (.*)", details, re.DOTALL)
            if match:
                raise GatewayRuntimeError(GatewayRuntimeErrorType.SERVER_RAISED_EXCEPTION, match.group(1)) from None
            raise GatewayRuntimeError(GatewayRuntimeErrorType.SERVER_CONNECTION_FAILED, details) from None
        raise exception
