"""Quickstart: bill a plain Python agent with @track_agent. Runs offline.

    python examples/decorator_quickstart.py

Each call of `answer()` is one session: its working time becomes a Keito time entry and its LLM
usage one Keito expense. With no credentials configured, both stay in the local ledger
(KEITO_LEDGER, or the user data directory); `keito-instrument report` shows them and
`keito-instrument sync` sends them once KEITO_API_KEY and KEITO_ACCOUNT_ID are set.
"""

from __future__ import annotations

import asyncio
import time

import keito_instrument as keito

keito.configure(project_id="proj-demo", task_id="task-agent-work", expense_category_id="cat-llm-usage")


def fake_llm(prompt: str) -> tuple[str, int, int]:
    """Stands in for a real model call: returns text and its (input, output) token usage."""
    time.sleep(0.05)
    return f"answer to {prompt!r}", 40 + len(prompt) * 3, 25


@keito.track_agent(agent_id="faq-bot", agent_type="python")
def answer(question: str) -> str:
    text, prompt_tokens, completion_tokens = fake_llm(question)
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=prompt_tokens, output_tokens=completion_tokens)
    keito.log_outcome("question_answered", unit_price=0.05)
    return text


@keito.track_agent(agent_id="faq-bot", agent_type="python")
async def answer_async(question: str) -> str:
    await asyncio.sleep(0.05)
    keito.record_llm_call("claude-haiku-4-5", "anthropic", input_tokens=300, cache_read_tokens=200, output_tokens=40)
    return f"async answer to {question!r}"


def main() -> None:
    print(answer("How do I reset my password?"))
    print(asyncio.run(answer_async("What are your opening hours?")))
    # Two turns of one conversation: one session, idle time between them not billed.
    with keito.session(session_id="chat-42", agent_id="faq-bot") as chat:
        answer("First question")
        answer("Follow-up question")
        print(f"session {chat.session_id}: {chat.llm_calls} LLM calls so far")
    keito.shutdown(timeout=5.0)

    # The same report as `keito-instrument report --by agent`.
    from keito_instrument.cli import main as cli

    cli(["report", "--by", "agent"])


if __name__ == "__main__":
    main()
