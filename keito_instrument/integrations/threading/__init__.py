"""Threads: calls made in a thread bill to the keito session that started the work.

    from keito_instrument.integrations import threading as keito_threading

    keito_threading.instrument()   # keito.instrument() does this too

Afterwards the session current where work is handed over travels with it:
`concurrent.futures.ThreadPoolExecutor.submit` and `map` (and so asyncio's
`loop.run_in_executor`), and `threading.Thread.start()`. Work still running when the function or
block that started it returns keeps its session open until it ends (a daemon thread carries the
session but does not hold it open). Only keito's own context variables are carried, never the
rest of the caller's context. See docs/integrations/threading.md.
"""

from __future__ import annotations

from .._kernel import Switch
from . import _carry

__all__ = ["instrument", "is_instrumented", "uninstrument"]

_switch = Switch(_carry.install, _carry.remove)


def instrument() -> None:
    """Carry the current keito session into executors and threads (idempotent, process-wide)."""
    _switch.on()


def uninstrument() -> None:
    """Stop carrying sessions; work already handed over finishes as it started."""
    _switch.off()


def is_instrumented() -> bool:
    """True while `instrument()` is in effect."""
    return _switch.is_on
