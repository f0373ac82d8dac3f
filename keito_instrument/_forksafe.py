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
from collections.abc import Callable, Iterator
from typing import Any

WAIT = 2.0  # seconds a fork waits for a section to finish; never blocks the host for longer
_lock = threading.RLock()
_held = False


@contextlib.contextmanager
def section() -> Iterator[None]:
    """Run the body with no fork starting in the middle of it."""
    with _lock:
        yield


# Every after-fork-in-child reset of the package, in registration order: run by os.fork()'s hook,
# and by `check_pid()` in a child forked without Python's hooks (uWSGI's default prefork without
# `py-call-osafterfork`, a C extension's fork()), where none of them ran.
_children: list[Callable[[], None]] = []
_pid = os.getpid()
# True in a process forked without Python's hooks: the threading module's own state is the
# parent's there (a lock one of its threads held at the fork stays held), so starting a thread
# may hang; none of ours is started (see `check_pid`).
unhooked = False


def in_child(reset: Callable[[], None]) -> None:
    """Run `reset()` in every forked child, hooked or not (see `check_pid`)."""
    _children.append(reset)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=reset)


def check_pid() -> None:
    """Where a session begins: in a process forked without Python's at-fork hooks (the pid
    changed and they did not note it: uWSGI without `py-call-osafterfork`, a C extension's
    fork()), run the resets now, so that the child journals into segments of its own (never into
    its parent's mapping) and never repeats its session ids. No thread of ours is started in such
    a process (the threading module's state is its parent's: a thread start may hang): its
    sessions are journalled durably and billed by the next process that folds the ledger once it
    has exited, or by `keito-instrument sync`; a warning says so once."""
    global _pid, unhooked
    pid = os.getpid()
    if pid == _pid:
        return
    _pid, unhooked = pid, True
    for reset in list(_children):
        with contextlib.suppress(Exception):
            reset()
    import logging

    logging.getLogger("keito_instrument").warning(
        "keito-instrument: this process was forked without Python's at-fork hooks (uWSGI without "
        "py-call-osafterfork?); its sessions are journalled, but billed only once it has exited (by "
        "the next process sharing the ledger, or `keito-instrument sync`). Set py-call-osafterfork "
        "(or lazy-apps) to bill them as they end")


def reset_in_child(owner: Any) -> None:
    """Call `owner._after_fork_in_child()` in every forked child while `owner` lives (the hook
    holds it weakly, so it never keeps it alive)."""
    ref = weakref.ref(owner)

    def child() -> None:
        target = ref()
        if target is not None:
            target._after_fork_in_child()

    in_child(child)


def _before_fork() -> None:
    global _held
    _held = _lock.acquire(timeout=WAIT)


def _after_fork_in_parent() -> None:
    global _held
    if _held:
        _held = False
        _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _held, _pid
    _lock, _held = threading.RLock(), False
    if not unhooked:  # (run by os.fork()'s hook: a proper child; by check_pid: it set the pid)
        _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)
in_child(_after_fork_in_child)
