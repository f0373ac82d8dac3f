"""An agent calling the OpenAI client directly, billed to Keito with one line. Runs offline.

    python examples/openai_client.py

`keito_openai.instrument()` counts every `chat.completions.create` (plain or streamed),
`responses.create` and `embeddings.create` call with the usage the API returns (cache reads and
reasoning included); `@track_agent` makes each run of the agent one session. The "API" here is
a small stand-in on 127.0.0.1 that answers as OpenAI does (JSON, or server-sent events), so no
key and no network are needed: drop `base_url` and give a real key to bill real calls. With no
Keito credentials configured, the sessions stay in the local ledger (KEITO_LEDGER, or the user
data directory); `keito-instrument sync` sends them later.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai

import keito_instrument as keito
from keito_instrument.integrations import openai as keito_openai

# What the stand-in reports per call: 1,500 prompt tokens of which 1,024 were cache reads.
USAGE = {"prompt_tokens": 1500, "completion_tokens": 80, "total_tokens": 1580,
         "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 0}}


class StandIn(BaseHTTPRequestHandler):
    """POST /v1/chat/completions as OpenAI answers it: a completion, or its chunks."""

    protocol_version = "HTTP/1.1"
    calls = 0

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.calls += 1
        base = {"id": f"chatcmpl-demo{StandIn.calls}", "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18"}
        if not request.get("stream"):
            message = {"role": "assistant", "content": "Refunds take 5 days."}
            self._send("application/json", json.dumps({**base, "object": "chat.completion", "usage": USAGE,
                       "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode())
            return
        chunk: dict[str, Any] = {**base, "object": "chat.completion.chunk"}
        events = [{**chunk, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                  for word in ("Dear ", "customer, ", "your refund is on its way.")]
        events.append({**chunk, "choices": [], "usage": USAGE})  # sent with include_usage
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send("text/event-stream", body.encode())

    def _send(self, content_type: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


keito.configure(project_id="proj-demo", task_id="task-support", expense_category_id="cat-llm-usage")
keito_openai.instrument()  # one line: every OpenAI client call from here on is counted


@keito.track_agent(agent_id="support-agent", agent_type="openai-client")
def answer(client: openai.OpenAI, ticket: str) -> str:
    """One agent run: look the answer up, then write the reply (streamed). One session."""
    facts = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"What is our policy on: {ticket}"}]
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"Reply to the customer using: {facts.choices[0].message.content}"}],
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="sk-demo")
    try:
        for ticket in ("refund timing", "a damaged parcel"):
            print(f"{ticket}: {answer(client, ticket)}")
    finally:
        server.shutdown()
    keito.shutdown(timeout=5.0)
    print(f"{StandIn.calls} model calls made")

    from keito_instrument.cli import main as cli

    cli(["report", "--by", "agent"])  # the same report as `keito-instrument report --by agent`


if __name__ == "__main__":
    main()
