"""Sessions from spans: per trace, per `session.id` across traces, remote parents, late processors."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from _otel_fakes import Otel, make_otel
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import keito_instrument as keito
from keito_instrument import _session
from keito_instrument._spool import Spool
from keito_instrument.integrations.otel import KeitoSpanProcessor

CHAT: dict[str, str | int] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
}


def chat(otel: Otel, input_tokens: int, output_tokens: int, **extra: Any) -> None:
    with otel.tracer.start_as_current_span("chat gpt-4o-mini") as span:
        span.set_attributes(
            {
                **CHAT,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                **extra,
            }
        )


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class FakeClock:
    """The core session clock, moved by hand: billed time is asserted exactly, never by sleeping."""

    def __init__(self) -> None:
        self.now = time.monotonic() + 1000.0  # ahead of the real clock: the sweeper thread sees no idle

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def time() -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_session, "time", fake)
    return fake


class Timeline:
    """Span timestamps (ns since the epoch) on a timeline that began 1000 s ago.

    Billed time comes from the spans' own times, so it is asserted exactly, never by sleeping; the
    hooks themselves all run now, 1000 s after the times they bill.
    """

    def __init__(self) -> None:
        self.origin = time.time_ns() - 1000 * 10**9

    def __call__(self, seconds: float) -> int:
        return self.origin + round(seconds * 1e9)


@pytest.fixture
def at() -> Timeline:
    return Timeline()


def turn(otel: Otel, session_id: str, input_tokens: int, start: int) -> trace.Span:
    """Start a root span naming `session_id` at `start`, make one model call; the root stays open."""
    root = otel.tracer.start_span("turn", attributes={"session.id": session_id}, start_time=start)
    with trace.use_span(root):
        chat(otel, input_tokens, 10)
    return root


def test_session_id_spans_several_traces_and_bills_the_union_of_roots(
    otel: Otel, ledger: Spool, at: Timeline
) -> None:
    first = turn(otel, "chat-7", 100, at(0))
    second = turn(otel, "chat-7", 101, at(2))  # runs in parallel with the first
    first.end(end_time=at(3))
    second.end(end_time=at(4))
    assert first.get_span_context().trace_id != second.get_span_context().trace_id  # two traces, one session
    third = turn(otel, "chat-7", 102, at(104))  # after an idle gap between turns: not billed
    third.end(end_time=at(105.5))
    assert ledger.sessions() == []  # the session stays open across traces
    open_session = keito.get_session("chat-7")
    assert open_session is not None and open_session.llm_calls == 3
    assert keito.end_session("chat-7")

    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (
        "chat-7",
        3,
        303,
        30,
    )
    # The union of the three roots: [0, 4] and [104, 105.5]; not their sum (5.5) nor the wall time (105.5).
    assert row["active_seconds"] == pytest.approx(5.5)
    assert row["started_at"] == pytest.approx(at.origin / 1e9)  # from the first root's own start


def test_idle_timeout_ends_a_session_id_spanning_many_traces(
    otel: Otel, ledger: Spool, clock: FakeClock, at: Timeline
) -> None:
    import time

    from keito_instrument._engine import fold

    keito.configure(idle_timeout=60.0)
    for n in range(3):
        turn(otel, "conv-idle", 10 + n, at(51 * n)).end(end_time=at(51 * n + 1))
    assert keito.flush(5.0)
    assert ledger.sessions() == []  # idle less than the timeout: still open in the ledger
    later = time.time() + 61.0  # 61 s after its last activity: the ledger ends it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fold, "clock", lambda: later)
        assert keito.flush(5.0)
        [row] = ledger.sessions()
    assert (row["session_id"], row["end_reason"], row["llm_calls"], row["input_tokens"]) == (
        "conv-idle",
        "idle_timeout",
        3,
        33,
    )
    assert row["active_seconds"] == pytest.approx(3.0)
    # The same id later opens a new session, billed on its own.
    turn(otel, "conv-idle", 99, at(300)).end(end_time=at(301))
    assert keito.end_session("conv-idle")
    assert sorted(r["input_tokens"] for r in ledger.sessions()) == [33, 99]


def test_traceloop_association_properties_name_the_session(otel: Otel, ledger: Spool) -> None:
    # OpenLLMetry's own processor copies them onto spans at start; its context carries them as well.
    start = {"traceloop.span.kind": "workflow", "traceloop.association.properties.session_id": "tl-1"}
    with otel.tracer.start_as_current_span("a.workflow", attributes=start):
        chat(otel, 10, 1)
    token = context.attach(context.set_value("association_properties", {"session_id": "tl-1", "user": "u"}))
    try:
        with otel.tracer.start_as_current_span("b.workflow", attributes={"traceloop.span.kind": "workflow"}):
            chat(otel, 20, 2)
    finally:
        context.detach(token)
    assert ledger.sessions() == []
    assert keito.end_session("tl-1")
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == ("tl-1", 2, 30)


def test_conversation_id_in_baggage_names_the_session(otel: Otel, ledger: Spool) -> None:
    token = context.attach(baggage.set_baggage("gen_ai.conversation.id", "conv-1"))
    try:
        for _ in range(2):
            with otel.tracer.start_as_current_span("turn"):
                chat(otel, 10, 1)
    finally:
        context.detach(token)
    keito.shutdown(timeout=1.0)
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("conv-1", 2)


def test_openinference_using_session_context_names_the_session(otel: Otel, ledger: Spool) -> None:
    from openinference.instrumentation import using_session

    with using_session("oi-session"), otel.tracer.start_as_current_span("chain"):
        chat(otel, 5, 5)
    assert keito.end_session("oi-session")
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("oi-session", 1)


def test_named_session_ends_after_idle_timeout(otel: Otel, ledger: Spool) -> None:
    keito.configure(idle_timeout=0.3)
    with otel.tracer.start_as_current_span("turn", attributes={"gen_ai.conversation.id": "idle-1"}):
        chat(otel, 7, 3)
    assert wait_for(lambda: len(ledger.sessions()) == 1)
    [row] = ledger.sessions()
    assert (row["session_id"], row["end_reason"], row["llm_calls"]) == ("idle-1", "idle_timeout", 1)


def test_enclosing_keito_session_wins(otel: Otel, ledger: Spool) -> None:
    with keito.session(session_id="outer") as outer:
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1, output_tokens=1)
        with otel.tracer.start_as_current_span("agent", attributes={"session.id": "ignored"}):
            chat(otel, 10, 2)
        assert outer.llm_calls == 2
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == ("outer", 2, 11)


def remote_parent(trace_id: int) -> context.Context:
    parent = SpanContext(trace_id, 0x1234, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def test_remote_parent_roots_of_one_trace_share_a_session(otel: Otel, ledger: Spool) -> None:
    trace_id = 0xABCDEF0123456789ABCDEF0123456789
    ctx = remote_parent(trace_id)
    first = otel.tracer.start_span("handle part 1", context=ctx)
    second = otel.tracer.start_span("handle part 2", context=ctx)
    with trace.use_span(first):
        chat(otel, 10, 1)
    with trace.use_span(second):
        chat(otel, 20, 2)
    first.end()
    assert ledger.sessions() == []  # the second root is still running
    second.end()
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == (f"{trace_id:032x}", 2, 30)


def test_processor_added_after_the_root_started(ledger: Spool) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    root = tracer.start_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"})
    processor = KeitoSpanProcessor(agent_id="late")
    provider.add_span_processor(processor)  # added while the root is open: its on_start was missed
    with trace.use_span(root), tracer.start_as_current_span("chat") as span:
        span.set_attributes({**CHAT, "gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 4})
    assert ledger.sessions() == []  # kept open until its root ends
    root.end()
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["agent_id"]) == (1, 40, "late")
    assert processor.open_traces == 0
    provider.shutdown()


def test_model_call_ending_after_its_root_is_still_billed(otel: Otel, ledger: Spool) -> None:
    root = otel.tracer.start_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"})
    with trace.use_span(root):
        straggler = otel.tracer.start_span("chat", attributes=CHAT)
    chat_ctx = trace.set_span_in_context(root)
    with otel.tracer.start_as_current_span("chat", context=chat_ctx) as span:
        span.set_attributes({**CHAT, "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 1})
    root.end()
    straggler.set_attributes({"gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 9})
    straggler.end()
    keito.shutdown(timeout=1.0)
    rows = ledger.sessions()
    assert sum(r["llm_calls"] for r in rows) == 2
    assert sum(r["input_tokens"] for r in rows) == 55
    assert {r["session_id"] for r in rows} == {f"{root.get_span_context().trace_id:032x}"}


def test_parallel_traces_on_threads_are_exact(otel: Otel, ledger: Spool) -> None:
    def worker(n: int) -> None:
        for _ in range(10):
            with otel.tracer.start_as_current_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"}):
                chat(otel, n, 1)
                chat(otel, n, 1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert keito.flush(timeout=30)  # sessions that met a busy spool are written by the fallback writer
    rows = ledger.sessions()
    assert len(rows) == 80
    assert sum(r["llm_calls"] for r in rows) == 160
    assert sum(r["input_tokens"] for r in rows) == 2 * 10 * sum(range(1, 9))
    assert otel.processor.open_traces == 0


def test_state_is_bounded_by_count(ledger: Spool) -> None:
    setup = make_otel(max_traces=3)
    roots = []
    for n in range(6):
        root = setup.tracer.start_span(f"agent {n}", attributes={"gen_ai.operation.name": "invoke_agent"})
        with trace.use_span(root):
            chat(setup, 10, 1)
        roots.append(root)
        assert setup.processor.open_traces <= 3
    assert len(ledger.sessions()) == 3  # the three oldest were closed, billing what was seen
    for root in roots:
        root.end()
    rows = ledger.sessions()
    assert sum(r["llm_calls"] for r in rows) == 6 and setup.processor.open_traces == 0
    assert len(rows) == 6  # the end of an evicted root bills nothing more (no second session)
    setup.provider.shutdown()


def test_state_is_bounded_by_age(ledger: Spool) -> None:
    setup = make_otel(max_trace_age=0.05)
    stuck = setup.tracer.start_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"})
    time.sleep(0.1)
    with setup.tracer.start_as_current_span("next"):
        chat(setup, 1, 1)
    assert setup.processor.open_traces == 0  # the stuck trace was closed on the next root's start
    assert len(ledger.sessions()) == 2
    stuck.end()
    assert len(ledger.sessions()) == 2
    setup.provider.shutdown()


def test_provider_shutdown_closes_open_traces(ledger: Spool) -> None:
    setup = make_otel()
    root = setup.tracer.start_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"})
    with trace.use_span(root):
        chat(setup, 3, 1)
    setup.provider.shutdown()
    [row] = ledger.sessions()
    assert row["llm_calls"] == 1 and setup.processor.open_traces == 0


def test_force_flush_without_credentials_returns_true(otel: Otel) -> None:
    assert otel.provider.force_flush(timeout_millis=500) is True


def test_plain_trace_in_a_named_session_keeps_the_session(otel: Otel, ledger: Spool) -> None:
    with otel.tracer.start_as_current_span("turn 1", attributes={"session.id": "kept"}):
        chat(otel, 10, 1)
    with otel.tracer.start_as_current_span("GET /status", attributes={"session.id": "kept"}):
        pass  # no GenAI span: nothing of its own to bill, and the session's earlier calls stay
    assert keito.end_session("kept")
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == ("kept", 1, 10)


def test_late_trace_takes_the_session_id_of_its_first_span(ledger: Spool) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    root = tracer.start_span("chain")
    processor = KeitoSpanProcessor()
    provider.add_span_processor(processor)
    with trace.use_span(root), tracer.start_as_current_span("llm") as span:
        span.set_attributes(
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.token_count.prompt": 8,
                "llm.token_count.completion": 2,
                "session.id": "late-s",
            }
        )
    root.end()
    assert keito.end_session("late-s")
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("late-s", 1)
    provider.shutdown()


def test_roots_of_one_trace_started_on_many_threads_share_one_session(otel: Otel, ledger: Spool) -> None:
    trace_id = 0x0123456789ABCDEF0123456789ABCDEF
    ctx = remote_parent(trace_id)
    barrier = threading.Barrier(8)

    def handle() -> None:
        barrier.wait()
        with otel.tracer.start_as_current_span("handle", context=ctx):
            chat(otel, 10, 1)
            barrier.wait()  # every root is open at once before any ends

    threads = [threading.Thread(target=handle) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == (f"{trace_id:032x}", 8, 80)
    assert otel.processor.open_traces == 0


def pydantic_ai_run(otel: Otel, conversation_id: str, input_tokens: int, start: int, end: int) -> None:
    """A run as pydantic-ai traces it: one root span carrying `gen_ai.conversation.id`."""
    root = otel.tracer.start_span("agent run", attributes={"gen_ai.conversation.id": conversation_id},
                                  start_time=start)
    with trace.use_span(root):
        chat(otel, input_tokens, 10)
    root.end(end_time=end)


def test_a_conversation_id_seen_in_one_trace_is_billed_soon_and_one_seen_again_waits(
    otel: Otel, ledger: Spool, at: Timeline
) -> None:
    import keito_instrument.integrations.otel as adapter
    from keito_instrument._engine import fold

    pydantic_ai_run(otel, "run-a1", 50, at(0), at(2))  # a fresh id per run: one trace only
    pydantic_ai_run(otel, "chat-b", 60, at(10), at(12))  # a real conversation: two traces
    pydantic_ai_run(otel, "chat-b", 70, at(20), at(21))
    assert keito.flush(5.0)
    assert ledger.sessions() == []  # nothing is billed at once: a second trace could still come
    soon = time.time() + adapter.FIRST_TRACE_TIMEOUT + 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fold, "clock", lambda: soon)
        assert keito.flush(5.0)
        [row] = ledger.sessions()
        assert (row["session_id"], row["end_reason"], row["input_tokens"]) == ("run-a1", "idle_timeout", 50)
        assert row["active_seconds"] == pytest.approx(2.0)
    idle = time.time() + keito.configure().idle_timeout + 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fold, "clock", lambda: idle)
        assert keito.flush(5.0)
        conversation = [r for r in ledger.sessions() if r["session_id"] == "chat-b"]
    assert [(r["input_tokens"], r["llm_calls"]) for r in conversation] == [(130, 2)]  # one entry, both turns


def test_first_trace_timeout_none_keeps_every_named_session_until_idle(ledger: Spool, at: Timeline) -> None:
    from _otel_fakes import make_otel

    from keito_instrument._engine import fold
    from keito_instrument.integrations.otel import FIRST_TRACE_TIMEOUT, KeitoSpanProcessor

    with pytest.raises(ValueError, match="first_trace_timeout"):
        KeitoSpanProcessor(first_trace_timeout=0)
    otel = make_otel(first_trace_timeout=None)
    try:
        pydantic_ai_run(otel, "run-c1", 40, at(0), at(1))
        soon = time.time() + FIRST_TRACE_TIMEOUT + 1
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fold, "clock", lambda: soon)
            assert keito.flush(5.0)
            assert ledger.sessions() == []  # waits for idle_timeout, as any named session
        assert keito.end_session("run-c1") and keito.flush(5.0)
        assert [r["input_tokens"] for r in ledger.sessions()] == [40]
    finally:
        otel.provider.shutdown()
