"""Session rules: concurrency with exact totals, the union of runs, idle gaps, bounded state."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import keito_instrument as keito
from keito_instrument import _pipeline
from keito_instrument._session import Session, SessionOptions
from keito_instrument._spool import Spool


def test_interval_union_merges_overlaps_in_any_order() -> None:
    session = Session("s", SessionOptions())
    for start, end in [(10, 20), (15, 25), (40, 50), (0, 5), (4, 11), (30, 31), (45, 60)]:
        session._add_interval(start, end)
    assert session._intervals == [[0, 25], [30, 31], [40, 60]]


def test_200_concurrent_sessions_across_threads_and_tasks_have_exact_totals(ledger: Spool) -> None:
    calls_per_session = 25

    @keito.track_agent
    def threaded(n: int) -> str:
        session = keito.current_session()
        assert session is not None
        for i in range(calls_per_session):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=n + i, output_tokens=n)
            if i % 5 == 0:
                time.sleep(0)  # let the other threads interleave
        return session.session_id

    @keito.track_agent
    async def tasked(n: int) -> str:
        session = keito.current_session()
        assert session is not None
        for i in range(calls_per_session):
            keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=n + i, output_tokens=n)
            await asyncio.sleep(0)
        return session.session_id

    ids: dict[int, str] = {}

    def run_thread(n: int) -> None:
        ids[n] = threaded(n)

    threads = [threading.Thread(target=run_thread, args=(n,)) for n in range(100)]
    for t in threads:
        t.start()

    async def run_tasks() -> list[str]:
        return await asyncio.gather(*(tasked(n) for n in range(100, 200)))

    for n, sid in zip(range(100, 200), asyncio.run(run_tasks()), strict=True):
        ids[n] = sid
    for t in threads:
        t.join()
    # 100 threads ending at once contend for the spool's write lock; a session whose append would
    # have waited longer than the host may wait goes to the fallback writer, which flush() drains.
    assert keito.flush(timeout=30)

    sessions = {row["session_id"]: row for row in ledger.sessions()}
    assert len(sessions) == 200 and set(sessions) == set(ids.values())
    for n, sid in ids.items():
        row = sessions[sid]
        assert row["llm_calls"] == calls_per_session
        assert row["input_tokens"] == sum(n + i for i in range(calls_per_session))
        assert row["output_tokens"] == n * calls_per_session
    expected_in = sum(n + i for n in range(200) for i in range(calls_per_session))
    assert sum(r["input_tokens"] for r in sessions.values()) == expected_in
    assert len(ledger.records(state="local")) == 400  # one time entry + one expense each


def test_overlapping_runs_of_one_session_are_billed_once(ledger: Spool) -> None:
    barrier = threading.Barrier(4)

    def worker() -> None:
        run = keito.begin_run("shared", framework="test")
        barrier.wait()
        time.sleep(0.2)
        keito.end_run(run)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    row = ledger.sessions()[0]
    assert len(ledger.sessions()) == 1
    assert 0.2 <= row["active_seconds"] <= wall  # four parallel 0.2 s runs: the union, not 0.8 s


def test_idle_gaps_between_runs_are_not_billed(ledger: Spool) -> None:
    for _ in range(2):
        run = keito.begin_run("thread-1", close="idle", framework="test")
        time.sleep(0.05)
        keito.end_run(run)
        time.sleep(0.3)  # the user thinks: not billed
    keito.end_session("thread-1")
    row = ledger.sessions()[0]
    assert 0.1 <= row["active_seconds"] < 0.3


def test_idle_sessions_close_by_themselves(ledger: Spool) -> None:
    keito.configure(idle_timeout=0.2)
    run = keito.begin_run("chat", close="idle", framework="test")
    keito.end_run(run)
    deadline = time.monotonic() + 5
    while not ledger.sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["end_reason"] for r in ledger.sessions()] == ["idle_timeout"]


def test_the_memory_cap_never_splits_a_conversation(ledger: Spool) -> None:
    keito.configure(max_open_sessions=5)
    for n in range(7):
        keito.record_llm_call("gpt-4o", input_tokens=10, output_tokens=1, session_id=f"s{n}")
    assert len(_pipeline.registry.open_sessions()) == 5
    assert ledger.sessions() == []  # forgotten from memory, still open in the ledger
    assert len(ledger.live_sessions()) == 7
    keito.record_llm_call("gpt-4o", input_tokens=10, output_tokens=1, session_id="s0")  # its next turn
    assert keito.end_session("s0")
    assert keito.flush(5.0)
    rows = [r for r in ledger.sessions() if r["session_id"] == "s0"]
    assert [(r["llm_calls"], r["input_tokens"]) for r in rows] == [(2, 20)]


def test_a_run_whose_end_never_arrives_does_not_leak(ledger: Spool) -> None:
    keito.configure(max_run_age=0.05)
    run = keito.begin_run("lost", framework="test")
    assert run is not None
    run.session.record_llm_call("gpt-4o", input_tokens=10, output_tokens=2)
    time.sleep(0.1)
    assert _pipeline.registry.sweep() == 1
    assert _pipeline.registry.get("lost") is None
    row = ledger.sessions()[0]
    assert (row["end_reason"], row["llm_calls"]) == ("run_age_exceeded", 1)
    keito.end_run(run)  # a late end is harmless
    assert len(ledger.sessions()) == 1


def test_shutdown_ends_open_sessions_and_bills_them(ledger: Spool) -> None:
    run = keito.begin_run("open-at-exit", framework="test")
    assert run is not None
    run.session.record_llm_call("gpt-4o", input_tokens=10, output_tokens=2)
    assert keito.shutdown(timeout=1.0) is True
    assert [r["end_reason"] for r in ledger.sessions()] == ["shutdown"]


@pytest.mark.parametrize("how", ["decorator", "context"])
def test_threads_started_inside_a_session_join_it_with_copied_context(ledger: Spool, how: str) -> None:
    import contextvars

    def child() -> None:
        keito.record_llm_call("gpt-4o", input_tokens=7, output_tokens=1)

    def body() -> None:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(child,))
        t.start()
        t.join()

    if how == "decorator":
        keito.track_agent(body)()
    else:
        with keito.session():
            body()
    assert [(r["llm_calls"], r["input_tokens"]) for r in ledger.sessions()] == [(1, 7)]


def test_open_runs_per_session_are_capped(ledger: Spool) -> None:
    keito.configure(max_open_runs=3)
    runs = [keito.begin_run("busy", framework="test") for _ in range(5)]
    session = keito.get_session("busy")
    assert session is not None and session.open_runs == 3
    for run in runs:
        keito.end_run(run)
    assert [r["session_id"] for r in ledger.sessions()] == ["busy"]


def test_runs_can_be_billed_by_their_event_times(ledger: Spool) -> None:
    """Adapters pass the framework's own timestamps: a late hook does not bill the delay as work."""
    now = time.time()
    run = keito.begin_run("evented", started_at=now - 10.0, framework="test")
    assert run is not None
    keito.end_run(run, ended_at=now - 4.0)
    (row,) = ledger.sessions()
    assert row["active_seconds"] == pytest.approx(6.0, abs=1e-6)
    assert row["started_at"] == pytest.approx(now - 10.0, abs=1e-6)


