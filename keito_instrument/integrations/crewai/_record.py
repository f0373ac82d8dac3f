"""What one `CrewEvent` records in its keito session: an LLM call, a tool call, an error.

Counting each call or tool use once is the assembler's job; these functions record what they are
given.
"""

from __future__ import annotations

from typing import Any

from ..._metadata import text
from ._crew_event import LLM_COMPLETED, LLM_FAILED, TASK_FAILED, TOOL_FAILED, TOOL_KINDS, CrewEvent
from ._tokens import tokens_from_usage

MAX_LABEL = 60
_FAILURES = frozenset({LLM_FAILED, TASK_FAILED})


def record(event: CrewEvent, session: Any) -> None:
    """Record in `session` what `event` (already counted once for its kickoff) bills."""
    kind = event.kind
    if kind == LLM_COMPLETED:
        record_call(event, session)
    elif kind in _FAILURES:
        if event.streamed:  # cut mid-stream: a call whose usage never came, never a silent 0
            record_call(event, session)
        session.record_error()
    elif kind in TOOL_KINDS:
        session.record_tool_call()
        if kind == TOOL_FAILED:
            session.record_error()


def record_call(event: CrewEvent, session: Any) -> None:
    """Count a completed LLM call in `session` (once per call id)."""
    tokens = tokens_from_usage(event.usage)
    breakdown = {k: v for k, v in (("agent", _label(event.agent)), ("task", _label(event.task))) if v}
    session.record_llm_call(
        event.model or "unknown",
        event.provider,
        input_tokens=tokens.input_tokens if tokens else 0,
        output_tokens=tokens.output_tokens if tokens else 0,
        cache_read_tokens=tokens.cache_read_tokens if tokens else 0,
        cache_write_tokens=tokens.cache_write_tokens if tokens else 0,
        reasoning_tokens=tokens.reasoning_tokens if tokens else 0,
        usage_missing=tokens is None,
        call_id=event.item_id,
        breakdown=breakdown or None,
        **((tokens.details or {}) if tokens else {}),
    )


def _label(value: str | None) -> str | None:
    if type(value) is not str:
        value = None if value is None else text(value)  # (a role that is not a string: its text)
    if not value:
        return None
    value = " ".join(value.split())
    return value if len(value) <= MAX_LABEL else value[: MAX_LABEL - 1] + "…"
