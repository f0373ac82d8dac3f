"""Counted once: which layer bills a span's model call, tool call or error (see the package docstring).

A span inside a framework adapter's call or run is the adapter's (`framework_span`); a model call
whose subtree already held a counted call is a wrapper, not a call (`count`); any other call is
claimed by the provider's response id, shared with our client hooks through the kernel's `seen`,
and the first layer to claim it counts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import keito_instrument as _keito

from ... import adapters as _api
from .. import _kernel
from .._kernel import RunMark
from . import _attrs as attrs
from ._table import TraceTable
from ._trace import Trace


def claim(values: Mapping[str, Any]) -> bool:
    """Whether this layer counts the call: False when another layer already claimed its response id."""
    return _kernel.seen.claim(attrs.response_id(values))


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
        if not claim(values):
            trace.elsewhere = True  # counted by another layer: our client hook, or a span in another trace
            return
        if not table.activate(trace, trace_id):  # its root ended meanwhile: billed as a straggler
            straggler(table, trace_id, span_id, role, values, claimed=True)
            return
        if trace.session is not None:
            trace.session.record_llm_call(**attrs.call_kwargs(values, span_id))
    if role == attrs.TOOL or failed:
        tally(trace, role == attrs.TOOL, failed)


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
        bill_in_run(mark, values, span_id)
    if is_root and trace is not None and not trace.closed:
        table.close_root(trace, trace_id, span_id, span)


def bill_in_run(mark: RunMark, values: Mapping[str, Any], span_id: int) -> None:
    """Count a model call once, into the session of the framework adapter's run it was made in."""
    if not claim(values):
        return  # counted by another layer: our client hook, or a span in another trace
    kwargs = attrs.call_kwargs(values, span_id)
    session = mark.session
    if not session.record_llm_call(**kwargs) and session.ended:
        # The run's session ended before the span did: a later part of the same session id.
        _keito.record_llm_call(**kwargs, session_id=session.session_id)


def straggler(table: TraceTable, trace_id: int, span_id: int, role: str, values: Mapping[str, Any],
              claimed: bool = False) -> None:
    """A span that ended after its trace's root: its call is billed to that session id, never lost."""
    session_id = table.closed.get(trace_id) or f"{trace_id:032x}"
    if role == attrs.TOOL:
        session = _api.get_session(session_id)
        if session is not None:
            session.record_tool_call()
    if role != attrs.MODEL_CALL or not (claimed or claim(values)):
        return
    _keito.record_llm_call(**attrs.call_kwargs(values, span_id), session_id=session_id)


def tally(trace: Trace, tool: bool, failed: bool) -> None:
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
