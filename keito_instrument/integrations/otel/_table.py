"""The processor's table of open traces, and each trace's session: opened lazily, ended with its roots.

A trace is a light `Trace` record from its first root's start; its session opens only when the
trace has something to bill (`activate`), back-dated to its roots' starts, and its runs end with
its roots (`close_root`), at eviction or at shutdown (`close`). A trace taken out of the table is
remembered (`closed`), so a span ending after its root is billed to the same session id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, Span
from opentelemetry.trace import StatusCode

from ... import adapters as _api
from ..._api import count_error
from ...adapters import Run
from .._kernel import RunMark
from .._runs import OpenRuns, Recent
from . import _attrs as attrs
from ._trace import Trace, end_runs, failure, seconds, session_hint

_log = logging.getLogger("keito_instrument")

LATE = 0  # run key of a trace first seen at a GenAI span's end (the processor was added late)
_MAX_SKIPPED = 10_000
_MAX_CLOSED = 4_096


class TraceTable:
    """Open traces by trace id (bounded by count and age), recently closed ones, suppressed spans.

    Lookups in `open` are lock-free (one dict operation each); an insert or a removal that must
    not race another thread's on the same trace is made under `lock`, which is taken after a
    trace's own lock, never before.
    """

    def __init__(self, options: dict[str, Any], named_options: dict[str, Any], max_traces: int,
                 max_trace_age: float) -> None:
        self.options = options  # the settings of a session per trace
        self.named_options = named_options  # ... and of one named by the trace (it ends when idle)
        self.lock = threading.Lock()
        self.traces: OpenRuns[int, Trace] = OpenRuns(max_traces, max_trace_age)
        self.open = self.traces.entries  # read directly on the hot path: one dict lookup per span
        self.closed: Recent[int, str | None] = Recent(_MAX_CLOSED)  # recently closed trace -> session id
        self.skipped: set[int] = set()  # spans started while instrumentation was suppressed

    # -- suppressed spans -----------------------------------------------------------------------
    def skip(self, span_id: int) -> None:
        """Note a span started while instrumentation was suppressed: its end is ignored."""
        with self.lock:
            if len(self.skipped) >= _MAX_SKIPPED:
                self.skipped.clear()  # stay bounded; a missed skip costs one ignored span
            self.skipped.add(span_id)

    def skipping(self, span_id: int) -> bool:
        """Whether the span ending now was started suppressed (forgotten once asked)."""
        if not self.skipped:
            return False
        with self.lock:
            if span_id in self.skipped:
                self.skipped.discard(span_id)
                return True
        return False

    # -- opening --------------------------------------------------------------------------------
    def open_root(self, span: Span, ctx: otel_context.Context, framework: bool) -> None:
        """A root span started: a new trace record, or one more root of a trace already open."""
        span_ctx = span.get_span_context()
        trace_id, span_id = span_ctx.trace_id, span_ctx.span_id
        start = seconds(span.start_time)
        fresh: Trace | None = None
        evicted: list[tuple[int, Trace]] = []
        for _ in range(4):  # each pass either succeeds or drops a closed record
            trace = self.open.get(trace_id)
            if trace is not None:
                with trace.lock:
                    if not trace.closed:
                        # Another root of the same trace in this process (fan-out from a remote
                        # caller): one more interval of the trace's session.
                        trace.roots[span_id] = start
                        if trace.session is not None:
                            self._open_runs(trace, trace_id, {span_id: start})
                        return
                with self.lock:
                    if self.open.get(trace_id) is trace:
                        self.traces.pop(trace_id)
                continue
            if fresh is None:
                # The context of the root's start decides the session: read it now, open it later.
                enclosing = _api.current_session()
                hint = None if enclosing is not None else session_hint(span, ctx)
                fresh = Trace(time.monotonic(), enclosing, hint, {span_id: start})
            with self.lock:
                if trace_id not in self.open:
                    evicted = self._add_locked(trace_id, fresh)
                    break
        else:
            return  # pragma: no cover - four other threads raced this one on the same trace
        self.close_evicted(evicted)
        attributes = span.attributes
        if fresh is not None and not framework and attributes and attrs.is_genai(attributes):
            # A GenAI root (an agent run) is billable even if none of its spans ever ends (its
            # trace evicted, or open at shutdown). Its session still opens lazily, at its first
            # counted call or its end: only then is it known whether another layer bills the run
            # (a framework adapter called after the root's instrumentor marks the run later).
            fresh.genai = True

    def open_late(self, trace_id: int, values: Mapping[str, Any], span: ReadableSpan) -> Trace | None:
        """A trace first seen at a GenAI span's end: its root started before the processor was added.

        Billed from the start of that span (the earliest time known) until its root's end; the
        root's end brings its start time, and the trace is then billed from there.
        """
        enclosing = _api.current_session()
        hint = None if enclosing is not None else attrs.session_id_from(values)
        fresh = Trace(time.monotonic(), enclosing, hint, {})
        run = self._begin(fresh, trace_id, seconds(span.start_time))
        if run is None:
            return None
        fresh.session, fresh.runs[LATE] = run.session, run
        evicted: list[tuple[int, Trace]] = []
        with self.lock:
            trace = self.open.get(trace_id) or fresh
            if trace is fresh:
                evicted = self._add_locked(trace_id, fresh)
        if trace is not fresh:
            _api.end_run(run)  # another thread got there first
        self.close_evicted(evicted)
        return trace if trace.session is not None else None

    def mark(self, span_ctx: Any, mark: str | RunMark) -> None:
        """Note a span started inside a framework adapter's model call or run (the adapter may
        end its call or run before the span ends: a LangChain handler called before the span's
        instrumentor)."""
        trace = self.open.get(span_ctx.trace_id)
        if trace is not None:
            with trace.lock:
                if trace.marked is None:
                    trace.marked = {}
                trace.marked[span_ctx.span_id] = mark

    def activate(self, trace: Trace, trace_id: int) -> bool:
        """Open the trace's session (it has something to bill); False if the trace is already closed."""
        if trace.session is not None:
            return True
        with trace.lock:
            if trace.closed:
                return False
            if trace.session is None and trace.roots:
                self._open_runs(trace, trace_id, trace.roots)
                for start, end in trace.ended or ():
                    if trace.session is not None:  # roots that ended before: their intervals too
                        run = trace.session.begin_run(started_at=start)
                        _api.end_run(run, ended_at=end)
                trace.ended = None
                held, trace.held = trace.held, None
                failures, trace.held_failures = trace.held_failures, None
                if held is not None and trace.session is not None:
                    trace.session.count(tool_calls=held[0], errors=held[1])
                    for error in failures or ():
                        count_error(trace.session, error)
        return True

    def _add_locked(self, trace_id: int, trace: Trace) -> list[tuple[int, Trace]]:
        """Track a new trace (table lock held); returns the oldest traces beyond the count or
        age cap, taken out and remembered, for the caller to close outside the lock."""
        evicted = self.traces.add(trace_id, trace)
        for old_id, old in evicted:
            self._remember(old_id, old)
        return evicted

    def _remember(self, trace_id: int, trace: Trace) -> None:
        """Note a trace taken out of the table, so its stragglers are billed to its session id."""
        self.closed.remember(trace_id, trace.session_id())

    def _open_runs(self, trace: Trace, trace_id: int, roots: Mapping[int, float]) -> None:
        """One run per root, back-dated to its start (trace.lock held)."""
        session = trace.session
        for span_id, start in sorted(roots.items(), key=lambda item: item[1]):
            run = session.begin_run(started_at=start) if session is not None else None
            if run is None:  # no session yet, or it ended meanwhile (evicted, idle, end_session)
                run = self._begin(trace, trace_id, start)
                if run is None:
                    return
                session = trace.session = run.session
            trace.runs[span_id] = run

    def _begin(self, trace: Trace, trace_id: int, started_at: float) -> Run | None:
        """A run in the keito session enclosing the root's start, else the named one, else the trace's."""
        session_id, close = (trace.hint, "idle") if trace.hint is not None else (f"{trace_id:032x}", "runs")
        if trace.enclosing is not None:
            run = trace.enclosing.begin_run(started_at=started_at)
            if run is not None:
                return run
            # It ended before the trace's first GenAI span: the trace still bills under its id.
            session_id, close = trace.enclosing.session_id, "runs"
        options = self.named_options if close == "idle" else self.options
        return _api.begin_run(session_id, close=close, join_current=False, started_at=started_at, **options)

    # -- closing --------------------------------------------------------------------------------
    def close_root(self, trace: Trace, trace_id: int, span_id: int, span: ReadableSpan) -> None:
        """A root span ended: its run ends; the trace's last root closes the trace."""
        if trace.session is None and trace.genai and not trace.elsewhere:
            self.activate(trace, trace_id)  # agent work nobody else bills: its time, at least
        end = seconds(span.end_time)
        extra: Run | None = None
        with trace.lock:
            start = trace.roots.pop(span_id, None)
            run = trace.runs.pop(span_id, None)
            if run is None and LATE in trace.runs:
                run = trace.runs.pop(LATE)
                if trace.session is not None:  # the root's start is known at last: bill from there
                    extra = trace.session.begin_run(started_at=seconds(span.start_time))
            elif trace.session is None and start is not None and trace.roots:
                if trace.ended is None:
                    trace.ended = []
                trace.ended.append((start, end))
            if not trace.roots and not trace.runs and not trace.closed:
                trace.closed = True  # its last root: out of the table, remembered for stragglers
                with self.lock:
                    if self.open.get(trace_id) is trace:
                        self.traces.pop(trace_id)
                        self._remember(trace_id, trace)
            errors = trace.errors
        if run is None:
            return
        failed = span.status.status_code is StatusCode.ERROR and errors == 0
        if extra is not None:
            _api.end_run(extra, ended_at=end)
        error = (failure(span) or RuntimeError(span.status.description or "span failed")) if failed else None
        _api.end_run(run, error=error, ended_at=end)

    def close_evicted(self, evicted: list[tuple[int, Trace]]) -> None:
        """Close the traces a sweep took out of the table (their root span never ended)."""
        for trace_id, old in evicted:
            _log.debug("keito-instrument: closing an OpenTelemetry trace whose root span never ended")
            self.close(trace_id, old)

    def close(self, trace_id: int, trace: Trace) -> None:
        """End a trace taken out of the table (evicted, or at shutdown), billing what was seen."""
        if trace.session is None and trace.genai and not trace.elsewhere and trace.roots:
            self.activate(trace, trace_id)
        end_runs(trace)

    def close_all(self) -> None:
        """Close every open trace (shutdown), billing what was seen."""
        with self.lock:
            traces = self.traces.drain()
            self.skipped.clear()
        for trace_id, trace in traces:
            self.close(trace_id, trace)
