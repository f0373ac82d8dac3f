"""A local OpenAI API on 127.0.0.1 (stdlib only): chat completions, responses and embeddings.

Real `openai` clients are pointed at it with `base_url`. It answers as the OpenAI API does:

- `POST /v1/chat/completions`: a completion with `CHAT_USAGE`; with `stream: true`, word chunks,
  a finish chunk and, only with `stream_options.include_usage`, the usage chunk (no choices);
  `response_format` gets a JSON object (`ANSWER`) as content.
- `POST /v1/responses`: a response with `RESPONSES_USAGE` (`ANSWER` as its text when asked for a
  `json_schema` text format, as `responses.parse` does); streamed as `response.created`,
  `response.output_text.delta` events and `response.completed` carrying the whole response.
- `POST /v1/embeddings`: one vector per input (base64 float32 unless `encoding_format: float`).

The response names a dated model (`gpt-4o-mini` -> `gpt-4o-mini-2024-07-18`), as the API does.
`cut` streams stop after their first chunk with the connection dropped mid-body; `fail` answers
the next requests with that HTTP status, an OpenAI error body and `retry-after-ms: 1` (a client
with retries retries at once); `finish_reason` is the chat completions' (say "content_filter").
Every request body is kept in
`requests`, and `served` tallies the usage the server reported, the oracle a bill is checked
against.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 800, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 120, "audio_tokens": 0},
}
RESPONSES_USAGE = {
    "input_tokens": 1500,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 400,
    "output_tokens_details": {"reasoning_tokens": 256},
    "total_tokens": 1900,
}
EMBEDDINGS_USAGE = {"prompt_tokens": 9, "total_tokens": 9}
REPLY = "Hello from the fake server"
ANSWER = {"answer": 42}  # the structured output: an `answer: int` model validates it, a strict `str` one not
DEPLOYMENTS = {"my-deployment": "gpt-4o-mini"}
DATED = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "o4-mini": "o4-mini-2025-04-16"}


class FakeOpenAI:
    """The server's state: what it was asked, what it reported, what it should do next."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.served: list[dict[str, Any]] = []  # the usage blocks the server reported, in order
        self.cut = 0  # the next `cut` streams are dropped after their first chunk
        self.fail: tuple[int, int] | None = None  # (HTTP status, how many requests)
        self.finish_reason = "stop"  # of every chat completion answered
        self.base_url = ""
        self._lock = threading.Lock()
        self._n = 0
        self._tag = uuid.uuid4().hex[:12]

    def next_id(self, prefix: str) -> str:
        with self._lock:
            self._n += 1
            return f"{prefix}-{self._tag}{self._n}"  # unique across servers, as the API's ids are

    def report(self, usage: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.served.append(usage)
        return usage

    def take_failure(self) -> int | None:
        with self._lock:
            if self.fail is None:
                return None
            status, left = self.fail
            self.fail = (status, left - 1) if left > 1 else None
            return status

    def take_cut(self) -> bool:
        with self._lock:
            if self.cut:
                self.cut -= 1
                return True
            return False


def _chat(fake: FakeOpenAI, handler: _Handler, body: dict[str, Any]) -> None:
    rid, model = fake.next_id("chatcmpl"), DATED.get(body.get("model", ""), body.get("model", "gpt-4o-mini"))
    text = json.dumps(ANSWER) if body.get("response_format") else REPLY
    base = {"id": rid, "created": 1_700_000_000, "model": model, "system_fingerprint": "fp_fake"}
    if not body.get("stream"):
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": fake.finish_reason, "logprobs": None}
        handler.send_json({**base, "object": "chat.completion", "usage": fake.report(CHAT_USAGE),
                           "choices": [choice]})
        return
    chunk = {**base, "object": "chat.completion.chunk"}
    pieces = [{"role": "assistant", "content": ""}] + [{"content": w} for w in _words(text)]
    events = [{**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in pieces]
    events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        for event in events:
            event["usage"] = None
        events.append({**chunk, "choices": [], "usage": fake.report(CHAT_USAGE)})
    handler.send_events(events, cut=fake.take_cut())


def _responses(fake: FakeOpenAI, handler: _Handler, body: dict[str, Any]) -> None:
    rid, model = fake.next_id("resp"), DATED.get(body.get("model", ""), body.get("model", "gpt-4o-mini"))
    wanted = ((body.get("text") or {}).get("format") or {}).get("type")
    text = json.dumps(ANSWER) if wanted == "json_schema" else REPLY
    item = {"id": f"msg-{rid}", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    response: dict[str, Any] = {
        "id": rid, "object": "response", "created_at": 1_700_000_000, "model": model, "status": "completed",
        "output": [item], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": None,
    }
    if not body.get("stream"):
        handler.send_json({**response, "usage": fake.report(RESPONSES_USAGE)})
        return
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**response, "status": "in_progress", "output": []}},
    ]
    at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    events.append({"type": "response.output_item.added", "output_index": 0,
                   "item": {**item, "status": "in_progress", "content": []}})
    events.append({"type": "response.content_part.added", **at, "part": part})
    events += [{"type": "response.output_text.delta", **at, "delta": w, "logprobs": []} for w in _words(text)]
    events.append({"type": "response.output_text.done", **at, "text": text, "logprobs": []})
    events.append({"type": "response.content_part.done", **at, "part": {**part, "text": text}})
    events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
    events.append({"type": "response.completed", "response": {**response, "usage": fake.report(RESPONSES_USAGE)}})
    for n, event in enumerate(events):
        event["sequence_number"] = n
    handler.send_events(events, cut=fake.take_cut(), named=True)


