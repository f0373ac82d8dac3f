"""A real CrewAI crew (offline LLM that behaves like a provider) billed through our listener."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from _crewai_fakes import FakeLLM, fake_llm
from crewai import Agent, Crew, Process, Task
from crewai.events import crewai_event_bus
from crewai.tools import tool

import keito_instrument as keito
from conftest import FINAL, TOOL_STEP, Probe, make_crew, settle
from keito_instrument._spool import Spool
from keito_instrument.integrations import crewai as keito_crewai
from keito_instrument.integrations.crewai import _events as ev

PER_CALL = 120  # the fake's default usage: 100 prompt + 20 completion tokens


def expense(ledger: Spool, session_id: str) -> dict[str, Any]:
    [record] = [r for r in ledger.records(session_id=session_id) if r["kind"] == "expense"]
    return record["payload"]["metadata"]  # type: ignore[no-any-return]


def test_two_kickoffs_are_two_sessions_with_their_own_tokens(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, probe: Probe
) -> None:
    crew = make_crew()  # two agents sharing one LLM instance
    first = crew.kickoff()
    settle(listener)
    second = crew.kickoff()
    settle(listener)

    sessions = ledger.sessions()
    assert len(sessions) == 2
    for row in sessions:
        assert row["llm_calls"] == 3
        assert row["input_tokens"] + row["output_tokens"] == 3 * PER_CALL
        assert row["tool_calls"] == 1
        assert row["errors"] == 0
    assert probe.calls == 6 and probe.tokens == 6 * PER_CALL  # what crewai's LLM events reported
    # crewai's own totals are cumulative per LLM instance and count the shared LLM once per
    # agent: what we bill must not come from them.
    assert first.token_usage.total_tokens == 2 * 3 * PER_CALL
    assert second.token_usage.total_tokens == 2 * 2 * 3 * PER_CALL
    assert crew.usage_metrics is not None
    assert crew.usage_metrics.total_tokens == 2 * 2 * 3 * PER_CALL


def test_records_carry_usage_breakdown_and_framework(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 300, "cached_prompt_tokens": 400, "reasoning_tokens": 50}
    llm = fake_llm("gpt-4o-mini", [TOOL_STEP, FINAL, FINAL], usage)
    llm.provider = "azure"  # the provider comes from the LLM instance, not from the model name
    crew = make_crew(llm)
    crew.kickoff()
    settle(listener)

    [row] = ledger.sessions()
    md = expense(ledger, row["session_id"])
    assert md["framework"] == "crewai"
    assert md["input_tokens"] == 3000 and md["output_tokens"] == 900
    assert md["cache_read_tokens"] == 1200 and md["reasoning_tokens"] == 150
    assert md["llm_calls"] == 3 and md["tool_calls"] == 1
    assert md["model"] == "gpt-4o-mini" and md["provider"] == "azure"
    assert md["agent.Researcher.llm_calls"] == 2 and md["agent.Writer.llm_calls"] == 1
    assert md["task.adding.input_tokens"] == 2000 and md["task.writing.output_tokens"] == 300
    time_entries = [r for r in ledger.records(session_id=row["session_id"]) if r["kind"] == "time_entry"]
    assert len(time_entries) == 1
    assert time_entries[0]["payload"]["metadata"]["agent_type"] == "crew"


@pytest.mark.parametrize("failing_call", [1, 3])
def test_a_failing_crew_bills_what_it_spent(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, failing_call: int
) -> None:
    script: list[Any] = [TOOL_STEP, FINAL, FINAL]
    script[failing_call - 1] = RuntimeError("provider exploded")
    llm = fake_llm("gpt-4o-mini", script)
    crew = make_crew(llm)
    for agent in crew.agents:
        agent.max_retry_limit = 0
    with pytest.raises(RuntimeError, match="provider exploded"):
        crew.kickoff()
    settle(listener)

    [row] = ledger.sessions()
    assert row["llm_calls"] == failing_call - 1
    assert row["input_tokens"] + row["output_tokens"] == (failing_call - 1) * PER_CALL
    # the failed LLM call, the failed task and the failed kickoff
    assert row["errors"] == 3
    assert crew.usage_metrics is None  # crewai reports nothing for a failed kickoff


def test_kickoff_for_each_gives_one_session_per_input(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, probe: Probe
) -> None:
    crew = make_crew()
    crew.kickoff()  # the copies kickoff_for_each makes inherit these LLM counters
    settle(listener)
    results = crew.kickoff_for_each(inputs=[{"n": 1}, {"n": 2}, {"n": 3}])
    settle(listener)

    sessions = ledger.sessions()
    assert len(sessions) == 4
    assert sum(row["llm_calls"] for row in sessions) == probe.calls
    assert sum(row["input_tokens"] + row["output_tokens"] for row in sessions) == probe.tokens
    # Each copy's agents get their own copy of the LLM (whose script restarts), so every copy
    # makes the same calls: one session each, with that kickoff's tokens only.
    copies = [row["input_tokens"] + row["output_tokens"] for row in sessions[1:]]
    assert copies == [copies[0]] * 3 and copies[0] == (probe.calls - 3) // 3 * PER_CALL
    # crewai's per-result totals accumulate across the copies (and double count): not ours.
    reported = [result.token_usage.total_tokens for result in results]  # type: ignore[union-attr]
    assert reported == sorted(reported) and reported[0] > copies[0] and len(set(reported)) == 3


async def test_kickoff_async_and_akickoff(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, probe: Probe
) -> None:
    crew = make_crew()
    await crew.kickoff_async()  # crew.kickoff in a worker thread
    await crew.akickoff()  # native async: the fake LLM's `acall`
    await crew.kickoff_for_each_async(inputs=[{"n": 1}, {"n": 2}])  # two copies, concurrently
    await crew.akickoff_for_each(inputs=[{"n": 3}])
    await asyncio.to_thread(settle, listener)

    sessions = ledger.sessions()
    assert len(sessions) == 5
    assert [row["llm_calls"] for row in sessions[:2]] == [3, 3]  # the same crew object twice
    assert sum(row["llm_calls"] for row in sessions) == probe.calls
    assert sum(row["input_tokens"] + row["output_tokens"] for row in sessions) == probe.tokens
    assert all(row["input_tokens"] + row["output_tokens"] == row["llm_calls"] * PER_CALL for row in sessions)


async def test_async_kickoffs_join_an_async_keito_session(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool
) -> None:
    crew = make_crew()
    async with keito.session(session_id="chat-9"):
        await crew.akickoff()
        await crew.kickoff_async()
        await asyncio.to_thread(settle, listener)
    [row] = ledger.sessions()
    assert row["session_id"] == "chat-9" and row["llm_calls"] == 6


@pytest.mark.guard_errors_expected
def test_our_failures_never_reach_crewai(
    listener: keito_crewai.KeitoCrewListener,
    ledger: Spool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("keito bug")

    monkeypatch.setattr(listener.assembler, "_apply", broken)
    result = make_crew().kickoff()
    settle(listener)
    assert result.raw == "5"  # the crew is unaffected
    assert len(ledger.sessions()) == 1  # and the kickoff still ended: its time is billed
    assert any(r.name == "keito_instrument" and "internal error" in r.getMessage() for r in caplog.records)


def test_agent_kickoff_without_a_crew_is_a_session(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    llm = fake_llm("gpt-4o-mini", [FINAL])
    agent = Agent(role="Solo", goal="Answer", backstory="Alone.", llm=llm)
    agent.kickoff("What is 2 + 3?")
    settle(listener)

    [row] = ledger.sessions()
    assert row["llm_calls"] == 1 and row["input_tokens"] == 100
    md = expense(ledger, row["session_id"])
    assert md["agent_type"] == "agent"
    assert md["agent.Solo.llm_calls"] == 1


def test_kickoffs_inside_a_keito_session_join_it(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    crew = make_crew()
    with keito.session(session_id="ticket-42"):
        crew.kickoff()
        crew.kickoff()
        settle(listener)
        assert ledger.sessions() == []  # still open: the kickoffs joined, they did not end it

    [row] = ledger.sessions()
    assert row["session_id"] == "ticket-42"
    assert row["llm_calls"] == 6


def test_bare_llm_calls_bill_the_open_keito_session_only(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, probe: Probe
) -> None:
    llm = fake_llm("gpt-4o-mini", [FINAL, RuntimeError("provider exploded")])
    messages = [{"role": "user", "content": "2 + 3?"}]
    llm.call(messages)  # no kickoff, no keito session: nothing to bill it to
    settle(listener)
    assert ledger.sessions() == []
    with keito.session(session_id="bare"):
        llm.calls = 0
        llm.call(messages)
        with pytest.raises(RuntimeError):
            llm.call(messages)
        settle(listener)
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"], row["errors"]) == ("bare", 1, 100, 1)
    assert probe.calls == 2


def test_track_agent_around_a_kickoff(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    crew = make_crew()

    @keito.track_agent(agent_id="crew-runner")
    def handle() -> str:
        out = crew.kickoff()
        settle(listener)
        return str(out.raw)

    assert handle() == "5"
    [row] = ledger.sessions()
    assert row["llm_calls"] == 3


def test_per_crew_settings_and_inputs(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    configured = make_crew()
    keito_crewai.instrument(crew=configured, session_id="crew-a", project_id="proj-a", task_id="task-a")
    configured.kickoff()
    settle(listener)
    plain = make_crew()
    plain.kickoff(inputs={"keito_session_id": "from-inputs", "keito_project_id": "proj-b"})
    settle(listener)

    by_id = {row["session_id"]: row for row in ledger.sessions()}
    assert set(by_id) == {"crew-a", "from-inputs"}
    [entry_a] = [r for r in ledger.records(session_id="crew-a") if r["kind"] == "time_entry"]
    assert entry_a["payload"]["project_id"] == "proj-a" and entry_a["payload"]["task_id"] == "task-a"
    [entry_b] = [r for r in ledger.records(session_id="from-inputs") if r["kind"] == "time_entry"]
    assert entry_b["payload"]["project_id"] == "proj-b"


def bill_to_ticket(inputs: dict[str, Any]) -> dict[str, Any]:
    """A before_kickoff hook choosing the session (module level: crewai warns about lambdas)."""
    return {**inputs, "keito_session_id": f"ticket-{inputs['ticket']}", "keito_task_id": "support"}


def test_a_before_kickoff_hook_sets_the_session(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    crew = make_crew(before_kickoff_callbacks=[bill_to_ticket])
    crew.kickoff(inputs={"ticket": 7})
    settle(listener)
    [row] = ledger.sessions()
    assert row["session_id"] == "ticket-7"
    [entry] = [r for r in ledger.records(session_id="ticket-7") if r["kind"] == "time_entry"]
    assert entry["payload"]["task_id"] == "support"


def ours_on_the_bus(listener: keito_crewai.KeitoCrewListener) -> list[str]:
    """Names of the event classes that have one of `listener`'s handlers registered."""
    from crewai.events import crewai_event_bus

    return sorted(
        cls.__name__
        for cls, handlers in crewai_event_bus._sync_handlers.items()
        if any(getattr(h, "__self__", None) is listener for h in handlers)
    )


