"""The two classes a competition customizes: its ``Gateway`` and its ``InferenceServer``."""

from __future__ import annotations

import abc
import os
import time
import warnings
from collections.abc import Generator
from typing import Any

from kaggle_evaluation.core import base_gateway, relay

_initial_import_time = time.time()  # the startup clock starts when the notebook imports the package


class Gateway(base_gateway.BaseGateway, abc.ABC):
    """A competition's gateway: where its data is, how it is cut into batches, what a valid answer is."""

    @abc.abstractmethod
    def unpack_data_paths(self) -> None:
        """Map ``self.data_paths`` (or defaults when None) to the competition's files."""

    @abc.abstractmethod
    def generate_data_batches(self) -> Generator[tuple[tuple[Any, ...], Any], None, None]:
        """Yield ``(arguments of one predict call, the row ids it must answer)``."""

    @abc.abstractmethod
    def competition_specific_validation(self, prediction_batch: Any, row_ids: Any, data_batch: Any) -> None:
        """Raise GatewayRuntimeError(INVALID_SUBMISSION, ...) for an answer the competition cannot score."""


class InferenceServer(abc.ABC):
    """What a competitor's notebook builds: ``Server(predict)``, then ``serve()`` or ``run_local_gateway()``."""

    def __init__(self, *endpoint_listeners: Any) -> None:
        self.server = relay.define_server(*endpoint_listeners)
        self.client = None
        self._startup_limit_seconds = relay.STARTUP_LIMIT_SECONDS

    def serve(self) -> None:
        """Start answering; on the rerun block until the evaluation ends (the session is then stopped)."""
        self.server.start()
        if os.getenv("KAGGLE_IS_COMPETITION_RERUN") is not None:
            self.server.wait_for_termination()

    @abc.abstractmethod
    def _get_gateway_for_test(self, data_paths: tuple[str, ...] | None = None, *args: Any, **kwargs: Any) -> Any:
        """The competition's gateway on local files."""

    def run_local_gateway(self, data_paths: tuple[str, ...] | None = None, *args: Any, **kwargs: Any) -> None:
        """Run the competition's gateway here on ``data_paths`` (default: the public test files); errors raise."""
        elapsed = time.time() - _initial_import_time
        if elapsed > self._startup_limit_seconds:
            warnings.warn(f"{int(elapsed)} seconds elapsed before server startup. This exceeds the startup time "
                          f"limit of {int(self._startup_limit_seconds)} seconds that the gateway will enforce during "
                          "the rerun on the hidden test set. Start the server before time-consuming steps.",
                          category=RuntimeWarning, stacklevel=2)
        self.server.start()
        try:
            self.gateway = self._get_gateway_for_test(data_paths, *args, **kwargs)
            self.gateway.run()
        finally:
            self.server.stop(0)
