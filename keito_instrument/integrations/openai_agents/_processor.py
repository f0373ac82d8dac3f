"""The tracing processor: the Agents SDK's traces and spans -> Keito sessions, runs and calls.

Threading contract: the SDK calls every hook synchronously, on the thread and in the context
(asyncio task) that starts or ends the trace or span. Each hook does O(1) work under short locks,
never blocks, never raises into the SDK and never touches the network (the core writes its local
ledger once, when a session ends).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.tracing import Span, Trace, TracingProcessor
from typing_extensions import override

import keito_instrument as _keito

from ... import adapters as _api
from ...adapters import Run, Session, guard
from .._kernel import check_options, mark_framework_call, record_provider_call, reset_mark
from .._runs import OpenRuns, Recent
from . import SESSION_SETTINGS, _spans

__all__ = ["FRAMEWORK", "KeitoTracingProcessor"]

_log = logging.getLogger("keito_instrument")

FRAMEWORK = "openai-agents"
_MAX_CLOSED = 4_096  # recently closed traces remembered, so their stragglers join the same session
_SPAN_SWEEP = 1_024  # open spans are swept for age every so many inserts (and at every trace start)
FLUSH_TIMEOUT = 5.0  # seconds `force_flush` (the SDK's `flush_traces()`) waits for delivery
# One guard object per hook: `guard` keeps no state, so reusing it saves an allocation per span.
_ON_TRACE_START, _ON_TRACE_END = guard("openai-agents on_trace_start"), guard("openai-agents on_trace_end")
_ON_SPAN_START, _ON_SPAN_END = guard("openai-agents on_span_start"), guard("openai-agents on_span_end")


@dataclass(slots=True, eq=False)
class _Trace:
    """One trace being billed. Its session opens at its first span, back-dated to that span's start.

    The fields below `lock` are read and written under it; the processor's lock guards only its
    tables and is never held while this one is taken.
    """

    born: float  # monotonic: the age cap
    enclosing: Session | None  # the keito session current where the trace started
    session_id: str  # the trace's group_id (a conversation), else its trace id
    close: str  # "idle" for a group_id conversation, "runs" for a trace of its own
    late: bool = False  # first seen at a span (we were added mid-trace, or a resumed run)
    lock: threading.Lock = field(default_factory=threading.Lock)
    run: Run | None = None
    opened: bool = False  # the session was opened (or tried: a disabled keito tries once)
    last_end: float | None = None  # the latest `ended_at` of its spans (epoch seconds)
    open_spans: int = 0
    failed: set[str] = field(default_factory=set)  # open spans whose subtree already counted an error
    closed: bool = False

    @property
    def session(self) -> Session | None:
        run = self.run
        return run.session if run is not None else None


@dataclass(slots=True, eq=False)
class _Open:
    """One open span: its trace, and the mark token of a model call (reset at its end)."""

    born: float
    trace: _Trace
    token: Any = None


class KeitoTracingProcessor(TracingProcessor):
    """A tracing processor that bills each Agents SDK trace as one Keito session.

    Register it with `keito_instrument.integrations.openai_agents.instrument()` (or yourself with
    `agents.add_trace_processor`). A trace with a `group_id` bills to the session of that id,
    kept open across traces until `idle_timeout`; a trace started inside a keito session
    (`@track_agent`, `keito.session()`) bills to it; any other trace is a session of its own.

    Args:
        max_traces: How many traces are tracked at once; beyond it the oldest is closed, billing
            what it spent so far.
        max_spans: How many open spans are tracked at once (the oldest is forgotten beyond it).
        max_trace_age: Seconds after which a trace (or span) that never ended is closed.
        **session_settings: project_id, task_id, expense_category_id, agent_id, agent_type,
            billable, notes, metadata, idle_timeout, for every session this processor opens.
    """

    def __init__(self, *, max_traces: int = 10_000, max_spans: int = 100_000, max_trace_age: float = 3600.0,
                 **session_settings: Any) -> None:
        self._options: dict[str, Any] = {}
        self.set_options(**session_settings)
        self._lock = threading.Lock()  # makes "look up, else insert" one step for the trace table
        self._traces: OpenRuns[str, _Trace] = OpenRuns(max_traces, max_trace_age)
        self._spans: OpenRuns[str, _Open] = OpenRuns(max_spans, max_trace_age, sweep_every=_SPAN_SWEEP)
        self._closed: Recent[str, tuple[str, str]] = Recent(_MAX_CLOSED)  # trace id -> (session id, close)
        self.active = True

    def set_options(self, **session_settings: Any) -> None:
        """Replace the settings of the sessions opened from now on."""
        check_options("openai_agents.instrument()", session_settings, SESSION_SETTINGS)
        self._options = {"framework": FRAMEWORK, **session_settings}

    # -- TracingProcessor hooks ---------------------------------------------------------------
    @override
    def on_trace_start(self, trace: Trace) -> None:
        """Runs where the trace starts (`Runner.run`, `with trace(...)`): reads the session there."""
        with _ON_TRACE_START:
            if not self.active:
                return
            group = getattr(trace, "group_id", None)
            session_id, close = (group, "idle") if isinstance(group, str) and group else (trace.trace_id, "runs")
            fresh = _Trace(time.monotonic(), _api.current_session(), session_id, close)
            with self._lock:
                found = self._traces.get(trace.trace_id)
                if found is not None and not found.closed:
                    found.late = False  # its spans came first; its end will come too
                    return
                evicted = self._add_locked(trace.trace_id, fresh)
            for old in evicted:
                _close(old)

    @override
    def on_trace_end(self, trace: Trace) -> None:
        """Runs where the trace ends: its run ends at its last span's end, its session with it."""
        with _ON_TRACE_END:
            with self._lock:
                record = self._traces.pop(trace.trace_id)
                if record is not None:
                    self._remember(trace.trace_id, record)
            if record is not None:
                _close(record)

    @override
    def on_span_start(self, span: Span[Any]) -> None:
        """Runs in the context starting the span; a model call's start marks that context (below)."""
        with _ON_SPAN_START:
            if not self.active:
                return
            record = self._trace_of(span.trace_id)
            session = _open(record, self._options, _spans.epoch(span.started_at))
            token = None
            if session is not None and _spans.kind(span) in _spans.MODEL_KINDS:
                # The SDK calls the OpenAI client inside this span, in this context: our client
                # hooks see the mark and leave the call to us, so it is billed once, here.
                token = mark_framework_call(FRAMEWORK)
            with record.lock:
                record.open_spans += 1
            # (Spans swept out are only forgotten: their mark stays in a context that is long gone.)
            self._spans.add(span.span_id, _Open(time.monotonic(), record, token))

    @override
    def on_span_end(self, span: Span[Any]) -> None:
        """Runs in the context ending the span: counts its call, tool use, handoff or error."""
        with _ON_SPAN_END:
            opened = self._spans.pop(span.span_id)
            if opened is not None and opened.token is not None:
                reset_mark(opened.token)
            if not self.active:
                return
            record = opened.trace if opened is not None else None
            if record is None or record.closed:
                record = self._trace_of(span.trace_id)  # a straggler, or begun before we were added
            elif opened is not None:
                with record.lock:
                    record.open_spans -= 1
            session = _open(record, self._options, _spans.epoch(span.started_at))
            if session is not None:
                _count(record, session, span)
            if record.late and record.open_spans <= 0:
                self._retire(span.trace_id, record)

    @override
    def shutdown(self, timeout: float | None = None) -> None:
        """Close every open trace, billing what it spent (the SDK calls this at exit)."""
        with guard("openai-agents shutdown"):
            self.close_all()

    @override
    def force_flush(self) -> None:
        """Deliver stored records (`keito.flush`, bounded); open traces stay open."""
        with guard("openai-agents force_flush"):
            _keito.flush(FLUSH_TIMEOUT)

    # -- tables -------------------------------------------------------------------------------
    def close_all(self) -> None:
        """Close every open trace now (billing what was seen) and forget the open spans."""
        with self._lock:
            records = self._traces.drain()
            self._spans.clear()
        for _trace_id, record in records:
            _close(record)

    @property
    def open_traces(self) -> int:
        """How many traces are tracked now."""
        return len(self._traces)

    @property
    def open_spans(self) -> int:
        """How many open spans are tracked now."""
        return len(self._spans)

    def _trace_of(self, trace_id: str) -> _Trace:
        """The open record of a trace; one is made for a trace not seen starting.

        That is a span of a trace begun before this processor was added, a resumed run (the SDK
        reattaches its trace without a start event) or a straggler of a trace already ended: it
        bills to the session that trace used, and closes when its last open span ends.
        """
        record = self._traces.get(trace_id)
        if record is not None and not record.closed:
            return record
        session_id, close = self._closed.get(trace_id) or (trace_id, "runs")
        fresh = _Trace(time.monotonic(), _api.current_session(), session_id, close, late=True)
        with self._lock:
            found = self._traces.get(trace_id)
            if found is not None and not found.closed:
                return found
            evicted = self._add_locked(trace_id, fresh)
        for old in evicted:
            _close(old)
        return fresh

    def _retire(self, trace_id: str, record: _Trace) -> None:
        with self._lock:
            if self._traces.get(trace_id) is record:
                self._traces.pop(trace_id)
                self._remember(trace_id, record)
        _close(record)

    def _add_locked(self, trace_id: str, record: _Trace) -> list[_Trace]:
        """Insert a trace; returns the traces taken out beyond the count or age cap, to be closed
        outside the lock. Open spans older than the age cap are forgotten with them.

        The sweep runs as of the new trace's start, so a trace is never closed by its own arrival
        (with `max_trace_age=0`, each trace is closed when the next one starts).
        """
        self._traces.entries[trace_id] = record
        swept = self._traces.sweep(now=record.born)
        self._spans.sweep(now=record.born)
        for old_id, old in swept:
            self._remember(old_id, old)
        if swept:
            _log.debug("keito-instrument: closed %d Agents SDK trace(s) that never ended", len(swept))
        return [old for _old_id, old in swept]

    def _remember(self, trace_id: str, record: _Trace) -> None:
        """Note a trace taken out of the table, so its stragglers bill to the same session."""
        session = record.session
        self._closed.remember(trace_id, (session.session_id, "runs") if session is not None and
                              record.enclosing is session else (record.session_id, record.close))


