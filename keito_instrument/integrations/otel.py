"""OpenTelemetry: `KeitoSpanProcessor` turns GenAI spans from any instrumentor into billed sessions.

    from opentelemetry.sdk.trace import TracerProvider
    from keito_instrument.integrations.otel import KeitoSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(KeitoSpanProcessor(agent_id="support-bot", project_id="p-1"))

Sessions: a root span (no parent, or a parent in another process) opens a run. Its session is the
enclosing `keito.session()` if there is one, else the one named by `session.id` /
`gen_ai.conversation.id` (span attributes at start, baggage, or OpenInference's `using_session`),
kept open across traces until `idle_timeout`; else one session per trace, ending with its root span.
Billed time is the union of the root spans. A trace with no GenAI span at all (a plain web request)
bills nothing. Only model-call spans add usage (see `_otel_attrs.classify` and the README).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import override

import keito_instrument as _keito

from .. import adapters as _api
from ..adapters import Run, Session, guard
from . import _otel_attrs as attrs
from . import missing_extra

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
    {
        "agent_id",
        "agent_type",
        "project_id",
        "task_id",
        "billable",
        "notes",
        "metadata",
        "expense_category_id",
        "idle_timeout",
        "framework",
    }
)
_LATE = 0  # run key of a trace first seen at a child's end (the processor was added late)
_MAX_SKIPPED = 10_000
_MAX_CLOSED = 4_096


@dataclass(slots=True, eq=False)
class _Trace:
    """What the processor keeps per open trace: its session's runs and the counting-once state."""

    session: Session
    runs: dict[int, Run]
    created: float
    joined: bool  # the session belongs to an enclosing keito.session(): never discarded
    genai: bool = False
    errors: int = 0
    covered: set[int] = field(default_factory=set)  # spans whose subtree already had a counted call


