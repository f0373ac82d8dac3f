"""The framework-free kickoff assembler, fed with plain events in adversarial orders."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument import _pipeline
from keito_instrument._spool import Spool
from keito_instrument.integrations.crewai import _events as ev
from keito_instrument.integrations.crewai._events import (
    CrewEvent,
    KickoffAssembler,
    Tokens,
    tokens_from_usage,
)
from keito_instrument.integrations.crewai._record import _label

OPENAI = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}


def kickoff_events(
    key: str, calls: int = 2, *, fail: bool = False, tools: int = 1, settled: bool = True
) -> list[CrewEvent]:
    """The events of one kickoff in emission order."""
    events = [CrewEvent(ev.KICKOFF_STARTED, key, options={"agent_type": "crew"})]
    for i in range(calls):
        call = f"{key}-call-{i}"
        events.append(CrewEvent(ev.LLM_STARTED, key, item_id=call))
        events.append(
            CrewEvent(
                ev.LLM_COMPLETED,
                key,
                item_id=call,
                model="gpt-4o-mini",
                provider="openai",
                usage=OPENAI,
                agent="Researcher",
                task="adding",
            )
        )
    events += [CrewEvent(ev.TOOL_FINISHED, key, item_id=f"{key}-tool-{i}") for i in range(tools)]
    if fail:
        events.append(CrewEvent(ev.TASK_FAILED, key, item_id=f"{key}-task"))
    kind = ev.KICKOFF_FAILED if fail else ev.KICKOFF_COMPLETED
    events.append(CrewEvent(kind, key, error="boom" if fail else None, settled=settled))
    return events


def feed(assembler: KickoffAssembler, events: list[CrewEvent]) -> None:
    for event in events:
        assembler.feed(event)


def test_in_order_kickoff_is_one_session(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    feed(assembler, kickoff_events("k1", calls=3))
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["tool_calls"], row["errors"]) == (3, 1, 0)
    assert row["input_tokens"] == 300 and row["output_tokens"] == 60
    assert assembler.open_kickoffs == 0


@pytest.mark.parametrize("seed", range(8))
def test_any_order_bills_the_same(ledger: Spool, seed: int) -> None:
    """Every permutation: starts after ends, the kickoff's end (unsettled) before anything else."""
    events = kickoff_events("k", calls=4, settled=False)
    random.Random(seed).shuffle(events)
    unsettled: list[str] = []
    assembler = KickoffAssembler(settle_timeout=30, on_unsettled=unsettled.append)
    feed(assembler, events)
    assert unsettled == ["k"]
    assert ledger.sessions() == []  # the bus has not drained yet: the kickoff stays open
    assembler.settled("k")
    [row] = ledger.sessions()
    assert row["llm_calls"] == 4 and row["input_tokens"] == 400 and row["tool_calls"] == 1


def test_unsettled_end_lingers_by_default(ledger: Spool) -> None:
    assembler = KickoffAssembler(linger=0.01)
    feed(assembler, kickoff_events("k", calls=1, settled=False))
    assert assembler.wait_idle(5)
    assert len(ledger.sessions()) == 1


def test_end_waits_for_open_calls_then_closes(ledger: Spool) -> None:
    assembler = KickoffAssembler(settle_timeout=30)
    feed(
        assembler,
        [
            CrewEvent(ev.KICKOFF_STARTED, "k"),
            CrewEvent(ev.LLM_STARTED, "k", item_id="c1"),
            CrewEvent(ev.KICKOFF_COMPLETED, "k"),
        ],
    )
    assert ledger.sessions() == []  # c1 is still in flight
    assembler.feed(CrewEvent(ev.LLM_COMPLETED, "k", item_id="c1", model="m", usage=OPENAI))
    [row] = ledger.sessions()
    assert row["llm_calls"] == 1


def test_calls_that_never_complete_are_closed_after_settle_timeout(ledger: Spool) -> None:
    assembler = KickoffAssembler(settle_timeout=0.05)
    feed(
        assembler,
        [
            CrewEvent(ev.KICKOFF_STARTED, "k"),
            CrewEvent(ev.LLM_STARTED, "k", item_id="lost"),
            CrewEvent(ev.KICKOFF_COMPLETED, "k"),
        ],
    )
    assert assembler.wait_idle(5)
    assert len(ledger.sessions()) == 1


