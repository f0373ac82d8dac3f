"""`KeitoTestServer`: a Keito-compatible HTTP server on 127.0.0.1 for tests and demos.

It speaks the v2 endpoints keito-instrument uses (create and list time entries and expenses,
`GET /users/me`, `GET /api/health`), enforces the contract (auth headers, required fields, types,
ranges, metadata size, source enum, list filters and the pagination envelope) and injects the
faults delivery must survive. It uses only the standard library. This module holds the server's
state (records, request log, faults) and its lifecycle; the HTTP layer and routing are in `_http.py`.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from ._http import _Handler, _HTTPServer, read_request, route
from ._invoices import INVOICES
from ._resources import COLLECTIONS, error, label, list_page, new_item

FaultKind = Literal[
    "status", "drop_after_commit", "error_after_commit", "huge_body", "trickle", "stall", "echo_auth"
]
# Faults that answer instead of the server (nothing is stored), written by `_misbehave`.
MISBEHAVIOURS = frozenset({"huge_body", "trickle", "stall", "echo_auth"})
RateHeaders = Literal["x-ratelimit", "ratelimit"]


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    Attributes:
        kind: "status" (answer `status` without storing anything), "drop_after_commit" (store the
            record, then close the connection without answering) or "error_after_commit" (store
            it, then answer `status`, 500 by default). Hostile servers, storing nothing:
            "huge_body" (answer `status` with a JSON error body of `size` bytes, no
            Content-Length), "trickle" (send the status line and headers, then one byte of the
            body every `interval` seconds for `seconds`), "stall" (answer nothing for `seconds`,
            then close) and "echo_auth" (answer `status` with the request's Authorization header
            in the error body, the status line and an `X-Echo-Authorization` header).
        status: the HTTP status sent.
        retry_after: the `Retry-After` header value in seconds, if any.
        methods: only requests with these methods consume the fault (None: any method; the
            commit faults only ever apply to creates).
        size: the body size of "huge_body".
        interval: the pause between bytes of "trickle".
        seconds: how long "trickle" and "stall" hold the connection.
    """

    kind: FaultKind = "status"
    status: int = 503
    retry_after: float | None = None
    methods: tuple[str, ...] | None = None
    size: int = 300 << 20
    interval: float = 0.5
    seconds: float = 30.0


@dataclass
class RateLimit:
    """A fixed-window rate limit: `limit` requests per `window` seconds (see `set_rate_limit`)."""

    limit: int
    window: float
    headers: RateHeaders | None = None
    started: float = 0.0
    used: int = 0
    refused: int = 0


