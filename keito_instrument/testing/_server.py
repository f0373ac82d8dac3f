"""`KeitoTestServer`: a Keito-compatible HTTP server on 127.0.0.1 for tests and demos.

It speaks the v2 endpoints keito-instrument uses (create and list time entries and expenses,
`GET /users/me`, `GET /api/health`), enforces the contract (auth headers, required fields, types,
ranges, metadata size, source enum, list filters and the pagination envelope) and injects the
faults delivery must survive. It uses only the standard library. This module holds the server's
state (records, request log, faults) and its lifecycle; the HTTP layer and routing are in `_http.py`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from ._http import _Handler, _HTTPServer, read_request, route
from ._resources import COLLECTIONS, list_page, new_item

FaultKind = Literal["status", "drop_after_commit", "error_after_commit"]


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    Attributes:
        kind: "status" (answer `status` without storing anything), "drop_after_commit" (store the
            record, then close the connection without answering) or "error_after_commit" (store
            it, then answer `status`, 500 by default).
        status: the HTTP status sent.
        retry_after: the `Retry-After` header value in seconds, if any.
        methods: only requests with these methods consume the fault (None: any method; the
            commit faults only ever apply to creates).
    """

    kind: FaultKind = "status"
    status: int = 503
    retry_after: float | None = None
    methods: tuple[str, ...] | None = None


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
        self.requests: list[LoggedRequest] = []
        self.latency = 0.0
        self.fault_hook: Callable[[str, str], Fault | None] | None = None
        self._faults: list[tuple[Fault, int]] = []
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
                if fault.kind != "status" and not (method == "POST" and path in COLLECTIONS):
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
            self.requests.clear()
        self.clear_faults()

    # -- request handling (server threads) -----------------------------------------------------
    def _handle(self, req: _Handler) -> None:
        path, query, body, body_error = read_request(req)
        if self.latency:
            time.sleep(self.latency)
        status, answer, extra = route(self, req, path, query, body, body_error)
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
        else:
            req.reply(status, answer, extra)

    def _store(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        item = new_item(collection, body)
        with self._lock:
            (self.time_entries if collection == "time_entries" else self.expenses).append(item)
        return item

    def _list(self, collection: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        with self._lock:
            items = list(self.time_entries if collection == "time_entries" else self.expenses)
        return list_page(items, collection, path, query)
