"""Work a fork must not cut in half.

`os.fork()` copies only the forking thread. A library lock that another thread held at that
moment stays held in the child forever: OpenSSL's, while an SSL context loads its certificates,
is the one that bit us (the child's exporter then hangs building its first client). Code that
takes such locks runs inside `section()`, and a fork waits (at most `WAIT` seconds) until no
thread is inside one.

This module is imported with the package, so its hook is in place before any thread can enter a
section: a hook registered while a fork is already under way would not be called for that fork.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

WAIT = 2.0  # seconds a fork waits for a section to finish; never blocks the host for longer
_lock = threading.RLock()
_held = False


@contextlib.contextmanager
def section() -> Iterator[None]:
    """Run the body with no fork starting in the middle of it."""
    with _lock:
        yield


def reset_in_child(owner: Any) -> None:
    """Call `owner._after_fork_in_child()` in every forked child while `owner` lives (the hook
    holds it weakly, so it never keeps it alive)."""
    ref = weakref.ref(owner)

    def child() -> None:
        target = ref()
        if target is not None:
            target._after_fork_in_child()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=child)


def _before_fork() -> None:
    global _held
    _held = _lock.acquire(timeout=WAIT)


def _after_fork_in_parent() -> None:
    global _held
    if _held:
        _held = False
        _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _held
    _lock, _held = threading.RLock(), False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
