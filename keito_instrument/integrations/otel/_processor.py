"""`KeitoSpanProcessor`: the SpanProcessor hooks, which route each span to its trace and its counting rule."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from typing_extensions import override

import keito_instrument as _keito

from ...adapters import guard
from .._kernel import CLIENT_HOOKS, check_options, framework_mark
from . import _attrs as attrs
from . import _pairing
from ._counting import count, framework_span, straggler
from ._table import TraceTable
from ._trace import inherited, suppressed

_SESSION_OPTIONS = frozenset(
    {"agent_id", "agent_type", "project_id", "task_id", "billable", "notes", "metadata", "expense_category_id"}
    | {"idle_timeout", "framework"}
)
# A conversation id seen in one trace only is billed this long after that trace (pydantic-ai gives
# every run a fresh one); seen in a second trace, it is a conversation, ended by idle_timeout.
FIRST_TRACE_TIMEOUT = 120.0
# One guard object per hook: `guard` keeps no state, so reusing it saves an allocation per span.
_ON_START = guard("otel on_start")
_ON_END = guard("otel on_end")


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
        options: dict[str, Any] = {"framework": "otel", **session_settings}
        named = {**options, "first_run_timeout": first_trace_timeout}
        self._table = TraceTable(options, named, max_traces, max_trace_age)
        self._open = self._table.open  # read directly on the hot path: one dict lookup per span
        # Like a client hook, this processor leaves a framework adapter's model calls to it; the
        # LangChain handler marks its calls only while such a hook is installed (until shutdown,
        # or until this processor is collected).
        CLIENT_HOOKS.add(id(self))
        weakref.finalize(self, CLIENT_HOOKS.discard, id(self))
        _pairing.join(self)  # our client hooks' calls are noted for pairing while this processor is live
        self._shut = False

    @override
    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        """Runs on the thread starting the span; must not block or raise."""
        with _ON_START:
            if self._shut:
                return
            ctx = parent_context if parent_context is not None else otel_context.get_current()
            if ctx and suppressed(ctx):
                self._table.skip(span.get_span_context().span_id)
                return
            mark = framework_mark()
            parent = span.parent
            if parent is None or parent.is_remote:
                self._table.open_root(span, ctx, mark is not None)
            elif mark is None:
                mark = inherited(self._open.get(parent.trace_id), parent.span_id)
            if mark is not None:
                self._table.mark(span.get_span_context(), mark)

    @override
    def on_end(self, span: ReadableSpan) -> None:
        """Runs on the thread ending the span; must not block or raise."""
        with _ON_END:
            ctx = span.context
            if ctx is None or self._shut:
                return
            span_id, trace_id = ctx.span_id, ctx.trace_id
            table = self._table
            if table.skipped and table.skipping(span_id):  # (the common case: no method call)
                return
            parent = span.parent
            is_root = parent is None or parent.is_remote
            trace = self._open.get(trace_id)
            mark = trace.marked.pop(span_id, None) if trace is not None and trace.marked else None
            attributes = span.attributes
            if not attributes or not attrs.is_genai(attributes):
                # A web app's own span (keys scanned, nothing copied): it only passes "already
                # counted" up to its parent, and a root closes its trace.
                if trace is not None:
                    if span_id in trace.covered:
                        count(table, trace, trace_id, attrs.OTHER, {}, span, span_id, None if is_root else parent)
                    if is_root:
                        if mark is not None or framework_mark() is not None:
                            trace.elsewhere = True  # a framework adapter's run: it bills the time
                        table.close_root(trace, trace_id, span_id, span)
                return
            # One copy into a plain dict: the SDK's attribute mapping is slow to probe key by key.
            values: Mapping[str, Any] = dict(attributes)
            role = attrs.classify(values)
            if type(mark) is not str:
                # Still inside an adapter's call or run at the span's end: its instrumentor ran
                # before the adapter (a LangChain handler added by instrument()). A call mark
                # then outranks the run mark the span started in.
                now = framework_mark()
                if now is not None and (mark is None or type(now) is str):
                    mark = now
            if mark is not None:
                framework_span(table, trace, trace_id, role, values, span, span_id, is_root, parent, mark)
                return
            if trace is None or trace.closed:
                if trace_id in table.closed:
                    straggler(table, trace_id, role, values, span)
                    return
                trace = table.open_late(trace_id, values, span)
                if trace is None:
                    return
            trace.genai = True
            count(table, trace, trace_id, role, values, span, span_id, None if is_root else parent)
            if is_root:
                table.close_root(trace, trace_id, span_id, span)

    @override
    def shutdown(self) -> None:
        """Close every trace still open (billing what was seen); called by `TracerProvider.shutdown()`.

        Spans ending later are ignored, as the SDK's own processors do after their shutdown.
        """
        with guard("otel shutdown"):
            self._shut = True
            CLIENT_HOOKS.discard(id(self))
            _pairing.leave(id(self))
            self._table.close_all()

    @override
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Deliver stored records within the timeout (`keito.flush`); open traces stay open."""
        with guard("otel force_flush"):
            return _keito.flush(max(0.0, timeout_millis / 1000.0))
        return False

    @property
    def open_traces(self) -> int:
        """How many traces are being tracked now."""
        return len(self._table.traces)
