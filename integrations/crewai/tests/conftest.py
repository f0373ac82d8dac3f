"""Fixtures for the CrewAI integration tests: an offline crew, a quiet bus and our listener.

CrewAI reads its telemetry switches when it is imported, so they are set here, before any test
module imports crewai: no telemetry, no AMP tracing, no version check, files in a temp dir.

`_socket_guard` is imported before crewai, too: it refuses and records every connection and name
lookup beyond loopback made by anything in the process (crewai's import, telemetry threads,
providers), and `_nothing_beyond_loopback` fails the test during which one was attempted, even if
the caller swallowed the refusal.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _socket_guard import take_attempts, wrap_socket  # before crewai is imported

os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["CREWAI_TRACING_ENABLED"] = "false"
os.environ["CREWAI_DISABLE_VERSION_CHECK"] = "true"
os.environ["CREWAI_TESTING"] = "true"
os.environ.setdefault("CREWAI_STORAGE_DIR", "keito-instrument-tests")
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="keito-crewai-")


pytest.importorskip("crewai")

from _crewai_fakes import fake_llm
from crewai import Agent, Crew, Task
from crewai.events import LLMCallCompletedEvent, crewai_event_bus
from crewai.tools import tool

from keito_instrument.integrations import crewai as keito_crewai

TOOL_STEP = 'Thought: I need to add\nAction: add\nAction Input: {"a": 2, "b": 3}'
FINAL = "Thought: I know it\nFinal Answer: 5"


@tool("add")
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture(autouse=True)
def _nothing_beyond_loopback(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything tried to reach beyond 127.0.0.1 (crewai's import included)."""
    if "_no_network" in request.fixturenames:
        request.getfixturevalue("_no_network")  # the root guard first, so ours sits in front of it
    wrap_socket(monkeypatch)
    yield
    attempts = take_attempts()
    assert not attempts, f"network attempts beyond loopback: {attempts!r}"


@pytest.fixture
def listener() -> Iterator[keito_crewai.KeitoCrewListener]:
    """Our listener alone on the bus (crewai's console and trace handlers are set aside)."""
    with crewai_event_bus.scoped_handlers():
        installed = keito_crewai.instrument()
        try:
            yield installed
        finally:
            keito_crewai.uninstrument()


class Probe:
    """An independent tally of crewai's `llm_call_completed` events: the oracle a bill is checked against."""

    def __init__(self) -> None:
        self.calls = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def __call__(self, source: Any, event: Any) -> None:
        usage = event.usage or {}
        with self._lock:
            self.calls += 1
            self.tokens += int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))


@pytest.fixture
def probe(listener: keito_crewai.KeitoCrewListener) -> Iterator[Probe]:
    """A `Probe` on the bus beside our listener."""
    tally = Probe()
    crewai_event_bus.register_handler(LLMCallCompletedEvent, tally)
    try:
        yield tally
    finally:
        crewai_event_bus.off(LLMCallCompletedEvent, tally)


def settle(listener: keito_crewai.KeitoCrewListener) -> None:
    """Wait for crewai's handlers, then for our sessions to be stored."""
    assert crewai_event_bus.flush(timeout=10)
    assert listener.wait(timeout=10)


def make_crew(llm: Any = None, *, usage: dict[str, Any] | None = None, **crew_kwargs: Any) -> Crew:
    """Two agents sharing one LLM instance, two tasks, one tool: 3 LLM calls and 1 tool use per kickoff."""
    if llm is None:
        llm = fake_llm("gpt-4o-mini", [TOOL_STEP, FINAL, FINAL], usage)
    researcher = Agent(role="Researcher", goal="Add numbers", backstory="Careful.", llm=llm, tools=[add])
    writer = Agent(role="Writer", goal="Report results", backstory="Brief.", llm=llm)
    adding = Task(name="adding", description="Add 2 and 3.", expected_output="A number", agent=researcher)
    writing = Task(name="writing", description="Report the sum.", expected_output="A sentence", agent=writer)
    return Crew(agents=[researcher, writer], tasks=[adding, writing], **crew_kwargs)