@dataclass(frozen=True)
class LoggedRequest:
    """One request the server received, with what it answered (`status` None: connection dropped)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    status: int | None
    client: str = ""
    at: float = field(default_factory=time.time)


class KeitoTestServer:
    """A Keito-compatible server on 127.0.0.1 (a context manager).

        with KeitoTestServer() as server:
            keito.configure(api_key=server.api_key, account_id=server.account_id, base_url=server.url)
            ...
            assert len(server.time_entries) == 1

    Args:
        api_key: the only key accepted (`Authorization: Bearer <api_key>`).
        account_id: the only `Keito-Account-Id` accepted.
        port: 0 picks a free port; `stop()` then `start()` reuse the same one.
        create_status: the status of a successful create (the API doc says 200, clients see 201).
        read_only_key: `GET /users/me` omits `company`, as for Keito's read-only personal keys.
    """

    def __init__(
        self,
        *,
        api_key: str = "kto_test_0123456789abcdef",
        account_id: str = "cm_test_account",
        port: int = 0,
        create_status: int = 201,
        read_only_key: bool = False,
    ) -> None:
        self.api_key = api_key
        self.account_id = account_id
        self.project_id = "prj_test"
        self.task_id = "tsk_test"
        self.expense_category_id = "cat_llm_usage"
        self.create_status = create_status
        self.read_only_key = read_only_key
        self.time_entries: list[dict[str, Any]] = []
        self.expenses: list[dict[str, Any]] = []
        self.invoices: list[dict[str, Any]] = []  # see _invoices.py
        self.requests: list[LoggedRequest] = []
        self.latency = 0.0
        self.fault_hook: Callable[[str, str], Fault | None] | None = None
        self._faults: list[tuple[Fault, int]] = []
        self._rate: RateLimit | None = None
        self._lock = threading.RLock()
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:51234 (valid while stopped too)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        """The TCP port (fixed at the first start)."""
        return self._port

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._httpd is not None

    def start(self) -> KeitoTestServer:
        """Listen (again) on the same port. Idempotent."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", self._port), self)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="keito-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections: clients now get "connection refused"."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with httpd.connections_lock:
            open_connections = list(httpd.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5.0)

    close = stop

    def __enter__(self) -> KeitoTestServer:
        return self.start()

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- fault injection -----------------------------------------------------------------------
    def fail_next(
        self,
        status: int = 503,
        count: int = 1,
        *,
        retry_after: float | None = None,
        methods: tuple[str, ...] | None = None,
    ) -> None:
        """Answer the next `count` requests (of `methods`, default any) with `status`, storing nothing."""
        self._enqueue(Fault("status", status, retry_after, methods), count)

    def drop_after_commit(self, count: int = 1) -> None:
        """Store the next `count` created records, then close the connection without an answer."""
        self._enqueue(Fault("drop_after_commit", 0, None, ("POST",)), count)

    def error_after_commit(self, count: int = 1, status: int = 500) -> None:
        """Store the next `count` created records, then answer `status` (default 500)."""
        self._enqueue(Fault("error_after_commit", status, None, ("POST",)), count)

    def misbehave_next(self, fault: Fault, count: int = 1) -> None:
        """Answer the next `count` requests (of `fault.methods`) as a hostile server would: a
        `Fault` of kind "huge_body", "trickle", "stall" or "echo_auth" (nothing is stored)."""
        if fault.kind not in MISBEHAVIOURS:
            raise ValueError(f"misbehave_next() takes a hostile fault kind, not {fault.kind!r}")
        self._enqueue(fault, count)

    def set_rate_limit(self, limit: int | None, window: float = 1.0, *, headers: RateHeaders | None = None) -> None:
        """Allow `limit` API requests per `window` seconds (None: no limit, the default).

        A window opens at the first request after the previous one ended. Past the limit the
        server answers 429 with `Retry-After` (whole seconds until the window ends) and counts
        it in `rate_limited`; refused requests do not use up the window. With `headers`, every
        answer also carries the window's state: "x-ratelimit" sends `X-RateLimit-Limit`,
        `-Remaining` and `-Reset` (a Unix time), "ratelimit" sends `RateLimit-Limit`,
        `-Remaining` and `-Reset` (seconds). Keito documents only `Retry-After`.
        """
        with self._lock:
            self._rate = None if limit is None else RateLimit(limit, window, headers)

    @property
    def rate_limited(self) -> int:
        """How many requests the rate limit refused with a 429."""
        rate = self._rate
        return rate.refused if rate is not None else 0

    def set_latency(self, seconds: float) -> None:
        """Wait this long before handling each request (before anything is stored)."""
        self.latency = max(0.0, seconds)

    def clear_faults(self) -> None:
        """Forget queued faults, latency and the fault hook."""
        with self._lock:
            self._faults.clear()
            self.latency = 0.0
            self.fault_hook = None

    def _enqueue(self, fault: Fault, count: int) -> None:
        if count > 0:
            with self._lock:
                self._faults.append((fault, count))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for index, (fault, left) in enumerate(self._faults):
                if fault.methods is not None and method not in fault.methods:
                    continue
                creates = method == "POST" and (path in COLLECTIONS or path == INVOICES)
                if fault.kind.endswith("_commit") and not creates:
                    continue
                if left <= 1:
                    del self._faults[index]
                else:
                    self._faults[index] = (fault, left - 1)
                return fault
        hook = self.fault_hook
        return hook(method, path) if hook is not None else None

    # -- inspection ----------------------------------------------------------------------------
    def record_ids(self, kind: Literal["time_entries", "expenses"]) -> list[str]:
        """`metadata.record_id` of every stored record of one collection, in arrival order."""
        with self._lock:
            items = list(self.time_entries if kind == "time_entries" else self.expenses)
        return [str((i.get("metadata") or {}).get("record_id")) for i in items]

    def duplicates(self) -> dict[str, int]:
        """record_ids stored more than once (in either collection), with their counts."""
        counts = Counter(self.record_ids("time_entries")) + Counter(self.record_ids("expenses"))
        return {rid: n for rid, n in counts.items() if n > 1}

    def wait_for(self, time_entries: int = 0, expenses: int = 0, timeout: float = 10.0) -> bool:
        """Wait until at least that many records are stored; True if they are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.time_entries) >= time_entries and len(self.expenses) >= expenses:
                return True
            time.sleep(0.01)
        return len(self.time_entries) >= time_entries and len(self.expenses) >= expenses

    @property
    def open_connections(self) -> int:
        """Client connections the server is holding open (each is handled on its own thread)."""
        httpd = self._httpd
        if httpd is None:
            return 0
        with httpd.connections_lock:
            return len(httpd.connections)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no client connection is open, so every request received has been handled
        (stored or refused); True if so. Useful after killing a client mid-request."""
        deadline = time.monotonic() + timeout
        while self.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.open_connections == 0

    def reset(self) -> None:
        """Forget stored records, the request log and every fault."""
        with self._lock:
            self.time_entries.clear()
            self.expenses.clear()
            self.invoices.clear()
            self.requests.clear()
        self.clear_faults()

    # -- request handling (server threads) -----------------------------------------------------
    def _handle(self, req: _Handler) -> None:
        path, query, body, body_error = read_request(req)
        if self.latency:
            time.sleep(self.latency)
        allowed, rate_headers = self._check_rate(path)
        if allowed:
            status, answer, extra = route(self, req, path, query, body, body_error)
        else:
            status, answer, extra = 429, error("rate limited", "Too many requests"), None
        extra = {**(extra or {}), **rate_headers} or None
        with self._lock:
            self.requests.append(
                LoggedRequest(
                    req.command,
                    path,
                    query,
                    dict(req.headers.items()),
                    body,
                    None if status == 0 else status,
                    f"{req.client_address[0]}:{req.client_address[1]}",
                )
            )
        if status == 0:
            req.drop()
        elif isinstance(answer, Fault):
            self._misbehave(req, answer)
        else:
            req.reply(status, answer, extra)

    def _check_rate(self, path: str) -> tuple[bool, dict[str, str]]:
        """(allowed, the rate-limit headers to send) for one request."""
        with self._lock:
            rate = self._rate
            if rate is None or not path.startswith("/api/v2/"):
                return True, {}
            now = time.monotonic()
            if now >= rate.started + rate.window:
                rate.started, rate.used = now, 0
            reset = rate.started + rate.window - now
            allowed = rate.used < rate.limit
            if allowed:
                rate.used += 1
            else:
                rate.refused += 1
            sent: dict[str, str] = {} if allowed else {"Retry-After": str(max(1, math.ceil(reset)))}
            if rate.headers is not None:
                prefix = "X-RateLimit-" if rate.headers == "x-ratelimit" else "RateLimit-"
                # X-RateLimit-Reset is a Unix time (as GitHub sends it), RateLimit-Reset seconds (IETF).
                when = time.time() + reset if rate.headers == "x-ratelimit" else reset
                sent[prefix + "Limit"] = str(rate.limit)
                sent[prefix + "Remaining"] = str(rate.limit - rate.used)
                sent[prefix + "Reset"] = str(math.ceil(when))
            return allowed, sent

    def _misbehave(self, req: _Handler, fault: Fault) -> None:
        """Answer as a hostile server (see `Fault`); a client hanging up ends it."""
        with contextlib.suppress(OSError):
            if fault.kind == "stall":
                self._hold(fault.seconds)
                req.drop()
            elif fault.kind == "echo_auth":
                auth = req.headers.get("Authorization", "")
                body = json.dumps(error(label(fault.status), f"upstream refused Authorization: {auth}")).encode()
                req.send_response(fault.status, f"Refused {auth}")
                req.send_header("X-Echo-Authorization", auth)
                self._write_body(req, body)
            else:
                req.send_response(fault.status)
                declared = None if fault.kind == "huge_body" else 1 << 20
                self._stream(req, fault, declared)

    def _write_body(self, req: _Handler, body: bytes) -> None:
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
        req.wfile.flush()

    def _stream(self, req: _Handler, fault: Fault, declared: int | None) -> None:
        req.send_header("Content-Type", "application/json")
        if declared is None:
            req.send_header("Connection", "close")  # the body ends when the connection does
            req.close_connection = True
        else:
            req.send_header("Content-Length", str(declared))
        req.end_headers()
        if fault.kind == "huge_body":
            head = b'{"error":"server error","error_description":"'
            req.wfile.write(head)
            chunk, left = b"a" * 65536, max(0, fault.size - len(head) - 2)
            while left > 0 and self.running:
                req.wfile.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
            req.wfile.write(b'"}')
            return
        deadline = time.monotonic() + fault.seconds
        while time.monotonic() < deadline and self.running:
            req.wfile.write(b" ")
            req.wfile.flush()
            time.sleep(fault.interval)
        req.drop()

    def _hold(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.running:
            time.sleep(0.05)

    def _store(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        item = new_item(collection, body)
        with self._lock:
            (self.time_entries if collection == "time_entries" else self.expenses).append(item)
        return item

    def _list(self, collection: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        with self._lock:
            items = list(self.time_entries if collection == "time_entries" else self.expenses)
        return list_page(items, collection, path, query)
