"""@track_agent on every kind of function, session(), nesting, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument._spool import Spool


def llm(n: int = 1) -> None:
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100 * n, output_tokens=10 * n)


def only_session(ledger: Spool) -> dict[str, Any]:
    sessions = ledger.sessions()
    assert len(sessions) == 1, sessions
    return sessions[0]


def test_bare_decorator_on_a_sync_function(ledger: Spool) -> None:
    @keito.track_agent
    def work(x: int) -> int:
        """Doc kept."""
        llm()
        return x * 2

    assert work(21) == 42
    assert work.__name__ == "work" and work.__doc__ == "Doc kept."
    row = only_session(ledger)
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (1, 100, 10)
    kinds = sorted(r["kind"] for r in ledger.records())
    assert kinds == ["expense", "time_entry"]


def test_decorator_with_settings_on_an_async_function(ledger: Spool) -> None:
    @keito.track_agent(agent_id="bot", project_id="p1", task_id="t1", metadata={"team": "support"})
    async def work() -> str:
        await asyncio.sleep(0.01)
        llm(2)
        return "ok"

    assert asyncio.run(work()) == "ok"
    row = only_session(ledger)
    assert (row["agent_id"], row["project_id"], row["input_tokens"]) == ("bot", "p1", 200)
    entry = next(r for r in ledger.records() if r["kind"] == "time_entry")
    assert entry["payload"]["metadata"]["team"] == "support"
    assert entry["payload"]["metadata"]["duration_seconds"] >= 0.01


def test_generator_session_spans_the_whole_iteration(ledger: Spool) -> None:
    seen: list[str | None] = []

    @keito.track_agent
    def stream() -> Iterator[int]:
        for i in range(3):
            llm()
            seen.append(keito.current_session() and keito.current_session().session_id)  # type: ignore[union-attr]
            yield i

    gen = stream()
    assert ledger.sessions() == []  # nothing started before the first item is asked for
    items = []
    for item in gen:
        items.append(item)
        assert keito.current_session() is None  # the consumer's code is not inside the session
    assert items == [0, 1, 2]
    row = only_session(ledger)
    assert row["llm_calls"] == 3
    assert len(set(seen)) == 1 and seen[0] == row["session_id"]


def test_generator_send_throw_and_close(ledger: Spool) -> None:
    @keito.track_agent
    def echo() -> Iterator[Any]:
        received = None
        try:
            while True:
                received = yield received
        except ValueError:
            yield "recovered"

    gen = echo()
    assert next(gen) is None
    assert gen.send("hello") == "hello"
    assert gen.throw(ValueError("x")) == "recovered"
    gen.close()
    row = only_session(ledger)
    assert row["errors"] == 0


def test_async_generator(ledger: Spool) -> None:
    @keito.track_agent(agent_id="streamer")
    async def stream() -> AsyncIterator[int]:
        for i in range(4):
            llm()
            yield i

    async def consume() -> list[int]:
        return [i async for i in stream()]

    assert asyncio.run(consume()) == [0, 1, 2, 3]
    assert only_session(ledger)["llm_calls"] == 4


def test_the_users_exception_propagates_unchanged_and_is_counted(ledger: Spool) -> None:
    class Boom(Exception):
        pass

    error = Boom("original")

    @keito.track_agent
    def work() -> None:
        llm()
        raise error

    with pytest.raises(Boom) as caught:
        work()
    assert caught.value is error
    assert caught.value.__traceback__ is not None
    row = only_session(ledger)
    assert (row["errors"], row["llm_calls"]) == (1, 1)  # the spend before the error is still billed


def test_async_and_generator_errors_are_counted(ledger: Spool) -> None:
    @keito.track_agent
    async def bad() -> None:
        llm()
        raise KeyError("k")

    @keito.track_agent
    def bad_gen() -> Iterator[int]:
        yield 1
        raise RuntimeError("mid-stream")

    with pytest.raises(KeyError):
        asyncio.run(bad())
    with pytest.raises(RuntimeError):
        list(bad_gen())
    assert sorted(s["errors"] for s in ledger.sessions()) == [1, 1]


def test_nested_calls_join_the_open_session(ledger: Spool) -> None:
    @keito.track_agent
    def inner() -> str:
        llm()
        session = keito.current_session()
        assert session is not None
        return session.session_id

    @keito.track_agent(agent_id="outer")
    def outer() -> tuple[str, str]:
        session = keito.current_session()
        assert session is not None
        return session.session_id, inner()

    outer_id, inner_id = outer()
    assert outer_id == inner_id
    row = only_session(ledger)
    assert (row["llm_calls"], row["agent_id"]) == (1, "outer")


def test_explicit_session_id_wins_over_the_enclosing_one(ledger: Spool) -> None:
    @keito.track_agent(session_id="separate")
    def other() -> None:
        llm()

    with keito.session(session_id="main") as s:
        other()
        llm()
        assert s.session_id == "main"
    assert sorted(r["session_id"] for r in ledger.sessions()) == ["main", "separate"]


def test_session_id_from_the_arguments(ledger: Spool) -> None:
    @keito.track_agent(session_id=lambda ticket: f"ticket-{ticket}")
    def handle(ticket: str) -> None:
        llm()

    handle("T-1")
    assert only_session(ledger)["session_id"] == "ticket-T-1"


def test_session_context_manager_sync_and_async(ledger: Spool) -> None:
    with keito.session(agent_id="cm") as s:
        assert keito.current_session() is s
        llm()
    assert keito.current_session() is None

    async def main() -> str:
        async with keito.session(session_id="async-one") as s:
            llm()
            return s.session_id

    assert asyncio.run(main()) == "async-one"
    assert sorted(r["session_id"] for r in ledger.sessions()) == sorted([s.session_id, "async-one"])


def test_record_llm_call_outside_a_session_bills_an_expense_only(ledger: Spool) -> None:
    assert keito.record_llm_call("gpt-4o", "openai", input_tokens=1000, output_tokens=100) is True
    kinds = [r["kind"] for r in ledger.records()]
    assert kinds == ["expense"]


def test_record_llm_call_to_a_named_session_aggregates_until_it_ends(ledger: Spool) -> None:
    keito.record_llm_call("gpt-4o", input_tokens=100, output_tokens=1, session_id="chat-7")
    keito.record_llm_call("gpt-4o", input_tokens=200, output_tokens=2, session_id="chat-7")
    assert ledger.sessions() == []
    assert keito.end_session("chat-7") is True
    row = only_session(ledger)
    assert (row["input_tokens"], row["llm_calls"]) == (300, 2)


def test_repeated_call_id_counts_once(ledger: Spool) -> None:
    with keito.session():
        for _ in range(3):
            keito.record_llm_call("gpt-4o", input_tokens=10, output_tokens=1, call_id="call-1")
        keito.record_llm_call("gpt-4o", input_tokens=10, output_tokens=1, call_id="call-2")
    assert only_session(ledger)["llm_calls"] == 2


def test_log_outcome_is_an_hours_zero_time_entry(ledger: Spool) -> None:
    with keito.session(project_id="p", task_id="t"):
        keito.log_outcome("ticket_resolved", quantity=2, unit_price=0.99, evidence={"ticket_id": "T-1"},
                          description="Resolved T-1")
    outcome = next(r for r in ledger.records() if r["kind"] == "outcome")["payload"]
    assert outcome["hours"] == 0 and outcome["notes"] == "Resolved T-1"
    meta = outcome["metadata"]
    assert (meta["outcome_type"], meta["outcome_quantity"], meta["outcome_unit_price"], meta["outcome_success"]) == (
        "ticket_resolved", 2, 0.99, True)
    assert meta["outcome_evidence"] == {"ticket_id": "T-1"}  # an object, as the official SDK sends it


def test_flush_without_credentials_returns_true_at_once() -> None:
    assert keito.flush(timeout=0.01) is True