def test_calls_before_the_start_and_duplicates(ledger: Spool) -> None:
    """Agent.kickoff does not wait for its start handlers: a call may be seen first."""
    assembler = KickoffAssembler()
    done = CrewEvent(ev.LLM_COMPLETED, "k", item_id="c1", model="m", usage=OPENAI)
    feed(
        assembler,
        [
            done,
            CrewEvent(ev.LLM_STARTED, "k", item_id="c1"),
            CrewEvent(ev.KICKOFF_STARTED, "k"),
            done,
            CrewEvent(ev.TOOL_FINISHED, "k", item_id="t"),
            CrewEvent(ev.TOOL_FINISHED, "k", item_id="t"),
            CrewEvent(ev.KICKOFF_COMPLETED, "k"),
        ],
    )
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["tool_calls"], row["input_tokens"]) == (1, 1, 100)


def test_late_events_do_not_open_a_new_session(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    feed(assembler, kickoff_events("k", calls=1))
    assembler.feed(CrewEvent(ev.LLM_COMPLETED, "k", item_id="late", model="m", usage=OPENAI))
    assembler.feed(CrewEvent(ev.KICKOFF_STARTED, "k"))
    assert assembler.open_kickoffs == 0 and assembler.late_events == 2
    assert len(ledger.sessions()) == 1


def test_failed_kickoff_bills_spent_tokens_and_counts_errors(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    events = kickoff_events("k", calls=2, fail=True)
    events.insert(-2, CrewEvent(ev.LLM_FAILED, "k", item_id="k-call-x"))
    feed(assembler, events)
    [row] = ledger.sessions()
    assert row["input_tokens"] == 200
    assert row["errors"] == 3  # llm_call_failed, task_failed, crew_kickoff_failed


def test_nested_kickoff_joins_the_outer_session(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    inner = kickoff_events("inner", calls=1)
    inner[0] = CrewEvent(ev.KICKOFF_STARTED, "inner", outer="outer")
    outer = kickoff_events("outer", calls=1)
    feed(assembler, [outer[0], *inner, *outer[1:]])
    [row] = ledger.sessions()
    assert row["llm_calls"] == 2


def test_caller_session_is_joined_and_explicit_id_wins(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    with keito.session(session_id="outer") as s:
        feed(
            assembler,
            [
                CrewEvent(ev.KICKOFF_STARTED, "a", caller_session=s.session_id),
                CrewEvent(ev.LLM_COMPLETED, "a", item_id="1", model="m", usage=OPENAI),
                CrewEvent(ev.KICKOFF_COMPLETED, "a"),
            ],
        )
        feed(
            assembler,
            [
                CrewEvent(ev.KICKOFF_STARTED, "b", caller_session="outer", session_id="mine"),
                CrewEvent(ev.KICKOFF_COMPLETED, "b"),
            ],
        )
    rows = {row["session_id"]: row for row in ledger.sessions()}
    assert set(rows) == {"outer", "mine"}
    assert rows["outer"]["llm_calls"] == 1


def test_open_kickoffs_are_bounded(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "MAX_OPEN_KICKOFFS", 3)
    monkeypatch.setattr(ev, "MAX_FINISHED_KEYS", 2)
    assembler = KickoffAssembler()
    for i in range(10):
        assembler.feed(CrewEvent(ev.KICKOFF_STARTED, f"k{i}"))
    assert assembler.open_kickoffs == 3
    assert len(ledger.sessions()) == 7  # the oldest were closed, and billed, not dropped
    assert len(assembler._finished) == 2


def test_a_kickoff_that_never_ends_leaves_the_table_at_max_run_age_and_the_core_bills_it(ledger: Spool) -> None:
    """Past `max_run_age` it is only forgotten: the core's own sweep ends its run at its last
    activity, so the hours it sat open are not billed."""
    max_age = keito.get_settings().max_run_age
    assembler = KickoffAssembler()
    feed(assembler, kickoff_events("old")[:3])  # started, one call made; its end never comes
    stale = assembler._open.get("old")
    assert stale is not None
    stale.born -= max_age + 1
    feed(assembler, [CrewEvent(ev.KICKOFF_STARTED, "new"), CrewEvent(ev.KICKOFF_COMPLETED, "new")])
    assert assembler.open_kickoffs == 0 and "old" in assembler._finished
    assembler.feed(CrewEvent(ev.LLM_COMPLETED, "old", item_id="late", model="m", usage=OPENAI))
    assert assembler.late_events == 1 and assembler.open_kickoffs == 0  # not taken for a new kickoff
    assert len(ledger.sessions()) == 1  # only "new": "old" is the core's to end
    _pipeline.registry.sweep(time.monotonic() + max_age + 1)
    rows = ledger.sessions()
    assert len(rows) == 2
    old = next(row for row in rows if row["llm_calls"] == 1)
    assert old["active_seconds"] < 60


def test_call_ids_per_kickoff_are_bounded(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "MAX_IDS_PER_KICKOFF", 3)
    assembler = KickoffAssembler(settle_timeout=30)
    assembler.feed(CrewEvent(ev.KICKOFF_STARTED, "k"))
    for i in range(10):
        assembler.feed(CrewEvent(ev.LLM_STARTED, "k", item_id=f"c{i}"))
    for i in range(10):
        assembler.feed(CrewEvent(ev.LLM_COMPLETED, "k", item_id=f"c{i}", model="m", usage=OPENAI))
    assembler.feed(CrewEvent(ev.LLM_COMPLETED, "k", item_id="c9", model="m", usage=OPENAI))  # a repeat
    [kickoff] = assembler._open.values()
    assert len(kickoff.open_calls) == 0 and len(kickoff.done) == 3
    assembler.feed(CrewEvent(ev.KICKOFF_COMPLETED, "k"))
    [row] = ledger.sessions()
    assert row["llm_calls"] == 10  # past the bound, the session's own call ids still count each once


def test_many_threads_many_kickoffs(ledger: Spool) -> None:
    """Like CrewAI's 10-thread handler pool: events of 20 kickoffs, shuffled, from 10 threads."""
    events = [e for i in range(20) for e in kickoff_events(f"k{i}", calls=5, settled=False)]
    random.Random(7).shuffle(events)
    unsettled: list[str] = []
    assembler = KickoffAssembler(settle_timeout=30, on_unsettled=unsettled.append)
    chunks = [events[i::10] for i in range(10)]
    threads = [threading.Thread(target=feed, args=(assembler, chunk)) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key in unsettled:
        assembler.settled(key)
    assert assembler.wait_idle(5)
    rows = ledger.sessions()
    assert len(rows) == 20
    assert all(row["llm_calls"] == 5 and row["input_tokens"] == 500 for row in rows)


def timed(events: list[CrewEvent], t0: float, step: float = 0.5) -> list[CrewEvent]:
    """The events stamped as emitted `step` seconds apart from `t0` (their emission order)."""
    return [dataclasses.replace(event, at=t0 + i * step) for i, event in enumerate(events)]


@pytest.mark.parametrize("seed", range(8))
def test_billed_time_is_the_events_time_in_any_order(ledger: Spool, seed: int) -> None:
    """Handled late, in any order (the end first, the start last): the events' times are billed."""
    t0 = time.time() - 100  # a kickoff that ran a while ago; we hear of it only now
    events = timed(kickoff_events("k", calls=3, settled=False), t0)  # 9 events: 4 s of work
    random.Random(seed).shuffle(events)
    unsettled: list[str] = []
    assembler = KickoffAssembler(settle_timeout=30, on_unsettled=unsettled.append)
    feed(assembler, events)
    assembler.settled("k")
    [row] = ledger.sessions()
    assert row["active_seconds"] == pytest.approx(4.0, abs=1e-6)
    assert row["started_at"] == pytest.approx(t0, abs=1e-6)
    assert row["llm_calls"] == 3 and row["tool_calls"] == 1  # back-dating did not lose usage


def test_a_start_handled_after_the_calls_back_dates_the_run(ledger: Spool) -> None:
    """The first event handled opens the run at its own time; an earlier one moves the start."""
    t0 = time.time() - 100
    assembler = KickoffAssembler()
    feed(
        assembler,
        [
            CrewEvent(ev.LLM_COMPLETED, "k", item_id="c1", model="m", usage=OPENAI, at=t0 + 3),
            CrewEvent(ev.LLM_STARTED, "k", item_id="c1", at=t0 + 1),
            CrewEvent(ev.KICKOFF_STARTED, "k", at=t0),
            CrewEvent(ev.TOOL_FINISHED, "k", item_id="t", at=t0 + 2),  # not earlier: no change
        ],
    )
    [kickoff] = assembler._open.values()
    assert kickoff.first_at == t0
    assert kickoff.run is not None and kickoff.run.session.open_runs == 1  # the replaced runs closed
    assembler.feed(CrewEvent(ev.KICKOFF_COMPLETED, "k", at=t0 + 4))
    [row] = ledger.sessions()
    assert row["active_seconds"] == pytest.approx(4.0, abs=1e-6)
    assert (row["llm_calls"], row["tool_calls"], row["input_tokens"]) == (1, 1, 100)


def test_waiting_for_calls_in_flight_is_not_billed(ledger: Spool) -> None:
    t0 = time.time() - 100
    assembler = KickoffAssembler(settle_timeout=30)
    feed(
        assembler,
        [
            CrewEvent(ev.KICKOFF_STARTED, "k", at=t0),
            CrewEvent(ev.LLM_STARTED, "k", item_id="c1", at=t0 + 1),
            CrewEvent(ev.KICKOFF_COMPLETED, "k", at=t0 + 5),
        ],
    )
    assert ledger.sessions() == []  # c1 is still in flight
    assembler.feed(CrewEvent(ev.LLM_COMPLETED, "k", item_id="c1", model="m", usage=OPENAI, at=t0 + 4))
    [row] = ledger.sessions()
    assert row["active_seconds"] == pytest.approx(5.0, abs=1e-6)  # up to the end event, not to now


def test_a_failed_kickoff_is_billed_to_its_failure_event(ledger: Spool) -> None:
    t0 = time.time() - 100
    unsettled: list[str] = []
    assembler = KickoffAssembler(settle_timeout=30, on_unsettled=unsettled.append)
    feed(assembler, timed(kickoff_events("k", calls=1, fail=True, settled=False), t0, step=1.0))
    assert unsettled == ["k"] and ledger.sessions() == []
    assembler.settled("k")  # the drain: much later than the failure
    [row] = ledger.sessions()
    assert row["active_seconds"] == pytest.approx(5.0, abs=1e-6)  # 6 events, 1 s apart
    assert row["errors"] == 2


def test_event_times_are_kept_between_the_start_and_now(ledger: Spool) -> None:
    before = time.time()
    assembler = KickoffAssembler()
    future = before + 3600  # a clock that is wrong: never billed beyond now
    feed(assembler, [CrewEvent(ev.KICKOFF_STARTED, "k", at=future), CrewEvent(ev.KICKOFF_COMPLETED, "k", at=future)])
    feed(
        assembler,
        [
            CrewEvent(ev.KICKOFF_STARTED, "j", at=before - 10),
            CrewEvent(ev.LLM_COMPLETED, "j", item_id="c", model="m", usage=OPENAI, at=before - 5),
            CrewEvent(ev.KICKOFF_COMPLETED, "j", at=0.0),  # a clock stepped back: before the start
        ],
    )
    after = time.time()
    backwards, late = ledger.sessions()  # by start
    assert late["started_at"] >= before
    assert late["active_seconds"] <= after - before
    assert backwards["active_seconds"] == 0.0  # an end before its start bills nothing


def test_events_without_times_bill_when_they_are_handled(ledger: Spool) -> None:
    before = time.time()
    assembler = KickoffAssembler()
    feed(assembler, kickoff_events("k", calls=1))  # `at` None throughout, as before event times
    assembler.feed(CrewEvent(ev.KICKOFF_STARTED, "j"))
    assembler.feed(CrewEvent(ev.TOOL_FINISHED, "j", item_id="t", at=before - 50))  # earlier than handling
    assembler.feed(CrewEvent(ev.KICKOFF_COMPLETED, "j"))
    after = time.time()
    mixed, untimed = ledger.sessions()  # by start: the mixed one was back-dated 50 s
    assert 0.0 <= untimed["active_seconds"] <= after - before
    assert 50.0 <= mixed["active_seconds"] <= 50.0 + after - before


def test_a_kickoff_in_an_open_session_is_billed_by_its_events(ledger: Spool) -> None:
    t0 = time.time() - 100
    assembler = KickoffAssembler()
    entered = time.time()
    with keito.session(session_id="outer") as s:
        feed(
            assembler,
            [
                CrewEvent(ev.LLM_COMPLETED, "a", caller_session=s.session_id, item_id="1", model="m", at=t0 + 2),
                CrewEvent(ev.KICKOFF_STARTED, "a", caller_session=s.session_id, at=t0),
                CrewEvent(ev.KICKOFF_COMPLETED, "a", caller_session=s.session_id, at=t0 + 3),
            ],
        )
        assert s.open_runs == 1  # the session's own run: the kickoff's are closed
    left = time.time()
    [row] = ledger.sessions()
    assert row["session_id"] == "outer" and row["started_at"] == pytest.approx(t0, abs=1e-6)
    assert 3.0 <= row["active_seconds"] <= 3.0 + (left - entered)  # the kickoff's 3 s + the block


@pytest.mark.guard_errors_expected
def test_a_failing_begin_never_raises(ledger: Spool) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("core broke")

    assembler = KickoffAssembler(begin=broken)
    feed(assembler, kickoff_events("k"))  # must not raise
    assert ledger.sessions() == []


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (OPENAI, Tokens(100, 20)),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 30,
                "cached_prompt_tokens": 40,
                "reasoning_tokens": 10,
            },
            Tokens(100, 30, 40, 0, 10),
        ),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 30,
                "prompt_tokens_details": {"cached_tokens": 60},
                "completion_tokens_details": {"reasoning_tokens": 5},
            },
            Tokens(100, 30, 60, 0, 5),
        ),
        # crewai's Anthropic provider already adds cache to input_tokens
        (
            {
                "input_tokens": 150,
                "output_tokens": 20,
                "cached_prompt_tokens": 30,
                "cache_creation_tokens": 20,
            },
            Tokens(150, 20, 30, 20, 0),
        ),
        # a raw Anthropic usage: input excludes cache reads and writes
        (
            {
                "input_tokens": 100,
                "output_tokens": 20,
                "cache_read_input_tokens": 30,
                "cache_creation_input_tokens": 20,
            },
            Tokens(150, 20, 30, 20, 0),
        ),
        # Gemini: candidates exclude thoughts; crewai's completion_tokens includes them
        (
            {"prompt_token_count": 80, "candidates_token_count": 10, "reasoning_tokens": 5},
            Tokens(80, 15, 0, 0, 5),
        ),
        (
            {
                "prompt_token_count": 80,
                "candidates_token_count": 10,
                "completion_tokens": 15,
                "reasoning_tokens": 5,
            },
            Tokens(80, 15, 0, 0, 5),
        ),
        # Bedrock Converse: inputTokens excludes cache reads and writes
        (
            {"inputTokens": 100, "outputTokens": 20, "cacheReadInputTokens": 30, "cacheWriteInputTokens": 5},
            Tokens(135, 20, 30, 5, 0),
        ),
        # LiteLLM (Anthropic behind it): prompt_tokens already includes the cache
        (
            {
                "prompt_tokens": 150,
                "completion_tokens": 20,
                "cache_read_input_tokens": 30,
                "cache_creation_input_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 30},
            },
            Tokens(150, 20, 30, 20, 0),
        ),
        ({"total_tokens": 0}, None),
        (None, None),
    ],
)
def test_tokens_from_usage(usage: dict[str, Any] | None, expected: Tokens | None) -> None:
    assert tokens_from_usage(usage) == expected


