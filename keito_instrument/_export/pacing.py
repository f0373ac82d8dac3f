"""Client-wide pacing of the exporter's requests, so that Keito's rate limit is seldom met.

Keito documents one signal: a 429 carries `Retry-After` in seconds (keito-api.md 6.2). Rate-limit
headers (`X-RateLimit-Remaining` and `-Reset`, the IETF `RateLimit-Remaining` and `-Reset`, or the
combined `RateLimit` field) are unverified for Keito, so they are used only when present. The
pacer keeps three brakes, each shared by every request of one exporter (POSTs and listings):

- **the gate**: after a 429, no request starts before its `Retry-After` has passed;
- **the count**: when the server says how many requests are left in its window, each request
  started counts one down, and none starts once it reaches 0, until the window resets;
- **the learned rate**: a 429 also tells how fast the server let requests through (those
  accepted since the last pause, over the time until the reset). From then on requests are spaced
  evenly at 90% of that rate instead of leaving in bursts, which keeps a fixed-window or
  sliding-window limit from being hit again. The rate grows by half every 3 s without a 429,
  so a limit that was raised (or learned too low, from a stray 429) is found again quickly, at
  the cost of about one 429 each time.

Everything runs on the exporter's event loop; nothing here blocks a thread.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .policy import MAX_RETRY_AFTER, parse_retry_after

__all__ = ["Deferred", "Pacer", "parse_window"]

_EPOCH = 1_000_000_000.0  # a reset larger than this is a Unix time, not a number of seconds
_FIELD = {"remaining": "r", "r": "r", "reset": "t", "t": "t"}
_IETF = re.compile(r"(?:^|[\s;,])(remaining|r|reset|t)\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


class Deferred(Exception):
    """The next start allowed is too far away to hold a request (and its claim) waiting for it."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited: the next request may start in {wait:.1f} s")
        self.wait = wait


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_window(headers: Mapping[str, str], now: float) -> tuple[int, float] | None:
    """(requests left, when the window resets) from rate-limit headers, or None when absent or bad."""
    remaining = _number(headers.get("X-RateLimit-Remaining") or headers.get("RateLimit-Remaining"))
    reset = _number(headers.get("X-RateLimit-Reset") or headers.get("RateLimit-Reset"))
    combined = headers.get("RateLimit")
    if combined and (remaining is None or reset is None):
        fields = {_FIELD[name.lower()]: _number(value) for name, value in _IETF.findall(combined)}
        remaining = fields.get("r") if remaining is None else remaining
        reset = fields.get("t") if reset is None else reset
    if remaining is None or reset is None:
        return None
    reset_at = reset if reset > _EPOCH else now + reset
    return int(remaining), min(reset_at, now + MAX_RETRY_AFTER)


@dataclass
class Pacer:
    """The brakes shared by every request of one exporter (see the module docstring).

    Attributes:
        max_wait: a request that would have to wait longer than this is not held: `wait()`
            raises `Deferred`, and the record goes back to the queue until then.
        safety: the fraction of the learned rate used.
        growth: the learned rate is multiplied by this after every `quiet` seconds without a 429.
        quiet: see `growth`.
        idle: a gap this long between requests starts a new measurement of the rate.
        evidence: a 429 teaches a rate only after this many requests were accepted since the
            measurement started (a stray 429 after a few requests only closes the gate).
        clock: the wall clock (Retry-After and resets are wall-clock times).
    """

    max_wait: float = 10.0
    safety: float = 0.9
    growth: float = 1.5
    quiet: float = 3.0
    idle: float = 5.0
    evidence: int = 10
    clock: Callable[[], float] = time.time
    gate: float = 0.0
    rate: float | None = None
    limited: int = 0
    _next: float = 0.0
    _remaining: int | None = None
    _reset_at: float = 0.0
    _since: float | None = None
    _last_start: float = 0.0
    _accepted: int = 0
    _grown_at: float = 0.0
    _in_flight: int = 0

    def blocked_until(self) -> float:
        """When the gate or the count lets requests start again (a time in the past: now)."""
        counted = self._reset_at if self._remaining is not None and self._remaining <= 0 else 0.0
        return max(self.gate, counted)

    def next_start(self, now: float) -> float:
        """The earliest time a request may start (`now` or later); reserves nothing."""
        if self._remaining is not None and now >= self._reset_at:
            self._remaining = None  # a new window: unknown until the next answer says
        start = max(now, self.blocked_until())
        if self.rate is not None:
            self._grow(now)
            start = max(start, self._next)
        return start

    def take(self, now: float) -> None:
        """A request starts now: count it and reserve the next slot."""
        if self._since is None or now - self._last_start > self.idle:
            self._since, self._accepted = now, 0
        self._last_start = now
        self._in_flight += 1
        if self._remaining is not None:
            self._remaining -= 1
        if self.rate is not None:
            self._next = max(now, self._next) + 1.0 / self.rate

    async def wait(self) -> None:
        """Wait for this request's turn (asyncio sleep only).

        Raises:
            Deferred: the turn is more than `max_wait` seconds away.
        """
        while True:
            now = self.clock()
            start = self.next_start(now)
            if start <= now:
                self.take(now)
                return
            if start - now > self.max_wait:
                raise Deferred(start - now)
            await asyncio.sleep(start - now)

    def abandon(self) -> None:
        """A request that `wait()` let start ended without an answer."""
        self._in_flight = max(0, self._in_flight - 1)

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """An answer's status line and headers arrived (before its body is read)."""
        now = self.clock()
        self.abandon()
        window = parse_window(headers, now)
        if window is not None:
            self._count(*window)
        if status != 429:
            self._accepted += 1
            return
        self.limited += 1
        retry_after = parse_retry_after(headers.get("Retry-After"))
        until = now + (retry_after if retry_after is not None else 1.0)
        if now >= self.gate:  # the other requests already in flight when the first 429 came teach nothing new
            self._learn(now, until)
        self.gate = max(self.gate, until)

    def _count(self, remaining: int, reset_at: float) -> None:
        # The server counted this request, perhaps not yet the others in flight: count them too.
        # Answers arrive out of order and other processes may share the key: within one window
        # keep the lowest count seen.
        remaining -= self._in_flight
        if self._remaining is None or reset_at > self._reset_at + 0.5:
            self._remaining, self._reset_at = remaining, reset_at
        else:
            self._remaining = min(self._remaining, remaining)

    def _learn(self, now: float, until: float) -> None:
        since = self._since if self._since is not None else now
        span = until - since
        if self._accepted >= self.evidence and span > 0:
            self.rate = max(self._accepted / span * self.safety, 1.0 / MAX_RETRY_AFTER)
        elif self.rate is not None:  # limited again soon after a pause: slower, whatever was learned
            self.rate = max(self.rate / 2, 1.0 / MAX_RETRY_AFTER)
        self._since, self._accepted, self._grown_at = until, 0, until  # quiet counts from the reset
        self._next = max(self._next, until)

    def _grow(self, now: float) -> None:
        if self.rate is not None and now - self._grown_at >= self.quiet:
            self.rate *= self.growth
            self._grown_at = now