def _open(record: _Trace, options: Mapping[str, Any], started_at: float | None) -> Session | None:
    """The trace's session, opened at its first span (back-dated to that span's start)."""
    if record.opened:
        return record.session
    with record.lock:
        if not record.opened:
            record.opened = True
            record.run = _begin(record, options, started_at)
    return record.session


def _begin(record: _Trace, options: Mapping[str, Any], started_at: float | None) -> Run | None:
    """A run in the keito session enclosing the trace's start, else in the trace's own session."""
    if record.enclosing is not None:
        run = record.enclosing.begin_run(started_at=started_at)
        if run is not None:
            return run
    return _api.begin_run(record.session_id, close=record.close, join_current=False, started_at=started_at,
                          **options)


def _count(record: _Trace, session: Session, span: Span[Any]) -> None:
    """What one finished span adds: a model call, a tool call or handoff, an error (once per failure:
    a span whose subtree already counted one, an agent span failing because its model call did,
    is not counted again)."""
    kind, failed = _spans.kind(span), _spans.failed(span)
    ended = _spans.epoch(span.ended_at)
    with record.lock:
        if ended is not None and (record.last_end is None or ended > record.last_end):
            record.last_end = ended
        covered = span.span_id in record.failed
        if covered:
            record.failed.discard(span.span_id)
        if (failed or covered) and span.parent_id:
            record.failed.add(span.parent_id)
    if kind in _spans.MODEL_KINDS:
        call = _spans.model_call(span)
        if call.usage is not None or not failed:  # a failed request with no usage was not billed
            record_provider_call(call.model, call.provider, call.usage, flavor="openai-responses",
                                 response_id=call.response_id, session=session)
    elif kind in _spans.TOOL_KINDS:
        session.record_tool_call()
    if failed and not covered:
        session.record_error()


def _close(record: _Trace) -> None:
    """End a trace's run at its last span's end (now if none ended); its session ends with it
    unless it is a conversation (group_id) or an enclosing keito session."""
    with record.lock:
        if record.closed:
            return
        record.closed = True
        run, record.run = record.run, None
        ended = record.last_end
        record.failed.clear()
    _api.end_run(run, ended_at=ended)
