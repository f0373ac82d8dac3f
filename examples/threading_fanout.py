"""Sessions follow work into threads: one agent fans its model calls out, every call bills to it.
Runs offline.

    python examples/threading_fanout.py

`keito.instrument()` turns on the threading integration (with every other adapter whose framework
is installed), so the session current where work is handed to a `ThreadPoolExecutor`, a
`threading.Thread` or `loop.run_in_executor` travels with it. The report shows one session with
all 9 calls; without `keito.instrument()` they would be 9 stray one-off expenses. The last part
hands the session to a second process through W3C baggage headers (`keito.session_headers()`),
which joins it with `keito.session(from_headers=...)`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import keito_instrument as keito
from keito_instrument.integrations import threading as keito_threading

keito.configure(project_id="proj-demo", task_id="task-agent-work", expense_category_id="cat-llm-usage")
keito_threading.instrument()  # what keito.instrument() does for threads, without the other adapters

WORKER = """
import json, sys
import keito_instrument as keito
with keito.session(from_headers=json.loads(sys.argv[1]), agent_id="research-worker") as s:
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=800, output_tokens=120)
    print(f"worker process joined session {s.session_id}")
keito.end_session(s.session_id)  # this process's part is done: bill it now, not when idle
"""


def fake_llm(topic: str) -> str:
    """Stands in for a model call made in a worker thread: 50 ms, then its usage is recorded."""
    time.sleep(0.05)
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=400, output_tokens=60)
    return f"notes on {topic}"


@keito.track_agent(agent_id="research-bot", session_id="research-1")
def research(topics: list[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        notes = list(pool.map(fake_llm, topics))  # 4 calls in parallel: billed time counted once
        notes.append(pool.submit(fake_llm, "summary").result())
    side: list[str] = []
    threads = [threading.Thread(target=lambda t=t: side.append(fake_llm(t))) for t in ("risks", "costs")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def in_executor() -> list[str]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(None, fake_llm, t) for t in ("a", "b"))))

    return notes + side + asyncio.run(in_executor())


def main() -> None:
    notes = research(["pricing", "market", "rivals", "timeline"])
    print(f"{len(notes)} notes; session research-1 billed every call")

    import json
    import os

    @keito.track_agent(agent_id="research-bot", session_id="research-2")
    def delegate() -> None:
        headers = keito.session_headers({"content-type": "application/json"})
        print(f"outgoing baggage: {headers['baggage']}")
        done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(headers)], capture_output=True,
                              text=True, env=dict(os.environ), check=True)
        print(done.stdout.strip())

    delegate()
    keito.shutdown(timeout=5.0)

    # The same report as `keito-instrument report --by agent`.
    from keito_instrument.cli import main as cli

    cli(["report", "--by", "agent"])


if __name__ == "__main__":
    main()
