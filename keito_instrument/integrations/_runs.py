"""The kernel's bounded tables: the open runs an adapter tracks for a framework, and the runs it
closed recently.

A framework tells an adapter that a run (a LangChain run, a CrewAI kickoff, an OpenTelemetry
trace, an Agents SDK trace or span) began and, later, that it ended; the end may never come (a
crashed worker, a dropped event, a generator never closed). Every adapter therefore keeps its open
runs in an `OpenRuns`, capped in count and age, so a long-lived host never grows without bound;
what falls out is handed back to the adapter to close (billed up to what was seen). A `Recent`
remembers the keys of runs already closed, so a straggling event of a finished run is recognised
instead of opening a new one; the kernel's `seen`, one too, the provider response ids already
counted.

Framework-free, and cheap on the hot path: a lookup, an insert or a removal in an `OpenRuns` is
one dict operation (atomic in CPython), so callers need no lock for them; only a sweep takes the
table's lock. A `Recent` is read without a lock and noted into under its own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["OpenRuns", "Recent"]


class _Born(Protocol):
    @property
    def born(self) -> float:
        """When the run was first seen (time.monotonic())."""
        ...


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=_Born)
T = TypeVar("T")

_NONE: list[tuple[object, object]] = []  # returned (never mutated) when nothing was swept


class OpenRuns(Generic[K, V]):
    """Open runs by key, oldest first, bounded by `max_open` entries and `max_age` seconds.

    Each entry has a `born` attribute (`time.monotonic()` when the run was first seen). `add`
    sweeps every `sweep_every` inserts, and at once whenever the table is over its cap; a sweep
    takes out, oldest first, the entries beyond the cap or older than `max_age` and returns them
    so the adapter can close them outside its own locks. `limits`, when given, is read at every
    sweep for fresh `(max_open, max_age)` values (settings that may change at runtime).
    """

    def __init__(
        self,
        max_open: int = 10_000,
        max_age: float = 3600.0,
        *,
        sweep_every: int = 1,
        limits: Callable[[], tuple[int, float]] | None = None,
    ) -> None:
        self.entries: dict[K, V] = {}
        self.max_open, self.max_age = max(1, int(max_open)), float(max_age)
        self._every = max(1, int(sweep_every))
        self._limits = limits
        self._inserts = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[K]:
        return iter(list(self.entries))

    def get(self, key: K) -> V | None:
        """The open run under `key`, or None."""
        return self.entries.get(key)

    def pop(self, key: K) -> V | None:
        """Take the run under `key` out of the table (None if it is not there)."""
        return self.entries.pop(key, None)

    def values(self) -> list[V]:
        """A snapshot of the open runs, oldest first."""
        return list(self.entries.values())

    def add(self, key: K, entry: V) -> list[tuple[K, V]]:
        """Insert (or replace) a run; returns the runs the sweep took out, usually none."""
        self.entries[key] = entry
        self._inserts += 1
        if self._inserts % self._every and len(self.entries) <= self.max_open:
            return _NONE  # type: ignore[return-value]
        return self.sweep(keep=key)

    def sweep(self, now: float | None = None, keep: K | None = None) -> list[tuple[K, V]]:
        """Take out the runs beyond the count cap or the age cap, oldest first, and return them.

        `keep` (the run `add` just inserted) is never taken out for its age: a run is not
        swept by its own insert, however small the age cap.
        """
        if self._limits is not None:
            max_open, max_age = self._limits()
            self.max_open, self.max_age = max(1, int(max_open)), float(max_age)
        now = time.monotonic() if now is None else now
        cap, max_age = self.max_open, self.max_age
        out: list[tuple[K, V]] = []
        with self._lock:
            entries = self.entries
            while entries:
                try:
                    key = next(iter(entries))  # insertion order: the oldest run
                except (RuntimeError, StopIteration):  # changed under us by a lock-free caller
                    break
                entry = entries.get(key)
                if entry is not None and len(entries) <= cap and (now - entry.born <= max_age or key == keep):
                    break
                entry = entries.pop(key, None)
                if entry is not None:
                    out.append((key, entry))
        return out

    def drain(self) -> list[tuple[K, V]]:
        """Take every run out (closing time: shutdown, uninstrument) and return them."""
        with self._lock:
            out = list(self.entries.items())
            self.entries.clear()
        return out

    def clear(self) -> None:
        """Forget every run without closing any (tests, a forked child)."""
        self.entries.clear()


class Recent(Generic[K, T]):
    """The last `max_keys` keys noted, each with a value (say, the session id a closed run billed
    to), oldest forgotten first; with `max_age`, also no key older than that many seconds.

    Two uses: the runs an adapter closed lately (`remember`, then `get` or `in`), and the provider
    response ids already counted (`claim`: only the first layer to claim one counts it). Lookups
    are lock-free (one dict read); `remember` and `claim` take a lock, so "seen? else note it" is
    one step and the count and age caps hold from any thread. `clock` (`time.monotonic`) is for
    tests.
    """

    def __init__(self, max_keys: int = 4_096, max_age: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keys: OrderedDict[K, T | None] = OrderedDict()
        self._at: dict[K, float] = {}  # when each key was noted; kept only with an age cap
        self._max = max(1, int(max_keys))
        self._max_age = None if max_age is None else float(max_age)
        self._clock = clock
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def get(self, key: K, default: T | None = None) -> T | None:
        """The value remembered for `key`, or `default`."""
        return self._keys.get(key, default)

    def remember(self, key: K, value: T) -> None:
        """Note `key` with `value` (a key noted before keeps its place and age, takes the value)."""
        with self._lock:
            now = self._now()
            self._note(key, value, now)
            self._expire(now)

    def claim(self, key: K | None, value: T | None = None) -> bool:
        """Note `key` and return True the first time it is claimed; False while it is remembered.

        A missing key (None or "") is always True: there is nothing to match it with.
        """
        if key is None or key == "":
            return True
        with self._lock:
            now = self._now()
            self._expire(now)
            if key in self._keys:
                return False
            self._note(key, value, now)
        return True

    def forget(self, key: K) -> None:
        """Drop `key` (a run that reopened)."""
        with self._lock:
            self._keys.pop(key, None)
            self._at.pop(key, None)

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._keys.clear()
            self._at.clear()

    # The helpers below run under the lock.
    def _now(self) -> float:
        return 0.0 if self._max_age is None else self._clock()

    def _note(self, key: K, value: T | None, now: float) -> None:
        keys = self._keys
        if self._max_age is not None and key not in keys:
            self._at[key] = now
        keys[key] = value
        while len(keys) > self._max:
            self._at.pop(keys.popitem(last=False)[0], None)

    def _expire(self, now: float) -> None:
        if self._max_age is None:
            return
        keys, at, oldest_kept = self._keys, self._at, now - self._max_age
        while keys:
            oldest = next(iter(keys))
            if at[oldest] >= oldest_kept:
                break
            del keys[oldest]
            del at[oldest]
