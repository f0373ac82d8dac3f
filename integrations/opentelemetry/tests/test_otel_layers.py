"""Which layer bills a call, with hand-made spans: a framework adapter's mark, the provider's response
id across traces, and a trace's session opened only when the processor has something to bill.

`framework_call` stands in for our LangChain handler, which marks the context from a model call's
start to its end; the spans around it are what an instrumentor would report.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import uuid4

import pytest
from _otel_fakes import Otel, make_otel
from opentelemetry import trace

from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel
from keito_instrument.integrations.otel import KeitoSpanProcessor


def chat(response_id: str | None = None, tokens: int = 10) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": tokens, "gen_ai.usage.output_tokens": 1,
    }
    if response_id is not None:
        attributes["gen_ai.response.id"] = response_id
    return attributes


TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"}
CHAIN = {"openinference.span.kind": "CHAIN"}


@contextmanager
def root(otel: Otel, name: str = "POST /ask") -> Iterator[trace.Span]:
    with otel.tracer.start_as_current_span(name, attributes={"http.request.method": "POST"}) as span:
        yield span


def child(otel: Otel, name: str, attributes: dict[str, str | int]) -> trace.Span:
    return otel.tracer.start_span(name, attributes=attributes)


def test_a_call_span_started_inside_an_adapters_call_is_the_adapters(otel: Otel, ledger: Spool) -> None:
    with root(otel):
        with _kernel.framework_call("fake"):
            span = child(otel, "chat", chat())
        span.end()  # the adapter already ended its call (its callback ran first)
        child(otel, "chain", CHAIN).end()
    assert ledger.sessions() == [] and otel.processor.open_traces == 0


def test_a_call_span_ended_inside_an_adapters_call_is_the_adapters(otel: Otel, ledger: Spool) -> None:
    with root(otel):
        span = child(otel, "chat", chat())  # the span's instrumentor ran before the adapter
        with _kernel.framework_call("fake"):
            span.end()
        child(otel, "chain", CHAIN).end()
    assert ledger.sessions() == []


def test_the_adapters_trace_leaves_its_tools_and_errors_to_it(otel: Otel, ledger: Spool) -> None:
    with root(otel):
        tool = child(otel, "tool", TOOL)
        tool.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
        tool.end()  # before any model call: held back, then dropped with the trace
        with _kernel.framework_call("fake"):
            child(otel, "chat", chat()).end()
    assert ledger.sessions() == []


def test_a_call_the_adapter_does_not_record_still_bills_its_trace(otel: Otel, ledger: Spool) -> None:
    with root(otel):
        with _kernel.framework_call("fake"):
            child(otel, "chat", chat(tokens=10)).end()
        child(otel, "tool", TOOL).end()
        child(otel, "chat", chat(tokens=7)).end()  # a call made outside the adapter
    [row] = ledger.sessions()
    assert (row["framework"], row["llm_calls"], row["input_tokens"], row["tool_calls"]) == ("otel", 1, 7, 1)


def test_a_client_span_starting_a_trace_inside_an_adapters_call_opens_no_session(otel: Otel, ledger: Spool) -> None:
    # A client instrumentor's span is GenAI from its start: a root of its own (its framework's
    # spans are not current) would make its trace billable, but the adapter bills the call.
    with _kernel.framework_call("fake"), otel.tracer.start_as_current_span("chat", attributes=chat(f"r-{uuid4()}")):
        pass
    assert ledger.sessions() == [] and otel.processor.open_traces == 0


def test_one_response_id_in_two_traces_is_billed_once(otel: Otel, ledger: Spool) -> None:
    response_id = f"chatcmpl-{uuid4()}"
    with otel.tracer.start_as_current_span("chat", attributes=chat(response_id, tokens=5)):
        pass
    with root(otel):  # the outer instrumentor's span, in a trace of its own
        child(otel, "llm", chat(response_id, tokens=5)).end()
    rows = ledger.sessions()
    assert sum(r["llm_calls"] for r in rows) == 1 and sum(r["input_tokens"] for r in rows) == 5


def test_a_response_id_our_client_hook_claimed_is_not_billed_again(otel: Otel, ledger: Spool) -> None:
    response_id = f"chatcmpl-{uuid4()}"
    assert _kernel.seen.claim(response_id)  # as record_provider_call does
    with otel.tracer.start_as_current_span("chat", attributes=chat(response_id)):
        pass
    assert ledger.sessions() == []  # nothing else in the trace: no time billed either


def test_tools_before_the_first_call_are_held_until_the_session_opens(otel: Otel, ledger: Spool) -> None:
    with root(otel):
        child(otel, "tool", TOOL).end()
        child(otel, "chain", CHAIN).end()
        assert ledger.sessions() == [] and not _session_open(otel)
        child(otel, "chat", chat()).end()
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["tool_calls"]) == (1, 1)


def test_a_trace_of_tools_and_chains_only_bills_its_time_and_tools(otel: Otel, ledger: Spool) -> None:
    with root(otel) as span:
        failed = child(otel, "tool", TOOL)
        failed.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
        failed.end()
        child(otel, "chain", CHAIN).end()
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["tool_calls"], row["errors"]) == (0, 1, 1)
    seconds = (span.end_time - span.start_time) / 1e9  # type: ignore[attr-defined, operator]
    assert row["active_seconds"] == pytest.approx(seconds, abs=1e-3)


def test_an_evicted_trace_bills_what_it_held(ledger: Spool) -> None:
    setup = make_otel(max_traces=1)
    stuck = setup.tracer.start_span("POST /slow")
    with trace.use_span(stuck):
        setup.tracer.start_span("tool", attributes=TOOL).end()
    setup.tracer.start_span("GET /health").end()  # a second trace: the first is closed
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["tool_calls"]) == (0, 1)
    stuck.end()
    setup.provider.shutdown()
    assert len(ledger.sessions()) == 1


def test_spans_ending_after_shutdown_are_ignored(ledger: Spool) -> None:
    setup = make_otel()
    setup.provider.shutdown()
    with setup.tracer.start_as_current_span("chat", attributes=chat(f"r-{uuid4()}")):
        pass
    assert ledger.sessions() == []


def test_the_mark_request_ends_with_the_processor() -> None:
    processor = KeitoSpanProcessor()
    key = id(processor)
    assert key in _kernel.CLIENT_HOOKS
    del processor
    gc.collect()
    assert key not in _kernel.CLIENT_HOOKS  # collected without shutdown: the adapters stop marking


def _session_open(otel: Otel) -> bool:
    return any(t.session is not None for t in otel.processor._table.traces.values())
