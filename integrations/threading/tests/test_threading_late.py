"""Work still running when its session's function returns: the session waits for it, and calls
made after an explicit end are billed as a continuation of the session, never as strays."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations.threading import _carry


def llm() -> str | None:
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100, output_tokens=10)
    found = keito.current_session()
    return found.session_id if found is not None else None


def late_call(go: threading.Event, ran: float) -> str | None:
    go.wait(5.0)
    time.sleep(ran)
    return llm()


def test_submitted_work_outliving_the_function_keeps_its_session_open(ledger: Spool, instrumented: None) -> None:
    go = threading.Event()
    pool = ThreadPoolExecutor(1)

    @keito.track_agent(session_id="late-1")
    def agent() -> Future[str | None]:
        llm()
        return pool.submit(late_call, go, 0.2)

    future = agent()
    assert keito.get_session("late-1") is not None  # still open: its work is running
    assert ledger.sessions() == []
    go.set()
    assert future.result(5.0) == "late-1"
    pool.shutdown()
    (row,) = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("late-1", 2)
    assert row["active_seconds"] >= 0.2  # the work's time after the function returned is billed
    assert _carry.outstanding() == 0


def test_a_thread_outliving_the_function_keeps_its_session_open(ledger: Spool, instrumented: None) -> None:
    go = threading.Event()
    box: list[str | None] = []

    @keito.track_agent(session_id="late-2")
    def agent() -> threading.Thread:
        t = threading.Thread(target=lambda: box.append(late_call(go, 0.1)))
        t.start()
        return t

    t = agent()
    assert keito.get_session("late-2") is not None
    go.set()
    t.join(5.0)
    (row,) = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], box) == ("late-2", 1, ["late-2"])
    assert row["active_seconds"] >= 0.1


def test_a_daemon_thread_carries_the_session_but_does_not_hold_it(ledger: Spool, instrumented: None) -> None:
    go, during = threading.Event(), threading.Event()
    box: list[str | None] = []

    def helper() -> None:
        box.append(llm())  # while the session is open: billed to it
        during.set()
        go.wait(5.0)
        box.append(llm())  # after it ended: a continuation under the same id

    @keito.track_agent(session_id="daemon-1")
    def agent() -> threading.Thread:
        t = threading.Thread(target=helper, daemon=True)
        t.start()
        during.wait(5.0)
        return t

    t = agent()
    assert keito.get_session("daemon-1") is None  # ended with the function
    go.set()
    t.join(5.0)
    rows = [r for r in ledger.sessions() if r["session_id"] == "daemon-1"]
    assert sorted(r["llm_calls"] for r in rows) == [1, 1]
    assert box == ["daemon-1", None]  # (the ended session is no longer current)


def test_calls_after_an_explicit_end_bill_as_a_continuation(ledger: Spool, instrumented: None) -> None:
    go = threading.Event()
    with ThreadPoolExecutor(1) as pool, keito.session("explicit-1", agent_id="cont-bot"):
        llm()
        future = pool.submit(late_call, go, 0.0)
        assert keito.end_session("explicit-1")  # ended by the user while its work runs
        go.set()
        future.result(5.0)
    rows = [r for r in ledger.sessions() if r["session_id"] == "explicit-1"]
    # The session as it was at its end, and the late call as a continuation: same id, same agent.
    assert sorted(r["llm_calls"] for r in rows) == [1, 1]
    assert {r["agent_id"] for r in rows} == {"cont-bot"}
    assert len(ledger.sessions()) == 2  # no stray under a random id


def test_a_future_cancelled_before_it_ran_releases_its_session(ledger: Spool, instrumented: None) -> None:
    go = threading.Event()
    pool = ThreadPoolExecutor(1)
    with keito.session("cancel-1"):
        first = pool.submit(late_call, go, 0.0)
        queued = pool.submit(llm)
        assert queued.cancel()
    go.set()
    first.result(5.0)
    pool.shutdown()
    (row,) = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("cancel-1", 1)
    assert _carry.outstanding() == 0


def test_shutdown_with_cancel_futures_releases_its_session(ledger: Spool, instrumented: None) -> None:
    go = threading.Event()
    pool = ThreadPoolExecutor(1)
    with keito.session("cancel-2"):
        first = pool.submit(late_call, go, 0.0)
        rest = [pool.submit(llm) for _ in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)
    go.set()
    first.result(5.0)
    assert all(f.cancelled() for f in rest)
    (row,) = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("cancel-2", 1)
    assert _carry.outstanding() == 0


def test_parallel_work_is_billed_once(ledger: Spool, instrumented: None) -> None:
    # Four tasks of 0.2 s each in parallel after the function returned: 0.2 s, not 0.8 s.
    with ThreadPoolExecutor(4) as pool:

        @keito.track_agent(session_id="par-1")
        def agent() -> list[Future[None]]:
            return [pool.submit(time.sleep, 0.2) for _ in range(4)]

        for f in agent():
            f.result(5.0)
    (row,) = ledger.sessions()
    assert 0.2 <= row["active_seconds"] < 0.6
