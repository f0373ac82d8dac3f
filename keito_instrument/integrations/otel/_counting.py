"""Counted once: which layer bills a span's model call, tool call or error (see the package docstring).

A span inside a framework adapter's call or run is the adapter's (`framework_span`); a model call
whose subtree already held a counted call is a wrapper, not a call (`count`); any other call is
claimed (`claim`) by the provider's response id, shared with our client hooks through the
kernel's `seen`, and, when one of two libraries' spans of the call has no id, by its usage
(`_pairing`): the first layer to claim a call counts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import keito_instrument as _keito

from ... import adapters as _api
from ..._api import count_error
from .. import _kernel
from .._kernel import RunMark
from . import _attrs as attrs
from ._pairing import Call, Key, pending
from ._table import TraceTable
from ._trace import Trace, failure

_MAX_HELD_FAILURES = 16  # exceptions a trace keeps until its session opens; beyond, plain counts


def claim(values: Mapping[str, Any], kwargs: Mapping[str, Any], span: ReadableSpan) -> bool:
    """Whether this layer counts the call: False when another layer already claimed its response
    id, or when another instrumentation library's span of the same call was counted (`_pairing`)."""
    response_id = attrs.response_id(values)
    if not _kernel.seen.claim(response_id):
        # Its note (if any) stays: a third layer's span without an id may still come (our client
        # hook, the client instrumentor's span, then OpenInference's span of a streamed call).
        return False
    key = _pair_key(kwargs)
    start, end = span.start_time, span.end_time
    if key is None or not start or not end:
        return True
    scope = span.instrumentation_scope
    call = Call(scope.name if scope is not None else "", attrs.model_names(values), start, end, response_id)
    return pending.claim(key, call)


def _pair_key(kwargs: Mapping[str, Any]) -> Key | None:
    """The usage a call pairs by; None for a call without token counts (nothing to compare)."""
    if kwargs["usage_missing"] or not (kwargs["input_tokens"] or kwargs["output_tokens"]):
        return None
    return (kwargs["input_tokens"], kwargs["output_tokens"], kwargs["cache_read_tokens"], kwargs["cache_write_tokens"])


def count(table: TraceTable, trace: Trace, trace_id: int, role: str, values: Mapping[str, Any],
          span: ReadableSpan, span_id: int, parent: Any) -> None:
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
        kwargs = attrs.call_kwargs(values, span_id)
        if not claim(values, kwargs, span):
            trace.elsewhere = True  # counted by another layer: our client hook, or a span in another trace
            return
        if not table.activate(trace, trace_id):  # its root ended meanwhile: billed as a straggler
            _keito.record_llm_call(**kwargs, session_id=straggler_session(table, trace_id))
            return
        if trace.session is not None:
            trace.session.record_llm_call(**kwargs)
    if role == attrs.TOOL or failed:
        tally(trace, role == attrs.TOOL, failed, failure(span) if failed else None)


def framework_span(table: TraceTable, trace: Trace | None, trace_id: int, role: str, values: Mapping[str, Any],
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
        bill_in_run(mark, values, span)
    if is_root and trace is not None and not trace.closed:
        table.close_root(trace, trace_id, span_id, span)


def bill_in_run(mark: RunMark, values: Mapping[str, Any], span: ReadableSpan) -> None:
    """Count a model call once, into the session of the framework adapter's run it was made in."""
    kwargs = attrs.call_kwargs(values, span.context.span_id)
    if not claim(values, kwargs, span):
        return  # counted by another layer: our client hook, or a span in another trace
    session = mark.session
    if not session.record_llm_call(**kwargs) and session.ended:
        # The run's session ended before the span did: a later part of the same session id.
        _keito.record_llm_call(**kwargs, session_id=session.session_id)


def straggler(table: TraceTable, trace_id: int, role: str, values: Mapping[str, Any], span: ReadableSpan) -> None:
    """A span that ended after its trace's root: its call is billed to that session id, never lost."""
    session_id = straggler_session(table, trace_id)
    if role == attrs.TOOL:
        session = _api.get_session(session_id)
        if session is not None:
            session.record_tool_call()
    if role != attrs.MODEL_CALL:
        return
    kwargs = attrs.call_kwargs(values, span.context.span_id)
    if claim(values, kwargs, span):
        _keito.record_llm_call(**kwargs, session_id=session_id)


def straggler_session(table: TraceTable, trace_id: int) -> str:
    """The session id a closed trace billed to (its trace id if it billed nothing)."""
    return table.closed.get(trace_id) or f"{trace_id:032x}"


def tally(trace: Trace, tool: bool, failed: bool, error: BaseException | None = None) -> None:
    """Count a tool call or an error: into the session, or held back until it opens. An error
    whose exception is known (`_trace.failure`) is counted once with it: not again when our
    client hook or `@track_agent` sees the same exception in the same session."""
    with trace.lock:
        session = trace.session
        if session is None:
            if trace.held is None:
                trace.held = [0, 0]
            trace.held[0] += tool
            if error is not None and len(trace.held_failures or ()) < _MAX_HELD_FAILURES:
                if trace.held_failures is None:
                    trace.held_failures = []
                trace.held_failures.append(error)
            else:
                trace.held[1] += failed
            return
    if error is not None:
        if tool:
            session.count(tool_calls=1)
        count_error(session, error)
        return
    session.count(tool_calls=int(tool), errors=int(failed))
