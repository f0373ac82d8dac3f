"""Fuzzing the CrewAI adapter's KickoffAssembler with hostile events (issue 11's acceptance).

`CrewEvent`s as the listener builds them from crewai's bus, carrying hostile usage dicts, model
and provider names, agent and task labels, ids, options and times, in any order. Nothing escapes
into the host, every completed call of a kickoff is billed, what is delivered to the local Keito
server is contract-valid and nothing is left `sending`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given
from hypothesis import strategies as st

from keito_instrument.integrations.crewai import _events as ev
from keito_instrument.integrations.crewai._events import CrewEvent, KickoffAssembler
from tests._hostile import (
    Checker,
    delivering,
    fuzz_settings,
    hostile_ids,
    hostile_keys,
    hostile_metadata,
    hostile_numbers,
    hostile_scalars,
    hostile_values,
    model_names,
    token_counts,
    unique_id,
)

USAGE_KEYS = (
    "prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens", "cached_tokens",
    "cache_read_tokens", "cache_read_input_tokens", "cacheReadInputTokens", "cache_creation_tokens",
    "cache_creation_input_tokens", "reasoning_tokens", "thoughts_token_count", "prompt_token_count",
    "candidates_token_count", "input_tokens", "inputTokens", "output_tokens", "outputTokens",
)
usage_dicts = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={
        **{key: token_counts for key in USAGE_KEYS},
        "prompt_tokens_details": st.one_of(st.fixed_dictionaries({}, optional={"cached_tokens": token_counts,
                                                                              "audio_tokens": token_counts}),
                                           hostile_scalars),
        "completion_tokens_details": st.one_of(st.fixed_dictionaries({}, optional={"reasoning_tokens": token_counts}),
                                               hostile_scalars),
        "server_tool_use": st.one_of(st.fixed_dictionaries({"web_search_requests": token_counts}), hostile_scalars),
        "cache_creation": hostile_values,
    }),
    st.dictionaries(hostile_keys, hostile_values, max_size=4),
)
options = st.fixed_dictionaries({}, optional={
    "agent_id": hostile_ids, "agent_type": hostile_ids, "project_id": hostile_ids, "task_id": hostile_ids,
    "notes": hostile_ids, "billable": hostile_scalars, "metadata": hostile_metadata, "idle_timeout": hostile_numbers,
})
event_times = st.one_of(st.none(), hostile_numbers)
labels = st.one_of(st.none(), st.just("Researcher"), hostile_scalars)

call = st.fixed_dictionaries({
    "model": st.one_of(st.none(), model_names), "provider": st.one_of(st.none(), hostile_ids),
    "usage": usage_dicts, "agent": labels, "task": labels, "at": event_times,
    "item_id": st.one_of(st.none(), hostile_scalars), "streamed": st.booleans(),
})


@pytest.fixture
def checker() -> Iterator[Checker]:
    with delivering() as server:
        check = Checker(server)
        try:
            yield check
        finally:
            check.close()


def _item(value: Any, index: int) -> Any:
    """A call id: the hostile one given, else a unique one (hostile ids must still be hashable)."""
    try:
        hash(value)
    except TypeError:
        return f"call-{index}"
    return f"call-{index}" if value is None else value


@fuzz_settings(examples=30, slow_examples=300)
@given(opts=options, calls=st.lists(call, min_size=1, max_size=4), tools=st.integers(0, 2), fail=st.booleans(),
       settled=st.booleans(), start_at=event_times, end_at=event_times, shuffle=st.randoms(use_true_random=False),
       error=st.one_of(st.none(), hostile_scalars))
def test_kickoffs_with_hostile_events_bill_every_call(
    checker: Checker, opts: dict[str, Any], calls: list[dict[str, Any]], tools: int, fail: bool, settled: bool,
    start_at: Any, end_at: Any, shuffle: random.Random, error: Any,
) -> None:
    checker.mark()
    sid = unique_id("crew")
    key = unique_id("kickoff")
    events = [CrewEvent(ev.KICKOFF_STARTED, key, session_id=sid, options=opts, at=start_at)]
    completed = []
    for i, fields in enumerate(calls):
        item = _item(fields["item_id"], i)
        events.append(CrewEvent(ev.LLM_STARTED, key, session_id=sid, options=opts, item_id=item, at=fields["at"]))
        completed.append(CrewEvent(ev.LLM_COMPLETED, key, session_id=sid, options=opts, **{**fields, "item_id": item}))
    events += completed
    events += [CrewEvent(ev.TOOL_FINISHED, key, session_id=sid, item_id=f"tool-{i}") for i in range(tools)]
    shuffle.shuffle(events)  # the bus hands events to a thread pool: any order
    end = ev.KICKOFF_FAILED if fail else ev.KICKOFF_COMPLETED
    events.append(CrewEvent(end, key, session_id=sid, error=error, settled=settled, at=end_at))
    assembler = KickoffAssembler(settle_timeout=5, linger=0.01)
    for event in events:
        assembler.feed(event)  # never raises
    assert assembler.wait_idle(10)
    # Distinct call ids (two hostile ids may be the same text: one call, reported twice).
    distinct = len({str(e.item_id) for e in completed if isinstance(e.item_id, str)} | {
        i for i, e in enumerate(completed) if not isinstance(e.item_id, str)})
    checker.check({sid: min(1, distinct)})


@fuzz_settings(examples=25, slow_examples=200)
@given(key=hostile_scalars, outer=st.one_of(st.none(), hostile_scalars), session_id=st.one_of(st.none(), hostile_ids),
       caller=st.one_of(st.none(), hostile_ids), fields=call)
def test_hostile_keys_and_session_ids_never_raise(
    checker: Checker, key: Any, outer: Any, session_id: Any, caller: Any, fields: dict[str, Any]
) -> None:
    """Keys, outer keys, session ids and caller sessions that are not strings (or not hashable)."""
    checker.mark()
    assembler = KickoffAssembler(settle_timeout=5, linger=0.01)
    item = _item(fields["item_id"], 0)
    for kind in (ev.KICKOFF_STARTED, ev.LLM_STARTED, ev.LLM_COMPLETED, ev.KICKOFF_COMPLETED):
        assembler.feed(CrewEvent(kind, key, outer=outer, session_id=session_id, caller_session=caller,
                                 **({**fields, "item_id": item} if kind == ev.LLM_COMPLETED else {})))
    assembler.close_all()
    assert assembler.wait_idle(10)
    checker.check()


# -- plain examples: the bugs the fuzzing found ------------------------------------------------------
def test_a_role_that_is_not_a_string_and_nan_usage_keep_the_call(checker: Checker) -> None:
    """`_label(3)` and `int(nan)` raised, so the call was lost."""
    checker.mark()
    assembler = KickoffAssembler()
    usage = {"prompt_tokens": float("nan"), "completion_tokens": float("inf"), "cached_prompt_tokens": 2}
    for event in (CrewEvent(ev.KICKOFF_STARTED, "k", session_id="crew-labels"),
                  CrewEvent(ev.LLM_COMPLETED, "k", item_id="c1", model="gpt-4o-mini", usage=usage, agent=3, task=4.5),
                  CrewEvent(ev.KICKOFF_COMPLETED, "k")):
        assembler.feed(event)
    assert assembler.wait_idle(5)
    checker.check({"crew-labels": 1})


def test_unhashable_ids_are_keyed_by_their_text(checker: Checker) -> None:
    checker.mark()
    assembler = KickoffAssembler()
    for event in (CrewEvent(ev.KICKOFF_STARTED, ["k"], outer={"o"}, session_id="crew-ids"),  # type: ignore[arg-type]
                  CrewEvent(ev.LLM_COMPLETED, ["k"], item_id=["c"], model="m", usage={"prompt_tokens": 1}),  # type: ignore[arg-type]
                  CrewEvent(ev.KICKOFF_COMPLETED, ["k"])):  # type: ignore[arg-type]
        assembler.feed(event)
    assert assembler.wait_idle(5)
    checker.check({"crew-ids": 1})
