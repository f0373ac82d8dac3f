"""Crew hooks, per-crew settings on copies, and the Flow events billing must ignore (real crews)."""

from __future__ import annotations

import asyncio
import gc
import threading
from contextvars import ContextVar
from typing import Any

from _crewai_fakes import FakeLLM, fake_llm
from crewai import Agent, Crew, CrewOutput, Task
from crewai.events import FlowFinishedEvent, FlowStartedEvent, crewai_event_bus
from crewai.flow.flow import Flow, start
from crewai.project import CrewBase, after_kickoff, agent, before_kickoff, crew, task

import keito_instrument as keito
from conftest import FINAL, TOOL_STEP, add, make_crew, settle
from keito_instrument._spool import Spool
from keito_instrument.integrations import crewai as keito_crewai

SHARED: dict[str, FakeLLM] = {}  # the LLM of the @CrewBase crew below, set per test


@CrewBase
class SupportCrew:
    """A decorated crew whose `@before_kickoff` hook chooses the keito session of each kickoff."""

    agents_config: dict[str, Any] = {}  # noqa: RUF012 - no YAML: agents and tasks are built below
    tasks_config: dict[str, Any] = {}  # noqa: RUF012
    agents: list[Any]
    tasks: list[Any]

    @before_kickoff
    def bill_to_ticket(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {**inputs, "keito_session_id": f"ticket-{inputs['ticket']}", "keito_project_id": "support"}

    @after_kickoff
    def sign(self, output: CrewOutput) -> CrewOutput:
        output.raw = f"{output.raw} (signed)"
        return output

    @agent
    def researcher(self) -> Agent:
        return Agent(role="Researcher", goal="Add numbers", backstory="Careful.", llm=SHARED["llm"], tools=[add])

    @agent
    def writer(self) -> Agent:
        return Agent(role="Writer", goal="Report results", backstory="Brief.", llm=SHARED["llm"])

    @task
    def adding(self) -> Task:
        return Task(name="adding", description="Add 2 and 3.", expected_output="A number", agent=self.researcher())

    @task
    def writing(self) -> Task:
        return Task(name="writing", description="Report the sum.", expected_output="A sentence", agent=self.writer())

    @crew
    def crew(self) -> Crew:
        return Crew(agents=self.agents, tasks=self.tasks)


def test_a_crewbase_before_and_after_kickoff_pair(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    SHARED["llm"] = fake_llm("gpt-4o-mini", [TOOL_STEP, FINAL, FINAL])
    support = SupportCrew().crew()
    first = support.kickoff(inputs={"ticket": 7})
    second = support.kickoff(inputs={"ticket": 8})
    settle(listener)

    assert first.raw == second.raw == "5 (signed)"  # the after_kickoff hook ran; it is not billed
    rows = {row["session_id"]: row for row in ledger.sessions()}
    assert set(rows) == {"ticket-7", "ticket-8"}
    assert all(row["llm_calls"] == 3 and row["input_tokens"] == 300 for row in rows.values())
    [entry] = [r for r in ledger.records(session_id="ticket-8") if r["kind"] == "time_entry"]
    assert entry["payload"]["project_id"] == "support"


# A `before_kickoff`/`after_kickoff` pair that opens a keito session around each kickoff (the
# pattern in docs/integrations/crewai.md); both hooks run in the kickoff's context.
ORDER_SESSION: ContextVar[Any] = ContextVar("order_session")
CLOSED: list[str] = []


def open_order_session(inputs: dict[str, Any]) -> dict[str, Any]:
    scope = keito.session(session_id=f"order-{inputs['order']}", task_id="fulfilment")
    opened = scope.__enter__()
    ORDER_SESSION.set((scope, opened.session_id))
    return inputs


def close_order_session(output: CrewOutput) -> CrewOutput:
    scope, session_id = ORDER_SESSION.get()
    scope.__exit__(None, None, None)
    CLOSED.append(session_id)
    return output


def test_kickoffs_join_a_session_opened_and_closed_by_kickoff_hooks(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool
) -> None:
    crew = make_crew(before_kickoff_callbacks=[open_order_session], after_kickoff_callbacks=[close_order_session])
    crew.kickoff(inputs={"order": 1})
    await_two = asyncio.run(crew.akickoff(inputs={"order": 2}))
    assert await_two.raw == "5"
    settle(listener)

    assert CLOSED[-2:] == ["order-1", "order-2"]
    rows = {row["session_id"]: row for row in ledger.sessions()}
    assert set(rows) == {"order-1", "order-2"}  # the kickoffs joined the hooks' sessions
    assert all(row["llm_calls"] == 3 and row["input_tokens"] == 300 for row in rows.values())
    [entry] = [r for r in ledger.records(session_id="order-2") if r["kind"] == "time_entry"]
    assert entry["payload"]["task_id"] == "fulfilment"


def bill_per_customer(inputs: dict[str, Any]) -> dict[str, Any]:
    return {**inputs, "keito_session_id": f"customer-{inputs['customer']}", "keito_agent_id": "batch"}


def test_kickoff_for_each_copies_keep_before_kickoff_settings(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool
) -> None:
    """`kickoff_for_each` runs copies (new ids, so `instrument(crew=...)` does not follow them);
    a module-level `before_kickoff` hook is copied with the crew."""
    crew = make_crew(before_kickoff_callbacks=[bill_per_customer])
    keito_crewai.instrument(crew=crew, session_id="configured")  # inputs set by the hook win over it
    crew.kickoff_for_each(inputs=[{"customer": "a"}, {"customer": "b"}])
    settle(listener)

    assert sorted(row["session_id"] for row in ledger.sessions()) == ["customer-a", "customer-b"]
    for session_id in ("customer-a", "customer-b"):
        [entry] = [r for r in ledger.records(session_id=session_id) if r["kind"] == "time_entry"]
        assert entry["payload"]["metadata"]["agent_id"] == "batch"


def test_per_crew_settings_are_forgotten_with_their_crew(listener: keito_crewai.KeitoCrewListener) -> None:
    for i in range(50):
        keito_crewai.instrument(crew=make_crew(), project_id=f"p{i}")
    kept = make_crew()
    keito_crewai.instrument(crew=kept, project_id="kept")
    gc.collect()
    assert listener._crews == {str(kept.id): {"project_id": "kept"}}


class TwoCrews(Flow):  # type: ignore[type-arg]
    """A user Flow that runs two crews: the Flow is not a session, each kickoff is."""

    @start()
    def run_crews(self) -> str:
        make_crew().kickoff()
        make_crew().kickoff()
        return "done"


def test_flow_events_are_ignored(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    sources: list[str] = []
    lock = threading.Lock()

    def seen(source: Any, event: Any) -> None:
        with lock:
            sources.append(type(source).__name__)

    crewai_event_bus.register_handler(FlowStartedEvent, seen)
    crewai_event_bus.register_handler(FlowFinishedEvent, seen)
    try:
        assert TwoCrews().kickoff() == "done"
        settle(listener)
    finally:
        crewai_event_bus.off(FlowStartedEvent, seen)
        crewai_event_bus.off(FlowFinishedEvent, seen)

    assert sources.count("TwoCrews") == 2
    try:
        from crewai.agents.agent_executor import AgentExecutor
    except ImportError:  # older crewai: the executor is no Flow and emits no flow_* events
        AgentExecutor = object
    if issubclass(AgentExecutor, Flow):
        # Where every agent execution is itself a Flow (crewai's AgentExecutor, since 1.14 or so),
        # its flow_* events reach the bus inside the user's Flow too, and must be ignored as well.
        assert sources.count("AgentExecutor") >= 4
    assert not any(name.startswith("Flow") for name in keito_crewai._EVENTS)
    rows = ledger.sessions()
    assert [(row["llm_calls"], row["input_tokens"], row["tool_calls"]) for row in rows] == [(3, 300, 1)] * 2
