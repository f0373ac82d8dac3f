"""Billed by the spans' own times; sessions opened lazily, at a trace's first GenAI span.

Span timestamps are set explicitly (the OpenTelemetry API takes `start_time=` / `end_time=` in ns)
on a timeline that began 1000 s ago, so billed time is asserted exactly and could only come from
the spans themselves: every hook runs now.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from _otel_fakes import Otel, make_otel
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import keito_instrument as keito
from keito_instrument import adapters
from keito_instrument._pipeline import registry
from keito_instrument._session import Session
from keito_instrument._spool import Spool
from keito_instrument.integrations.otel import KeitoSpanProcessor

CHAT: dict[str, str | int] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 10,
    "gen_ai.usage.output_tokens": 1,
}
ORIGIN = time.time_ns() - 1000 * 10**9


def at(seconds: float) -> int:
    """A span timestamp `seconds` into a timeline that began 1000 s ago."""
    return ORIGIN + round(seconds * 1e9)


def chat(tracer: trace.Tracer, parent: trace.Span | None = None) -> None:
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    with tracer.start_as_current_span("chat gpt-4o-mini", context=ctx, attributes=CHAT):
        pass


def remote_parent(trace_id: int) -> context.Context:
    parent = SpanContext(trace_id, 0x1234, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def test_a_trace_is_billed_from_its_roots_start_to_its_end(otel: Otel, ledger: Spool) -> None:
    root = otel.tracer.start_span("POST /chat", attributes={"http.request.method": "POST"}, start_time=at(0))
    with trace.use_span(root):
        chat(otel.tracer)  # the session opens here, back-dated to the root's start
    root.end(end_time=at(30))
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"]) == (1, 10)
    assert row["active_seconds"] == pytest.approx(30.0)
    assert row["started_at"] == pytest.approx(ORIGIN / 1e9)


def test_late_trace_is_billed_from_its_roots_start(ledger: Spool) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    root = tracer.start_span("agent", start_time=at(0))
    provider.add_span_processor(KeitoSpanProcessor(agent_id="late"))  # the root's start was missed
    child = tracer.start_span("chat", context=trace.set_span_in_context(root), attributes=CHAT, start_time=at(20))
    child.end(end_time=at(21))
    assert ledger.sessions() == []
    root.end(end_time=at(50))
    [row] = ledger.sessions()
    # The whole root (its start arrives with its end), not from the first GenAI span (29 s) nor ~0.
    assert (row["llm_calls"], row["agent_id"]) == (1, "late")
    assert row["active_seconds"] == pytest.approx(50.0)
    provider.shutdown()


def test_plain_traces_never_touch_the_core(otel: Otel, ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_begin, real_session_begin = adapters.begin_run, Session.begin_run

    def spy_begin(*args: Any, **kwargs: Any) -> Any:
        calls.append("begin_run")
        return real_begin(*args, **kwargs)

    def spy_session_begin(self: Session, *args: Any, **kwargs: Any) -> Any:
        calls.append("Session.begin_run")
        return real_session_begin(self, *args, **kwargs)

    monkeypatch.setattr(adapters, "begin_run", spy_begin)
    monkeypatch.setattr(Session, "begin_run", spy_session_begin)
    for n in range(20):
        attributes = {"http.request.method": "GET", "session.id": "web-user"} if n % 2 else {}
        with (
            otel.tracer.start_as_current_span("GET /items", attributes=attributes),
            otel.tracer.start_as_current_span("SELECT items", attributes={"db.system": "postgresql"}),
        ):
            assert registry.open_sessions() == []  # nothing opened while the trace runs
    assert calls == [] and registry.open_sessions() == [] and keito.get_session("web-user") is None
    assert ledger.sessions() == [] and otel.processor.open_traces == 0
    chat(otel.tracer)  # the spies are live: a GenAI trace goes through them
    assert calls and len(ledger.sessions()) == 1


def test_the_keito_session_enclosing_the_roots_start_is_joined(otel: Otel, ledger: Spool) -> None:
    with keito.session(session_id="outer") as outer:
        root = otel.tracer.start_span("request")
        # The model call ends on a thread that does not carry the caller's context.
        worker = threading.Thread(target=chat, args=(otel.tracer, root))
        worker.start()
        worker.join()
        root.end()
        assert outer.llm_calls == 1
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("outer", 1)


def test_an_enclosing_session_ended_before_the_first_genai_span_keeps_its_id(otel: Otel, ledger: Spool) -> None:
    with keito.session(session_id="short"):
        root = otel.tracer.start_span("request", start_time=at(0))
    assert [r["llm_calls"] for r in ledger.sessions()] == [0]  # the block ended, its session too
    chat(otel.tracer, root)
    root.end(end_time=at(4))
    rows = sorted(ledger.sessions(), key=lambda r: r["llm_calls"])
    assert [(r["session_id"], r["llm_calls"]) for r in rows] == [("short", 0), ("short", 1)]
    assert rows[1]["active_seconds"] == pytest.approx(4.0)


def test_a_root_that_ended_before_the_first_genai_span_still_counts_in_the_union(
    otel: Otel, ledger: Spool
) -> None:
    trace_id = 0x5EED0123456789ABCDEF0123456789AB
    ctx = remote_parent(trace_id)
    first = otel.tracer.start_span("handle part 1", context=ctx, start_time=at(0))
    second = otel.tracer.start_span("handle part 2", context=ctx, start_time=at(1))
    first.end(end_time=at(2))  # plain so far: nothing is open in the core yet
    chat(otel.tracer, second)
    second.end(end_time=at(5))
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == (f"{trace_id:032x}", 1)
    assert row["active_seconds"] == pytest.approx(5.0)  # [0, 2] u [1, 5], not [1, 5] alone


def test_a_model_call_ending_after_its_plain_root_is_billed(otel: Otel, ledger: Spool) -> None:
    root = otel.tracer.start_span("GET /stream")
    straggler = otel.tracer.start_span("chat", context=trace.set_span_in_context(root), attributes=CHAT)
    root.end()  # nothing GenAI had ended yet: the trace closes without a session
    assert ledger.sessions() == [] and otel.processor.open_traces == 0
    straggler.end()
    keito.shutdown(timeout=1.0)
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == (f"{root.get_span_context().trace_id:032x}", 1)


def test_a_genai_root_is_billed_when_its_trace_is_closed_before_any_span_ends(ledger: Spool) -> None:
    setup = make_otel(max_traces=1)
    stuck = setup.tracer.start_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"})
    setup.tracer.start_span("next").end()  # a plain trace pushes the stuck one out
    [row] = ledger.sessions()  # billed what was seen, although no span of it ended
    assert row["session_id"] == f"{stuck.get_span_context().trace_id:032x}"
    stuck.end()  # its trace was closed: its end bills nothing more
    assert len(ledger.sessions()) == 1 and setup.processor.open_traces == 0
    setup.provider.shutdown()
