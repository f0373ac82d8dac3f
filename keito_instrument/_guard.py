"""The one guard around every entry point: our bugs must never reach the host.

`with guard("where"):` logs an internal `Exception` once per kind on the `keito_instrument` logger
and swallows it. `BaseException` (KeyboardInterrupt, SystemExit, cancellation) always propagates.
Tests register a listener with `add_swallow_listener` and turn every swallowed error into a failure.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from . import _forksafe

_log = logging.getLogger("keito_instrument")
_log.addHandler(logging.NullHandler())

P = ParamSpec("P")
R = TypeVar("R")

_seen_lock = threading.Lock()
_seen: set[str] = set()
_listeners: list[Callable[[str, BaseException], None]] = []


def _reset_lock_in_child() -> None:
    global _seen_lock
    _seen_lock = threading.Lock()  # a parent thread may have held it at fork time


_forksafe.in_child(_reset_lock_in_child)


def report(kind: str, exc: BaseException) -> None:
    """Record an internal error: logged in full the first time for its kind, at debug after that."""
    with _seen_lock:
        first = kind not in _seen
        _seen.add(kind)
    try:
        if first:
            _log.error(
                "keito-instrument internal error in %s (ignored; the host is unaffected)",
                kind,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        else:
            _log.debug("keito-instrument internal error in %s: %r", kind, exc)
        for listener in list(_listeners):
            listener(kind, exc)
    except Exception:  # a broken logging handler must not escape either
        pass


class guard:
    """Context manager that swallows (and reports) any `Exception` raised in its body."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        report(self.kind, exc)
        return True


def guarded(kind: str, default: Any = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator form of `guard`: the function returns `default` if it raises."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                report(kind, exc)
                return default  # type: ignore[no-any-return]

        return inner

    return wrap


def add_swallow_listener(listener: Callable[[str, BaseException], None]) -> None:
    """Call `listener(kind, exc)` for every error the guard swallows (the test suite uses this)."""
    _listeners.append(listener)


def remove_swallow_listener(listener: Callable[[str, BaseException], None]) -> None:
    """Undo `add_swallow_listener`."""
    if listener in _listeners:
        _listeners.remove(listener)
