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

Our client hooks' calls take part too (`claim_client_call`, installed in the kernel while a
processor is): a hook counts a call when its answer or its stream's usage arrives, inside the
framework span's interval, and notes it at that instant (it does not know the request's start), so
a later OpenInference span of the same streamed call pairs with it and is not counted. The hook's
call wins, as the first to end; a span counted first (within the slack) wins over a later hook call.

No OpenTelemetry import: the processor passes plain values (`_counting.claim`).
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..._forksafe import reset_in_child
from .. import _kernel

# A call's usage as the pairing key: (input, output, cache read, cache write) tokens.
Key = tuple[int, int, int, int]

SLACK_NS = 20_000_000  # intervals this close count as overlapping: clocks of two libraries, rounding
MAX_CALLS = 4_096
MAX_AGE = 300.0  # seconds between the two spans' ends, at most
_MAX_PER_KEY = 64  # identical calls of one library in flight at once; beyond, the oldest is forgotten
CLIENT_SCOPE = "keito_instrument"  # the "library" of our client hooks' calls
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")  # gpt-4o-mini-2024-07-18, claude-sonnet-4-20250514


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
    usage from the other libraries (at most `_MAX_PER_KEY` each): with one library reporting
    (the common case) a span scans nothing.
    """

    def __init__(self, max_calls: int = MAX_CALLS, max_age: float = MAX_AGE, slack_ns: int = SLACK_NS) -> None:
        self._by_key: dict[Key, dict[str, list[Call]]] = {}  # usage -> library -> its calls, oldest first
        self._order: OrderedDict[int, tuple[Key, Call]] = OrderedDict()  # id(call) -> it, oldest first
        self._lock = threading.Lock()
        self._max_calls, self._max_age, self._slack = max(1, max_calls), max_age, slack_ns

    def __len__(self) -> int:
        return len(self._order)

    def claim(self, key: Key, call: Call) -> bool:
        """True: count `call` (it is noted, for its twin to find); False: its twin was already
        counted (it is taken out: it pairs once)."""
        with self._lock:
            scopes = self._by_key.get(key)
            if scopes is not None:
                for scope, waiting in scopes.items():
                    if scope == call.scope:
                        continue  # (one library reports a call once)
                    for other in waiting:  # oldest first
                        if call.twin_of(other, self._slack):
                            self._drop(key, other)
                            return False
            self._note(key, call)
        return True

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
        waiting = self._by_key.setdefault(key, {}).setdefault(call.scope, [])
        if len(waiting) >= _MAX_PER_KEY:
            self._drop(key, waiting[0])
            waiting = self._by_key.setdefault(key, {}).setdefault(call.scope, [])
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
        scopes = self._by_key.get(key)
        waiting = scopes.get(call.scope) if scopes is not None else None
        if scopes is not None and waiting is not None:
            waiting.remove(call)
            if not waiting:
                del scopes[call.scope]
                if not scopes:
                    del self._by_key[key]


pending = Pairs()  # process-wide, as the kernel's response ids are: both spans may reach any processor
reset_in_child(pending)


def claim_client_call(model: str | None, usage: Mapping[str, int], response_id: str | None) -> bool:
    """`_kernel.pair_client_call`: True, the hook counts its call (noted for a span without an
    id to find); False, a span of it from another library was counted first.

    A hook names the model its answer names (`gpt-4o-mini-2024-07-18`), OpenInference's span of a
    streamed call the one requested (`gpt-4o-mini`): the name without its date is noted too.
    """
    key = (usage.get("input_tokens", 0), usage.get("output_tokens", 0), usage.get("cache_read_tokens", 0),
           usage.get("cache_write_tokens", 0))
    if not (key[0] or key[1]):
        return True
    models = frozenset((model, _DATED.sub("", model))) if model else frozenset()
    now = time.time_ns()
    return pending.claim(key, Call(CLIENT_SCOPE, models, now, now, response_id))


_processors: set[int] = set()  # the live span processors (ids): while any is, our hooks' calls are noted
_processors_lock = threading.Lock()


def join(processor: object) -> None:
    """A span processor is live: our client hooks' calls take part in pairing until `leave`
    (its `shutdown()`) or until it is collected."""
    key = id(processor)
    with _processors_lock:
        _processors.add(key)
        _kernel.pair_client_call = claim_client_call
    weakref.finalize(processor, leave, key)


def leave(key: int) -> None:
    """Undo `join` for the processor with id `key`; with none left, hooks note nothing."""
    with _processors_lock:
        _processors.discard(key)
        if not _processors:
            _kernel.pair_client_call = None
