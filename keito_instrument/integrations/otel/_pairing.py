"""One model call reported by two instrumentation libraries when no response id links the two spans.

OpenInference's LangChain span of a streamed call (or of any call with outputs hidden) carries
no provider response id, while the client instrumentor's `chat` span of the same call does (or
neither does); the two land in different traces, so neither the id nor nesting can tell that
they are one call. What still identifies it: the same token usage (input, output, cache reads,
cache writes), a model name in common, and overlapping intervals (the framework's span encloses
the client's), reported by two different instrumentation libraries (one library reports a call
once). The first of the two spans to end is counted and noted here; the second finds it and is
not counted, whichever order they end in, as the second to claim a response id is not. Each
noted call pairs once.

Calls that are genuinely different but identical in all of that (concurrent identical calls) may
pair with each other's spans instead of their own: harmless, one span of each is still counted
and they bill the same. Two spans that both carry a response id never pair (the id decides).

No OpenTelemetry import: the processor passes plain values (`_counting.claim`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..._forksafe import reset_in_child

# A call's usage as the pairing key: (input, output, cache read, cache write) tokens.
Key = tuple[int, int, int, int]

SLACK_NS = 20_000_000  # intervals this close count as overlapping: clocks of two libraries, rounding
MAX_CALLS = 4_096
MAX_AGE = 300.0  # seconds between the two spans' ends, at most
_MAX_PER_KEY = 64  # identical calls in flight at once; beyond, the oldest is forgotten


@dataclass(slots=True, eq=False)
class Call:
    """A counted model-call span, as far as pairing needs it."""

    scope: str  # the instrumentation library that reported it
    models: frozenset[str]  # every model name the span gives (request, response, LangChain's)
    start: int  # ns since the epoch
    end: int
    response_id: str | None
    born: float = field(default_factory=time.monotonic)

    def twin_of(self, other: Call, slack: int) -> bool:
        """Whether `other` may be this call as another library reported it."""
        return (
            other.scope != self.scope
            and not (other.response_id and self.response_id)
            and not other.models.isdisjoint(self.models)
            and other.start <= self.end + slack
            and self.start <= other.end + slack
        )


class Pairs:
    """Counted calls waiting for their twin from another library, bounded by count and age.

    Thread-safe; every operation is a few dict operations and a scan of the calls with the same
    usage (at most `_MAX_PER_KEY`).
    """

    def __init__(self, max_calls: int = MAX_CALLS, max_age: float = MAX_AGE, slack_ns: int = SLACK_NS) -> None:
        self._by_key: dict[Key, list[Call]] = {}
        self._order: OrderedDict[int, tuple[Key, Call]] = OrderedDict()  # id(call) -> it, oldest first
        self._lock = threading.Lock()
        self._max_calls, self._max_age, self._slack = max(1, max_calls), max_age, slack_ns

    def __len__(self) -> int:
        return len(self._order)

    def claim(self, key: Key, call: Call) -> bool:
        """True: count `call` (it is noted, for its twin to find); False: its twin was already
        counted (it is taken out: it pairs once)."""
        with self._lock:
            waiting = self._by_key.get(key)
            if waiting is not None:
                for other in waiting:  # oldest first
                    if call.twin_of(other, self._slack):
                        self._drop(key, other)
                        return False
            self._note(key, call)
        return True

    def forget(self, key: Key, response_id: str) -> None:
        """The call with `response_id` was seen again by its id: its twin needs no pairing."""
        with self._lock:
            for other in self._by_key.get(key, ()):
                if other.response_id == response_id:
                    self._drop(key, other)
                    return

    def clear(self) -> None:
        """Forget every call (tests, a forked child)."""
        with self._lock:
            self._by_key.clear()
            self._order.clear()

    def _after_fork_in_child(self) -> None:
        """A forked child starts empty, with a lock no parent thread can hold."""
        self._lock = threading.Lock()
        self._by_key.clear()
        self._order.clear()

    def _note(self, key: Key, call: Call) -> None:
        waiting = self._by_key.setdefault(key, [])
        if len(waiting) >= _MAX_PER_KEY:
            self._drop(key, waiting[0])
            waiting = self._by_key.setdefault(key, [])
        waiting.append(call)
        self._order[id(call)] = (key, call)
        now = call.born
        while self._order:
            old_key, old = next(iter(self._order.values()))
            if len(self._order) <= self._max_calls and now - old.born <= self._max_age:
                break
            self._drop(old_key, old)

    def _drop(self, key: Key, call: Call) -> None:
        self._order.pop(id(call), None)
        waiting = self._by_key.get(key)
        if waiting is not None:
            waiting.remove(call)
            if not waiting:
                del self._by_key[key]


pending = Pairs()  # process-wide, as the kernel's response ids are: both spans may reach any processor
reset_in_child(pending)