def test_event_times_are_clamped_to_now_and_to_the_runs_start(ledger: Spool) -> None:
    future = keito.begin_run("future-start", started_at=time.time() + 3600, framework="test")
    assert future is not None
    keito.end_run(future, ended_at=time.time() + 7200)
    backwards = keito.begin_run("end-before-start", framework="test")
    assert backwards is not None
    backwards.session.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)  # stored
    keito.end_run(backwards, ended_at=time.time() - 3600)
    rows = {r["session_id"]: r for r in ledger.sessions()}
    assert 0 <= rows["future-start"]["active_seconds"] < 60  # nothing is billed ahead of the clock
    assert rows["end-before-start"]["active_seconds"] == 0


@pytest.mark.parametrize("bad", [0.0, -1e18, float("-inf"), float("nan"), float("inf")])
def test_a_bad_event_time_never_bills_days_of_work(ledger: Spool, bad: float) -> None:
    run = keito.begin_run(f"bad-{bad}", started_at=bad, framework="test")
    assert run is not None
    run.session.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)
    keito.end_run(run, ended_at=bad if bad != 0.0 else None)
    (row,) = ledger.sessions()
    # At most a day before the session opened (MAX_BACKDATE, the age at which the sweep closes a
    # run anyway); a value that is not a finite number is ignored.
    assert row["active_seconds"] <= 86_400.0 + 60
    if bad not in (0.0, -1e18):
        assert row["active_seconds"] < 60


def test_new_session_ids_are_uuid4_text() -> None:
    import uuid

    from keito_instrument._registry import new_session_id

    ids = [new_session_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
