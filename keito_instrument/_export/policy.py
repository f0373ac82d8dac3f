"""Retry policy: which outcomes are retried, how long to wait, and Retry-After parsing."""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass
from typing import Literal

# Statuses whose request certainly changed nothing on the server ("refused"), versus those that
# may have committed the record before failing ("ambiguous": reconcile by listing before retrying).
RETRY_REFUSED = frozenset({429})
RETRY_AMBIGUOUS = frozenset({408})
PAUSE = frozenset({401, 403})
MAX_RETRY_AFTER = 3600.0


Kind = Literal["delivered", "retry", "dead", "pause", "release"]


@dataclass(frozen=True)
class Outcome:
    """What one POST achieved."""

    kind: Kind
    ambiguous: bool = False
    retry_after: float | None = None
    reason: str = ""
    remote_id: str | None = None
    status: int | None = None
    timed_out: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter.

    Attributes:
        base: the first delay, in seconds.
        cap: no delay is longer than this (a `Retry-After` may be, up to an hour).
        jitter: the fraction of the delay that is randomised (0: none; 1: "full jitter").
        auth_pause: how long delivery pauses after a 401/403 before one record probes again
            (a configure() call with new settings resumes at once).
        missing_settings_retry: how long a record without project/task/category id waits
            before it is looked at again (a configure() call re-checks at once).
        lease: how long a claim on a record lasts before another process may take it over
            (claims of a process that has died are taken over at once).
    """

    base: float = 0.5
    cap: float = 60.0
    jitter: float = 0.5
    auth_pause: float = 300.0
    missing_settings_retry: float = 300.0
    lease: float = 120.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number `attempt + 1` (attempt counts from 1)."""
        exp = min(self.cap, self.base * math.pow(2.0, max(0, attempt - 1)))
        spread = exp * self.jitter
        return exp - spread + (rng or random).random() * spread


DEFAULT = RetryPolicy()
_current = DEFAULT


def get_policy() -> RetryPolicy:
    """The policy in force (tests install a faster one with `set_policy`)."""
    return _current


def set_policy(policy: RetryPolicy | None) -> None:
    """Install a retry policy (None: the default). Takes effect from the next delivery cycle."""
    global _current
    _current = policy or DEFAULT


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))
