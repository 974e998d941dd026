"""HTTP plumbing: routing, auth, fault injection, uploads, file downloads and the request log.

Requests the emulator understands:

* ``POST /api/v1/<service>/<Method>`` or ``/v1/...`` (also absolute-form ``POST http://host/api/v1/...``,
  as sent through an ``HTTP_PROXY``): JSON RPCs, authenticated with Basic ``user:key`` or Bearer token.
* ``PUT /upload/<token>``: blob bytes (GCS resumable subset), no auth.
* ``GET /files/...``: downloads (datasets, competitions, kernel outputs, zips), no auth, Range-aware.
* ``GET /state``: JSON dump of the emulator state.
* ``POST /requests/GetUserSecretByLabelRequest``: a kernel session's ``kaggle_secrets`` (``notebook_secrets.py``),
  authenticated with the session's own token; the value is never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .common import ApiError, Redirect, RpcContext, http_date, parse_version_label, within
from .faults import Fault, Faults
from .notebook_secrets import SECRET_BY_LABEL, TOKEN_HEADER, get_secret_by_label
from .state import Store

Handler = Callable[[RpcContext, dict[str, Any]], Any]
_RPC_RE = re.compile(r"^(?:/api)?/v1/([A-Za-z0-9_.]+)/([A-Za-z0-9_]+)$")
_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_LOGS_RE = re.compile(r"^(?:/api)?/v1/kernels/logs/stream/([^/]+)/([^/]+)$")
_NO_AUTH_RPCS = {"security.OAuthService/IntrospectToken"}
_MAX_LOGGED_STR = 200


class Api:
    """Everything the request handler needs: store, routes, credentials, faults and the log."""

    def __init__(self, store: Store, routes: dict[str, Handler], users: dict[str, str],
                 tokens: dict[str, str], log_path: Path) -> None:
        self.store = store
        self.routes = routes
        self.users = users
        self.tokens = tokens
        self.faults = Faults()
        self.base_url = ""
        self.on_change: Callable[[], None] | None = None  # called after each state change (persistence)
        self._log_path = log_path
        self._log_lock = threading.Lock()

    def log(self, entry: dict[str, Any]) -> None:
        """Append one JSON line to ``requests.log`` (never containing credentials)."""
        entry = {"time": round(time.time(), 3), **entry}
        with self._log_lock, self._log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def authenticate(self, header: str | None) -> tuple[str | None, str | None]:
        """Return (user, auth kind) for an Authorization header; user is None if it is invalid."""
        if not header:
            return None, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, key = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None, "basic"
            return (name if name in self.users and self.users[name] == key else None), "basic"
        if scheme.lower() == "bearer":
            return self.tokens.get(value.strip()), "bearer"
        return None, scheme.lower() or None

    def introspect(self, body: dict[str, Any]) -> dict[str, Any]:
        """``IntrospectToken``: active + username for a registered token, inactive otherwise."""
        user = self.tokens.get(str(body.get("token", "")))
        if user is None:
            return {"active": False}
        return {"active": True, "username": user, "clientId": "kops-emulator", "scope": "resources.admin:*",
                "userId": 1, "exp": int(time.time()) + 12 * 3600}


def redact(value: Any, key: str = "") -> Any:
    """Copy a JSON body for logging: long strings shortened, secrets removed."""
    if key.lower() in ("key", "password", "apikey", "accesstoken", "refreshtoken"):
        return "<redacted>"
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and len(value) > _MAX_LOGGED_STR:
        return f"<{len(value)} chars>"
    return value


class RequestHandler(BaseHTTPRequestHandler):
    """Dispatches one HTTP request to the RPC, upload or file-serving code."""

    api: Api  # set on the subclass built by ``make_server``
    protocol_version = "HTTP/1.1"
    server_version = "kops-kaggle-emulator/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the default stderr access log (we keep our own JSON log)."""

    # ---- entry points --------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        """JSON RPCs."""
        path = self._path()
        match = _RPC_RE.match(path)
        body_bytes = self._read_body()
        if path == SECRET_BY_LABEL:
            self._user_secret(body_bytes)
            return
        if not match:
            self._json(404, {"code": 404, "message": f"no such endpoint: {path}"}, log={"body": None})
            return
        self._rpc(f"{match.group(1)}/{match.group(2)}", body_bytes)

    def do_PUT(self) -> None:  # noqa: N802 - stdlib naming
        """Blob upload bytes."""
        path = self._path()
        if not path.startswith("/upload/"):
            self._read_body()
            self._json(404, {"code": 404, "message": f"no such endpoint: {path}"})
            return
        self._upload(path[len("/upload/"):])

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """File downloads and ``/state``."""
        path = self._path()
        if path == "/state":
            self._json(200, self.api.store.summary())
        elif path.startswith("/files/"):
            self._serve_file(unquote(path[len("/files/"):]))
        elif _LOGS_RE.match(path):
            self._kernel_logs(*_LOGS_RE.match(path).groups())  # type: ignore[union-attr]
        else:
            self._json(404, {"code": 404, "message": f"no such endpoint: {path}"})

    # ---- RPC -----------------------------------------------------------------------------------

    def _rpc(self, rpc: str, body_bytes: bytes) -> None:
        try:
            body = json.loads(body_bytes or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as e:
            self._json(400, {"code": 400, "message": f"invalid JSON body: {e}"}, log={"rpc": rpc})
            return
        user, kind = self.api.authenticate(self.headers.get("Authorization"))
        logged = {"body": redact({"token": "<redacted>"} if rpc in _NO_AUTH_RPCS else body), "auth": kind,
                  "user": user, "rpc": rpc}
        fault = self.api.faults.take(rpc)
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        if fault is not None and 200 <= fault.status < 300:
            fault = None  # a pure delay: answer normally
        if fault is not None and not fault.after:
            self._fault(fault, logged)
            return
        if rpc in _NO_AUTH_RPCS:
            self._json(200, self.api.introspect(body), log=logged)
            return
        if user is None:
            self._json(401, {"code": 401, "message": "Unauthenticated: missing or invalid credentials"}, log=logged)
            return
        handler = self.api.routes.get(rpc)
        if handler is None:
            self._json(501, {"code": 501, "message": f"{rpc} is not implemented by the emulator"}, log=logged)
            return
        self._call(handler, RpcContext(user=user, base_url=self.api.base_url), body, logged, fault)

    def _user_secret(self, body_bytes: bytes) -> None:
        """A session's ``UserSecretsClient().get_secret(label)``; the log names the label, never the value."""
        try:
            body = json.loads(body_bytes or b"{}")
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        status, answer = get_secret_by_label(self.api.store, self.headers.get(TOKEN_HEADER), body)
        self._json(status, answer, log={"label": str(body.get("Label", ""))[:_MAX_LOGGED_STR],
                                        "found": bool(answer.get("wasSuccessful"))})

    def _fault(self, fault: Fault, logged: dict[str, Any]) -> None:
        """Answer an injected fault: an error status (429 with ``Retry-After: 1``) or a dropped connection."""
        if fault.status == 0:
            self.api.log({"method": self.command, "path": self.path, "status": 0, **logged,
                          "fault": "connection dropped" + (" after the call took effect" if fault.after else "")})
            self.close_connection = True
            return
        headers = {"Retry-After": "1"} if fault.status == 429 else {}
        logged = {**logged, "fault": "after the call took effect"} if fault.after else logged
        self._json(fault.status, {"code": fault.status, "message": fault.text}, headers, log=logged)

    def _call(self, handler: Handler, ctx: RpcContext, body: dict[str, Any], logged: dict[str, Any],
              fault: Fault | None = None) -> None:
        try:
            with self.api.store.lock:
                result = handler(ctx, body)
        except ApiError as e:
            self._json(e.status, {"code": e.status, "message": e.message}, e.headers, log=logged)
            return
        except Exception as e:  # noqa: BLE001 - report server bugs as 500 JSON, keep serving
            self._json(500, {"code": 500, "message": f"emulator error: {type(e).__name__}: {e}"}, log=logged)
            return
        if self.api.on_change is not None and not rpc_is_read(logged.get("rpc", "")):
            self.api.on_change()
        if fault is not None:
            self._fault(fault, logged)
        elif isinstance(result, Redirect):
            self._send(302, b"", {"Location": result.location}, log=logged)
        else:
            self._json(200, _drop_none(result), log=logged)

    # ---- kernel log stream (REST-style GET) -------------------------------------------------------

    def _kernel_logs(self, owner: str, slug: str) -> None:
        """A finished run's log as a JSON array; a live run as SSE ``data:`` lines ending in END_OF_LOG."""
        user, kind = self.api.authenticate(self.headers.get("Authorization"))
        if user is None:
            self._json(401, {"code": 401, "message": "Unauthenticated"}, log={"auth": kind})
            return
        query = parse_qs(urlsplit(self.path).query)
        try:
            with self.api.store.lock:
                kv = self.api.store.kernel(owner, slug).version(
                    parse_version_label((query.get("versionLabel") or [None])[0]))
        except ApiError as e:
            self._json(e.status, {"code": e.status, "message": e.message}, log={"auth": kind})
            return
        if kv.status not in ("QUEUED", "RUNNING"):
            self._json(200, kv.log, log={"auth": kind})
            return
        self.api.log({"method": "GET", "path": self.path, "status": 200, "auth": kind, "body": "<sse stream>"})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        sent = 0
        try:
            while True:
                with self.api.store.lock:
                    fresh, running = kv.log[sent:], kv.status in ("QUEUED", "RUNNING")
                for entry in fresh:
                    self.wfile.write(f"data: {json.dumps(entry)}\n\n".encode())
                sent += len(fresh)
                self.wfile.flush()
                if not running:
                    break
                time.sleep(0.2)
            self.wfile.write(b"data: END_OF_LOG\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    # ---- uploads -------------------------------------------------------------------------------

    def _upload(self, token: str) -> None:
        store = self.api.store
        with store.lock:
            blob = store.blobs.get(token)
        content_range = self.headers.get("Content-Range", "")
        if blob is None:
            self._read_body()
            self._json(404, {"code": 404, "message": "upload session not found or expired"},
                       log={"body": f"unknown upload {token}"})
            return
        if content_range.startswith("bytes */"):
            self._read_body()
            self._upload_status(blob)
            return
        start = 0
        match = _RANGE_RE.match(content_range)
        if match:
            start = int(match.group(1))
            if start > blob.received:
                self._read_body()
                self._upload_status(blob)
                return
        if start == 0 and blob.path.exists():
            blob.path.unlink()  # never truncate in place: the file may be hard-linked into a dataset
        fault = self.api.faults.take("Upload")
        if fault is not None and fault.status == 0:
            self._drop_upload(blob, start)
            return
        received = self._stream_to(blob.path, start)
        if fault is not None:
            # Keep only half of what arrived, as if the connection had dropped, and answer ``fault``.
            received //= 2
            with blob.path.open("r+b") as f:
                f.truncate(start + received)
        with store.lock:
            blob.received = start + received
        if self.api.on_change is not None:
            self.api.on_change()
        if fault is not None:
            self._json(fault.status, {"code": fault.status, "message": fault.text},
                       log={"body": f"<injected {fault.status}; kept {received} bytes @ {start}>"})
            return
        self._upload_status(blob, note=f"<{received} bytes @ {start}>")

    def _drop_upload(self, blob: Any, start: int) -> None:
        """Read half of the body, keep it, and close the connection without an answer (a cut upload)."""
        half = max(0, int(self.headers.get("Content-Length") or 0) // 2)
        received = self._stream_to(blob.path, start, limit=half)
        with self.api.store.lock:
            blob.received = start + received
        self.api.log({"method": "PUT", "path": self.path, "status": 0,
                      "body": f"<connection dropped after {received} bytes @ {start}>"})
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _stream_to(self, path: Path, start: int, limit: int | None = None) -> int:
        """Write the request body to ``path`` at offset ``start``; returns bytes received (partial ok).

        With ``limit``, stop after that many bytes (the rest of the body is left unread).
        """
        mode = "r+b" if path.exists() else "wb"
        written = 0
        with path.open(mode) as f:
            f.seek(start)
            f.truncate()
            for chunk in self._body_chunks(limit):
                f.write(chunk)
                written += len(chunk)
        return written

    def _upload_status(self, blob: Any, note: str | None = None) -> None:
        log = {"body": note or f"<status query {blob.received}/{blob.content_length}>"}
        if blob.complete:
            self._json(200, {"token": blob.token, "size": blob.received}, log=log)
        elif blob.received > 0:
            self._send(308, b"", {"Range": f"bytes=0-{blob.received - 1}"}, log=log)
        else:
            self._send(308, b"", {}, log=log)

    # ---- downloads -----------------------------------------------------------------------------

    def _resolve_file(self, rel: str) -> Path:
        root = self.api.store.root
        parts = rel.split("/")
        if parts[0] == "kernels" and len(parts) >= 5:
            base = root / "kernels" / parts[1] / parts[2] / parts[3] / "working"
            return within(base, "/".join(parts[4:]))
        if parts[0] in ("datasets", "competitions", "zips", "models"):
            return within(root / parts[0], "/".join(parts[1:]))
        raise ApiError(404, "file not found")

    def _serve_file(self, rel: str) -> None:
        try:
            path = self._resolve_file(rel)
        except ApiError:
            path = None
        if path is None or not path.is_file():
            self._json(404, {"code": 404, "message": f"file not found: {rel}"})
            return
        size = path.stat().st_size
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                   "Last-Modified": http_date(path.stat().st_mtime)}
        start, status = self._range_start(size), 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
        self._send(status, data, headers, log={"body": None})

    def _range_start(self, size: int) -> int:
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if not match:
            return 0
        start = int(match.group(1))
        return start if 0 < start < size else 0

    # ---- low level -----------------------------------------------------------------------------

    def _path(self) -> str:
        """The request path, with absolute-form (proxy-style) targets reduced to their path."""
        target = self.path
        if "://" in target:
            target = urlsplit(target).path or "/"
        return target.split("?", 1)[0]

    def _body_chunks(self, limit: int | None = None) -> Any:
        """Yield the request body in chunks (Content-Length or chunked); stops early on disconnect."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        if limit is not None:
            remaining = min(remaining, limit)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def _read_body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None,
              log: dict[str, Any] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self._send(status, data, {"Content-Type": "application/json", **(headers or {})}, log=log)

    def _send(self, status: int, data: bytes, headers: dict[str, str],
              log: dict[str, Any] | None = None) -> None:
        self.api.log({"method": self.command, "path": self.path, "status": status, "auth": None, **(log or {})})
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def rpc_is_read(rpc: str) -> bool:
    """Whether an RPC only reads state (Get*, List*, Download*), so there is nothing to persist."""
    return rpc.rsplit("/", 1)[-1].startswith(("Get", "List", "Download"))


def _drop_none(value: Any) -> Any:
    """Remove None values from response dicts (the client fills in proto defaults)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def make_server(api: Api, host: str, port: int) -> ThreadingHTTPServer:
    """Bind a threading HTTP server for ``api`` (port 0 picks a free port)."""
    handler = type("BoundRequestHandler", (RequestHandler,), {"api": api})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
