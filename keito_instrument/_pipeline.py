"""Ended session -> records -> spool -> exporter; plus the registry singleton and exit hooks."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._config import get_settings
from ._guard import guard
from ._registry import Registry, make_registry
from ._session import SessionSnapshot
from ._writer import Writer

if TYPE_CHECKING:
    from ._records import Built

# Records, pricing, the SQLite spool and delivery load when the first session ends (or on the
# warm-up thread when the first one opens), never at `import keito_instrument`.

_log = logging.getLogger("keito_instrument")
HOST_BUSY_TIMEOUT = 0.05  # seconds the ending thread may wait for the spool lock
writer = Writer()
_warmed = False
_warm_once = threading.Lock()
_warm_lock = threading.Lock()
_fork_holds_warm_lock = False
_listeners: list[Callable[[Built], None]] = []
_listeners_lock = threading.Lock()


def on_session_end(snapshot: SessionSnapshot) -> None:
    """Build the session's records and store them durably; wake the exporter if they can be sent."""
    settings = get_settings()
    if settings.disabled:
        return
    import sqlite3

    from ._records import build
    from ._spool import get_spool

    built = build(snapshot, settings)
    state = "pending" if settings.has_credentials else "local"
    if built.records or built.session_row["llm_calls"]:
        try:
            get_spool(settings.ledger_path).append(built, state, busy_timeout=HOST_BUSY_TIMEOUT)
        except sqlite3.OperationalError:
            # Another writer holds the lock: never make the host wait for it.
            writer.submit(settings.ledger_path, built, state)
    for listener in list(_listeners):
        with guard("record listener"):
            listener(built)
    if state == "pending" and built.records:
        from . import _export

        _export.notify()


def add_record_listener(listener: Callable[[Built], None]) -> None:
    """Call `listener(built)` on the ending thread for every ended session (the testing kit uses it)."""
    with _listeners_lock:
        _listeners.append(listener)


def remove_record_listener(listener: Callable[[Built], None]) -> None:
    """Undo `add_record_listener`."""
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def warm_up() -> None:
    """Once per process, load the price data and prepare the spool on a short-lived thread, so
    the first session end does not pay for them on the host's thread."""
    global _warmed
    if _warmed:  # the common case: no lock at all
        return
    with _warm_once:  # (never _warm_lock: the warm-up thread holds that one while it imports)
        if _warmed:
            return
        _warmed = True

    def work() -> None:
        try:
            _warm_up_imports()
        finally:
            _warm_lock.release()

    # Held from here until the imports are done, so that a fork waits for them (_before_fork): a
    # child forked in the middle of an import would find that module's import lock held forever.
    _warm_lock.acquire()
    try:
        threading.Thread(target=work, name="keito-instrument-warmup", daemon=True).start()
    except BaseException:
        _warm_lock.release()
        raise


def _warm_up_imports() -> None:
    with guard("warm-up"):
        import genai_prices  # noqa: F401  (about 0.1 s, once)

        from . import _records  # noqa: F401  (pricing and record building)
        from ._spool import get_spool

        settings = get_settings()
        get_spool(settings.ledger_path).connect()
        if settings.has_credentials:
            # httpx and asyncio (about 0.1 s), which the first session end would otherwise
            # import on the host's thread when it starts the exporter.
            from ._export import worker  # noqa: F401


registry: Registry = make_registry(on_session_end, on_open=warm_up)


def _before_fork() -> None:
    global _fork_holds_warm_lock
    # Wait (briefly) for a warm-up still importing; bounded, so a fork is never blocked for long.
    _fork_holds_warm_lock = _warm_lock.acquire(timeout=2.0)


def _after_fork_in_parent() -> None:
    global _fork_holds_warm_lock
    if _fork_holds_warm_lock:
        _fork_holds_warm_lock = False
        _warm_lock.release()


def _after_fork_in_child() -> None:
    global _warmed, _warm_once, _warm_lock, _fork_holds_warm_lock
    _warmed, _warm_once, _warm_lock, _fork_holds_warm_lock = False, threading.Lock(), threading.Lock(), False
    writer.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )


def shutdown(timeout: float) -> bool:
    """End every open session, write what the fallback writer holds, then drain the exporter;
    all within `timeout` seconds."""
    deadline = time.monotonic() + max(0.0, timeout)
    registry.close_all("shutdown")
    written = writer.drain(max(0.0, deadline - time.monotonic()))
    export = sys.modules.get(f"{__package__}._export")  # never started if never imported
    stop = getattr(export, "shutdown", None)  # (None too while another thread is importing it)
    if stop is None:
        return written
    return bool(stop(max(0.0, deadline - time.monotonic()))) and written


@atexit.register
def _at_exit() -> None:
    # Bounded: sessions still open are ended (billing what was spent so far) and the exporter gets
    # at most `atexit_timeout` seconds; whatever is left stays in the spool for the next process.
    with guard("atexit"):
        shutdown(get_settings().atexit_timeout)
