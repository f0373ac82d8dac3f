"""Traces that never end, processors added mid-trace, broken spans: bounded, billed, never raising."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import agents
import pytest
from _fake_responses import fake_responses
from agents import Runner

import keito_instrument as keito
from conftest import SCRIPT, adder
from keito_instrument._spool import Spool
from keito_instrument.integrations import openai_agents as keito_agents
from keito_instrument.integrations.openai_agents._processor import KeitoTracingProcessor


@pytest.fixture
def alone() -> Iterator[None]:
    agents.set_trace_processors([])
    yield
    keito_agents.uninstrument()
    agents.set_trace_processors([])


def open_trace(name: str) -> Any:
    """A real SDK trace with one span open in it (its session opens at that span)."""
    trace = agents.trace(name)
    trace.start()
    span = agents.custom_span("work", parent=trace)
    span.start()
    return trace, span


def test_open_traces_are_bounded_by_count_and_the_oldest_is_billed(alone: None, ledger: Spool) -> None:
    processor = keito_agents.instrument(max_traces=2)
    opened = [open_trace(f"never ends {n}") for n in range(5)]
    assert processor.open_traces == 2
    assert keito.flush(5.0)
    billed = {r["session_id"] for r in ledger.sessions()}
    assert billed == {trace.trace_id for trace, _span in opened[:3]}  # closed, billing their time
    for trace, span in opened:
        span.finish()
        trace.finish()
    assert processor.open_traces == 0 and processor.open_spans == 0


def test_open_spans_are_bounded_by_count_and_still_bill_when_they_end(alone: None, ledger: Spool) -> None:
    processor = keito_agents.instrument(max_spans=2)
    trace = agents.trace("many spans")
    trace.start()
    spans = [agents.custom_span(f"work {n}", parent=trace) for n in range(5)]
    for span in spans:
        span.start()
    assert processor.open_spans == 2 and processor.open_traces == 1
    for span in spans:
        span.finish()
    trace.finish()
    assert processor.open_traces == 0 and processor.open_spans == 0
    assert keito.flush(5.0)
    assert [r["session_id"] for r in ledger.sessions()] == [trace.trace_id]


def test_open_traces_and_spans_are_bounded_by_age(alone: None, ledger: Spool) -> None:
    processor = keito_agents.instrument(max_trace_age=0.0)
    first = open_trace("abandoned")
    second = open_trace("next")
    assert processor.open_traces == 1 and processor.open_spans == 1
    for trace, span in (first, second):
        span.finish()
        trace.finish()
    assert keito.flush(5.0)
    assert {r["session_id"] for r in ledger.sessions()} == {first[0].trace_id, second[0].trace_id}


def test_a_processor_added_mid_trace_bills_the_rest_of_it(alone: None, ledger: Spool) -> None:
    with fake_responses(SCRIPT) as server:

        async def main() -> str:
            with agents.trace("workflow") as trace:
                keito_agents.instrument()  # too late for the trace's start: its spans still bill
                await Runner.run(adder(server.base_url), "What is 2 + 3?")
            return trace.trace_id

        trace_id = asyncio.run(main())
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["tool_calls"]) == (trace_id, 2, 1)
    assert row["input_tokens"] == server.totals()["input"]


def test_several_runs_in_one_trace_are_one_session(alone: None, ledger: Spool) -> None:
    keito_agents.instrument()
    with fake_responses([*SCRIPT, "Again 5."]) as server:

        async def main() -> None:
            with agents.trace("two runs", group_id=None):
                await Runner.run(adder(server.base_url), "What is 2 + 3?")
                await Runner.run(adder(server.base_url), "And again?")

        asyncio.run(main())
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert row["llm_calls"] == len(server.sent) == 3


@pytest.mark.guard_errors_expected
def test_a_broken_span_never_reaches_the_sdk(alone: None) -> None:
    processor = KeitoTracingProcessor()
    broken: Any = object()
    processor.on_trace_start(broken)
    processor.on_span_start(broken)
    processor.on_span_end(broken)
    processor.on_trace_end(broken)
    processor.shutdown()
    assert processor.open_traces == 0
