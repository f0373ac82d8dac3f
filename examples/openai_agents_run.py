"""An OpenAI Agents SDK agent billed to Keito, fully offline. Runs its own fake Responses API.

    python examples/openai_agents_run.py

A real `agents.Agent` with a tool runs against a small OpenAI-compatible server on 127.0.0.1
(started below, so no key and no network are needed): one run, one Keito session with the
tokens the server reported (cached and reasoning tokens included). `replace_exporter=True` keeps
the SDK from sending its traces to OpenAI; leave it out to keep both. With no Keito credentials
the records stay in the local ledger (KEITO_LEDGER); `keito-instrument sync` sends them later.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool
from openai import AsyncOpenAI

import keito_instrument as keito
from keito_instrument.integrations import openai_agents as keito_agents


class FakeResponsesAPI(BaseHTTPRequestHandler):
    """POST /v1/responses: first a call of the `add` tool, then the answer; each with its usage."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tool_done = any(item.get("type") == "function_call_output" for item in body["input"])
        if tool_done:
            item: dict[str, Any] = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                                    "content": [{"type": "output_text", "text": "2 + 3 = 5.", "annotations": []}]}
        else:
            item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "add",
                    "arguments": json.dumps({"a": 2, "b": 3}), "status": "completed"}
        usage = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
                 "output_tokens": 60, "output_tokens_details": {"reasoning_tokens": 20}, "total_tokens": 1260}
        data = json.dumps({"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": 1_700_000_000,
                           "status": "completed", "model": body["model"], "output": [item], "tools": [],
                           "parallel_tool_calls": True, "tool_choice": "auto", "usage": usage}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeResponsesAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="fake")

    keito.configure(project_id="proj-demo", task_id="task-agent-work", expense_category_id="cat-llm-usage")
    keito_agents.instrument(replace_exporter=True, agent_id="math-agent")

    agent = Agent(name="Math", instructions="Use the add tool.", tools=[add],
                  model=OpenAIResponsesModel(model="gpt-4o-mini", openai_client=client))
    result = Runner.run_sync(agent, "What is 2 + 3?", run_config=RunConfig(group_id="math-chat"))
    print(f"agent answered: {result.final_output}")
    keito.end_session("math-chat")  # the conversation is over (or let idle_timeout end it)

    keito.shutdown(timeout=5.0)
    server.shutdown()

    from keito_instrument.cli import main as cli

    cli(["report", "--by", "model"])  # the same report as `keito-instrument report --by model`


if __name__ == "__main__":
    main()
