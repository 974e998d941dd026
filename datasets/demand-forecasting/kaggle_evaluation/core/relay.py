"""The relay between gateway and inference server: gRPC service ``KaggleEvaluationService.Send``.

One unary method carries a request (endpoint name, args, kwargs) and answers one value. Values cross as a small
self-describing frame, never pickle: a JSON header describing the structure (primitives, lists, tuples, dicts with
str keys, None) whose binary leaves point into the bytes that follow it: numpy arrays and scalars (``np.save``,
``allow_pickle=False``), pandas DataFrames/Series (parquet), polars DataFrames (Arrow IPC) and Series (parquet),
``io.BytesIO``. The service is registered with grpc's generic handlers (bytes in, bytes out): no generated
protobuf modules.

Limits: ``STARTUP_LIMIT_SECONDS`` (15 min; ``KAGGLE_EVALUATION_STARTUP_LIMIT_SECONDS`` lowers it, as kops'
emulator does) for the server to answer the first call, which itself has no deadline (load models there);
later calls get ``Client.endpoint_deadline_seconds`` (set by the gateway). Ports: ``GRPC_PORTS`` (the first free one
is served; ``KAGGLE_EVALUATION_PORT`` pins one). Where the server's process is known
(``KAGGLE_EVALUATION_SERVER_PID``, as Kaggle knows whether the notebook's container still runs), the first call stops
waiting as soon as that process is gone.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import time
from concurrent import futures
from types import FunctionType
from typing import Any

import grpc

SERVICE = "kaggle_evaluation_client.KaggleEvaluationService"
METHOD = f"/{SERVICE}/Send"
DEFAULT_DEADLINE_SECONDS = 60 * 60
STARTUP_LIMIT_SECONDS = float(os.getenv("KAGGLE_EVALUATION_STARTUP_LIMIT_SECONDS") or 60 * 15)
_PINNED_PORT = os.getenv("KAGGLE_EVALUATION_PORT")
GRPC_PORTS = [int(_PINNED_PORT)] if _PINNED_PORT else [50051, *range(60053, 60063)]
_RETRY_SLEEP_SECONDS = 0.1
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_HEADER = struct.Struct("!I")


class GRPCDeadlineError(Exception):
    """The server did not answer a call within the client's deadline."""


def _server_gone() -> bool:
    """Whether the server's known process (``KAGGLE_EVALUATION_SERVER_PID``) has exited (or is a zombie)."""
    pid = os.getenv("KAGGLE_EVALUATION_SERVER_PID")
    if not pid or not os.path.isdir("/proc"):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


# ---- values <-> bytes ----------------------------------------------------------------------------------------------


