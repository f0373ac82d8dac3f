"""OpenTelemetry: `KeitoSpanProcessor` turns GenAI spans from any instrumentor into billed sessions.

    from opentelemetry.sdk.trace import TracerProvider
    from keito_instrument.integrations.otel import KeitoSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(KeitoSpanProcessor(agent_id="support-bot", project_id="p-1"))

Sessions: a root span (no parent, or a parent in another process) starts a trace. Its session is
the `keito.session()` enclosing the root's start if there is one, else the one named by
`session.id` / `gen_ai.conversation.id` (span attributes at start, baggage, or OpenInference's
`using_session`), kept open across traces until `idle_timeout`; else one session per trace, ending
with its root span. Billed time is the union of the root spans, by the spans' own timestamps.

The session is opened lazily, at the trace's first GenAI span (back-dated to its roots' starts):
until then a trace is a light record (root ids, start times, the session hints read at start), so
a trace with no GenAI span at all (a plain web request) never touches the core and bills nothing.
Only model-call spans add usage (see `_attrs.classify` and the README).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import override

import keito_instrument as _keito

from ... import adapters as _api
from ...adapters import Run, Session, guard
from .. import missing_extra
from .._kernel import check_options
from .._runs import OpenRuns, Recent
from . import _attrs as attrs

try:
    from opentelemetry import baggage
    from opentelemetry import context as otel_context
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
    from opentelemetry.trace import StatusCode
except ImportError as exc:  # pragma: no cover - exercised through a test that hides the package
    raise missing_extra("OpenTelemetry", "otel") from exc

__all__ = ["KeitoSpanProcessor"]

_log = logging.getLogger("keito_instrument")

# The keys instrumentations set while suppressed (`opentelemetry.instrumentation.utils.
# suppress_instrumentation` sets both); a private name in the API, so it is looked up defensively.
_SUPPRESS_KEYS: tuple[str, ...] = tuple(
    k for k in (getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", None), "suppress_instrumentation") if k
)
_SESSION_OPTIONS = frozenset(
    {"agent_id", "agent_type", "project_id", "task_id", "billable", "notes", "metadata", "expense_category_id"}
    | {"idle_timeout", "framework"}
)
# A conversation id seen in one trace only is billed this long after that trace (pydantic-ai gives
# every run a fresh one); seen in a second trace, it is a conversation, ended by idle_timeout.
FIRST_TRACE_TIMEOUT = 120.0
_LATE = 0  # run key of a trace first seen at a GenAI span's end (the processor was added late)
_MAX_SKIPPED = 10_000
_MAX_CLOSED = 4_096
# One guard object per hook: `guard` keeps no state, so reusing it saves an allocation per span.
_ON_START = guard("otel on_start")
_ON_END = guard("otel on_end")


@dataclass(slots=True, eq=False)
class _Trace:
    """One open trace. Plain until its first GenAI span; then it holds its session and runs.

    Every field below `lock` is read and written under it; the processor's own lock guards only
    its tables (open traces, recently closed ones, suppressed spans), and is taken after it.
    Lookups in the open-trace table are lock-free (one dict operation each); an insert or a removal
    that must not race another thread's on the same trace is made under the processor's lock.
    """

    born: float  # monotonic: the age cap
    enclosing: Session | None  # the keito session current at the first root's start
    hint: str | None  # the session id named at the first root's start
    roots: dict[int, float]  # open root span id -> its start (epoch seconds)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ended: list[tuple[float, float]] | None = None  # roots that ended before the session opened
    session: Session | None = None
    runs: dict[int, Run] = field(default_factory=dict)
    closed: bool = False  # out of the table: a root starting now begins a new record
    errors: int = 0
    covered: set[int] = field(default_factory=set)  # spans whose subtree already had a counted call

    def session_id(self) -> str | None:
        """The id this trace bills (or would bill) to; None: the trace id."""
        for found in (self.session, self.enclosing):
            if found is not None:
                return found.session_id
        return self.hint


class KeitoSpanProcessor(SpanProcessor):  # type: ignore[misc]
    """A span processor that bills GenAI spans: one Keito session per trace or per `session.id`.

    Add it to an opentelemetry-sdk `TracerProvider` next to your exporters. Every hook runs on the
    thread that starts or ends the span, does O(1) work, never raises and never touches the network;
    the only I/O is the core's one local ledger write when a session ends (at its root span's end).

    Args:
        max_traces: How many traces are tracked at once; the oldest is closed (billing what was
            seen) when more are open.
        max_trace_age: Seconds after which a trace whose root span never ended is closed.
        first_trace_timeout: A session named by the trace (`session.id`, `gen_ai.conversation.id`)
            that only one trace has used is billed this many seconds after its activity (default
            120); once a second trace uses the id it is a conversation, billed after
            `idle_timeout`. None: every named session waits for `idle_timeout`.
        **session_settings: Per-session settings for every session this processor opens:
            `agent_id`, `agent_type`, `project_id`, `task_id`, `billable`, `notes`, `metadata`,
            `expense_category_id`, `idle_timeout`.
    """

    def __init__(self, *, max_traces: int = 10_000, max_trace_age: float = 3600.0,
                 first_trace_timeout: float | None = FIRST_TRACE_TIMEOUT, **session_settings: Any):
        check_options("KeitoSpanProcessor()", session_settings, _SESSION_OPTIONS)
        if first_trace_timeout is not None and not first_trace_timeout > 0:
            raise ValueError(f"KeitoSpanProcessor: first_trace_timeout must be > 0 seconds or None, "
                             f"got {first_trace_timeout!r}")
        self._options: dict[str, Any] = {"framework": "otel", **session_settings}
        self._named_options = {**self._options, "first_run_timeout": first_trace_timeout}
        self._lock = threading.Lock()
        self._traces: OpenRuns[int, _Trace] = OpenRuns(max_traces, max_trace_age)
        self._open = self._traces.entries  # read directly on the hot path: one dict lookup per span
        self._closed: Recent[int, str | None] = Recent(_MAX_CLOSED)  # recently closed trace -> session id
        self._skipped: set[int] = set()  # spans started while instrumentation was suppressed

    # -- SpanProcessor hooks ------------------------------------------------------------------
    @override
    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        """Runs on the thread starting the span; must not block or raise."""
        with _ON_START:
            ctx = parent_context if parent_context is not None else otel_context.get_current()
            if ctx and _suppressed(ctx):
                with self._lock:
                    if len(self._skipped) >= _MAX_SKIPPED:
                        self._skipped.clear()  # stay bounded; a missed skip costs one ignored span
                    self._skipped.add(span.get_span_context().span_id)
                return
            parent = span.parent
            if parent is None or parent.is_remote:
                self._open_root(span, ctx)

    @override
    def on_end(self, span: ReadableSpan) -> None:
        """Runs on the thread ending the span; must not block or raise."""
        with _ON_END:
            ctx = span.context
            if ctx is None:
                return
            span_id, trace_id = ctx.span_id, ctx.trace_id
            if self._skipped:
                with self._lock:
                    if span_id in self._skipped:
                        self._skipped.discard(span_id)
                        return
            parent = span.parent
            is_root = parent is None or parent.is_remote
            trace = self._open.get(trace_id)
            attributes = span.attributes
            if not attributes or not attrs.is_genai(attributes):
                # A web app's own span (keys scanned, nothing copied): it only passes "already
                # counted" up to its parent, and a root closes its trace.
                if trace is not None:
                    if span_id in trace.covered:
                        self._count(trace, attrs.OTHER, {}, span, span_id, None if is_root else parent)
                    if is_root:
                        self._close_root(trace, trace_id, span_id, span)
                return
            # One copy into a plain dict: the SDK's attribute mapping is slow to probe key by key.
            values: Mapping[str, Any] = dict(attributes)
            role = attrs.classify(values)
            if trace is None or not self._activate(trace, trace_id):
                if trace_id in self._closed:
                    self._straggler(trace_id, span_id, role, values)
                    return
                trace = self._open_late(trace_id, values, span)
                if trace is None:
                    return
            self._count(trace, role, values, span, span_id, None if is_root else parent)
            if is_root:
                self._close_root(trace, trace_id, span_id, span)

    @override
    def shutdown(self) -> None:
        """Close every trace still open (billing what was seen); called by `TracerProvider.shutdown()`."""
        with guard("otel shutdown"):
            with self._lock:
                traces = self._traces.drain()
                self._skipped.clear()
            for _, trace in traces:
                _close(trace)

    @override
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Deliver stored records within the timeout (`keito.flush`); open traces stay open."""
        with guard("otel force_flush"):
            return _keito.flush(max(0.0, timeout_millis / 1000.0))
        return False

    # -- traces ---------------------------------------------------------------------------------
    def _open_root(self, span: Span, ctx: otel_context.Context) -> None:
        span_ctx = span.get_span_context()
        trace_id, span_id = span_ctx.trace_id, span_ctx.span_id
        start = _seconds(span.start_time)
        fresh: _Trace | None = None
        evicted: list[tuple[int, _Trace]] = []
        for _ in range(4):  # each pass either succeeds or drops a closed record
            trace = self._open.get(trace_id)
            if trace is not None:
                with trace.lock:
                    if not trace.closed:
                        # Another root of the same trace in this process (fan-out from a remote
                        # caller): one more interval of the trace's session.
                        trace.roots[span_id] = start
                        if trace.session is not None:
                            self._open_runs(trace, trace_id, {span_id: start})
                        return
                with self._lock:
                    if self._open.get(trace_id) is trace:
                        self._traces.pop(trace_id)
                continue
            if fresh is None:
                # The context of the root's start decides the session: read it now, open it later.
                enclosing = _api.current_session()
                hint = None if enclosing is not None else _session_hint(span, ctx)
                fresh = _Trace(time.monotonic(), enclosing, hint, {span_id: start})
            with self._lock:
                if trace_id not in self._open:
                    evicted = self._add_locked(trace_id, fresh)
                    break
        else:
            return  # pragma: no cover - four other threads raced this one on the same trace
        _close_evicted(evicted)
        attributes = span.attributes
        if fresh is not None and attributes and attrs.is_genai(attributes):
            self._activate(fresh, trace_id)  # a GenAI root (an agent run): its session opens now

    def _add_locked(self, trace_id: int, trace: _Trace) -> list[tuple[int, _Trace]]:
        """Track a new trace (processor lock held); returns the oldest traces beyond the count or
        age cap, taken out and remembered, for the caller to close outside the lock."""
        evicted = self._traces.add(trace_id, trace)
        for old_id, old in evicted:
            self._remember(old_id, old)
        return evicted

    def _remember(self, trace_id: int, trace: _Trace) -> None:
        """Note a trace taken out of the table, so its stragglers are billed to its session id."""
        self._closed.remember(trace_id, trace.session_id())

    def _activate(self, trace: _Trace, trace_id: int) -> bool:
        """Open the trace's session at its first GenAI span; False if the trace is already closed."""
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
        return True

    def _open_runs(self, trace: _Trace, trace_id: int, roots: Mapping[int, float]) -> None:
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

    def _begin(self, trace: _Trace, trace_id: int, started_at: float) -> Run | None:
        """A run in the keito session enclosing the root's start, else the named one, else the trace's."""
        session_id, close = (trace.hint, "idle") if trace.hint is not None else (f"{trace_id:032x}", "runs")
        if trace.enclosing is not None:
            run = trace.enclosing.begin_run(started_at=started_at)
            if run is not None:
                return run
            # It ended before the trace's first GenAI span: the trace still bills under its id.
            session_id, close = trace.enclosing.session_id, "runs"
        options = self._named_options if close == "idle" else self._options
        return _api.begin_run(session_id, close=close, join_current=False, started_at=started_at, **options)

    def _open_late(self, trace_id: int, values: Mapping[str, Any], span: ReadableSpan) -> _Trace | None:
        """A trace first seen at a GenAI span's end: its root started before this processor was added.

        Billed from the start of that span (the earliest time known) until its root's end; the
        root's end brings its start time, and the trace is then billed from there.
        """
        enclosing = _api.current_session()
        hint = None if enclosing is not None else attrs.session_id_from(values)
        fresh = _Trace(time.monotonic(), enclosing, hint, {})
        run = self._begin(fresh, trace_id, _seconds(span.start_time))
        if run is None:
            return None
        fresh.session, fresh.runs[_LATE] = run.session, run
        evicted: list[tuple[int, _Trace]] = []
        with self._lock:
            trace = self._open.get(trace_id) or fresh
            if trace is fresh:
                evicted = self._add_locked(trace_id, fresh)
        if trace is not fresh:
            _api.end_run(run)  # another thread got there first
        _close_evicted(evicted)
        return trace if trace.session is not None else None

    def _count(
        self,
        trace: _Trace,
        role: str,
        values: Mapping[str, Any],
        span: ReadableSpan,
        span_id: int,
        parent: Any,
    ) -> None:
        """Count once: a model call whose subtree already held a counted call is a wrapper, not a call."""
        session = trace.session
        if session is None or (role == attrs.OTHER and span_id not in trace.covered):
            return
        failed = span.status.status_code is StatusCode.ERROR and role in (attrs.MODEL_CALL, attrs.TOOL)
        with trace.lock:
            covered = span_id in trace.covered
            if covered:
                trace.covered.discard(span_id)
            if parent is not None and (covered or role == attrs.MODEL_CALL):
                trace.covered.add(parent.span_id)
            if failed:
                trace.errors += 1
        if role == attrs.MODEL_CALL and not covered:
            session.record_llm_call(**attrs.call_kwargs(values, span_id))
        elif role == attrs.TOOL:
            session.record_tool_call()
        if failed:
            session.record_error()

    def _close_root(self, trace: _Trace, trace_id: int, span_id: int, span: ReadableSpan) -> None:
        end = _seconds(span.end_time)
        extra: Run | None = None
        with trace.lock:
            start = trace.roots.pop(span_id, None)
            run = trace.runs.pop(span_id, None)
            if run is None and _LATE in trace.runs:
                run = trace.runs.pop(_LATE)
                if trace.session is not None:  # the root's start is known at last: bill from there
                    extra = trace.session.begin_run(started_at=_seconds(span.start_time))
            elif trace.session is None and start is not None and trace.roots:
                if trace.ended is None:
                    trace.ended = []
                trace.ended.append((start, end))
            if not trace.roots and not trace.runs and not trace.closed:
                trace.closed = True  # its last root: out of the table, remembered for stragglers
                with self._lock:
                    if self._open.get(trace_id) is trace:
                        self._traces.pop(trace_id)
                        self._remember(trace_id, trace)
            errors = trace.errors
        if run is None:
            return
        failed = span.status.status_code is StatusCode.ERROR and errors == 0
        if extra is not None:
            _api.end_run(extra, ended_at=end)
        error = RuntimeError(span.status.description or "span failed") if failed else None
        _api.end_run(run, error=error, ended_at=end)

    def _straggler(self, trace_id: int, span_id: int, role: str, values: Mapping[str, Any]) -> None:
        """A span that ended after its trace's root: its call is billed to that session id, never lost."""
        session_id = self._closed.get(trace_id) or f"{trace_id:032x}"
        if role == attrs.TOOL:
            session = _api.get_session(session_id)
            if session is not None:
                session.record_tool_call()
        if role != attrs.MODEL_CALL:
            return
        _keito.record_llm_call(**attrs.call_kwargs(values, span_id), session_id=session_id)

    @property
    def open_traces(self) -> int:
        """How many traces are being tracked now."""
        return len(self._traces)