def _embeddings(fake: FakeOpenAI, handler: _Handler, body: dict[str, Any]) -> None:
    inputs = body.get("input")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    vector = [0.25, -0.5, 1.0]
    if body.get("encoding_format") == "base64":
        encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    else:
        encoded = vector
    data = [{"object": "embedding", "index": i, "embedding": encoded} for i in range(len(inputs))]
    handler.send_json({"object": "list", "data": data, "model": body.get("model", "text-embedding-3-small"),
                       "usage": fake.report(EMBEDDINGS_USAGE)})


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


_ROUTES = {"/chat/completions": _chat, "/responses": _responses, "/embeddings": _embeddings}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API (and so the benchmark measures us, not TCP)
    fake: FakeOpenAI

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        fake = self.fake
        with fake._lock:
            fake.requests.append((self.path, body))
        if body.get("model") in DEPLOYMENTS:  # an Azure deployment name: the response names the model
            body["model"] = DEPLOYMENTS[body["model"]]
        status = fake.take_failure()
        path = self.path.split("?", 1)[0]  # (Azure: /openai/deployments/<name>/chat/completions?api-version=)
        route = next((r for suffix, r in _ROUTES.items() if path.endswith(suffix)), None)
        if status is not None or route is None:
            status = status or 404
            error = {"message": f"fake failure {status}", "type": "invalid_request_error", "code": "fake"}
            self.send_json({"error": error}, status=status)
            return
        route(fake, self, body)

    def send_json(self, payload: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", "req_fake")
        if status >= 400:
            self.send_header("retry-after-ms", "1")  # (a client that retries does so at once)
        self.end_headers()
        self.wfile.write(data)

    def send_events(self, events: list[dict[str, Any]], *, cut: bool = False, named: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if cut:  # promise more than is sent, then drop the connection: a broken stream, not an end
            self.send_header("Content-Length", "100000")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in events[: 2 if cut else None]:
            prefix = f"event: {event['type']}\n" if named else ""
            self.wfile.write(f"{prefix}data: {json.dumps(event)}\n\n".encode())
        if not cut and not named:
            self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def fake_openai() -> Iterator[FakeOpenAI]:
    """Serve a `FakeOpenAI` on 127.0.0.1 in a thread for the duration of the block."""
    fake = FakeOpenAI()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
