"""Carry the keito session into threads: the patches `instrument()` installs, and the hold that
keeps a session open while work it started still runs in another thread.

Only keito's own context variables travel (the current session and the framework-call mark), read
at `submit()` or `Thread.start()` and set around the work in the other thread, then reset. The rest
of the caller's context does not follow: a host whose other context variables stay per thread
today sees no change.

Threading contract: every patched method runs on the caller's thread and does O(1) work; nothing
here raises into the host (a failure only means the work runs as it would uninstrumented).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from ... import _api
from ..._config import get_settings
from ..._guard import guard
from ..._registry import current
from ..._session import Run, Session
from .._kernel import _framework_call

_MISSING = object()
_CAPTURE = guard("threading capture")
_RESTORE = guard("threading restore")


class Hold:
    """The work a session has outstanding in other threads: one run of the session spans it.

    The first piece of work opens the run and the last one to finish ends it, so the session
    (which ends with its last run) stays open while its work runs elsewhere, and its billed time
    (the union of its runs) covers that work with two journal lines per burst, not per task.
    """

    __slots__ = ("count", "run", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.count = 1
        self.run: Run | None = None


_holds: dict[int, Hold] = {}  # id(session) -> its hold; the hold keeps the session (and so its id) alive
_holds_lock = threading.Lock()


def acquire(session: Session) -> Hold | None:
    """Count one more piece of outstanding work in `session`; None if it has ended."""
    key = id(session)
    with _holds_lock:
        hold = _holds.get(key)
        if hold is not None:
            hold.count += 1
            return hold
        hold = _holds[key] = Hold(session)
    # The journal write happens outside the lock. A second acquirer may take this hold before
    # the run exists; the count cannot reach 0 before this returns (our own count is released
    # only after the work it guards, which has not been handed over yet), so the run is set first.
    hold.run = session.begin_run(get_settings().max_open_runs)
    if hold.run is None:  # the session ended meanwhile
        release(hold)
        return None
    return hold


def release(hold: Hold) -> None:
    """One piece of `hold`'s work is done; the last one ends its run (and maybe the session)."""
    with _holds_lock:
        hold.count -= 1
        if hold.count > 0:
            return
        if _holds.get(id(hold.session)) is hold:
            del _holds[id(hold.session)]
    if hold.run is not None:
        _api.end_run(hold.run)


def outstanding() -> int:
    """How many sessions have work outstanding in other threads (for tests and diagnostics)."""
    return len(_holds)


class Carried:
    """A callable run in another thread with the submitter's session current."""

    __slots__ = ("fn", "hold", "mark", "session")

    def __init__(self, fn: Callable[..., Any], session: Session | None, mark: str | None, hold: Hold | None) -> None:
        self.fn, self.session, self.mark, self.hold = fn, session, mark, hold

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tokens = _enter(self.session, self.mark)
        try:
            return self.fn(*args, **kwargs)
        finally:
            _leave(tokens)
            self.done()

    def done(self, _future: object = None) -> None:
        """Release the hold once (after the work, or when its future is cancelled unrun)."""
        hold, self.hold = self.hold, None
        if hold is not None:
            with _RESTORE:
                release(hold)


def _enter(session: Session | None, mark: str | None) -> tuple[Any, Any] | None:
    with _RESTORE:
        return current.set(session), _framework_call.set(mark)
    return None


def _leave(tokens: tuple[Any, Any] | None) -> None:
    if tokens is None:
        return
    with _RESTORE:
        for var, token in ((current, tokens[0]), (_framework_call, tokens[1])):
            with suppress(ValueError):  # (the work switched contexts itself: leave it as it left it)
                var.reset(token)  # type: ignore[attr-defined]


def _captured() -> tuple[Session | None, str | None] | None:
    """The caller's session (if open) and framework mark; None when there is nothing to carry."""
    session, mark = current.get(), _framework_call.get()
    if session is not None and session.ended:
        session = None
    if session is None and mark is None:
        return None
    return session, mark


# -- ThreadPoolExecutor.submit (and so map and loop.run_in_executor) ----------------------------
_original_submit: Callable[..., Future[Any]] = ThreadPoolExecutor.submit
_original_start: Callable[[threading.Thread], None] = threading.Thread.start
active = False  # checked by the patches: off means pass through (when another patch sits on ours)


def submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
    """`ThreadPoolExecutor.submit`, carrying the caller's keito session to the work."""
    if not active:
        return _original_submit(self, fn, *args, **kwargs)
    carried: Carried | None = None
    with _CAPTURE:
        found = _captured()
        if found is not None:
            session, mark = found
            carried = Carried(fn, session, mark, acquire(session) if session is not None else None)
    if carried is None:
        return _original_submit(self, fn, *args, **kwargs)
    try:
        future = _original_submit(self, carried, *args, **kwargs)
    except BaseException:  # (shut down, or a subclass refused it): nothing will run, nothing held
        carried.done()
        raise
    if carried.hold is not None:
        with _CAPTURE:
            future.add_done_callback(carried.done)  # a future cancelled before it ran
    return future


# -- threading.Thread.start ---------------------------------------------------------------------
def start(self: threading.Thread) -> None:
    """`Thread.start`, carrying the caller's keito session into the thread's `run()`."""
    if not active:
        return _original_start(self)
    carried: _ThreadRun | None = None
    with _CAPTURE:
        carried = _carry_thread(self)
    try:
        return _original_start(self)
    except BaseException:  # (started twice, or no thread could be created): undo, as it was
        if carried is not None:
            carried.undo()
        raise


def _carry_thread(thread: threading.Thread) -> _ThreadRun | None:
    found = _captured()
    if found is None or _is_pool_worker(thread):
        return None
    session, mark = found
    carried = _ThreadRun(thread, session, mark)
    thread.run = carried  # type: ignore[method-assign]  # the instance's run(), whatever class defines it
    # A daemon thread is one the program does not wait for (a library's background helper): it
    # bills to the session while the session is open, but does not hold it open.
    if session is not None and not thread.daemon:
        carried.hold = acquire(session)
    return carried


def _is_pool_worker(thread: threading.Thread) -> bool:
    # An executor's (or multiprocessing.pool's) worker thread serves every later submitter, each
    # with its own session (carried by `submit`): it must not inherit the first one's.
    target = getattr(thread, "_target", None)
    if target is None:
        return False
    for module, name in (("concurrent.futures.thread", "_worker"), ("multiprocessing.pool", "worker")):
        loaded = sys.modules.get(module)
        if loaded is not None and target is getattr(loaded, name, None):
            return True
    return False


class _ThreadRun:
    """Stands in for a thread's `run` (as an instance attribute) while the thread runs."""

    __slots__ = ("hold", "inner", "mark", "prior", "session", "thread")

    def __init__(self, thread: threading.Thread, session: Session | None, mark: str | None) -> None:
        self.thread, self.session, self.mark = thread, session, mark
        self.prior = thread.__dict__.get("run", _MISSING)
        self.inner: Callable[[], None] = thread.run
        self.hold: Hold | None = None

    def __call__(self) -> None:
        tokens = _enter(self.session, self.mark)
        try:
            self.inner()
        finally:
            _leave(tokens)
            self.undo()

    def undo(self) -> None:
        """Put the thread's own `run` back and release the hold (once)."""
        with _RESTORE:
            if self.thread.__dict__.get("run") is self:
                if self.prior is _MISSING:
                    del self.thread.__dict__["run"]
                else:
                    self.thread.__dict__["run"] = self.prior
            hold, self.hold = self.hold, None
            if hold is not None:
                release(hold)


def install() -> bool:
    """Patch `ThreadPoolExecutor.submit` and `Thread.start` (where they are still the stdlib's)."""
    global active
    if ThreadPoolExecutor.submit is _original_submit:
        ThreadPoolExecutor.submit = submit  # type: ignore[method-assign,assignment]
    if threading.Thread.start is _original_start:
        threading.Thread.start = start  # type: ignore[method-assign]
    active = True
    return True


def remove(_handle: object) -> None:
    """Undo `install`; a patch another library put on top of ours stays, ours then passes through."""
    global active
    active = False
    if ThreadPoolExecutor.submit is submit:
        ThreadPoolExecutor.submit = _original_submit  # type: ignore[method-assign]
    if threading.Thread.start is start:
        threading.Thread.start = _original_start  # type: ignore[method-assign,assignment]
