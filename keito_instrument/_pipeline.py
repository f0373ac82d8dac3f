"""Ended session -> records -> spool -> exporter; plus the registry singleton and exit hooks."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

from . import _export
from ._config import get_settings
from ._guard import guard
from ._records import Built, build
from ._registry import Registry, make_registry
from ._session import SessionSnapshot
from ._spool import get_spool

_log = logging.getLogger("keito_instrument")
_listeners: list[Callable[[Built], None]] = []
_listeners_lock = threading.Lock()


def on_session_end(snapshot: SessionSnapshot) -> None:
    """Build the session's records and store them durably; wake the exporter if they can be sent."""
    settings = get_settings()
    if settings.disabled:
        return
    built = build(snapshot, settings)
    state = "pending" if settings.has_credentials else "local"
    if built.records or built.session_row["llm_calls"]:
        get_spool(settings.ledger_path).append(built, state)
    for listener in list(_listeners):
        with guard("record listener"):
            listener(built)
    if state == "pending" and built.records:
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


registry: Registry = make_registry(on_session_end)


def shutdown(timeout: float) -> bool:
    """End every open session, then drain the exporter within `timeout`."""
    registry.close_all("shutdown")
    return _export.shutdown(timeout)


@atexit.register
def _at_exit() -> None:
    # Bounded: sessions still open are ended (billing what was spent so far) and the exporter gets
    # at most `atexit_timeout` seconds; whatever is left stays in the spool for the next process.
    with guard("atexit"):
        shutdown(get_settings().atexit_timeout)
