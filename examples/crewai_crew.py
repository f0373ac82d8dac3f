"""A CrewAI crew billed to Keito, fully offline: a fake LLM, two agents, two tasks, one tool.

    python examples/crewai_crew.py

With no Keito credentials configured the session is stored in the local ledger (KEITO_LEDGER,
default under your user data directory); `keito-instrument sync` sends it later. CrewAI's
telemetry is switched off before crewai is imported, so the run opens no network connection.
"""

from __future__ import annotations

import os

# CrewAI reads these when it is imported.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_DISABLE_VERSION_CHECK", "true")

from typing import Any

from crewai import Agent, Crew, CrewOutput, Task
from crewai.events import crewai_event_bus
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context
from crewai.tools import tool

import keito_instrument as keito
from keito_instrument.integrations import crewai as keito_crewai


class ScriptedLLM(BaseLLM):
    """An offline LLM that acts like a provider: it emits CrewAI's LLM events with token usage."""

    replies: list[str]
    turn: int = 0

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        with llm_call_context():
            self._emit_call_started_event(
                messages=messages,
                tools=tools,
                callbacks=callbacks,
                available_functions=available_functions,
                from_task=from_task,
                from_agent=from_agent,
            )
            text = self.replies[self.turn % len(self.replies)]
            self.turn += 1
            usage = {"prompt_tokens": 850, "completion_tokens": 120, "cached_prompt_tokens": 300}
            self._track_token_usage_internal(usage)
            self._emit_call_completed_event(
                response=text,
                call_type=LLMCallType.LLM_CALL,
                from_task=from_task,
                from_agent=from_agent,
                messages=messages,
                usage=usage,
            )
            return text

    def get_input_tokens_count(self, messages: Any, tools: Any = None) -> int:  # type: ignore[override]
        return 850

    def get_context_window_size(self) -> int:
        return 128_000


@tool("word_count")
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def main() -> int:
    listener = keito_crewai.instrument(agent_id="research-crew")

    llm = ScriptedLLM(
        model="gpt-4o-mini",
        replies=[
            "Thought: I should count the words.\nAction: word_count\n"
            'Action Input: {"text": "agents bill by the hour"}',
            "Thought: I know the answer.\nFinal Answer: The brief has 5 words.",
            "Thought: I can write it.\nFinal Answer: Summary: a 5-word brief about billing agents.",
        ],
    )
    analyst = Agent(
        role="Analyst", goal="Measure the brief", backstory="Precise.", llm=llm, tools=[word_count]
    )
    writer = Agent(role="Writer", goal="Summarise the findings", backstory="Concise.", llm=llm)
    measure = Task(
        name="measure", description="Count the words of the brief.", expected_output="A count", agent=analyst
    )
    summarise = Task(
        name="summarise", description="Write a one-line summary.", expected_output="One line", agent=writer
    )
    crew = Crew(agents=[analyst, writer], tasks=[measure, summarise])

    result = crew.kickoff()
    assert isinstance(result, CrewOutput)  # not streaming
    crewai_event_bus.flush(timeout=10)  # kickoff() may return before CrewAI's handlers finish
    stored = listener.wait(timeout=10)
    keito.shutdown(timeout=5)

    print(f"crew result: {result.raw}")
    print(f"session stored in the ledger: {stored} ({keito.get_settings().ledger_path})")
    return 0 if stored else 1


if __name__ == "__main__":
    raise SystemExit(main())