def test_missing_usage_is_flagged_not_zero_cost(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    feed(
        assembler,
        [
            CrewEvent(ev.KICKOFF_STARTED, "k"),
            CrewEvent(ev.LLM_COMPLETED, "k", item_id="c", model="m", usage=None),
            CrewEvent(ev.KICKOFF_COMPLETED, "k"),
        ],
    )
    [row] = ledger.sessions()
    assert row["llm_calls"] == 1 and row["input_tokens"] == 0


def test_labels_are_short() -> None:
    assert _label("x" * 500) == "x" * 59 + "…"
    assert _label("  a \n b ") == "a b"
    assert _label(None) is None


def test_fork_hook_does_not_keep_the_assembler_alive() -> None:
    import gc
    import weakref

    ref = weakref.ref(KickoffAssembler())
    gc.collect()
    assert ref() is None


def test_after_fork_the_child_starts_empty(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    assembler.feed(CrewEvent(ev.KICKOFF_STARTED, "k"))
    assembler._lock.acquire()  # as if another thread held it when the process forked
    assembler._after_fork_in_child()
    assert assembler.open_kickoffs == 0
    feed(assembler, kickoff_events("k2", calls=1))
    assert assembler.wait_idle(1)


def test_breakdown_of_many_agents_and_long_task_names_fits_4kb(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    events = [CrewEvent(ev.KICKOFF_STARTED, "k")]
    for i in range(60):
        events.append(
            CrewEvent(
                ev.LLM_COMPLETED,
                "k",
                item_id=f"c{i}",
                model="gpt-4o-mini",
                usage=OPENAI,
                agent=f"Agent number {i} with a long role name",
                task="Describe " + "very " * 80 + f"{i}",
            )
        )
    feed(assembler, [*events, CrewEvent(ev.KICKOFF_COMPLETED, "k")])
    [row] = ledger.sessions()
    [expense] = [r for r in ledger.records(session_id=row["session_id"]) if r["kind"] == "expense"]
    md = expense["payload"]["metadata"]
    assert len(json.dumps(md, separators=(",", ":")).encode()) <= 4096
    assert md["session_id"] == row["session_id"] and md["record_id"]
    assert md["llm_calls"] == 60 and md["input_tokens"] == 6000
    assert all(len(key) < 120 for key in md)
