"""A tiny OpenAI-compatible chat completions server on 127.0.0.1 (stdlib only), for real providers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 10,
    "total_tokens": 110,
    "prompt_tokens_details": {"cached_tokens": 40},
    "completion_tokens_details": {"reasoning_tokens": 4},
}


class ToolCall:
    """A scripted native tool call."""

    def __init__(self, name: str, arguments: dict[str, Any]) -> None:
        self.name, self.arguments = name, arguments


class FakeOpenAI:
    """Answers `POST /v1/chat/completions` with `replies` in turn (cyclically) and `USAGE`.

    A reply that is a `ToolCall` becomes a native OpenAI tool call (non-streaming requests only).
    The first `cut` streamed replies stop after their first chunk, the connection dropped before
    the body its Content-Length promised (so the client sees a broken stream, not an end).
    """

    def __init__(self, replies: list[str | ToolCall], cut: int = 0) -> None:
        self.replies = replies
        self.cut = cut
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with outer._lock:
                    n = len(outer.requests)
                    outer.requests.append(body)
                reply = outer.replies[n % len(outer.replies)]
                if isinstance(reply, ToolCall):
                    call = {
                        "id": f"call_{n}",
                        "type": "function",
                        "function": {"name": reply.name, "arguments": json.dumps(reply.arguments)},
                    }
                    message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
                    text = ""
                else:
                    text = reply
                    message = {"role": "assistant", "content": text}
                if body.get("stream") and n < outer.cut:
                    self._cut_stream(text, n)
                elif body.get("stream"):
                    self._stream(text, n)
                else:
                    self._send_json(
                        {
                            "id": f"chatcmpl-{n}",
                            "object": "chat.completion",
                            "created": 1_700_000_000,
                            "model": body.get("model", "gpt-4o-mini"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": message,
                                    "finish_reason": "tool_calls" if "tool_calls" in message else "stop",
                                }
                            ],
                            "usage": USAGE,
                        }
                    )

            def _send_json(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, text: str, n: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                base = {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": "gpt-4o-mini",
                }
                words = text.split(" ")
                for i, word in enumerate(words):
                    piece = word if i == len(words) - 1 else word + " "
                    chunk = {
                        **base,
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self.wfile.write(f"data: {json.dumps(end)}\n\n".encode())
                usage = {**base, "choices": [], "usage": USAGE}
                self.wfile.write(f"data: {json.dumps(usage)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def _cut_stream(self, text: str, n: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                chunk = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": 1_700_000_000,
                         "model": "gpt-4o-mini",
                         "choices": [{"index": 0, "delta": {"content": text.split(" ", 1)[0]}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@contextmanager
def fake_openai(replies: list[str | ToolCall], cut: int = 0) -> Iterator[FakeOpenAI]:
    """Serve `FakeOpenAI` in a thread for the duration of the block."""
    fake = FakeOpenAI(replies, cut)
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(5)
