"""The HTTP layer of `KeitoTestServer`: the threading server, the request handler and the routing.

`route()` maps one parsed request to (status, body, extra headers), enforcing auth and the contract
and applying the server's injected faults; status 0 means "close the connection without an
answer". The server's state (records, request log, faults) stays in `_server.py`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from . import _invoices
from ._contract import check_expense, check_time_entry
from ._resources import COLLECTIONS, error, fmt_seconds, label, me

if TYPE_CHECKING:
    from ._server import KeitoTestServer


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: KeitoTestServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (cancelled request, reset) is normal here: no traceback on stderr.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between header and body writes
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _handle(self) -> None:
        self.server.owner._handle(self)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    def reply(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Keito-API-Version", "2")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]  # one write: headers+body
        self.flush_headers()

    def drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def read_request(req: _Handler) -> tuple[str, dict[str, list[str]], Any, str | None]:
    """The path (no trailing slash), query, JSON body and body error (invalid JSON) of a request."""
    parts = urlsplit(req.path)
    path, query = parts.path.rstrip("/") or "/", parse_qs(parts.query, keep_blank_values=True)
    length = int(req.headers.get("Content-Length") or 0)
    raw = req.rfile.read(length) if length else b""
    body: Any = None
    body_error = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body_error = "request body is not valid JSON"
    return path, query, body, body_error


def route(
    owner: KeitoTestServer, req: _Handler, path: str, query: dict[str, list[str]], body: Any, body_error: str | None
) -> tuple[int, Any, dict[str, str] | None]:
    """(status, body, extra headers) for one request to `owner`; status 0: drop the connection."""
    method = req.command
    if path == "/api/health" and method == "GET":
        return 200, {"status": "ok"}, None
    if not path.startswith("/api/v2/"):
        return 404, error("not found", "Resource not found"), None
    auth = check_auth(owner, req)
    if auth is not None:
        return auth[0], auth[1], None
    fault = owner._take_fault(method, path)
    if fault is not None and fault.kind in ("huge_body", "trickle", "stall", "echo_auth"):
        return fault.status, fault, None  # written by KeitoTestServer._misbehave
    if fault is not None and fault.kind == "status":
        extra = {"Retry-After": fmt_seconds(fault.retry_after)} if fault.retry_after is not None else None
        return fault.status, error(label(fault.status), "injected fault"), extra
    if path == "/api/v2/users/me" and method == "GET":
        return 200, me(owner.account_id, owner.read_only_key), None
    if path == _invoices.INVOICES or path.startswith(_invoices.INVOICES + "/"):
        return _invoices.route(owner, method, path, query, body, body_error, fault)
    collection = COLLECTIONS.get(path)
    if collection is None:
        if any(path.startswith(p + "/") for p in COLLECTIONS) and method == "GET":
            return 405, error("method not allowed", "Method not allowed"), None
        return 404, error("not found", "Resource not found"), None
    if method == "GET":
        return (*owner._list(collection, path, query), None)
    if method != "POST":
        return 405, error("method not allowed", "Method not allowed"), None
    if body_error:
        return 400, error("bad request", body_error), None
    problem = check_time_entry(body) if collection == "time_entries" else check_expense(body)
    if problem:
        return 400, error("bad request", problem), None
    stored = owner._store(collection, body)
    if fault is not None and fault.kind == "drop_after_commit":
        return 0, None, None
    if fault is not None and fault.kind == "error_after_commit":
        return fault.status, error(label(fault.status), "injected fault after commit"), None
    return owner.create_status, stored, None


def check_auth(owner: KeitoTestServer, req: _Handler) -> tuple[int, dict[str, str]] | None:
    """The refusal of a request without `owner`'s key and account headers, or None when accepted."""
    if req.headers.get("Authorization") != f"Bearer {owner.api_key}":
        return 401, error("unauthorized", "Invalid API key")
    account = req.headers.get("Keito-Account-Id")
    if not account:
        return 400, error("bad request", "Missing Keito-Account-Id header")
    if account != owner.account_id:
        return 403, error("forbidden", "You do not have access to this account")
    return None
