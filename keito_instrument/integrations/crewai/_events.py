"""Framework-free assembly of CrewAI events into keito runs (one run per kickoff).

The CrewAI adapter turns each bus event into a plain `CrewEvent` and feeds it to `KickoffAssembler`;
nothing here imports crewai, so the logic is tested with hand-made events in any order. The
event and its kinds (`_crew_event`), what an event records in a session (`_record`) and the token
reader (`_tokens`) live beside it and are importable from here too.

The bus hands events to a thread pool, so they arrive out of order: an LLM call can complete
before its start is seen, and a kickoff can end before the completions of its last calls are
handled (CrewAI drains its bus before `crew_kickoff_completed`, but not before
`crew_kickoff_failed` nor before the end of an `Agent.kickoff`). Everything is therefore keyed by
ids: a kickoff by the `event_id` of its start event (`CrewEvent.key`), a call by its `call_id`, a
tool use by its `started_event_id`. An end that is not `settled` (events emitted before it may
still be unhandled) waits for `settled(key)`, which the adapter calls once the bus has drained;
a kickoff also waits for the completions of its calls still open. `settle_timeout` bounds both.

Time is billed by the events' own times (`CrewEvent.at`, the bus event's timestamp), never by when
a handler ran: a kickoff's run starts at the earliest event time seen for it (its start event's,
once that is handled) and ends at its end event's time, so neither a busy handler pool nor the
waits above are billed as work.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from ..._config import get_settings
from ..._forksafe import reset_in_child
from ..._metadata import text
from ...adapters import Run, begin_run, end_run, get_session, guard
from .._runs import OpenRuns, Recent
from ._crew_event import (
    ENDING,
    KICKOFF_COMPLETED,
    KICKOFF_FAILED,
    KICKOFF_STARTED,
    LLM_COMPLETED,
    LLM_FAILED,
    LLM_STARTED,
    TASK_FAILED,
    TOOL_FAILED,
    TOOL_FINISHED,
    CrewEvent,
)
from ._record import MAX_LABEL, record, record_call
from ._tokens import Tokens, tokens_from_usage

__all__ = [
    "ENDING",
    "KICKOFF_COMPLETED",
    "KICKOFF_FAILED",
    "KICKOFF_STARTED",
    "LLM_COMPLETED",
    "LLM_FAILED",
    "LLM_STARTED",
    "MAX_FINISHED_KEYS",
    "MAX_IDS_PER_KICKOFF",
    "MAX_LABEL",
    "MAX_OPEN_KICKOFFS",
    "TASK_FAILED",
    "TOOL_FAILED",
    "TOOL_FINISHED",
    "CrewEvent",
    "KickoffAssembler",
    "Tokens",
    "tokens_from_usage",
]

_log = logging.getLogger("keito_instrument")

MAX_OPEN_KICKOFFS = 10_000  # beyond it the oldest kickoff is closed (billing what it spent)
MAX_FINISHED_KEYS = 4_096  # remembered so late events of a finished kickoff are not a new kickoff
MAX_IDS_PER_KICKOFF = 20_000
_TEXT_OR_NONE = (str, type(None))  # (`str | None` in an isinstance builds a union at every call)


def _text_ids(event: CrewEvent) -> CrewEvent:
    """The event with its ids as text (they key dicts and sets: an unhashable one would raise)."""
    key = text(event.key) or f"<{type(event.key).__name__}>"
    outer = None if event.outer is None else text(event.outer)
    item = None if event.item_id is None else text(event.item_id)
    return dataclasses.replace(event, key=key, outer=outer, item_id=item)


class _Kickoff:
    __slots__ = (
        "born",
        "done",
        "end_at",
        "end_error",
        "ending",
        "first_at",
        "open_calls",
        "run",
        "timer",
        "unsettled",
    )

    def __init__(self, run: Run | None, first_at: float | None) -> None:
        self.run = run
        self.born = time.monotonic()  # the open-kickoff table's age cap
        self.first_at = first_at  # the earliest event time seen (the run's start), if known
        self.end_at: float | None = None  # the end event's time
        self.open_calls: set[str] = set()
        self.done: set[str] = set()
        self.ending = False
        self.unsettled = False
        self.end_error: str | None = None
        self.timer: threading.Timer | None = None


class KickoffAssembler:
    """Turns a stream of `CrewEvent`s (any order, any thread) into keito runs and usage.

    Every method runs on the caller's thread (a CrewAI handler thread), takes one short lock and
    does O(1) work; the only I/O is the ledger write when a kickoff's session ends.

    Args:
        settle_timeout: How long a kickoff that has ended waits for the completions of its open
            LLM calls before its run is closed anyway.
        framework: The `framework` recorded on sessions the assembler opens.
        begin: Opens a run (defaults to `keito_instrument.adapters.begin_run`).
        on_unsettled: Called with a kickoff's key when its end is not settled; it must arrange
            for `settled(key)` to be called once earlier events are handled. By default the
            end is taken as settled after `linger` seconds.
        linger: The default wait for an unsettled end.
    """

    def __init__(
        self,
        settle_timeout: float = 5.0,
        framework: str = "crewai",
        begin: Callable[..., Run | None] = begin_run,
        on_unsettled: Callable[[str], None] | None = None,
        linger: float = 0.05,
    ) -> None:
        self.settle_timeout = settle_timeout
        self.on_unsettled = on_unsettled
        self.linger = linger
        self.framework = framework
        self._begin = begin
        self._lock = threading.Lock()
        self._open = _open_kickoffs()
        self._finished: Recent[str, None] = Recent(MAX_FINISHED_KEYS)
        self._idle = threading.Condition(self._lock)
        self._ending = 0  # kickoffs closed whose sessions are still being written
        self.late_events = 0  # events that arrived after their kickoff was closed (not billed)
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The parent bills its kickoffs; the child starts empty, with a lock no thread holds.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._open = _open_kickoffs()
        self._ending = 0

    # -- feeding ----------------------------------------------------------------------------------
    def feed(self, event: CrewEvent) -> None:
        """Apply one event. Never raises."""
        with guard(f"crewai {event.kind}"):
            if type(event.key) is not str or not isinstance(event.outer, _TEXT_OR_NONE) \
                    or not isinstance(event.item_id, _TEXT_OR_NONE):
                event = _text_ids(event)
            self._feed(event)

    def _feed(self, event: CrewEvent) -> None:
        to_end: list[_Kickoff] = []
        wait_settle = False
        with self._lock:
            kickoff = self._kickoff(event, to_end)
            if kickoff is None:
                self.late_events += 1
                _log.debug("keito-instrument: crewai %s after its kickoff ended; not billed", event.kind)
            else:
                self._backdate(event, kickoff)
                if event.kind in ENDING:
                    self._mark_end(event, kickoff)
                else:
                    self._apply(event, kickoff)  # (a bug in here must not keep the kickoff open)
                if kickoff.ending and not kickoff.open_calls and not kickoff.unsettled:
                    self._close(event.key, kickoff, to_end)
                elif event.kind in ENDING:
                    wait_settle = kickoff.unsettled
                    if not wait_settle or self.on_unsettled is None:
                        self._start_timer(event.key, kickoff)
        for done in to_end:  # outside the lock: ending a session writes to the ledger
            self._end(done)
        if wait_settle:
            if self.on_unsettled is not None:
                self.on_unsettled(event.key)
            else:
                timer = threading.Timer(self.linger, self.settled, (event.key,))
                timer.daemon = True
                timer.start()

    def settled(self, key: str) -> None:
        """Every event emitted before the end of kickoff `key` has now been handled."""
        with guard("crewai settled"):
            to_end: list[_Kickoff] = []
            with self._lock:
                kickoff = self._open.get(key)
                if kickoff is not None:
                    kickoff.unsettled = False
                    if kickoff.ending and not kickoff.open_calls:
                        self._close(key, kickoff, to_end)
                    elif kickoff.ending:
                        self._start_timer(key, kickoff)  # calls still open: wait, but not forever
            for done in to_end:
                self._end(done)

    def _start_timer(self, key: str, kickoff: _Kickoff) -> None:
        # Only kickoffs that end with calls still open (rare) cost a timer thread.
        if kickoff.timer is None:
            kickoff.timer = threading.Timer(self.settle_timeout, self._expire, (key,))
            kickoff.timer.daemon = True
            kickoff.timer.start()

    def _kickoff(self, event: CrewEvent, to_end: list[_Kickoff]) -> _Kickoff | None:
        kickoff = self._open.get(event.key)
        if kickoff is not None:
            return kickoff
        if event.key in self._finished:
            return None
        # The first event seen for a kickoff opens its run, whatever its kind: `Agent.kickoff`
        # does not wait for its start handlers, so a call may be handled before the start.
        # (Opening a run is O(1) in the core; rarely it also ends an evicted or idle session.)
        run = self._begin_run(event)
        first_at = event.at
        if first_at is None and run is not None:
            first_at = run.session.wall(run.start)  # an event without a time: when it was handled
        kickoff = _Kickoff(run, first_at)
        swept = self._open.add(event.key, kickoff)
        if swept:
            self._let_go(swept, to_end)
        return kickoff

    def _let_go(self, swept: list[tuple[str, _Kickoff]], to_end: list[_Kickoff]) -> None:
        """Deal with the kickoffs the open table gave back (oldest first).

        One beyond the count cap is closed now, billing what it spent. One older than
        `max_run_age` never ended; the core's own sweep ends its run (`run_age_exceeded`, billed
        up to its last activity), so it is only forgotten here: closing it now would bill the
        hours it sat idle.
        """
        now, max_age = time.monotonic(), self._open.max_age
        for key, old in swept:
            if now - old.born > max_age:
                _log.debug("keito-instrument: forgot a CrewAI kickoff open longer than max_run_age")
                self._forget(key, old)
            else:
                _log.warning("keito-instrument: too many open CrewAI kickoffs; closing the oldest")
                self._close(key, old, to_end, remove=False)

    def _begin_run(self, event: CrewEvent) -> Run | None:
        session_id = event.session_id
        if session_id is None and event.outer is not None:
            outer = self._open.get(event.outer)
            if outer is not None and outer.run is not None:
                session_id = outer.run.session_id  # a kickoff inside a kickoff joins its session
        caller = event.caller_session
        if session_id is None and caller is not None and get_session(caller) is not None:
            session_id = caller
        options = {"framework": self.framework, **event.options}
        return self._begin(session_id, join_current=False, started_at=event.at, **options)

    @staticmethod
    def _backdate(event: CrewEvent, kickoff: _Kickoff) -> None:
        """Start the kickoff's run at `event.at` if that is earlier than any event time seen.

        The first event handled opens the run, and it need not be the first one emitted (an
        `Agent.kickoff`'s start may be handled after its calls). The core cannot move a run's
        start, so a run starting at the earlier time is opened in the same session and the old
        one is closed at its own start (a zero-length interval, inside the new run's).
        """
        at, run = event.at, kickoff.run
        if at is None or (kickoff.first_at is not None and at >= kickoff.first_at):
            return
        kickoff.first_at = at
        if run is None:
            return
        earlier = run.session.begin_run(started_at=at)
        if earlier is None:  # the session has ended (e.g. `end_session()`): nothing to move
            return
        kickoff.run = earlier
        end_run(run, ended_at=run.session.wall(run.start))

    def _apply(self, event: CrewEvent, kickoff: _Kickoff) -> None:
        kind, item = event.kind, event.item_id
        if kind == LLM_STARTED:
            bounded = len(kickoff.open_calls) < MAX_IDS_PER_KICKOFF
            if item is not None and item not in kickoff.done and bounded:
                kickoff.open_calls.add(item)
            return
        if item is not None:
            if item in kickoff.done:
                return  # the same call or tool use reported twice
            kickoff.open_calls.discard(item)
            if len(kickoff.done) < MAX_IDS_PER_KICKOFF:
                kickoff.done.add(item)
        if kickoff.run is not None:
            record(event, kickoff.run.session)

    @staticmethod
    def _mark_end(event: CrewEvent, kickoff: _Kickoff) -> None:
        kickoff.ending = True
        kickoff.end_at = event.at
        kickoff.unsettled = not event.settled
        if event.kind == KICKOFF_FAILED:
            kickoff.end_error = event.error or "kickoff failed"

    record_call = staticmethod(record_call)  # count one completed LLM call in a session

    # -- closing ----------------------------------------------------------------------------------
    def _close(self, key: str, kickoff: _Kickoff, to_end: list[_Kickoff], remove: bool = True) -> None:
        if remove:
            self._open.pop(key)
        self._forget(key, kickoff)
        to_end.append(kickoff)
        self._ending += 1

    def _forget(self, key: str, kickoff: _Kickoff) -> None:
        # Its key is remembered, so its late events are not taken for a new kickoff.
        self._finished.remember(key, None)
        if kickoff.timer is not None:
            kickoff.timer.cancel()

    def _end(self, kickoff: _Kickoff) -> None:
        try:
            error = RuntimeError(kickoff.end_error) if kickoff.end_error is not None else None
            # Billed up to the end event's time, not to when the kickoff could be closed: waiting
            # for the bus to drain or for calls in flight is not work. (No end event, as when
            # closed by `close_all()` or evicted: now.)
            end_run(kickoff.run, error, ended_at=kickoff.end_at)
        finally:
            with self._lock:
                self._ending -= 1
                if not self._open and not self._ending:
                    self._idle.notify_all()

    def _expire(self, key: str) -> None:
        with guard("crewai settle timeout"):
            to_end: list[_Kickoff] = []
            with self._lock:
                kickoff = self._open.get(key)
                if kickoff is not None:
                    if kickoff.open_calls:
                        _log.debug("keito-instrument: %d CrewAI call(s) never ended", len(kickoff.open_calls))
                    self._close(key, kickoff, to_end)
            for done in to_end:
                self._end(done)

    def close_all(self) -> int:
        """Close every open kickoff now (used by `uninstrument()`); returns how many."""
        to_end: list[_Kickoff] = []
        with self._lock:
            for key, kickoff in self._open.drain():
                self._close(key, kickoff, to_end, remove=False)
        for done in to_end:
            self._end(done)
        return len(to_end)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no kickoff is open (their sessions are then in the ledger); False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._open and not self._ending, timeout=timeout)

    @property
    def open_kickoffs(self) -> int:
        """How many kickoffs are being assembled."""
        return len(self._open)


def _open_kickoffs() -> OpenRuns[str, _Kickoff]:
    """The open kickoffs by key, capped by `MAX_OPEN_KICKOFFS` and the `max_run_age` setting."""
    return OpenRuns(MAX_OPEN_KICKOFFS, limits=_limits)


def _limits() -> tuple[int, float]:
    # Read at every sweep (once per kickoff): the settings may change while the host runs.
    return MAX_OPEN_KICKOFFS, get_settings().max_run_age
