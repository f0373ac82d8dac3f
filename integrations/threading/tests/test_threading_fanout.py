"""A session's work fanned out to executors, threads and run_in_executor bills to that session."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import threading as keito_threading
from keito_instrument.integrations.threading import _carry


def llm() -> str | None:
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100, output_tokens=10)
    found = keito.current_session()
    return found.session_id if found is not None else None


@keito.track_agent(agent_id="fanout-bot")
def fan_out() -> list[str | None]:
    """16 calls: 6 through submit, 6 through map, 2 threads, 2 through run_in_executor."""
    seen: list[str | None] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(llm) for _ in range(6)]
        seen += list(pool.map(lambda _: llm(), range(6)))
        seen += [f.result() for f in futures]
    threads = [threading.Thread(target=lambda: seen.append(llm())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def in_executor() -> list[str | None]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(loop.run_in_executor(None, llm), loop.run_in_executor(None, llm)))

    seen += asyncio.run(in_executor())
    return seen


def test_every_call_bills_to_the_session_after_keito_instrument(
    ledger: Spool, uninstrumented: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keito_instrument import integrations

    assert integrations.ADAPTERS["threading"] == "threading"  # on by default with keito.instrument()
    # (this test's integration only: the other frameworks' imports are their own tests' business)
    monkeypatch.setattr(integrations, "ADAPTERS", {"threading": "threading"})
    assert keito.instrument() == ["threading"]
    try:
        seen = fan_out()
    finally:
        keito_threading.uninstrument()
    sessions = ledger.sessions()
    assert len(sessions) == 1, sessions
    (row,) = sessions
    assert (row["llm_calls"], row["input_tokens"], row["agent_id"]) == (16, 1600, "fanout-bot")
    assert seen == [row["session_id"]] * 16
    assert _carry.outstanding() == 0


def test_without_the_integration_thread_calls_are_strays(ledger: Spool, uninstrumented: None) -> None:
    # Today's behaviour without instrument(): only the session's own thread bills to it; each
    # call made in an executor or a thread is a one-off expense under a random session id.
    seen = fan_out()
    assert seen == [None] * 16
    sessions = ledger.sessions()
    agent_rows = [s for s in sessions if s["agent_id"] == "fanout-bot"]
    assert len(agent_rows) == 1 and agent_rows[0]["llm_calls"] == 0
    assert len(sessions) == 17


def test_asyncio_to_thread_still_bills_to_the_session(ledger: Spool, instrumented: None) -> None:
    # to_thread copies the whole context itself, then submits: the session is set twice, once.
    @keito.track_agent
    async def work() -> str | None:
        return await asyncio.to_thread(llm)

    sid = asyncio.run(work())
    (row,) = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == (sid, 1)


def test_a_session_block_fans_out_too(ledger: Spool, instrumented: None) -> None:
    with keito.session("block-1") as s, ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _: llm(), range(4))) == [s.session_id] * 4
    (row,) = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("block-1", 4)


def test_work_outside_any_session_is_billed_as_before(ledger: Spool, instrumented: None) -> None:
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _: llm(), range(2))) == [None, None]
    assert len(ledger.sessions()) == 2  # two one-off calls, as without the integration


def test_pool_workers_do_not_inherit_the_session_that_started_them(ledger: Spool, instrumented: None) -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        with keito.session("first"):
            assert pool.submit(llm).result() == "first"  # the worker thread starts here
        assert pool.submit(llm).result() is None  # a later submitter with no session
        with keito.session("second"):
            assert pool.submit(llm).result() == "second"
    finally:
        pool.shutdown()
    counts = {r["session_id"]: r["llm_calls"] for r in ledger.sessions() if r["session_id"] in ("first", "second")}
    assert counts == {"first": 1, "second": 1}


def test_only_keito_context_travels(instrumented: None) -> None:
    # The decision: keito's context variables follow the work; the host's others do not (as
    # without the integration), so no other library sees its per-thread state change.
    import contextvars

    other: contextvars.ContextVar[str] = contextvars.ContextVar("host_var", default="unset")
    other.set("caller")
    with keito.session("ctx"), ThreadPoolExecutor(1) as pool:
        got: Any = pool.submit(lambda: (other.get(), llm())).result()
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append((other.get(), llm())))
        t.start()
        t.join()
    assert got == ("unset", "ctx") and box == [("unset", "ctx")]


def test_work_leaves_the_worker_thread_as_it_found_it(instrumented: None) -> None:
    with ThreadPoolExecutor(1) as pool:
        with keito.session("s"):
            pool.submit(llm).result()
        assert pool.submit(keito.current_session).result() is None


@pytest.mark.parametrize("how", ["submit", "thread"])
def test_framework_mark_travels(how: str, instrumented: None) -> None:
    from keito_instrument.integrations import _kernel

    with _kernel.framework_call("langchain"):
        if how == "submit":
            with ThreadPoolExecutor(1) as pool:
                found = pool.submit(_kernel.in_framework_call).result()
        else:
            box: list[str | None] = []
            t = threading.Thread(target=lambda: box.append(_kernel.in_framework_call()))
            t.start()
            t.join()
            found = box[0]
    assert found == "langchain"
