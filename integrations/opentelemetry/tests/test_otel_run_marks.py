"""The run mark, with hand-made spans: a span that starts (or a root that ends) inside a framework
adapter's run bills none of its time, tool calls or errors into a trace session; a model call in
it that the adapter does not record goes, once, into the adapter's session.

`framework_run` stands in for our LangChain handler, which marks the context from a run's start
to its end; the spans around it are what an instrumentor would report.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import uuid4

from _otel_fakes import Otel
from opentelemetry import trace

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.adapters import Session, begin_run, end_run
from keito_instrument.integrations import _kernel


def chat(response_id: str | None = None, tokens: int = 10) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": tokens, "gen_ai.usage.output_tokens": 1,
        "gen_ai.response.id": response_id or f"chatcmpl-{uuid4()}",
    }
    return attributes


TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"}
CHAIN = {"openinference.span.kind": "CHAIN"}


@contextmanager
def adapter_run(session_id: str = "fw") -> Iterator[Session]:
    """An adapter's run in a session of its own (as the handler's per-run session), marked."""
    run = begin_run(session_id, framework="fake")
    assert run is not None
    try:
        with _kernel.framework_run("fake", run.session):
            yield run.session
    finally:
        end_run(run)


def rows(ledger: Spool) -> list[tuple[object, ...]]:
    keys = ("session_id", "framework", "llm_calls", "input_tokens", "tool_calls", "errors")
    return sorted(tuple(row[k] for k in keys) for row in ledger.sessions())


def test_tools_and_errors_of_a_trace_inside_an_adapters_run_are_the_adapters(otel: Otel, ledger: Spool) -> None:
    with adapter_run(), otel.tracer.start_as_current_span("chain", attributes=CHAIN):
        otel.tracer.start_span("tool", attributes=TOOL).end()
        failed = otel.tracer.start_span("tool", attributes=TOOL)
        failed.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
        failed.end()
    assert rows(ledger) == [("fw", "fake", 0, 0, 0, 0)]
    assert otel.processor.open_traces == 0


def test_a_model_call_inside_an_adapters_run_is_billed_into_its_session(otel: Otel, ledger: Spool) -> None:
    with adapter_run():
        with otel.tracer.start_as_current_span("chat", attributes=chat(tokens=7)):
            pass  # a trace of its own: the adapter's spans are not current
        otel.tracer.start_span("tool", attributes=TOOL).end()
    assert rows(ledger) == [("fw", "fake", 1, 7, 0, 0)]


def test_a_model_call_of_an_adapters_call_inside_its_run_is_left_to_it(otel: Otel, ledger: Spool) -> None:
    with adapter_run():
        with _kernel.framework_call("fake"):
            otel.tracer.start_span("llm", attributes=chat()).end()
        assert _kernel.in_framework_run() is not None  # the call's end brings the run's mark back
    assert rows(ledger) == [("fw", "fake", 0, 0, 0, 0)]


def test_a_root_that_ends_inside_an_adapters_run_is_the_adapters(otel: Otel, ledger: Spool) -> None:
    # The root's instrumentor ran before the adapter at the start (a LangChain handler added by
    # instrument() comes after OpenInference's tracer), and so before it at the end too.
    span = otel.tracer.start_span("chain", attributes=CHAIN)
    with adapter_run():
        with trace.use_span(span):
            otel.tracer.start_span("tool", attributes=TOOL).end()
        span.end()
    assert rows(ledger) == [("fw", "fake", 0, 0, 0, 0)]


def test_a_span_started_elsewhere_under_a_marked_parent_is_the_adapters(otel: Otel, ledger: Spool) -> None:
    with adapter_run(), otel.tracer.start_as_current_span("chain", attributes=CHAIN) as parent:
        parent_context = trace.set_span_in_context(parent)

        def elsewhere() -> None:  # a thread that did not copy the context, given the parent
            otel.tracer.start_span("tool", attributes=TOOL, context=parent_context).end()
            otel.tracer.start_span("chat", attributes=chat(tokens=3), context=parent_context).end()

        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join()
    assert rows(ledger) == [("fw", "fake", 1, 3, 0, 0)]


def test_the_call_is_billed_once_when_another_layer_claimed_its_response(otel: Otel, ledger: Spool) -> None:
    response_id = f"chatcmpl-{uuid4()}"
    assert _kernel.seen.claim(response_id)  # our client hook counted it
    with adapter_run(), otel.tracer.start_as_current_span("chat", attributes=chat(response_id)):
        pass
    assert rows(ledger) == [("fw", "fake", 0, 0, 0, 0)]


def test_a_mark_whose_session_has_ended_holds_no_more(otel: Otel, ledger: Spool) -> None:
    run = begin_run("gone", framework="fake")
    assert run is not None
    token = _kernel.mark_framework_run("fake", run.session)
    try:
        end_run(run)  # a mark left behind in a context that outlived its run
        with otel.tracer.start_as_current_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"}):
            otel.tracer.start_span("tool", attributes=TOOL).end()
    finally:
        _kernel.reset_mark(token)
    [(_, framework, *_counts), gone] = sorted(rows(ledger), key=lambda row: row[0] == "gone")
    assert framework == "otel" and gone[0] == "gone"


def test_a_session_opened_inside_the_run_wins(otel: Otel, ledger: Spool) -> None:
    with adapter_run(), keito.session("inner"), otel.tracer.start_as_current_span("chat", attributes=chat(tokens=4)):
        pass
    assert rows(ledger) == [("fw", "fake", 0, 0, 0, 0), ("inner", "python", 1, 4, 0, 0)]


def test_a_call_ending_after_its_runs_session_is_a_later_part_of_that_session(otel: Otel, ledger: Spool) -> None:
    with adapter_run("short"):
        span = otel.tracer.start_span("chat", attributes=chat(tokens=6))  # a stream read after the run
    span.end()
    assert keito.end_session("short")
    assert [row[:4] for row in rows(ledger)] == [("short", "fake", 0, 0), ("short", "python", 1, 6)]
