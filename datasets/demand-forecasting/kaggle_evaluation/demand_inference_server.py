"""``DemandInferenceServer(predict)``: what a notebook builds for the demand-forecasting competition."""

from __future__ import annotations

from typing import Any

from kaggle_evaluation import demand_gateway
from kaggle_evaluation.core import templates


class DemandInferenceServer(templates.InferenceServer):
    def _get_gateway_for_test(self, data_paths: tuple[str, ...] | None = None, *args: Any, **kwargs: Any) -> Any:
        return demand_gateway.DemandGateway(data_paths)
