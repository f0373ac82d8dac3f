"""Open sessions: lookup by id, joining rules, bounded size and age, idle closing, fork safety.

Session-id resolution (DESIGN.md): an explicit id > the enclosing open session (a context
variable, so it follows threads started with `contextvars.copy_context()` and asyncio tasks) >
a framework-native id passed by the adapter > a new UUID4.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar

from . import _forksafe
from ._config import get_settings
from ._forksafe import reset_in_child
from ._guard import guard
from ._session import Run, Session, SessionOptions, SessionSnapshot

current: ContextVar[Session | None] = ContextVar("keito_instrument_session", default=None)

MAX_SESSION_ID = 200


# The RFC 4122 variant (0b10) in the high bits of the 17th hex digit, the rest kept random.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}
_OPEN, _END = guard("session open"), guard("session end")  # (a guard holds only its name: shared)


# Session ids come from a generator seeded from os.urandom, reseeded in every forked child:
# os.urandom itself releases the GIL on every call, and a host thread that gives the GIL up while
# the billing or delivery thread wants it may wait milliseconds to get it back. 128 bits from a
# seeded Mersenne Twister per process are as unique as uuid4 needs (never a secret: ids are not
# credentials); an own instance, because a user's `random.seed(42)` must not make them repeat.
# The clock (in ns) is mixed in too: processes restored from one memory snapshot (Lambda
# SnapStart, CRIU) share the generator's state, never the instant of every call.
_rng = random.Random(os.urandom(32))
_MIX = 0x9E3779B97F4A7C15F39CC0605CEDC835  # (an odd 128-bit constant: spreads the clock's bits)
_MASK = (1 << 128) - 1


def _reseed_in_child() -> None:
    _rng.seed(os.urandom(32))


_forksafe.in_child(_reseed_in_child)


def new_session_id() -> str:
    """A fresh random session id: a UUID4's text, as `str(uuid.uuid4())` writes it (at half its cost)."""
    h = f"{(_rng.getrandbits(128) ^ (time.time_ns() * _MIX)) & _MASK:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class Registry:
    """The process-wide table of open sessions. Every method is thread-safe and O(1) amortised."""

    def __init__(self, on_end: Callable[[SessionSnapshot], None],
                 on_open: Callable[[], None] | None = None,
                 new_session: Callable[[str, SessionOptions, str], Session] | None = None) -> None:
        self._on_end = on_end
        self._on_open = on_open
        self._new_session = new_session or Session
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Session] = OrderedDict()
        self._last_sweep = 0.0
        self._sweeper: threading.Thread | None = None
        self._wake = threading.Event()

    # -- lookup and opening ---------------------------------------------------------------------
    def get(self, session_id: str) -> Session | None:
        """The open session with this id, if any."""
        return self._open.get(str(session_id)[:MAX_SESSION_ID])

    def open_sessions(self) -> list[Session]:
        """A copy of the list of open sessions, oldest first."""
        with self._lock:
            return list(self._open.values())

    def resolve(
        self,
        session_id: str | None,
        options: SessionOptions,
        *,
        close: str = "runs",
        join_current: bool = True,
    ) -> Session:
        """The session a new root run belongs to, created if needed."""
        if session_id is None and join_current:
            enclosing = current.get()
            if enclosing is not None and not enclosing.ended:
                return enclosing
        if session_id is not None:
            session_id = str(session_id)[:MAX_SESSION_ID]
            found = self._open.get(session_id)
            if found is not None and not found.ended:
                return found
        _forksafe.check_pid()  # (a child forked without Python's hooks: its resets run first)
        # Built (and its opening journalled) before it is published in the table, so no other
        # thread can record into it before its opening event is written; no lock is held meanwhile.
        session = self._new_session(session_id or new_session_id(), options, close)
        with self._lock:
            if session_id is not None:
                found = self._open.get(session_id)
                if found is not None and not found.ended:
                    session._journal = None  # never used: the ledger ignores a session with no activity
                    return found
            self._open[session.session_id] = session
            cap = get_settings().max_open_sessions
            while len(self._open) > cap:
                # Memory only: the session's state is in the journal and the ledger, so a later
                # turn with the same id continues the same ledger session.
                self._open.popitem(last=False)
        if self._on_open is not None:
            with _OPEN:
                self._on_open()
        if close == "idle":
            self._ensure_sweeper()
        self.maybe_sweep()
        return session

    def begin_run(
        self,
        session_id: str | None,
        options: SessionOptions,
        *,
        close: str = "runs",
        join_current: bool = True,
        started_at: float | None = None,
    ) -> Run | None:
        """Open a root run in the resolved session (retrying once if it ended meanwhile)."""
        max_open = get_settings().max_open_runs
        if session_id is None and join_current:  # (the common case, as `resolve` begins)
            enclosing = current.get()
            if enclosing is not None and not enclosing.ended:
                run = enclosing.begin_run(max_open, started_at)
                if run is not None:
                    return run
        for _ in range(2):
            session = self.resolve(session_id, options, close=close, join_current=join_current)
            run = session.begin_run(max_open, started_at)
            if run is not None:
                return run
        return None

    def end_run(self, run: Run, ended_at: float | None = None) -> None:
        """Close a run; the session ends if that was its last run and it closes with its runs."""
        snapshot = run.session.end_run(run, ended_at)
        if snapshot is not None:
            self._forget(run.session)
            with _END:
                self._on_end(snapshot)

    def _forget(self, session: Session) -> None:
        with self._lock:
            if self._open.get(session.session_id) is session:  # a newer session may reuse the id
                del self._open[session.session_id]

    def end(self, session: Session, reason: str) -> None:
        """End a session now (its open runs are closed at the last activity seen)."""
        self._forget(session)
        self.finish(session, reason)

    def end_session(self, session_id: str, reason: str = "explicit") -> bool:
        """End the open session with this id; False if none is open."""
        session = self.get(session_id)
        if session is None:
            return False
        self.end(session, reason)
        return True

    def finish(self, session: Session, reason: str) -> None:
        """End a session that is not (or no longer) in the table."""
        snapshot = session.finish(reason)
        if snapshot is not None:
            with guard("session end"):
                self._on_end(snapshot)

    def close_all(self, reason: str, named: bool = True) -> int:
        """End every open session (`named=False`: only those that end with their runs; a named
        conversation is left to the ledger, where another process may continue it). Returns how
        many ended."""
        sessions = [s for s in self.open_sessions() if named or s.close == "runs"]
        for session in sessions:
            self.end(session, reason)
        return len(sessions)

    # -- bounded age and idle closing -----------------------------------------------------------
    def maybe_sweep(self) -> None:
        """Sweep at most once a second, piggybacking on API activity."""
        now = time.monotonic()
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            self.sweep(now)

    def sweep(self, now: float | None = None) -> int:
        """End idle sessions and sessions whose runs are older than `max_run_age`."""
        now = time.monotonic() if now is None else now
        settings = get_settings()
        due: list[tuple[Session, str]] = []
        for session in self.open_sessions():
            timeout = session.options.idle_timeout or settings.idle_timeout
            if session.oldest_run_age(now) > settings.max_run_age:
                due.append((session, "run_age_exceeded"))
            elif not session.open_runs and session.age(now) > settings.max_session_age:
                # A session kept alive by steady activity still reaches the ledger (and the bill)
                # at least this often; the next activity with the same id opens a new one.
                due.append((session, "max_session_age"))
            elif session.close == "idle" and session.idle_for(now) > timeout:
                due.append((session, "forget"))  # the ledger ends it, from its last activity anywhere
            elif session.close == "runs" and not session.open_runs and session.idle_for(now) > timeout:
                due.append((session, "idle_timeout"))  # opened by record_* alone and never closed
        for session, reason in due:
            if reason == "forget":
                self._forget(session)
            else:
                self.end(session, reason)
        return len(due)

    def _ensure_sweeper(self) -> None:
        with self._lock:
            if self._sweeper is not None and self._sweeper.is_alive():
                self._wake.set()  # re-read the idle timeout now
                return
            ref = weakref.ref(self)
            self._sweeper = threading.Thread(
                target=_sweep_loop, args=(ref, self._wake), name="keito-instrument-sweeper", daemon=True
            )
            self._sweeper.start()

    def _after_fork_in_child(self) -> None:
        # The parent owns (and will bill) every session open at fork time; the child must not.
        for session in self._open.values():
            session._after_fork_in_child()
        self._lock = threading.Lock()
        self._open = OrderedDict()
        self._sweeper = None
        self._wake = threading.Event()


def _sweep_loop(ref: weakref.ReferenceType[Registry], wake: threading.Event) -> None:
    while True:
        registry = ref()
        if registry is None:
            return
        # At most a second between sweeps, so a shorter idle_timeout configured later is honoured
        # promptly; a sweep is one pass over the open sessions.
        interval = max(0.05, min(1.0, get_settings().idle_timeout / 4))
        with guard("idle sweep"):
            registry.sweep()
            with registry._lock:  # the same lock _ensure_sweeper holds: no idle session is orphaned
                if not any(s.close == "idle" for s in registry._open.values()):
                    registry._sweeper = None
                    return
        del registry
        wake.wait(interval)
        wake.clear()




def make_registry(on_end: Callable[[SessionSnapshot], None],
                  on_open: Callable[[], None] | None = None,
                  new_session: Callable[[str, SessionOptions, str], Session] | None = None) -> Registry:
    """Create a registry and hook it to fork."""
    registry = Registry(on_end, on_open, new_session)
    reset_in_child(registry)
    return registry
