"""Fuzzing KeitoSpanProcessor with hostile span attributes (issue 11's acceptance).

A real TracerProvider (the SDK drops attribute values of types it does not allow, so what reaches
the processor through it is str/bool/int/float and sequences of them: NaN, infinities, huge and
negative counts, lone surrogates, numeric strings); and `on_end` called directly with ReadableSpans
built with attributes no SDK would let through (objects, None, non-string keys). Nothing escapes
into the host, every model-call span is billed, what is delivered to the local Keito server is
contract-valid and nothing is left `sending`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("hypothesis")

from _otel_fakes import make_otel
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from tests._hostile import (
    Checker,
    delivering,
    fuzz_settings,
    hostile_keys,
    hostile_numbers,
    hostile_scalars,
    hostile_text,
    hostile_values,
    unique_id,
)

COUNT_KEYS = (
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens", "gen_ai.usage.total_tokens", "llm.token_count.prompt",
    "llm.token_count.completion", "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.details.reasoning_tokens", "gen_ai.usage.details.cache_write_1h_tokens",
)
TEXT_KEYS = ("gen_ai.request.model", "gen_ai.response.model", "llm.model_name", "gen_ai.provider.name",
             "gen_ai.system", "session.id", "gen_ai.conversation.id", "gen_ai.agent.name")
# What the SDK accepts as an attribute value.
sdk_values = st.one_of(
    hostile_numbers.filter(lambda v: not isinstance(v, int) or -(2**63) <= v < 2**63),
    hostile_text, st.booleans(),
    st.lists(st.one_of(st.integers(-5, 5)), max_size=3).map(tuple), st.lists(hostile_text, max_size=3).map(tuple),
)
sdk_attributes = st.fixed_dictionaries(
    {"gen_ai.operation.name": st.sampled_from(["chat", "text_completion", "embeddings", "execute_tool"])},
    optional={**{k: sdk_values for k in COUNT_KEYS}, **{k: sdk_values for k in TEXT_KEYS},
              "openinference.span.kind": sdk_values},
)


@pytest.fixture
def checker() -> Iterator[Checker]:
    with delivering() as server:
        check = Checker(server)
        try:
            yield check
        finally:
            check.close()


@fuzz_settings(examples=30, slow_examples=300)
@given(root_attrs=st.dictionaries(st.sampled_from(TEXT_KEYS), sdk_values, max_size=2),
       calls=st.lists(sdk_attributes, min_size=1, max_size=3), settings=st.dictionaries(
           st.sampled_from(["agent_id", "project_id", "notes", "metadata", "billable"]), hostile_scalars, max_size=2),
       error=st.booleans())
def test_spans_with_hostile_attributes_bill_every_model_call(
    checker: Checker, root_attrs: dict[str, Any], calls: list[dict[str, Any]], settings: dict[str, Any],
    error: bool,
) -> None:
    checker.mark()
    try:
        otel = make_otel(**settings)
    except (TypeError, ValueError):  # the processor's constructor is a boundary: it may refuse settings
        otel = make_otel()
    try:
        session_id = unique_id("otel")
        with otel.tracer.start_as_current_span("agent", attributes={**root_attrs, "session.id": session_id,
                                                                   "gen_ai.operation.name": "invoke_agent"}):
            for attributes in calls:
                with otel.tracer.start_as_current_span("call", attributes=attributes) as span:
                    if error:
                        span.set_status(Status(StatusCode.ERROR, "provider down"))
        import keito_instrument as keito

        keito.end_session(session_id)  # a session named by the trace stays open until ended
        models = sum(a["gen_ai.operation.name"] in ("chat", "text_completion", "embeddings") for a in calls)
        checker.check({session_id: min(1, models)})
        assert len(otel.exported.get_finished_spans()) == len(calls) + 1  # the next processor still ran
    finally:
        otel.provider.shutdown()


def _span(name: str, attributes: Any, trace_id: int, span_id: int, parent: SpanContext | None,
          start: Any, end: Any, status: Any) -> ReadableSpan:
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))
    return ReadableSpan(name=name, context=context, parent=parent, attributes=attributes, kind=SpanKind.CLIENT,
                        start_time=start, end_time=end, status=status)


raw_attributes = st.one_of(
    st.fixed_dictionaries(
        {"gen_ai.operation.name": st.one_of(st.just("chat"), hostile_scalars)},
        optional={**{k: hostile_values for k in COUNT_KEYS}, **{k: hostile_values for k in TEXT_KEYS}},
    ),
    st.dictionaries(hostile_keys, hostile_values, max_size=4),
    st.none(),
)
times = st.one_of(st.none(), st.integers(0, 2**64), st.just(-1))


@fuzz_settings(examples=30, slow_examples=300)
@given(attributes=raw_attributes, root_attributes=raw_attributes, start=times, end=times,
       status=st.sampled_from([Status(StatusCode.ERROR, "x"), Status(StatusCode.OK), Status(StatusCode.UNSET)]),
       trace_id=st.integers(1, 2**128 - 1), remote_root=st.booleans())
def test_on_end_with_readable_spans_no_sdk_would_build(
    checker: Checker, attributes: Any, root_attributes: Any, start: Any, end: Any, status: Status, trace_id: int,
    remote_root: bool,
) -> None:
    """A child span then its (possibly remote-parented) root, handed straight to `on_end`."""
    checker.mark()
    otel = make_otel()
    try:
        root_ctx = SpanContext(trace_id, 1, is_remote=False, trace_flags=TraceFlags(1))
        remote = SpanContext(trace_id, 99, is_remote=True, trace_flags=TraceFlags(1)) if remote_root else None
        otel.processor.on_end(_span("call", attributes, trace_id, 2, root_ctx, start, end, status))
        otel.processor.on_end(_span("root", root_attributes, trace_id, 1, remote, start, end, status))
        otel.processor.shutdown()
        checker.check()
    finally:
        otel.provider.shutdown()


# -- plain examples: the bugs the fuzzing found ------------------------------------------------------
def test_a_span_with_non_string_attribute_keys_is_read(checker: Checker) -> None:
    """`is_genai` called `key.startswith` on every key: an int key raised."""
    checker.mark()
    otel = make_otel()
    try:
        trace_id = 0xABC
        attributes = {0: "x", None: 1, "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                      "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2}
        otel.processor.on_end(_span("call", attributes, trace_id, 7, None, 1, 2, Status(StatusCode.OK)))
        checker.check({f"{trace_id:032x}": 1})
    finally:
        otel.provider.shutdown()