def _np_bytes(value: Any) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def _encode(value: Any, blobs: list[bytes]) -> Any:
    def blob(kind: str, data: bytes) -> dict[str, Any]:
        blobs.append(data)
        return {"t": kind, "b": len(blobs) - 1}

    if value is None or isinstance(value, (bool, int, float, str)):
        return {"t": "v", "v": value}
    if isinstance(value, (list, tuple)):
        return {"t": "list" if isinstance(value, list) else "tuple", "v": [_encode(v, blobs) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only dicts with str keys cross the relay")
        return {"t": "dict", "v": {k: _encode(v, blobs) for k, v in value.items()}}
    if isinstance(value, io.BytesIO):
        return blob("bytesio", value.getvalue())
    module = type(value).__module__.split(".")[0]
    if module == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            return blob("ndarray", _np_bytes(value))
        if isinstance(value, (np.number, np.bool_)):
            return blob("npscalar", _np_bytes(value))
    if module == "pandas":
        import pandas as pd

        buffer = io.BytesIO()
        if isinstance(value, pd.DataFrame):
            value.to_parquet(buffer, index=False)
            return blob("pd.DataFrame", buffer.getvalue())
        if isinstance(value, pd.Series):
            value.to_frame(name=value.name if value.name is not None else "__series__").to_parquet(buffer, index=False)
            return blob("pd.Series", buffer.getvalue())
    if module == "polars":
        import polars as pl

        buffer = io.BytesIO()
        if isinstance(value, pl.DataFrame):
            value.write_ipc_stream(buffer)
            return blob("pl.DataFrame", buffer.getvalue())
        if isinstance(value, pl.Series):
            pl.DataFrame(value).write_parquet(buffer)
            return blob("pl.Series", buffer.getvalue())
    raise TypeError(f"Type {type(value)} cannot cross the relay")


def _decode(node: Any, blobs: list[bytes]) -> Any:
    kind = node["t"]
    if kind == "v":
        return node["v"]
    if kind in ("list", "tuple"):
        items = [_decode(v, blobs) for v in node["v"]]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _decode(v, blobs) for k, v in node["v"].items()}
    data = blobs[node["b"]]
    if kind == "bytesio":
        return io.BytesIO(data)
    if kind in ("ndarray", "npscalar"):
        import numpy as np

        array = np.load(io.BytesIO(data), allow_pickle=False)
        return array if kind == "ndarray" else array.dtype.type(array)
    if kind.startswith("pd."):
        import pandas as pd

        frame = pd.read_parquet(io.BytesIO(data))
        if kind == "pd.DataFrame":
            return frame
        series = frame[frame.columns[0]]
        return series.rename(None) if frame.columns[0] == "__series__" else series
    if kind.startswith("pl."):
        import polars as pl

        if kind == "pl.DataFrame":
            return pl.read_ipc_stream(io.BytesIO(data))
        return pl.read_parquet(io.BytesIO(data)).to_series()
    raise TypeError(f"unknown value kind {kind!r} on the relay")


def serialize(value: Any) -> bytes:
    """One value as a frame: 4-byte header length, JSON header, then each binary leaf (8-byte length + bytes)."""
    blobs: list[bytes] = []
    header = json.dumps({"root": _encode(value, blobs), "sizes": [len(b) for b in blobs]}).encode()
    return b"".join([_HEADER.pack(len(header)), header, *blobs])


def deserialize(frame: bytes) -> Any:
    """The value a :func:`serialize` frame holds."""
    (length,) = _HEADER.unpack_from(frame)
    header = json.loads(frame[_HEADER.size:_HEADER.size + length])
    blobs, offset = [], _HEADER.size + length
    for size in header["sizes"]:
        blobs.append(frame[offset:offset + size])
        offset += size
    return _decode(header["root"], blobs)


# ---- client --------------------------------------------------------------------------------------------------------


class Client:
    """Sends requests to an inference server (``localhost``, or the server's host on Kaggle's rerun)."""

    def __init__(self, channel_address: str = "localhost") -> None:
        self.channel_address = channel_address
        self.channel: grpc.Channel | None = None
        self.endpoint_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
        self._call: Any = None

    def _connect(self, request: bytes) -> bytes:
        """The first call: wait up to STARTUP_LIMIT_SECONDS for a server to listen; the call itself has no deadline."""
        started = time.time()
        while time.time() - started < STARTUP_LIMIT_SECONDS:
            for port in GRPC_PORTS:
                channel = grpc.insecure_channel(f"{self.channel_address}:{port}", options=_CHANNEL_OPTIONS)
                call = channel.unary_unary(METHOD)
                try:
                    response = call(request, wait_for_ready=False)
                except grpc.RpcError as err:
                    channel.close()
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    continue
                self.channel, self._call = channel, call
                return response
            if _server_gone():
                raise RuntimeError("Failed to connect to server: its process exited before it answered")
            time.sleep(_RETRY_SLEEP_SECONDS)
        raise RuntimeError(f"Failed to connect to server after waiting {STARTUP_LIMIT_SECONDS:g} seconds")

    def send(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call endpoint ``name`` on the server; its answer."""
        request = serialize({"name": name, "args": list(args), "kwargs": kwargs})
        if self._call is None:
            return deserialize(self._connect(request))
        try:
            return deserialize(self._call(request, wait_for_ready=False, timeout=self.endpoint_deadline_seconds))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise GRPCDeadlineError(f"no answer within {self.endpoint_deadline_seconds:g} seconds") from None
            raise

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


# ---- server --------------------------------------------------------------------------------------------------------


def _handler(listeners: dict[str, Any]) -> Any:
    def send(request: bytes, context: Any) -> bytes:
        message = deserialize(request)
        name = message["name"]
        if name not in listeners:
            raise NotImplementedError(f"No listener for {name} was registered.")
        return serialize(listeners[name](*message["args"], **message["kwargs"]))

    method = grpc.unary_unary_rpc_method_handler(send)  # no (de)serializers: bytes in, bytes out
    return grpc.method_handlers_generic_handler(SERVICE, {"Send": method})


def _available_port() -> int:
    for port in GRPC_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("localhost", port))
            except OSError:
                continue
        return port
    raise ValueError(f"None of the expected ports {GRPC_PORTS} are available.")


def define_server(*endpoint_listeners: Any) -> grpc.Server:
    """A gRPC server (not started) answering one call at a time for each function, by its ``__name__``."""
    if not endpoint_listeners:
        raise ValueError("Must pass at least one endpoint listener, e.g. `predict`")
    for func in endpoint_listeners:
        if not isinstance(func, FunctionType):
            raise ValueError(f"Endpoint listeners passed to `serve` must be functions, got {type(func)}")
        if func.__name__ == "<lambda>":
            raise ValueError("Functions passed as endpoint listeners must be named")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=_CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((_handler({f.__name__: f for f in endpoint_listeners}),))
    server.add_insecure_port(f"localhost:{_available_port()}")
    return server
