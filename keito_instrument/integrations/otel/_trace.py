"""One open trace's record, and the span helpers the processor's hooks share."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, Span

from ... import adapters as _api
from ...adapters import Run, Session
from .. import _kernel
from . import _attrs as attrs

# The keys instrumentations set while suppressed (`opentelemetry.instrumentation.utils.
# suppress_instrumentation` sets both); a private name in the API, so it is looked up defensively.
SUPPRESS_KEYS: tuple[str, ...] = tuple(
    k for k in (getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", None), "suppress_instrumentation") if k
)


@dataclass(slots=True, eq=False)
class Trace:
    """One open trace. Plain until it has something to bill; then it holds its session and runs.

    Every field below `lock` is read and written under it; the lock of the processor's
    `TraceTable` guards only its tables (open traces, recently closed ones, suppressed spans), and
    is taken after it. Lookups in the open-trace table are lock-free (one dict operation each); an
    insert or a removal that must not race another thread's on the same trace is made under the
    table's lock.
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
    genai: bool = False  # a GenAI span ended in it: billable at its root's end, if nobody else bills it
    elsewhere: bool = False  # another layer billed a model call of it, or its root is an adapter's run
    marked: dict[int, Any] | None = None  # span id -> the framework mark it started in (a str or a RunMark)
    held: list[int] | None = None  # [tool calls, errors] seen before the session opened
    held_failures: list[BaseException] | None = None  # ... and the exceptions some of those errors were

    def session_id(self) -> str | None:
        """The id this trace bills (or would bill) to; None: the trace id."""
        for found in (self.session, self.enclosing):
            if found is not None:
                return found.session_id
        return self.hint


def end_runs(trace: Trace) -> None:
    """Close a trace's record: its runs end now."""
    with trace.lock:
        trace.closed = True
        runs = list(trace.runs.values())
        trace.runs.clear()
        trace.roots.clear()
    for run in runs:
        _api.end_run(run)


def inherited(trace: Trace | None, parent_span_id: int) -> str | _kernel.RunMark | None:
    """The framework mark a span's parent started in, for a span started where the context does
    not carry it (a thread that did not copy the context, given the parent explicitly): the
    subtree of a framework adapter's call or run is the adapter's."""
    if trace is None or not trace.marked:
        return None
    mark = trace.marked.get(parent_span_id)
    return mark if mark is None or type(mark) is str else _kernel.holding(mark)


def failure(span: ReadableSpan) -> BaseException | None:
    """The exception a failed span failed with, when it is being handled on this thread now.

    Instrumentors end a failed span where the exception is caught on its way up: OpenLLMetry's
    client wrappers in their `except` block, OpenInference's LangChain spans in the callback
    LangChain calls from its `except` block (inline in sync code), a `with` block's exit. It is
    then the very object our client hook and `@track_agent` see, so counting it with
    `count_error` counts that failure once across the layers. None when nothing is being handled
    (async LangChain runs OpenInference's callbacks on an executor thread), or when the span
    recorded an exception of another type (it failed for a reason of its own while another
    exception was being handled): the span's error is then counted on its own.
    """
    error = sys.exc_info()[1]
    if error is None:
        return None
    recorded = None
    for event in span.events:
        if event.name == "exception":
            recorded = (event.attributes or {}).get("exception.type")
    if recorded is None:
        return error
    kind = type(error)
    return error if recorded in (kind.__name__, kind.__qualname__, f"{kind.__module__}.{kind.__qualname__}") else None


def seconds(nanoseconds: int | None) -> float:
    """A span timestamp (ns since the epoch) in epoch seconds; now when it is missing."""
    return nanoseconds / 1e9 if nanoseconds else time.time()


def suppressed(ctx: otel_context.Context) -> bool:
    for key in SUPPRESS_KEYS:  # noqa: SIM110 - a plain loop: no generator per span on the hot path
        if ctx.get(key):
            return True
    return False


def session_hint(span: Span, ctx: otel_context.Context) -> str | None:
    """A session id named at the root's start: its attributes, else the context (see `_attrs`)."""
    found = attrs.session_id_from(span.attributes)
    if found is not None or not ctx:
        return found
    return attrs.context_session_id(ctx, baggage.get_all(ctx))
