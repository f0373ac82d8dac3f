"""An agent calling the Anthropic client directly, billed to Keito with one line. Runs offline.

    python examples/anthropic_client.py

`keito_anthropic.instrument()` counts every `messages.create` and `messages.stream` call with the
usage the API returns (cache reads and writes included); `@track_agent` makes each run of the
agent one session. The "API" here is a small stand-in on 127.0.0.1 that answers as Anthropic
does (a JSON message, or the streamed events), so no key and no network are needed: point
`base_url` elsewhere (or drop it) and give a real key to bill real calls. With no Keito
credentials configured, the sessions stay in the local ledger (KEITO_LEDGER, or the user data
directory); `keito-instrument sync` sends them later.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic

import keito_instrument as keito
from keito_instrument.integrations import anthropic as keito_anthropic

MODEL = "claude-sonnet-4-5"
# What the stand-in bills per call: input excludes the cache parts, as Anthropic reports it.
USAGE = {"input_tokens": 120, "output_tokens": 60, "cache_read_input_tokens": 2_000,
         "cache_creation_input_tokens": 500,
         "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 500}}


class StandIn(BaseHTTPRequestHandler):
    """POST /v1/messages as Anthropic answers it: a Message, or its server-sent events."""

    protocol_version = "HTTP/1.1"
    calls = 0

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.calls += 1
        message = {"id": f"msg_example_{StandIn.calls}", "type": "message", "role": "assistant",
                   "model": request["model"], "content": [{"type": "text", "text": "Paris."}],
                   "stop_reason": "end_turn", "stop_sequence": None, "usage": USAGE}
        if not request.get("stream"):
            self.reply("application/json", json.dumps(message).encode())
            return
        events = [
            ("message_start", {"message": {**message, "content": [], "usage": {**USAGE, "output_tokens": 1}}}),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Paris."}}),
            ("content_block_stop", {"index": 0}),
            ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 60}}),
            ("message_stop", {}),
        ]
        body = "".join(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n" for name, data in events)
        self.reply("text/event-stream", body.encode())

    def reply(self, content_type: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@keito.track_agent(agent_id="geo-bot", agent_type="python")
def answer(client: anthropic.Anthropic, question: str) -> str:
    """One agent run: a plain call, then a streamed one; both are billed to this run's session."""
    messages: Any = [{"role": "user", "content": question}]
    draft = client.messages.create(model=MODEL, max_tokens=256, messages=messages)
    with client.messages.stream(model=MODEL, max_tokens=256, messages=messages) as stream:
        final = "".join(stream.text_stream)
    return f"{draft.content[0].text if draft.content[0].type == 'text' else ''} / {final}"


def main() -> None:
    keito.configure(project_id="proj-demo", task_id="task-agent-work", expense_category_id="cat-llm-usage")
    keito_anthropic.instrument()  # every Anthropic client, made before or after this line

    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with anthropic.Anthropic(base_url=f"http://127.0.0.1:{server.server_port}", api_key="not-needed") as client:
        print(answer(client, "What is the capital of France?"))
        print(answer(client, "And of Italy?"))
    server.shutdown()
    keito.shutdown(timeout=5.0)

    # The same report as `keito-instrument report --by model`: 4 calls, their cache tokens and cost.
    from keito_instrument.cli import main as cli

    cli(["report", "--by", "model"])


if __name__ == "__main__":
    main()
