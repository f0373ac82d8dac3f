"""Delivery to Keito: the three hooks the core calls (`notify`, `flush`, `shutdown`).

The exporter thread starts lazily on the first `notify()` or `flush()`, never at import. After
`os.fork()` the child forgets the parent's exporter (its thread did not survive the fork) and
starts its own on first use; claims in the shared spool keep the two from sending a record twice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import _forksafe
from .._config import Settings, get_settings, on_change
from .._guard import guard
from .._spool import get_spool
from .queue import open_counts

if TYPE_CHECKING:
    from .worker import Exporter

__all__ = ["DeliveryState", "flush", "notify", "shutdown", "state"]

_lock = threading.Lock()
_exporter: Exporter | None = None


def _running(start: bool) -> Exporter | None:
    global _exporter
    exporter = _exporter
    if exporter is not None and exporter.alive:
        return exporter
    if not start:
        return None
    from .worker import Exporter  # httpx and asyncio load on first use, not at import

    with _lock:
        if _exporter is None or not _exporter.alive:
            _exporter = Exporter()
            _exporter.start()
        return _exporter


def notify() -> None:
    """New pending records are in the spool: start (or wake) the background exporter.

    Runs on the caller's thread (the one ending a session); O(1), never blocks, never raises.
    """
    with guard("exporter notify"):
        if _forksafe.unhooked:
            return  # (a child forked without Python's hooks: no thread of ours, see _forksafe.check_pid)
        exporter = _exporter
        if exporter is None or not exporter.alive:
            exporter = _running(start=True)
        assert exporter is not None
        exporter.notify(get_settings().batch_size)


def flush(timeout: float) -> bool:
    """Wait up to `timeout` seconds for pending records to be delivered; True if none is left.

    Returns early (False) when nothing can progress before the deadline: records wait for a
    missing project/task/category setting, delivery is paused after a 401/403, or every
    remaining record's next attempt (backoff, Retry-After) falls after the deadline.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    settings = get_settings()
    spool = get_spool(settings.ledger_path)
    if not settings.has_credentials or settings.disabled:
        return open_counts(spool)[0] == 0
    exporter = _running(start=True)
    assert exporter is not None
    exporter.wake()
    first = exporter.generation
    while True:
        generation = exporter.generation
        total, blocked, due = open_counts(spool)
        if total == 0:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not exporter.alive:
            return False
        # Judge "nothing can progress" only on a cycle that started after this call, so a
        # configure() just before flush() (new ids, a new key) is taken into account.
        if generation > first + 1:
            if total == blocked or exporter.paused:
                return False
            if due is not None and due - time.time() > remaining:
                return False
        exporter.wait_progress(generation, min(remaining, 0.25))


def shutdown(timeout: float) -> bool:
    """Drain within `timeout` seconds and stop the exporter; True if nothing is left pending.

    Whatever is not delivered by the deadline stays in the spool for the next process. A process
    whose exporter never started returns True at once without opening the spool.
    """
    global _exporter
    deadline = time.monotonic() + max(0.0, timeout)
    if _exporter is None:
        return True
    ok = False
    with guard("exporter shutdown"):
        # Keep a slice of the budget to cancel what is in flight and give the claims back.
        ok = flush(max(0.0, timeout - min(0.2, timeout / 4)))
    with _lock:
        exporter, _exporter = _exporter, None  # flush() may have replaced a crashed exporter
    if exporter is not None:
        exporter.stop(deadline - time.monotonic())
    return ok


@dataclass(frozen=True)
class DeliveryState:
    """What is left to deliver, for `keito-instrument sync` and users' own checks."""

    open: int
    blocked: int
    dead: int
    paused: bool


def state() -> DeliveryState:
    """Records not yet delivered, those waiting for a missing setting, dead letters, auth pause."""
    spool = get_spool(get_settings().ledger_path)
    total, blocked, _ = open_counts(spool)
    exporter = _exporter
    return DeliveryState(
        total, blocked, spool.counts()["dead"], bool(exporter is not None and exporter.paused)
    )


def _settings_changed(settings: Settings) -> None:
    # Called under the settings lock by configure(): only flags and a non-blocking wake-up.
    exporter = _exporter
    if exporter is not None:
        exporter.settings_changed()


def _after_fork_in_child() -> None:
    # The parent's exporter thread does not exist in the child: start afresh on first use.
    global _exporter, _lock
    _lock = threading.Lock()
    _exporter = None


on_change(_settings_changed)
_forksafe.in_child(_after_fork_in_child)
