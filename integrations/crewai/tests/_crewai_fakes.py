"""An offline CrewAI LLM that behaves like a provider: it emits the LLM events and reports usage."""

from __future__ import annotations

from typing import Any

from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context


class FakeLLM(BaseLLM):
    """Replays `script` (ReAct text), one entry per call, cyclically.

    Each call reports `usage` (provider-shaped, like OpenAI's) through the completed event and
    crewai's own per-instance accounting, exactly as the native providers do. An entry that is an
    exception instance is raised (after emitting `llm_call_failed`).
    """

    script: list[Any] = []  # noqa: RUF012 - set per instance by `fake_llm`
    usage: dict[str, Any] = {"prompt_tokens": 100, "completion_tokens": 20}  # noqa: RUF012
    calls: int = 0

    def call(  # type: ignore[override]
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        with llm_call_context():
            self._emit_call_started_event(
                messages=messages,
                tools=tools,
                callbacks=callbacks,
                available_functions=available_functions,
                from_task=from_task,
                from_agent=from_agent,
            )
            step = self.script[self.calls % len(self.script)]
            self.calls += 1
            if isinstance(step, BaseException):
                self._emit_call_failed_event(error=str(step), from_task=from_task, from_agent=from_agent)
                raise step
            usage = dict(self.usage)
            self._track_token_usage_internal(usage)
            self._emit_call_completed_event(
                response=step,
                call_type=LLMCallType.LLM_CALL,
                from_task=from_task,
                from_agent=from_agent,
                messages=messages,
                usage=usage,
            )
            return step

    async def acall(  # type: ignore[override]
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        return self.call(messages, tools, callbacks, available_functions, from_task, from_agent)

    def get_input_tokens_count(self, messages: Any, tools: Any = None) -> int:  # type: ignore[override]
        return 10

    def get_context_window_size(self) -> int:
        return 128_000


def fake_llm(model: str, script: list[Any], usage: dict[str, Any] | None = None) -> FakeLLM:
    """A `FakeLLM`; attributes are set after construction so this works whether `BaseLLM` is a
    pydantic model (crewai >= 1.11) or a plain class (crewai 1.10)."""
    llm = FakeLLM(model=model)
    llm.script = list(script)
    llm.usage = dict(usage or {"prompt_tokens": 100, "completion_tokens": 20})
    llm.calls = 0
    return llm
