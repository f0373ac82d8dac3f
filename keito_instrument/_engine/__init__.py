"""The billing engine: a background thread that folds the journal into the ledger.

It runs in every process that records sessions (with or without credentials), beside the
exporter: it wakes when a session ends (and at least once a second), folds this process's
journal (`fold.py`), ends the ledger's sessions that are due (a named conversation idle for
`idle_timeout` since its last activity in any process; a session whose process died), bills
them, and wakes the exporter. Every few seconds it also folds the journals that dead processes
left behind. `settle()` does the same work synchronously for `flush()`, `shutdown()` and the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import _forksafe, _prune, _writer
from .._config import get_settings
from .._guard import guard
from .._journal import MAPPED_SUFFIX, SUFFIXES, Journal, all_journals, journal_dir, owner_alive

if TYPE_CHECKING:
    from .fold import Segment

_log = logging.getLogger("keito_instrument")

TICK = 1.0  # seconds between folds when nothing wakes the worker
BATCH_DELAY = 0.05  # seconds a wake-up waits for more session ends before folding
RECOVER_EVERY = 5.0  # seconds between looks for journals left by processes that are gone
_lock = threading.RLock()  # one fold at a time in this process
_thread: threading.Thread | None = None
_start_lock = threading.Lock()
_stop = threading.Event()
_last_recover: dict[str, float] = {}
_memory_folded: dict[str, int] = {}  # journal owner -> in-memory events folded so far
listeners: list[Callable[[object], None]] = []


def ensure_started() -> None:
    """Start the billing thread if it is not running (cheap when it is)."""
    global _thread, _stop
    if _forksafe.unhooked:
        return  # (a child forked without Python's hooks: no thread of ours, see _forksafe.check_pid)
    thread = _thread
    if thread is not None and thread.is_alive() and not _stop.is_set():
        return
    with _start_lock:
        if _thread is None or not _thread.is_alive() or _stop.is_set():
            _stop = threading.Event()  # a stopping thread keeps its own (set) event
            _thread = threading.Thread(target=_loop, args=(_stop,), name="keito-instrument-billing",
                                       daemon=True)
            _thread.start()


def _loop(stop: threading.Event) -> None:
    from .. import _journal

    while not stop.is_set():
        if _journal.WAKE.wait(TICK):
            # Woken by a session end: let a burst of them gather first, so that they are folded
            # in one transaction rather than one each (flush() and the CLI fold at once anyway).
            stop.wait(BATCH_DELAY)
        _journal.WAKE.clear()
        if stop.is_set():
            return
        with guard("billing"):
            cycle()


def cycle(recover: bool | None = None) -> int:
    """One pass over every journal this process writes: fold, bill, rotate, recover. Returns the
    number of records built."""
    built = 0
    with _lock:
        for journal in all_journals():
            # One ledger's trouble (a deleted or broken file) never stops the others' billing.
            with guard("billing"):
                built += _fold_journal(journal)
            now = time.monotonic()
            last = _last_recover.get(journal.dir, 0.0)
            if recover or (recover is None and now - last >= RECOVER_EVERY):
                _last_recover[journal.dir] = now
                try:
                    built += fold_ledger(journal.ledger_path, include_live=False, skip_owner=journal.owner)
                except Exception as exc:
                    if not _writer.is_ledger_error(exc):
                        raise  # (an unusable ledger is reported by the fold of this process's journal)
    return built


def _segments_of(directory: str, owner: str | None) -> dict[str, list[tuple[int, str]]]:
    from .fold import Segment  # noqa: F401  (the import warms the module)

    found: dict[str, list[tuple[int, str]]] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return found
    for name in names:
        suffix = next((x for x in SUFFIXES if name.endswith(x)), None)
        if suffix is None:
            continue
        parts = name[: -len(suffix)].rsplit(".", 1)
        if len(parts) != 2 or not parts[1].isdigit():
            continue
        if owner is None or parts[0] == owner:
            found.setdefault(parts[0], []).append((int(parts[1]), name))
    for segs in found.values():
        segs.sort()
    return found


def _fold_journal(journal: Journal) -> int:
    from .._spool import get_spool
    from .fold import Segment, fold

    settings = get_settings()
    current = journal.seq  # (before listing: a host thread may start the next segment meanwhile)
    segs = _segments_of(journal.dir, journal.owner).get(journal.owner, [])
    memory: list[tuple[str, bytes]] = []
    while journal.memory:
        memory.append((journal.owner, journal.memory.popleft()))
    segments = [Segment(name, os.path.join(journal.dir, name), journal.owner) for _seq, name in segs]
    spool = get_spool(journal.ledger_path)
    base = _memory_folded.get(journal.owner, 0)
    try:
        result = fold(spool, settings, segments, memory, _alive_check(journal),
                      others=lambda: _other_segments(journal), memory_key=(f"{journal.owner}.memory", base))
    except BaseException as exc:
        for item in reversed(memory):  # folded next time
            journal.memory.appendleft(item[1])
        if not _writer.is_ledger_error(exc):
            raise
        _writer.ledger_failed(journal, exc)  # kept, counted and reported: not an internal error
        return 0
    _memory_folded[journal.owner] = base + len(memory)
    _writer.ledger_ok(journal, spool)
    _after_fold(result.built, settings.has_credentials)
    _prune.maybe_prune(spool, settings)
    _compact_own(journal, segs, result.complete, current)
    return sum(len(b.records) for b in result.built)


def _other_segments(journal: Journal) -> list[Segment]:
    from .fold import Segment

    found = _segments_of(journal.dir, None)
    return [Segment(name, os.path.join(journal.dir, name), owner)
            for owner, segs in found.items() if owner != journal.owner for _seq, name in segs]


def _alive_check(journal: Journal) -> Callable[[str], bool]:
    cache: dict[str, bool] = {journal.owner: True}

    def alive(owner: str) -> bool:
        if owner not in cache:
            cache[owner] = owner_alive(journal.dir, owner)
        return cache[owner]

    return alive


def _compact_own(journal: Journal, segs: list[tuple[int, str]], complete: dict[str, bool], current: int) -> None:
    """Delete this process's segments folded to their end that were already old when the fold
    began (`current`: the segment then being written, which may have taken lines since); start
    the next segment when the current one is folded and big enough."""
    for seq, name in segs:
        path = os.path.join(journal.dir, name)
        if seq < current and complete.get(name):
            try:
                # An old plain segment may still take a write() from a host thread that read
                # its descriptor just before the swap; no copy goes into an old mapped one.
                if name.endswith(MAPPED_SUFFIX) or time.time() - os.path.getmtime(path) > 5.0:
                    os.unlink(path)
            except OSError:
                pass
        elif seq == current == journal.seq and complete.get(name) and journal.should_rotate():
            journal.rotate()  # (here, so that a host thread rarely starts a segment itself)


def fold_ledger(ledger_path: str, include_live: bool = True, skip_owner: str | None = None) -> int:
    """Fold the journals of every process of a ledger (`include_live=False`: only of processes
    that are gone), end what is due, and delete what is folded. Used by the CLI and recovery."""
    from .._spool import get_spool
    from .fold import Segment, fold

    directory = journal_dir(ledger_path)
    owners = _segments_of(directory, None)
    alive = {owner: owner_alive(directory, owner) for owner in owners if owner != skip_owner}
    chosen = [o for o in owners if o != skip_owner and (include_live or not alive[o])]
    segments = [Segment(n, os.path.join(directory, n), o) for o in chosen for _s, n in owners[o]]
    settings = get_settings()
    if not segments and not os.path.exists(ledger_path):
        return 0
    result = fold(get_spool(ledger_path), settings, segments, None,
                  lambda owner: owner == skip_owner or alive.get(owner, owner_alive(directory, owner)))
    _after_fold(result.built, settings.has_credentials)
    for owner in chosen:
        if alive[owner]:
            continue
        names = [n for _s, n in owners[owner]]
        if all(result.complete.get(n) for n in names):
            for name in [*names, f"{owner}.lock"]:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
            _forget_offsets(ledger_path, names)
    return sum(len(b.records) for b in result.built)


def _forget_offsets(ledger_path: str, names: list[str]) -> None:
    from .._spool import get_spool

    with get_spool(ledger_path).transaction() as conn:
        conn.executemany("DELETE FROM journal_offsets WHERE segment = ?", [(n,) for n in names])


def _after_fold(built: Sequence[object], credentials: bool) -> None:
    for one in built:
        for listener in list(listeners):
            with guard("record listener"):
                listener(one)
    if built and credentials:
        # Imported here, under the fold lock that a fork waits for, rather than by the exporter
        # thread that notify() starts: a child forked in the middle of importing httpx and ssl
        # would hang in its own exporter's first SSL context.
        from .. import _export
        from .._export import worker  # noqa: F401

        _export.notify()


def settle(timeout: float, recover: bool = False) -> bool:
    """Fold everything this process journalled, now (bounded by `timeout`); True if done.

    Sessions whose end was journalled are billed; a second pass picks up lines that threads
    counted before the end but wrote just after it. `recover`: also fold the journals of
    processes that are gone (a forked worker that ended its sessions and exited at once).
    """
    deadline = time.monotonic() + max(0.0, timeout)
    if not _lock.acquire(timeout=max(0.0, timeout)):
        return False
    try:
        for attempt in range(50):
            with guard("billing settle"):
                cycle(recover=recover and attempt == 0)
            if not _pending_own_ends() or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        return not _pending_own_ends()
    finally:
        _lock.release()


def _pending_own_ends() -> bool:
    from .._spool import get_spool

    for journal in all_journals():
        if journal.memory or _writer.unwritten(journal.ledger_path)["sessions"]:
            return True
        try:
            conn = get_spool(journal.ledger_path).connect()
            due = conn.execute("SELECT state FROM live WHERE due_at <= ?", (time.time() + 5.0,)).fetchall()
        except Exception as exc:
            if not _writer.is_ledger_error(exc):
                raise
            return True
        for (text,) in due:
            if f'"{journal.owner}":' in text and '"ends":{}' not in text:
                return True
    return False


def _before_read(path: str) -> None:
    from .._journal import all_journals

    if any(j.ledger_path == path for j in all_journals()) and threading.current_thread() is not _thread:
        settle(5.0, recover=True)  # a reader sees what every process that is gone left durable too


def stop(timeout: float) -> None:
    """Fold what is left and stop the billing thread (shutdown); the next session starts it again."""
    global _thread
    deadline = time.monotonic() + max(0.0, timeout)
    settle(timeout)
    _writer.warn_unwritten("shutdown")
    with _start_lock:
        thread = _thread
        _stop.set()
        from .._journal import WAKE

        WAKE.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, min(1.0, deadline - time.monotonic())))
        _thread = None


_fork_holds_lock = False


def _before_fork() -> None:
    # A fork in the middle of a fold would hand the child SQLite's in-process lock bookkeeping
    # for a transaction whose file locks stay with the parent: the child's next BEGIN then waits
    # forever. Wait (bounded) for the fold to finish instead.
    global _fork_holds_lock
    _fork_holds_lock = _lock.acquire(timeout=2.0)


def _after_fork_in_parent() -> None:
    global _fork_holds_lock
    if _fork_holds_lock:
        _fork_holds_lock = False
        _lock.release()


def _after_fork_in_child() -> None:
    global _thread, _lock, _start_lock, _stop, _fork_holds_lock
    _fork_holds_lock = False
    _thread, _lock, _start_lock, _stop = None, threading.RLock(), threading.Lock(), threading.Event()
    _last_recover.clear()
    _memory_folded.clear()


def _after_reopen(path: str, conn: sqlite3.Connection) -> None:
    # The ledger was deleted while open and a new one is in its place: what this process folded
    # into the old one stays folded (its journal lines are not billed a second time).
    offsets = _writer.committed_offsets(path)
    conn.executemany(
        "INSERT INTO journal_offsets (segment, offset, updated_at) VALUES (?,?,?)"
        " ON CONFLICT (segment) DO UPDATE SET offset = max(offset, excluded.offset)",
        [(name, offset, time.time()) for name, offset in offsets.items()],
    )
    _log.warning("keito-instrument: the ledger %s was deleted while in use; a new one is written in its place "
                 "(what the deleted file held is not in it)", path)


def _install_read_hook() -> None:
    from .. import _spool

    _spool.before_read = _before_read
    _spool.after_reopen = _after_reopen


_install_read_hook()
# Registered after the spool's hooks, so that ours runs first before a fork (they run in reverse
# order): the fold lock is always taken before a spool's write lock, as the billing thread does.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)
_forksafe.in_child(_after_fork_in_child)