class KeitoSpanProcessor(SpanProcessor):  # type: ignore[misc]
    """A span processor that bills GenAI spans: one Keito session per trace or per `session.id`.

    Add it to an opentelemetry-sdk `TracerProvider` next to your exporters. Every hook runs on the
    thread that starts or ends the span, does O(1) work, never raises and never touches the network;
    the only I/O is the core's one local ledger write when a session ends (at its root span's end).

    Args:
        max_traces: How many traces are tracked at once; the oldest is closed (billing what was
            seen) when more are open.
        max_trace_age: Seconds after which a trace whose root span never ended is closed.
        **session_settings: Per-session settings for every session this processor opens:
            `agent_id`, `agent_type`, `project_id`, `task_id`, `billable`, `notes`, `metadata`,
            `expense_category_id`, `idle_timeout`.
    """

    def __init__(self, *, max_traces: int = 10_000, max_trace_age: float = 3600.0, **session_settings: Any):
        unknown = set(session_settings) - _SESSION_OPTIONS
        if unknown:
            raise TypeError(f"KeitoSpanProcessor got unknown session settings: {sorted(unknown)}")
        self._options: dict[str, Any] = {"framework": "otel", **session_settings}
        self._max_traces = max(1, int(max_traces))
        self._max_age = float(max_trace_age)
        self._lock = threading.Lock()
        self._traces: OrderedDict[int, _Trace] = OrderedDict()
        self._closed: OrderedDict[int, str] = OrderedDict()  # recently closed trace -> session id
        self._skipped: set[int] = set()  # spans started while instrumentation was suppressed

    # -- SpanProcessor hooks ------------------------------------------------------------------
    @override
    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        """Runs on the thread starting the span; must not block or raise."""
        with guard("otel on_start"):
            ctx = span.get_span_context()
            if _suppressed(parent_context):
                with self._lock:
                    if len(self._skipped) >= _MAX_SKIPPED:
                        self._skipped.clear()  # stay bounded; a missed skip costs one ignored span
                    self._skipped.add(ctx.span_id)
                return
            parent = span.parent
            if parent is None or parent.is_remote:
                self._open_root(span, ctx.trace_id, ctx.span_id, parent_context)

    @override
    def on_end(self, span: ReadableSpan) -> None:
        """Runs on the thread ending the span; must not block or raise."""
        with guard("otel on_end"):
            ctx = span.context
            if ctx is None:
                return
            span_id, trace_id = ctx.span_id, ctx.trace_id
            if self._skipped:
                with self._lock:
                    if span_id in self._skipped:
                        self._skipped.discard(span_id)
                        return
            # One copy into a plain dict: the SDK's attribute mapping is slow to probe key by key.
            values: Mapping[str, Any] = dict(span.attributes) if span.attributes else {}
            role = attrs.classify(values)
            parent = span.parent
            is_root = parent is None or parent.is_remote
            trace = self._traces.get(trace_id)
            if trace is None:
                if role == attrs.OTHER and not attrs.is_genai(values):
                    return
                if role == attrs.MODEL_CALL and self._record_straggler(trace_id, span_id, values):
                    return
                trace = self._open_late(trace_id, values)
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
                traces = list(self._traces.values())
                self._traces.clear()
                self._skipped.clear()
            for trace in traces:
                for run in trace.runs.values():
                    _api.end_run(run)

    @override
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Deliver stored records within the timeout (`keito.flush`); open traces stay open."""
        with guard("otel force_flush"):
            return _keito.flush(max(0.0, timeout_millis / 1000.0))
        return False

    # -- sessions -------------------------------------------------------------------------------
    def _begin(self, trace_id: int, session_id: str | None) -> tuple[Run | None, bool]:
        """Open a run: in the enclosing keito session, else the named one, else one per trace."""
        if _api.current_session() is not None:
            return _api.begin_run(None, join_current=True, **self._options), True
        if session_id is not None:
            return _api.begin_run(session_id, close="idle", join_current=False, **self._options), False
        return _api.begin_run(f"{trace_id:032x}", close="runs", join_current=False, **self._options), False

    def _open_root(
        self, span: Span, trace_id: int, span_id: int, parent_context: otel_context.Context | None
    ) -> None:
        trace = self._traces.get(trace_id)
        # Another root of the same trace in this process (e.g. fan-out from a remote caller) joins
        # the trace's session; if that session was ended meanwhile (evicted), the trace starts afresh.
        run = trace.session.begin_run() if trace is not None else None
        if trace is None or run is None:
            session_id = attrs.session_id_from(span.attributes) or _context_session_id(parent_context)
            run, joined = self._begin(trace_id, session_id)
            if run is None:
                return
            trace = _Trace(run.session, {}, time.monotonic(), joined)
        replaced: _Trace | None = None
        with self._lock:
            current = self._traces.get(trace_id)
            if current is not None and current is not trace:
                # Another root of this trace was opened on another thread meanwhile.
                if current.session is run.session:
                    trace = current
                else:
                    replaced = current
            trace.runs[span_id] = run
            self._traces[trace_id] = trace
        if replaced is not None:
            for old in replaced.runs.values():
                _api.end_run(old)
        self._evict()

    def _open_late(self, trace_id: int, values: Mapping[str, Any]) -> _Trace | None:
        """A trace first seen at a child's end: its root started before this processor was added."""
        run, joined = self._begin(trace_id, attrs.session_id_from(values))
        if run is None:
            return None
        fresh = _Trace(run.session, {_LATE: run}, time.monotonic(), joined, genai=True)
        with self._lock:
            trace = self._traces.setdefault(trace_id, fresh)
        if trace is not fresh:
            _api.end_run(run)  # another thread got there first
        self._evict()
        return trace

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
        if role == attrs.OTHER and span_id not in trace.covered:
            # The common case for a web app's own spans: nothing to count, nothing to carry up.
            if not trace.genai and attrs.is_genai(values):
                trace.genai = True
            return
        trace.genai = True
        with self._lock:
            covered = span_id in trace.covered
            if covered:
                trace.covered.discard(span_id)
            if parent is not None and (covered or role == attrs.MODEL_CALL):
                trace.covered.add(parent.span_id)
        session = trace.session
        failed = span.status.status_code is StatusCode.ERROR
        if role == attrs.MODEL_CALL and not covered:
            _record(session, values, span_id)
        elif role == attrs.TOOL:
            session.record_tool_call()
        if failed and role in (attrs.MODEL_CALL, attrs.TOOL):
            trace.errors += 1
            session.record_error()

    def _close_root(self, trace: _Trace, trace_id: int, span_id: int, span: ReadableSpan) -> None:
        with self._lock:
            run = trace.runs.pop(span_id, None) or trace.runs.pop(_LATE, None)
            last = not trace.runs
            if last and self._traces.get(trace_id) is trace:
                del self._traces[trace_id]
                self._closed[trace_id] = trace.session.session_id
                while len(self._closed) > _MAX_CLOSED:
                    self._closed.popitem(last=False)
        if run is None:
            return
        session = run.session
        if last and not trace.genai and not trace.joined and _discardable(session):
            # No GenAI span in the whole trace (a plain web request): not agent work, bill nothing.
            session.finish("not_genai")
            if _api.get_session(session.session_id) is session:  # drop it from the open table
                _api.end_session(session.session_id)
            return
        error = span.status.status_code is StatusCode.ERROR and trace.errors == 0
        _api.end_run(run, error=RuntimeError(span.status.description or "span failed") if error else None)

    def _record_straggler(self, trace_id: int, span_id: int, values: Mapping[str, Any]) -> bool:
        """A model call that ended after its trace's root: billed to that session id, never lost."""
        session_id = self._closed.get(trace_id)
        if session_id is None:
            return False
        usage = attrs.read_usage(values)
        _keito.record_llm_call(
            usage.model,
            usage.provider,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            usage_missing=usage.usage_missing,
            call_id=f"{span_id:016x}",
            session_id=session_id,
        )
        return True

    def _evict(self) -> None:
        """Keep state bounded: close the oldest traces beyond the count cap or the age cap."""
        now = time.monotonic()
        evicted: list[_Trace] = []
        with self._lock:
            while self._traces:
                oldest = next(iter(self._traces.values()))
                if len(self._traces) <= self._max_traces and now - oldest.created <= self._max_age:
                    break
                evicted.append(self._traces.popitem(last=False)[1])
        for trace in evicted:
            _log.debug("keito-instrument: closing an OpenTelemetry trace whose root span never ended")
            for run in trace.runs.values():
                _api.end_run(run)

    @property
    def open_traces(self) -> int:
        """How many traces are being tracked now."""
        return len(self._traces)