def test_uninstrument_really_unregisters(ledger: Spool) -> None:
    from crewai.events import crewai_event_bus

    with crewai_event_bus.scoped_handlers():
        listener = keito_crewai.instrument()
        assert keito_crewai.is_instrumented()
        assert "LLMCallCompletedEvent" in ours_on_the_bus(listener)
        # every billed event, and the stream chunks (to know a failed call had begun streaming)
        assert len(ours_on_the_bus(listener)) == len(keito_crewai._EVENTS) + 1
        assert "LLMStreamChunkEvent" in ours_on_the_bus(listener)
        keito_crewai.uninstrument()
        assert not keito_crewai.is_instrumented()
        assert ours_on_the_bus(listener) == []
        make_crew().kickoff()
        assert crewai_event_bus.flush(timeout=10)
        assert ledger.sessions() == []  # nothing heard the kickoff
        again = keito_crewai.instrument()  # and instrumenting again works
        make_crew().kickoff()
        settle(again)
        keito_crewai.uninstrument()
    [row] = ledger.sessions()
    assert row["llm_calls"] == 3


class Gate:
    """Holds the handling of some events until others have been handled, so CrewAI's handler pool
    delivers them in the order a busy pool can: deterministic, no sleeps."""

    def __init__(self, listener: keito_crewai.KeitoCrewListener, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fed: list[ev.CrewEvent] = []
        self.timed_out = 0
        self._lock = threading.Lock()
        self._opened: dict[str, threading.Event] = {}
        self._holds: list[tuple[str, Callable[[ev.CrewEvent], str]]] = []
        self._feed = listener.assembler.feed
        monkeypatch.setattr(listener.assembler, "feed", self.feed)

    def hold(self, kind: str, until: Callable[[ev.CrewEvent], str]) -> None:
        """Handle events of `kind` only once the event named `until(event)` was handled."""
        self._holds.append((kind, until))

    def open(self, name: str) -> None:
        """Release the events held `until` `name` (a name no event has)."""
        self._event(name).set()

    def _event(self, name: str) -> threading.Event:
        with self._lock:
            return self._opened.setdefault(name, threading.Event())

    def feed(self, event: ev.CrewEvent) -> None:
        for kind, until in self._holds:
            if event.kind == kind and not self._event(until(event)).wait(timeout=10):
                self.timed_out += 1  # the order could not be forced: the test fails on this
        self._feed(event)
        with self._lock:
            self.fed.append(event)
        self._event(f"{event.kind}:{event.item_id or event.key}").set()
        self._event(event.kind).set()

    def kinds(self) -> list[str]:
        return [event.kind for event in self.fed]


def test_starts_handled_after_their_completions(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(listener, monkeypatch)
    gate.hold(ev.LLM_STARTED, lambda e: f"{ev.LLM_COMPLETED}:{e.item_id}")
    make_crew().kickoff()
    settle(listener)

    assert gate.timed_out == 0
    calls = [e.item_id for e in gate.fed if e.kind == ev.LLM_COMPLETED]
    assert len(calls) == 3
    for call in calls:  # every completion was handled before its start
        order = [e.kind for e in gate.fed if e.item_id == call]
        assert order == [ev.LLM_COMPLETED, ev.LLM_STARTED]
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["tool_calls"]) == (3, 300, 1)


def test_an_agent_kickoff_whose_start_is_handled_last(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Agent.kickoff` does not wait for its start handlers: its call can open the session."""
    gate = Gate(listener, monkeypatch)
    gate.hold(ev.KICKOFF_STARTED, lambda e: ev.LLM_COMPLETED)
    agent = Agent(role="Solo", goal="Answer", backstory="Alone.", llm=fake_llm("m", [FINAL]))
    agent.kickoff("What is 2 + 3?")
    settle(listener)

    assert gate.timed_out == 0
    assert gate.kinds().index(ev.LLM_COMPLETED) < gate.kinds().index(ev.KICKOFF_STARTED)
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"]) == (1, 100)
    md = expense(ledger, row["session_id"])
    assert md["agent_type"] == "agent" and md["crewai_agent"] == "Solo"  # as if the start came first


def test_a_failed_kickoff_that_ends_before_its_task_failure_counts_it(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CrewAI drains its bus before `crew_kickoff_completed` (and its agent executor before
    `flow_finished`), but not between `task_failed` and `crew_kickoff_failed`."""
    gate = Gate(listener, monkeypatch)
    gate.hold(ev.TASK_FAILED, lambda e: ev.KICKOFF_FAILED)
    crew = make_crew(fake_llm("gpt-4o-mini", [TOOL_STEP, FINAL, RuntimeError("provider exploded")]))
    for agent in crew.agents:
        agent.max_retry_limit = 0
    with pytest.raises(RuntimeError, match="provider exploded"):
        crew.kickoff()
    settle(listener)

    assert gate.timed_out == 0
    kinds = gate.kinds()
    assert kinds.index(ev.KICKOFF_FAILED) < kinds.index(ev.TASK_FAILED)
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["errors"]) == (2, 200, 3)


@tool("ask_expert")
def ask_expert(question: str) -> str:
    """Ask a helper agent (an Agent.kickoff inside the crew's kickoff)."""
    expert = Agent(role="Expert", goal="Answer", backstory="Knows.", llm=fake_llm("gpt-4o-mini", [FINAL]))
    return str(expert.kickoff(question).raw)


def test_an_agent_kickoff_inside_a_crew_joins_the_crew_session(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool
) -> None:
    llm = fake_llm("gpt-4o-mini", ['Thought: ask\nAction: ask_expert\nAction Input: {"question": "2+3?"}', FINAL])
    asker = Agent(role="Asker", goal="Find out", backstory="Curious.", llm=llm, tools=[ask_expert])
    crew = Crew(agents=[asker], tasks=[Task(description="Find 2+3.", expected_output="A number", agent=asker)])
    crew.kickoff()
    settle(listener)

    [row] = ledger.sessions()
    assert row["llm_calls"] == 3  # two by the crew's agent, one by the expert it consulted
    md = expense(ledger, row["session_id"])
    assert md["agent.Expert.llm_calls"] == 1 and md["agent.Asker.llm_calls"] == 2


def test_settings_survive_keito_instrument_and_typos_fail_fast(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool
) -> None:
    keito_crewai.instrument(project_id="p-default")
    keito_crewai.instrument()  # what keito.instrument() calls: must not reset our settings
    assert listener.options == {"project_id": "p-default"}
    with pytest.raises(TypeError, match="projct_id"):
        keito_crewai.instrument(projct_id="p")
    make_crew().kickoff()
    settle(listener)
    [row] = ledger.sessions()
    [entry] = [r for r in ledger.records(session_id=row["session_id"]) if r["kind"] == "time_entry"]
    assert entry["payload"]["project_id"] == "p-default"


def test_streaming_crew_and_hierarchical_process(listener: keito_crewai.KeitoCrewListener, ledger: Spool) -> None:
    streaming = make_crew(stream=True)
    output = streaming.kickoff()
    list(output)  # a streaming kickoff runs while its output is consumed
    assert output.result.raw == "5"
    settle(listener)

    manager_llm = fake_llm("gpt-4o-mini", [FINAL])
    hierarchical = make_crew(process=Process.hierarchical, manager_llm=manager_llm)
    hierarchical.kickoff()
    settle(listener)

    first, second = ledger.sessions()
    assert first["llm_calls"] == 3 and first["tool_calls"] == 1
    assert manager_llm.calls >= 1
    worker_calls = hierarchical.agents[0].llm.calls  # the agents share one fake LLM
    assert second["llm_calls"] == manager_llm.calls + worker_calls
    assert second["input_tokens"] == second["llm_calls"] * 100


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ROOT_EVENTS = (
    "CrewKickoffStartedEvent",
    "CrewKickoffCompletedEvent",
    "CrewKickoffFailedEvent",
    "LiteAgentExecutionStartedEvent",
    "LiteAgentExecutionCompletedEvent",
    "LLMCallStartedEvent",
)


class Stamps:
    """An independent record of the bus events' own timestamps (epoch seconds), by event type."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.naive = 0
        self._lock = threading.Lock()

    def __call__(self, source: Any, event: Any) -> None:
        stamp: datetime = event.timestamp
        with self._lock:
            if stamp.tzinfo is None:
                self.naive += 1  # crewai 1.x stamps events in UTC, timezone-aware
            else:
                self.times.setdefault(event.type, []).append((stamp - EPOCH).total_seconds())

    def one(self, event_type: str) -> float:
        [stamp] = self.times[event_type]
        return stamp


@pytest.fixture
def stamps(listener: keito_crewai.KeitoCrewListener) -> Iterator[Stamps]:
    """A `Stamps` on the bus beside our listener."""
    from crewai import events

    record = Stamps()
    classes = [getattr(events, name) for name in ROOT_EVENTS]
    for cls in classes:
        crewai_event_bus.register_handler(cls, record)
    try:
        yield record
    finally:
        for cls in classes:
            crewai_event_bus.off(cls, record)


def hold_for_a_while(since: float, length: float) -> float:
    """Keep a gated handler waiting (like a busy pool) until `length` seconds after `since`;
    returns the time it is let go. Only the order of events matters to the assertions."""
    until = since + length
    pause = threading.Event()
    while time.time() < until:
        pause.wait(length / 10)
    return time.time()


@pytest.mark.parametrize("fails", [False, True], ids=["completed", "failed"])
def test_a_kickoff_is_billed_by_its_events_times_not_its_handlers(
    listener: keito_crewai.KeitoCrewListener,
    ledger: Spool,
    monkeypatch: pytest.MonkeyPatch,
    stamps: Stamps,
    fails: bool,
) -> None:
    """The end's handler runs long after the crew finished (a busy pool): that delay is not work."""
    gate = Gate(listener, monkeypatch)
    end = ev.KICKOFF_FAILED if fails else ev.KICKOFF_COMPLETED
    gate.hold(end, lambda e: "let go")
    crew = make_crew(fake_llm("gpt-4o-mini", [TOOL_STEP, FINAL, RuntimeError("provider exploded") if fails else FINAL]))
    for agent in crew.agents:
        assert isinstance(agent, Agent)
        agent.max_retry_limit = 0  # fail once, not three times
    began = time.time()
    if fails:
        with pytest.raises(RuntimeError, match="provider exploded"):
            crew.kickoff()
    else:
        crew.kickoff()
    returned = time.time()  # our end handler is still held: crewai does not wait for it
    let_go = hold_for_a_while(returned, max(0.05, 2 * (returned - began)))
    assert ledger.sessions() == []
    gate.open("let go")
    settle(listener)

    assert gate.timed_out == 0 and stamps.naive == 0
    started = stamps.one("crew_kickoff_started")
    ended = stamps.one("crew_kickoff_failed" if fails else "crew_kickoff_completed")
    [row] = ledger.sessions()
    assert row["active_seconds"] == pytest.approx(ended - started, abs=1e-3)
    assert row["started_at"] == pytest.approx(started, abs=1e-3)
    assert row["active_seconds"] < let_go - ended  # shorter than the time its end waited for us
    assert row["errors"] == (3 if fails else 0)


class SlowToCall(FakeLLM):
    """Works `think` seconds before each call, so a run opened by a call starts measurably late."""

    think: float = 0.05

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        hold_for_a_while(time.time(), self.think)
        return super().call(messages, *args, **kwargs)


def test_an_agent_kickoff_opened_by_its_call_is_back_dated_to_its_start(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, monkeypatch: pytest.MonkeyPatch, stamps: Stamps
) -> None:
    """`Agent.kickoff`'s start handled after its call (which opens the run) and its end held long."""
    gate = Gate(listener, monkeypatch)
    gate.hold(ev.KICKOFF_STARTED, lambda e: ev.LLM_COMPLETED)
    gate.hold(ev.KICKOFF_COMPLETED, lambda e: "let go")
    llm = SlowToCall(model="gpt-4o-mini")
    llm.script, llm.usage, llm.calls = [FINAL], {"prompt_tokens": 100, "completion_tokens": 20}, 0
    agent = Agent(role="Solo", goal="Answer", backstory="Alone.", llm=llm)
    began = time.time()
    agent.kickoff("What is 2 + 3?")
    returned = time.time()
    let_go = hold_for_a_while(returned, max(0.05, 2 * (returned - began)))
    gate.open("let go")
    settle(listener)

    assert gate.timed_out == 0 and stamps.naive == 0
    kinds = gate.kinds()
    assert kinds.index(ev.LLM_STARTED) < kinds.index(ev.KICKOFF_STARTED)  # the call opened the run
    started = stamps.one("lite_agent_execution_started")
    assert stamps.one("llm_call_started") - started >= llm.think  # so opening there would bill less
    ended = stamps.one("lite_agent_execution_completed")
    [row] = ledger.sessions()
    assert row["active_seconds"] == pytest.approx(ended - started, abs=1e-3)
    assert row["active_seconds"] < let_go - ended
    assert (row["llm_calls"], row["input_tokens"]) == (1, 100)
