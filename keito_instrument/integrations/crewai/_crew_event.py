"""The plain event the CrewAI adapter feeds to the assembler, and its kinds.

The adapter reduces each bus event to a `CrewEvent`; nothing here imports crewai, so tests build
these by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KICKOFF_STARTED = "kickoff_started"
KICKOFF_COMPLETED = "kickoff_completed"
KICKOFF_FAILED = "kickoff_failed"
LLM_STARTED = "llm_started"
LLM_COMPLETED = "llm_completed"
LLM_FAILED = "llm_failed"
TOOL_FINISHED = "tool_finished"
TOOL_FAILED = "tool_failed"
TASK_FAILED = "task_failed"
ENDING = frozenset({KICKOFF_COMPLETED, KICKOFF_FAILED})
LLM_KINDS = frozenset({LLM_STARTED, LLM_COMPLETED, LLM_FAILED})
TOOL_KINDS = frozenset({TOOL_FINISHED, TOOL_FAILED})


@dataclass(frozen=True)
class CrewEvent:
    """One bus event, reduced to what billing needs.

    Attributes:
        kind: One of the module's kind constants (`LLM_COMPLETED`, ...).
        key: The `event_id` of the start event of the innermost kickoff this event belongs to.
        outer: The key of the enclosing kickoff, for a kickoff started inside another one.
        session_id: An explicit session to bill the kickoff to (crew inputs or per-crew settings).
        caller_session: The keito session open in the kickoff caller's context, if any.
        options: `begin_run` options (project_id, task_id, agent_id, metadata, ...).
        item_id: The call id (LLM events) or start event id (tool events) used to count once.
        usage: The provider-shaped usage dict of a completed LLM call.
        settled: For an end event: every event emitted before it has already been handled.
        streamed: For a failed LLM call: its output had begun streaming (the provider bills it).
        at: When the event happened (wall-clock epoch seconds, the bus event's timestamp); None
            when unknown (the time it is handled is used instead).
    """

    kind: str
    key: str
    outer: str | None = None
    session_id: str | None = None
    caller_session: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    item_id: str | None = None
    model: str | None = None
    provider: str | None = None
    usage: Mapping[str, Any] | None = None
    agent: str | None = None
    task: str | None = None
    error: str | None = None
    settled: bool = True
    at: float | None = None
    streamed: bool = False