def _record(session: Session, values: Mapping[str, Any], span_id: int) -> None:
    usage = attrs.read_usage(values)
    session.record_llm_call(
        usage.model,
        usage.provider,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        usage_missing=usage.usage_missing,
        call_id=f"{span_id:016x}",
    )


def _discardable(session: Session) -> bool:
    return bool(session.open_runs <= 1 and not session.llm_calls and not session.tool_calls)


def _suppressed(parent_context: otel_context.Context | None) -> bool:
    ctx = parent_context if parent_context is not None else otel_context.get_current()
    return any(otel_context.get_value(key, ctx) for key in _SUPPRESS_KEYS)


def _context_session_id(parent_context: otel_context.Context | None) -> str | None:
    """A session id carried by the context: OpenInference `using_session`, traceloop, or baggage."""
    ctx = parent_context if parent_context is not None else otel_context.get_current()
    value = otel_context.get_value("session.id", ctx)
    if isinstance(value, str) and value.strip():
        return value.strip()
    props = otel_context.get_value("association_properties", ctx)
    if isinstance(props, Mapping):
        for key in ("session_id", "thread_id", "conversation_id"):
            found = props.get(key)
            if isinstance(found, str) and found.strip():
                return found.strip()
    entries = baggage.get_all(ctx)
    for key in attrs.BAGGAGE_SESSION_KEYS:
        found = entries.get(key)
        if isinstance(found, str) and found.strip():
            return found.strip()
    return None
