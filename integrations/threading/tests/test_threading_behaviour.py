"""The integration never changes what the host sees: results, exceptions, threads' names and
daemon flags, subclasses' own run(); it is reversible and never raises into the host."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import threading as keito_threading
from keito_instrument.integrations.threading import _carry

STDLIB_SUBMIT = _carry._original_submit
STDLIB_START = _carry._original_start


def sid() -> str | None:
    found = keito.current_session()
    return found.session_id if found is not None else None


class Boom(Exception):
    pass


def test_results_and_exceptions_are_unchanged(instrumented: None) -> None:
    error = Boom("x")

    def fail() -> None:
        raise error

    with keito.session("s"), ThreadPoolExecutor(2) as pool:
        assert pool.submit(lambda a, b=0: a + b, 1, b=2).result() == 3
        assert pool.submit(fail).exception() is error
        with pytest.raises(Boom) as caught:
            list(pool.map(lambda _: fail(), range(2)))
        assert caught.value is error


def test_thread_exceptions_reach_the_excepthook_unchanged(instrumented: None, monkeypatch: pytest.MonkeyPatch) -> None:
    hooked: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args.exc_value))
    error = Boom("in thread")

    def fail() -> None:
        raise error

    with keito.session("s"):
        t = threading.Thread(target=fail)
        t.start()
        t.join()
    assert hooked == [error]
    assert _carry.outstanding() == 0


def test_thread_names_daemon_flags_and_run_are_unchanged(instrumented: None) -> None:
    with keito.session("s"):
        threads = [threading.Thread(target=sid, name="worker-a"), threading.Thread(target=sid, daemon=True)]
        names = [t.name for t in threads]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [t.name for t in threads] == names and [t.daemon for t in threads] == [False, True]
    assert all("run" not in t.__dict__ for t in threads)  # the instance's own run() is back
    assert all(type(t).run is threading.Thread.run for t in threads)


def test_a_subclass_with_its_own_run_is_carried(instrumented: None) -> None:
    class Worker(threading.Thread):
        def __init__(self) -> None:
            super().__init__()
            self.seen: str | None = "not run"

        def run(self) -> None:
            self.seen = sid()

    with keito.session("sub"):
        w = Worker()
        w.start()
        w.join()
    assert w.seen == "sub"


def test_a_run_set_on_the_instance_is_kept(instrumented: None) -> None:
    box: list[str | None] = []
    t = threading.Thread()
    own: Callable[[], None] = lambda: box.append(sid())  # noqa: E731
    t.run = own  # type: ignore[method-assign]
    with keito.session("inst"):
        t.start()
        t.join()
    assert box == ["inst"] and t.__dict__["run"] is own


def test_starting_a_thread_twice_raises_as_before_and_holds_nothing(ledger: Spool, instrumented: None) -> None:
    with keito.session("twice"):
        t = threading.Thread(target=sid)
        t.start()
        t.join()
        with pytest.raises(RuntimeError, match="threads can only be started once"):
            t.start()
    assert _carry.outstanding() == 0
    assert [r["session_id"] for r in ledger.sessions()] == ["twice"]


def test_submit_to_a_shut_down_pool_raises_as_before_and_holds_nothing(ledger: Spool, instrumented: None) -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    with keito.session("closed"), pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(sid)
    assert _carry.outstanding() == 0
    assert [r["session_id"] for r in ledger.sessions()] == ["closed"]


def test_a_thread_whose_run_cannot_be_replaced_still_runs(instrumented: None) -> None:
    # A run() that is a read-only property: nothing to carry it with, so the thread runs as it would
    # uninstrumented and the failure stays inside keito-instrument (reported by its guard).
    ran: list[bool] = []

    class Odd(threading.Thread):
        @property
        def run(self) -> Callable[[], None]:  # type: ignore[override]
            return lambda: ran.append(True)

    with keito.session("odd"):
        t = Odd()
        t.start()
        t.join()
    assert ran == [True]


test_a_thread_whose_run_cannot_be_replaced_still_runs = pytest.mark.guard_errors_expected(
    test_a_thread_whose_run_cannot_be_replaced_still_runs
)


def test_instrument_is_reversible_and_idempotent() -> None:
    keito_threading.uninstrument()
    assert ThreadPoolExecutor.submit is STDLIB_SUBMIT and threading.Thread.start is STDLIB_START
    keito_threading.instrument()
    keito_threading.instrument()
    try:
        assert keito_threading.is_instrumented()
        assert ThreadPoolExecutor.submit is _carry.submit and threading.Thread.start is _carry.start
    finally:
        keito_threading.uninstrument()
    assert not keito_threading.is_instrumented()
    assert ThreadPoolExecutor.submit is STDLIB_SUBMIT and threading.Thread.start is STDLIB_START
    with keito.session("off"), ThreadPoolExecutor(1) as pool:
        assert pool.submit(sid).result() is None


def test_a_patch_put_on_top_of_ours_stays_and_ours_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    keito_threading.instrument()
    ours = ThreadPoolExecutor.submit
    calls: list[int] = []

    def theirs(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        calls.append(1)
        return ours(self, fn, *args, **kwargs)

    monkeypatch.setattr(ThreadPoolExecutor, "submit", theirs)
    with keito.session("layered"), ThreadPoolExecutor(1) as pool:
        assert pool.submit(sid).result() == "layered"
        keito_threading.uninstrument()
        assert ThreadPoolExecutor.submit is theirs  # another library's patch is not removed
        assert pool.submit(sid).result() is None  # ours is now a pass-through
    assert calls == [1, 1]
