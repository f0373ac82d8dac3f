"""A local Anthropic Messages API on 127.0.0.1 (stdlib only), for real `anthropic` clients.

    with FakeAnthropic() as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="fake", max_retries=0)

`POST /v1/messages` answers a plain JSON Message, or with `"stream": true` the SSE events
Anthropic sends: `message_start` (id, model, the usage known at the start), `ping`,
`content_block_start` / `_delta` / `_stop`, `message_delta` (the cumulative usage) and
`message_stop`. Usage has input without its cache parts, `cache_read_input_tokens`,
`cache_creation_input_tokens` split by lifetime in `cache_creation`, and web searches.

With `delta_totals` (newer APIs) the `message_delta` repeats the input and cache counts as
cumulative totals and the start shows less input than the end (server tools add input as they
run); without, the delta carries only the output count. Modes (the server's `mode`, or a
request's `x-fake-mode` header): "ok"; "cut" (the connection is dropped mid-body after some
text); "truncated" (the body ends cleanly before `message_delta`); "error-event" (an SSE
`error` event after some text); "status" (an HTTP error before any output, `error_status`,
with `retry-after-ms: 1`: a client with retries retries at once).

`billed` holds the final usage of every response the server completed, `cut` the ids of those
it cut; `totals()` sums the billed usage in keito's convention (input includes the cache).
"""

from __future__ import annotations

import copy
import itertools
import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE: dict[str, Any] = {
    "input_tokens": 25,
    "output_tokens": 48,
    "cache_read_input_tokens": 1_800,
    "cache_creation_input_tokens": 1_200,
    "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 800},
    "server_tool_use": {"web_search_requests": 1},
}
TEXT = ["Hello", ", ", "world", "!"]
START_SHORTFALL = 7  # with delta_totals, the start shows this much less input than the end


class FakeAnthropic:
    """The server; start with `start()` or `with`."""

    def __init__(self, usage: dict[str, Any] | None = None, *, delta_totals: bool = True, mode: str = "ok",
                 error_status: int = 400) -> None:
        self.usage = copy.deepcopy(usage if usage is not None else USAGE)
        self.delta_totals, self.mode, self.error_status = delta_totals, mode, error_status
        self.billed: list[dict[str, Any]] = []
        self.cut: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._token = uuid.uuid4().hex[:10]  # ids unique across servers (keito counts an id once)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_id(self) -> str:
        with self._lock:
            return f"msg_{self._token}_{next(self._ids):04d}"

    def totals(self) -> dict[str, int]:
        """The billed usage summed, input including its cache parts (keito's convention)."""
        out = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
               "cache_write_1h_tokens": 0, "web_searches": 0}
        for u in self.billed:
            read, write = u.get("cache_read_input_tokens", 0), u.get("cache_creation_input_tokens", 0)
            out["calls"] += 1
            out["input_tokens"] += u["input_tokens"] + read + write
            out["output_tokens"] += u["output_tokens"]
            out["cache_read_tokens"] += read
            out["cache_write_tokens"] += write
            out["cache_write_1h_tokens"] += u.get("cache_creation", {}).get("ephemeral_1h_input_tokens", 0)
            out["web_searches"] += u.get("server_tool_use", {}).get("web_search_requests", 0)
        return out

    # -- what a response says ---------------------------------------------------------------------
    def message(self, model: str, usage: dict[str, Any], message_id: str) -> dict[str, Any]:
        return {"id": message_id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(TEXT)}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": usage}

    def start_usage(self) -> dict[str, Any]:
        usage = {k: copy.deepcopy(v) for k, v in self.usage.items() if k != "server_tool_use"}
        usage["output_tokens"] = 1
        if self.delta_totals:
            usage["input_tokens"] = max(0, usage["input_tokens"] - START_SHORTFALL)
        return usage

    def delta_usage(self) -> dict[str, Any]:
        if not self.delta_totals:
            return {"output_tokens": self.usage["output_tokens"]}
        keys = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                "server_tool_use")
        return {k: copy.deepcopy(self.usage[k]) for k in keys if k in self.usage}

    def final_usage(self) -> dict[str, Any]:
        """What the stream's events add up to (the SDK's own accumulation rule)."""
        final = self.start_usage()
        final.update(self.delta_usage())
        return final


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def _handler(server: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            server.requests.append(body)
            mode = self.headers.get("x-fake-mode") or server.mode
            if self.path.split("?")[0] != "/v1/messages":
                return self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "no"}})
            if mode == "status":
                return self._json(server.error_status, {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "fake: bad request"}})
            model = str(body.get("model", "claude-sonnet-4-5"))
            message_id = server.next_id()
            if not body.get("stream"):
                server.billed.append(copy.deepcopy(server.usage))
                return self._json(200, server.message(model, server.usage, message_id))
            self._stream(model, message_id, mode)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", "req_fake")
            if status >= 400:
                self.send_header("retry-after-ms", "1")  # (a client that retries does so at once)
            self.end_headers()
            self.wfile.write(data)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _stream(self, model: str, message_id: str, mode: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("request-id", "req_fake")
            self.end_headers()
            start = {**server.message(model, server.start_usage(), message_id), "content": [], "stop_reason": None}
            self._chunk(_event("message_start", {"message": start}))
            self._chunk(_event("ping", {}))
            self._chunk(_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
            for i, text in enumerate(TEXT):
                self._chunk(_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}))
                if i == 1 and mode in ("cut", "truncated", "error-event"):
                    return self._stop_early(message_id, mode)
            self._chunk(_event("content_block_stop", {"index": 0}))
            self._chunk(_event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                                 "usage": server.delta_usage()}))
            self._chunk(_event("message_stop", {}))
            self.wfile.write(b"0\r\n\r\n")
            server.billed.append(server.final_usage())

        def _stop_early(self, message_id: str, mode: str) -> None:
            server.cut.append(message_id)
            if mode == "error-event":
                self._chunk(_event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
            if mode in ("truncated", "error-event"):
                self.wfile.write(b"0\r\n\r\n")
                return
            self.close_connection = True  # "cut": no end of the chunked body, the socket just closes
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    return Handler
