"""A tiny OpenAI Responses API server on 127.0.0.1 (stdlib only), for the real Agents SDK.

`POST /v1/responses` answers with the next scripted reply: a text message, or a function call
(`Call`, which is also how a handoff is asked for: a call of `transfer_to_<agent>`). Plain JSON,
or with `"stream": true` a server-sent event stream (response.created, output items, text deltas,
response.completed) whose final response carries the usage. Every response has a usage with
cached and reasoning tokens that differ per request; `sent` keeps each one, the oracle a bill is
checked against.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "gpt-4o-mini"


class Call:
    """A scripted function call (a tool, or `transfer_to_<agent>` for a handoff)."""

    def __init__(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        self.name, self.arguments = name, arguments or {}


def usage_for(n: int) -> dict[str, Any]:
    """The usage of the server's n-th response (0-based): every count differs from one to the next."""
    return {
        "input_tokens": 1_000 + 100 * n,
        "input_tokens_details": {"cached_tokens": 400 + 10 * n},
        "output_tokens": 50 + 5 * n,
        "output_tokens_details": {"reasoning_tokens": 8 + n},
        "total_tokens": 1_050 + 105 * n,
    }


class FakeResponses:
    """Answers `POST /v1/responses` with `replies` in turn (the last one repeats)."""

    def __init__(self, replies: list[str | Call], *, fail: int = 0) -> None:
        self.replies = replies
        self.fail = fail  # the first `fail` requests get a 400 error
        self.requests: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []  # the response objects sent, in order
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def totals(self) -> dict[str, int]:
        """The usage the server reported, summed over every response it sent."""
        total = {"input": 0, "cached": 0, "output": 0, "reasoning": 0}
        for response in self.sent:
            usage = response["usage"]
            total["input"] += usage["input_tokens"]
            total["cached"] += usage["input_tokens_details"]["cached_tokens"]
            total["output"] += usage["output_tokens"]
            total["reasoning"] += usage["output_tokens_details"]["reasoning_tokens"]
        return total

    def next_response(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The response to one request, recorded in `sent` (None: this request fails)."""
        with self._lock:
            n = len(self.requests)
            self.requests.append(body)
            if n < self.fail:
                return None
            answered = len(self.sent)
            reply = self.replies[min(answered, len(self.replies) - 1)]
            # Unique ids, as OpenAI's are: the kernel counts each response id once per process.
            response = _response(f"resp_{uuid.uuid4().hex}", body.get("model") or MODEL, reply, usage_for(answered))
            self.sent.append(response)
        return response


def _response(response_id: str, model: str, reply: str | Call, usage: dict[str, Any]) -> dict[str, Any]:
    if isinstance(reply, Call):
        item: dict[str, Any] = {
            "type": "function_call", "id": f"fc_{response_id}", "call_id": f"call_{response_id}",
            "name": reply.name, "arguments": json.dumps(reply.arguments), "status": "completed",
        }
    else:
        item = {
            "type": "message", "id": f"msg_{response_id}", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": reply, "annotations": []}],
        }
    return {
        "id": response_id, "object": "response", "created_at": 1_700_000_000, "status": "completed",
        "model": model, "output": [item], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": usage,
    }


def _handler(fake: FakeResponses) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not self.path.endswith("/responses"):
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                return
            response = fake.next_response(body)
            if response is None:
                self._send(400, {"error": {"message": "scripted failure", "type": "invalid_request_error"}})
            elif body.get("stream"):
                self._stream(response)
            else:
                self._send(200, response)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, response: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            item = response["output"][0]
            opening = {**response, "status": "in_progress", "output": [], "usage": None}
            events: list[dict[str, Any]] = [
                {"type": "response.created", "response": opening},
                {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress"}},
            ]
            if item["type"] == "message":
                for word in item["content"][0]["text"].split(" "):
                    events.append({"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0,
                                   "content_index": 0, "delta": word + " ", "logprobs": []})
            events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
            events.append({"type": "response.completed", "response": response})
            for n, event in enumerate(events):
                event["sequence_number"] = n
                self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def fake_responses(replies: list[str | Call], *, fail: int = 0) -> Iterator[FakeResponses]:
    """Serve `FakeResponses` in a thread for the duration of the block."""
    fake = FakeResponses(replies, fail=fail)
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(5)
