"""Real Agents SDK runs (run, run_sync, run_streamed) against the local server: what one trace bills."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from _fake_responses import Call, fake_responses
from agents import Agent, RunConfig, Runner
from genai_prices import Usage, calc_price

import keito_instrument as keito
from conftest import SCRIPT, Recorder, adder, model_for, run
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel


def expected_cost(server_sent: list[dict[str, Any]]) -> float:
    """What genai-prices charges for the responses the server sent, call by call."""
    total = Decimal(0)
    for response in server_sent:
        usage = response["usage"]
        total += calc_price(
            Usage(input_tokens=usage["input_tokens"], cache_read_tokens=usage["input_tokens_details"]["cached_tokens"],
                  output_tokens=usage["output_tokens"]),
            response["model"], provider_id="openai",
        ).total_price
    return float(total)


@pytest.mark.parametrize("mode", ["run", "run_sync", "run_streamed"])
def test_one_run_is_one_session_billed_with_the_servers_usage(recorder: Recorder, ledger: Spool, mode: str) -> None:
    with fake_responses(SCRIPT) as server:
        answer = run(mode, adder(server.base_url), "What is 2 + 3?")
    assert answer.startswith("The sum is 5")
    assert keito.flush(5.0)

    [trace] = recorder.traces
    [row] = ledger.sessions()
    assert row["session_id"] == trace.trace_id and row["framework"] == "openai-agents"
    totals = server.totals()
    assert (row["llm_calls"], row["tool_calls"], row["errors"]) == (2, 1, 0)
    assert (row["input_tokens"], row["output_tokens"]) == (totals["input"], totals["output"])
    [usage] = ledger.connect().execute("SELECT * FROM usage WHERE session_key = ?", (row["session_key"],))
    assert (usage["model"], usage["provider"]) == ("gpt-4o-mini", "openai")
    assert (usage["cache_read_tokens"], usage["reasoning_tokens"]) == (totals["cached"], totals["reasoning"])
    # Cached prompt tokens are billed at the cache price: exactly what genai-prices charges.
    assert row["cost_usd"] == pytest.approx(expected_cost(server.sent), abs=1e-9)


@pytest.mark.parametrize("mode", ["run", "run_streamed"])
def test_time_is_billed_by_the_traces_own_span_times(recorder: Recorder, ledger: Spool, mode: str) -> None:
    with fake_responses(SCRIPT) as server:
        run(mode, adder(server.base_url), "What is 2 + 3?")
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    starts = [_epoch(s.started_at) for s in recorder.spans]
    ends = [_epoch(s.ended_at) for s in recorder.spans]
    assert row["started_at"] == pytest.approx(min(starts), abs=1e-3)
    assert row["ended_at"] == pytest.approx(max(ends), abs=1e-3)
    assert row["active_seconds"] == pytest.approx(max(ends) - min(starts), abs=1e-3)


def test_runs_sharing_a_group_id_are_one_session(recorder: Recorder, ledger: Spool) -> None:
    conversation = RunConfig(group_id="chat-42")
    with fake_responses(["Hello.", "Again.", "Alone."]) as server:
        agent = Agent(name="Chat", instructions="Chat.", model=model_for(server.base_url))
        run("run", agent, "Hi", conversation)
        run("run", agent, "Hi again", conversation)
        run("run", agent, "Unrelated")
    assert keito.end_session("chat-42")
    assert keito.flush(5.0)

    rows = {r["session_id"]: r for r in ledger.sessions()}
    assert len(recorder.traces) == 3 and len(rows) == 2
    chat = rows.pop("chat-42")
    [alone] = rows.values()
    assert alone["session_id"] == recorder.traces[2].trace_id
    assert (chat["llm_calls"], alone["llm_calls"]) == (2, 1)
    usage = [r["usage"] for r in server.sent]
    assert chat["input_tokens"] == usage[0]["input_tokens"] + usage[1]["input_tokens"]
    assert alone["output_tokens"] == usage[2]["output_tokens"]


def test_a_handoff_is_counted_and_both_agents_calls_are_billed(recorder: Recorder, ledger: Spool) -> None:
    with fake_responses([Call("transfer_to_billing"), "Billing here: you owe nothing."]) as server:
        billing = Agent(name="Billing", instructions="Answer billing questions.", model=model_for(server.base_url))
        triage = Agent(name="Triage", instructions="Route.", handoffs=[billing], model=model_for(server.base_url))
        answer = run("run", triage, "Do I owe money?")
    assert answer.startswith("Billing here")
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert len(recorder.of_kind("handoff")) == 1
    assert (row["llm_calls"], row["tool_calls"]) == (2, 1)  # the handoff is the model's transfer call
    assert row["input_tokens"] == server.totals()["input"]


def test_a_run_inside_a_keito_session_bills_to_it(recorder: Recorder, ledger: Spool) -> None:
    with fake_responses(SCRIPT) as server, keito.session("ticket-7"):
        run("run", adder(server.base_url), "What is 2 + 3?")
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["tool_calls"]) == ("ticket-7", 2, 1)


def test_a_failed_model_call_is_an_error_and_the_session_still_bills(recorder: Recorder, ledger: Spool) -> None:
    with fake_responses(["unused"], fail=1) as server, pytest.raises(Exception, match="scripted failure"):
        run("run", adder(server.base_url), "What is 2 + 3?")
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    # The response span and the agent span both failed: one failure, counted once; nothing was billed.
    assert (row["llm_calls"], row["errors"], row["input_tokens"]) == (0, 1, 0)


def test_a_failing_tool_is_an_error_and_a_tool_call(recorder: Recorder, ledger: Spool) -> None:
    from agents import function_tool

    @function_tool
    def explode() -> str:
        """Always fails."""
        raise RuntimeError("boom")

    with fake_responses([Call("explode"), "The tool failed."]) as server:
        agent = Agent(name="Risky", instructions="Try.", tools=[explode], model=model_for(server.base_url))
        run("run", agent, "Go")
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["tool_calls"], row["errors"]) == (2, 1, 1)


def test_the_mark_for_client_hooks_holds_only_during_the_model_call(recorder: Recorder) -> None:
    seen: list[str | None] = []
    from agents import function_tool

    @function_tool
    def probe() -> str:
        """Reports whether the context is marked."""
        seen.append(_kernel.in_framework_call())
        return "ok"

    with fake_responses([Call("probe"), "Done."]) as server:
        agent = Agent(name="Probe", instructions="Probe.", tools=[probe], model=model_for(server.base_url))

        async def main() -> None:
            await Runner.run(agent, "Go")
            seen.append(_kernel.in_framework_call())

        asyncio.run(main())
    assert seen == [None, None]


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_without_sensitive_data_calls_keep_their_tokens_but_not_their_model(recorder: Recorder, ledger: Spool) -> None:
    from agents.tracing import ResponseSpanData

    with fake_responses(SCRIPT) as server:
        run("run", adder(server.base_url), "What is 2 + 3?", RunConfig(trace_include_sensitive_data=False))
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["tool_calls"]) == (2, 1)
    [usage] = ledger.connect().execute("SELECT * FROM usage WHERE session_key = ?", (row["session_key"],))
    assert usage["model"] == "unknown"  # the SDK left the response (and its model) out of the span
    if "usage" in ResponseSpanData.__slots__:  # openai-agents >= 0.4 keeps the usage on the span
        assert row["input_tokens"] == server.totals()["input"]
        assert usage["cache_read_tokens"] == server.totals()["cached"]
    else:  # older: no usage at all, so the calls are counted with their usage missing, never as free
        assert row["input_tokens"] == 0 and row["cost_unknown"]
