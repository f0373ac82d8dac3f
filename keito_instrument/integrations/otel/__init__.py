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

The session is opened lazily, when the trace first has something to bill (a model call, its
root's end, or the trace's eviction), back-dated to its roots' starts: until then a trace is a
light record (root ids, start times, the session hints read at start, tool calls and errors held
back), so a trace with no GenAI span at all (a plain web request) never touches the core and
bills nothing. Only model-call spans add usage (see `_attrs.classify` and the README).

Counted once across layers: a Keito framework adapter (our LangChain handler) marks the context
while it tracks a run (the kernel's run mark, naming its session) and while it records a model
call (the call mark). A span that starts inside either mark, a root that ends inside one, and a
span whose parent is marked, are the adapter's: the trace bills none of their time, tool calls or
errors. A model-call span under a call mark is the adapter's call; under a run mark only, it is a
call the adapter never sees (a client called directly inside a chain step), billed once into the
adapter's session. Otherwise a call is identified by the provider's response id, shared with our
client hooks through the kernel's `seen`: the first layer to claim it counts it. A trace whose
calls were all billed by another layer bills nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

import keito_instrument as _keito

from ... import adapters as _api
from ...adapters import Run, guard
from .. import _kernel, missing_extra
from .._kernel import CLIENT_HOOKS, RunMark, check_options, framework_mark
from .._runs import OpenRuns, Recent
from . import _attrs as attrs

try:
    from opentelemetry import context as otel_context
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
    from opentelemetry.trace import StatusCode
except ImportError as exc:  # pragma: no cover - exercised through a test that hides the package
    raise missing_extra("OpenTelemetry", "otel") from exc

from ._trace import Trace, bill_in_run, end_runs, inherited, seconds, session_hint, suppressed

__all__ = ["MINIMUM", "KeitoSpanProcessor"]

# The oldest opentelemetry-sdk supported (integrations/opentelemetry/constraints-min.txt); checked
# once, at import, so an older one is named with the upgrade line instead of failing in a span hook.
MINIMUM = (1, 27)
_kernel.require_version("OpenTelemetry", "opentelemetry-sdk", MINIMUM, "otel")

_log = logging.getLogger("keito_instrument")

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
        self._traces: OpenRuns[int, Trace] = OpenRuns(max_traces, max_trace_age)
        self._open = self._traces.entries  # read directly on the hot path: one dict lookup per span
        self._closed: Recent[int, str | None] = Recent(_MAX_CLOSED)  # recently closed trace -> session id
        self._skipped: set[int] = set()  # spans started while instrumentation was suppressed
        # Like a client hook, this processor leaves a framework adapter's model calls to it; the
        # LangChain handler marks its calls only while such a hook is installed (until shutdown,
        # or until this processor is collected).
        CLIENT_HOOKS.add(id(self))
        weakref.finalize(self, CLIENT_HOOKS.discard, id(self))
        self._shut = False

    # -- SpanProcessor hooks ------------------------------------------------------------------
    @override
    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        """Runs on the thread starting the span; must not block or raise."""
        with _ON_START:
            if self._shut:
                return
            ctx = parent_context if parent_context is not None else otel_context.get_current()
            if ctx and suppressed(ctx):
                with self._lock:
                    if len(self._skipped) >= _MAX_SKIPPED:
                        self._skipped.clear()  # stay bounded; a missed skip costs one ignored span
                    self._skipped.add(span.get_span_context().span_id)
                return
            mark = framework_mark()
            parent = span.parent
            if parent is None or parent.is_remote:
                self._open_root(span, ctx, mark is not None)
            elif mark is None:
                mark = inherited(self._open.get(parent.trace_id), parent.span_id)
            if mark is not None:
                self._mark(span.get_span_context(), mark)

    @override
    def on_end(self, span: ReadableSpan) -> None:
        """Runs on the thread ending the span; must not block or raise."""
        with _ON_END:
            ctx = span.context
            if ctx is None or self._shut:
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
            mark = trace.marked.pop(span_id, None) if trace is not None and trace.marked else None
            attributes = span.attributes
            if not attributes or not attrs.is_genai(attributes):
                # A web app's own span (keys scanned, nothing copied): it only passes "already
                # counted" up to its parent, and a root closes its trace.
                if trace is not None:
                    if span_id in trace.covered:
                        self._count(trace, trace_id, attrs.OTHER, {}, span, span_id, None if is_root else parent)
                    if is_root:
                        if mark is not None or framework_mark() is not None:
                            trace.elsewhere = True  # a framework adapter's run: it bills the time
                        self._close_root(trace, trace_id, span_id, span)
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
                self._framework_span(trace, trace_id, role, values, span, span_id, is_root, parent, mark)
                return
            if trace is None or trace.closed:
                if trace_id in self._closed:
                    self._straggler(trace_id, span_id, role, values)
                    return
                trace = self._open_late(trace_id, values, span)
                if trace is None:
                    return
            trace.genai = True
            self._count(trace, trace_id, role, values, span, span_id, None if is_root else parent)
            if is_root:
                self._close_root(trace, trace_id, span_id, span)

    @override
    def shutdown(self) -> None:
        """Close every trace still open (billing what was seen); called by `TracerProvider.shutdown()`.

        Spans ending later are ignored, as the SDK's own processors do after their shutdown.
        """
        with guard("otel shutdown"):
            self._shut = True
            CLIENT_HOOKS.discard(id(self))
            with self._lock:
                traces = self._traces.drain()
                self._skipped.clear()
            for trace_id, trace in traces:
                self._close(trace_id, trace)

    @override
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Deliver stored records within the timeout (`keito.flush`); open traces stay open."""
        with guard("otel force_flush"):
            return _keito.flush(max(0.0, timeout_millis / 1000.0))
        return False

    # -- traces ---------------------------------------------------------------------------------
    def _open_root(self, span: Span, ctx: otel_context.Context, framework: bool) -> None:
        span_ctx = span.get_span_context()
        trace_id, span_id = span_ctx.trace_id, span_ctx.span_id
        start = seconds(span.start_time)
        fresh: Trace | None = None
        evicted: list[tuple[int, Trace]] = []
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
                hint = None if enclosing is not None else session_hint(span, ctx)
                fresh = Trace(time.monotonic(), enclosing, hint, {span_id: start})
            with self._lock:
                if trace_id not in self._open:
                    evicted = self._add_locked(trace_id, fresh)
                    break
        else:
            return  # pragma: no cover - four other threads raced this one on the same trace
        self._close_evicted(evicted)
        attributes = span.attributes
        if fresh is not None and not framework and attributes and attrs.is_genai(attributes):
            # A GenAI root (an agent run) is billable even if none of its spans ever ends (its
            # trace evicted, or open at shutdown). Its session still opens lazily, at its first
            # counted call or its end: only then is it known whether another layer bills the run
            # (a framework adapter called after the root's instrumentor marks the run later).
            fresh.genai = True

    def _add_locked(self, trace_id: int, trace: Trace) -> list[tuple[int, Trace]]:
        """Track a new trace (processor lock held); returns the oldest traces beyond the count or
        age cap, taken out and remembered, for the caller to close outside the lock."""
        evicted = self._traces.add(trace_id, trace)
        for old_id, old in evicted:
            self._remember(old_id, old)
        return evicted

    def _remember(self, trace_id: int, trace: Trace) -> None:
        """Note a trace taken out of the table, so its stragglers are billed to its session id."""
        self._closed.remember(trace_id, trace.session_id())

    def _mark(self, span_ctx: Any, mark: str | RunMark) -> None:
        """Note a span started inside a framework adapter's model call or run (the adapter may
        end its call or run before the span ends: a LangChain handler called before the span's
        instrumentor)."""
        trace = self._open.get(span_ctx.trace_id)
        if trace is not None:
            with trace.lock:
                if trace.marked is None:
                    trace.marked = {}
                trace.marked[span_ctx.span_id] = mark

    def _activate(self, trace: Trace, trace_id: int) -> bool:
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
                if held is not None and trace.session is not None:
                    trace.session.count(tool_calls=held[0], errors=held[1])
        return True

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
        options = self._named_options if close == "idle" else self._options
        return _api.begin_run(session_id, close=close, join_current=False, started_at=started_at, **options)

    def _open_late(self, trace_id: int, values: Mapping[str, Any], span: ReadableSpan) -> Trace | None:
        """A trace first seen at a GenAI span's end: its root started before this processor was added.

        Billed from the start of that span (the earliest time known) until its root's end; the
        root's end brings its start time, and the trace is then billed from there.
        """
        enclosing = _api.current_session()
        hint = None if enclosing is not None else attrs.session_id_from(values)
        fresh = Trace(time.monotonic(), enclosing, hint, {})
        run = self._begin(fresh, trace_id, seconds(span.start_time))
        if run is None:
            return None
        fresh.session, fresh.runs[_LATE] = run.session, run
        evicted: list[tuple[int, Trace]] = []
        with self._lock:
            trace = self._open.get(trace_id) or fresh
            if trace is fresh:
                evicted = self._add_locked(trace_id, fresh)
        if trace is not fresh:
            _api.end_run(run)  # another thread got there first
        self._close_evicted(evicted)
        return trace if trace.session is not None else None

    def _count(
        self,
        trace: Trace,
        trace_id: int,
        role: str,
        values: Mapping[str, Any],
        span: ReadableSpan,
        span_id: int,
        parent: Any,
    ) -> None:
        """Count once: a model call whose subtree already held a counted call is a wrapper, not a
        call; one that another layer already claimed is theirs."""
        if role == attrs.OTHER and span_id not in trace.covered:
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
            if not _kernel.seen.claim(attrs.response_id(values)):
                trace.elsewhere = True  # counted by another layer: our client hook, or a span in another trace
                return
            if not self._activate(trace, trace_id):  # its root ended meanwhile: billed as a straggler
                self._straggler(trace_id, span_id, role, values, claimed=True)
                return
            if trace.session is not None:
                trace.session.record_llm_call(**attrs.call_kwargs(values, span_id))
        if role == attrs.TOOL or failed:
            self._tally(trace, role == attrs.TOOL, failed)

    def _framework_span(self, trace: Trace | None, trace_id: int, role: str, values: Mapping[str, Any],
                        span: ReadableSpan, span_id: int, is_root: bool, parent: Any, mark: str | RunMark) -> None:
        """A span inside a framework adapter's model call or run: the adapter bills its time, tool
        calls and errors, so the trace bills none of them. Its model call is the adapter's (a call
        mark), or, under a run mark only, one the adapter never sees (a client called directly in a
        chain step): billed once, into the adapter's session."""
        covered = False
        if trace is not None and not trace.closed:
            with trace.lock:
                covered = span_id in trace.covered
                if covered:
                    trace.covered.discard(span_id)
                if parent is not None and not is_root and (covered or role == attrs.MODEL_CALL):
                    trace.covered.add(parent.span_id)
                if role == attrs.MODEL_CALL or is_root:
                    trace.elsewhere = True  # billed by the adapter, or in its session
        if role == attrs.MODEL_CALL and not covered and type(mark) is RunMark:
            bill_in_run(mark, values, span_id)
        if is_root and trace is not None and not trace.closed:
            self._close_root(trace, trace_id, span_id, span)

    def _tally(self, trace: Trace, tool: bool, failed: bool) -> None:
        """Count a tool call or an error: into the session, or held back until it opens."""
        with trace.lock:
            session = trace.session
            if session is None:
                if trace.held is None:
                    trace.held = [0, 0]
                trace.held[0] += tool
                trace.held[1] += failed
                return
        session.count(tool_calls=int(tool), errors=int(failed))

    def _close_root(self, trace: Trace, trace_id: int, span_id: int, span: ReadableSpan) -> None:
        if trace.session is None and trace.genai and not trace.elsewhere:
            self._activate(trace, trace_id)  # agent work nobody else bills: its time, at least
        end = seconds(span.end_time)
        extra: Run | None = None
        with trace.lock:
            start = trace.roots.pop(span_id, None)
            run = trace.runs.pop(span_id, None)
            if run is None and _LATE in trace.runs:
                run = trace.runs.pop(_LATE)
                if trace.session is not None:  # the root's start is known at last: bill from there
                    extra = trace.session.begin_run(started_at=seconds(span.start_time))
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

    def _straggler(self, trace_id: int, span_id: int, role: str, values: Mapping[str, Any],
                   claimed: bool = False) -> None:
        """A span that ended after its trace's root: its call is billed to that session id, never lost."""
        session_id = self._closed.get(trace_id) or f"{trace_id:032x}"
        if role == attrs.TOOL:
            session = _api.get_session(session_id)
            if session is not None:
                session.record_tool_call()
        if role != attrs.MODEL_CALL or not (claimed or _kernel.seen.claim(attrs.response_id(values))):
            return
        _keito.record_llm_call(**attrs.call_kwargs(values, span_id), session_id=session_id)

    @property
    def open_traces(self) -> int:
        """How many traces are being tracked now."""
        return len(self._traces)

    def _close_evicted(self, evicted: list[tuple[int, Trace]]) -> None:
        for trace_id, old in evicted:
            _log.debug("keito-instrument: closing an OpenTelemetry trace whose root span never ended")
            self._close(trace_id, old)

    def _close(self, trace_id: int, trace: Trace) -> None:
        """End a trace taken out of the table (evicted, or at shutdown), billing what was seen."""
        if trace.session is None and trace.genai and not trace.elsewhere and trace.roots:
            self._activate(trace, trace_id)
        end_runs(trace)