def _close_evicted(evicted: list[tuple[int, _Trace]]) -> None:
    for _, old in evicted:
        _log.debug("keito-instrument: closing an OpenTelemetry trace whose root span never ended")
        _close(old)


def _close(trace: _Trace) -> None:
    """End a trace taken out of the table (evicted, or at shutdown): its runs end now."""
    with trace.lock:
        trace.closed = True
        runs = list(trace.runs.values())
        trace.runs.clear()
        trace.roots.clear()
    for run in runs:
        _api.end_run(run)


def _seconds(nanoseconds: int | None) -> float:
    """A span timestamp (ns since the epoch) in epoch seconds; now when it is missing."""
    return nanoseconds / 1e9 if nanoseconds else time.time()


def _suppressed(ctx: otel_context.Context) -> bool:
    for key in _SUPPRESS_KEYS:  # noqa: SIM110 - a plain loop: no generator per span on the hot path
        if ctx.get(key):
            return True
    return False


def _session_hint(span: Span, ctx: otel_context.Context) -> str | None:
    """A session id named at the root's start: its attributes, else the context (see `_attrs`)."""
    found = attrs.session_id_from(span.attributes)
    if found is not None or not ctx:
        return found
    return attrs.context_session_id(ctx, baggage.get_all(ctx))
