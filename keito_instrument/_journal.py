"""The host side of billing: one durable append per counted event, and nothing else.

Every event a session records (a run's start and end, an LLM call, tool calls and errors, an
outcome, the session's end) is one JSON line, written with a single `write()` to this process's
journal segment, opened with O_APPEND (lines of one instant, such as a run's end and the session's
end, go in the same `write()`). Once `write()` returns the line is in the operating system's page
cache: a SIGKILL of the process an instant later loses nothing (only an OS crash or
power loss can, as with the ledger's own WAL mode). No lock is taken, nothing is priced, no
record is built and no SQLite transaction runs on the host's thread; the billing worker
(`_engine`) folds the journal into the ledger in the background.

Layout, beside the ledger: `<ledger>.journal/<owner>.lock` (held with flock for the life of the
process, so another process can tell a live owner from a dead one) and
`<ledger>.journal/<owner>.<seq>.jsonl` (segments; the worker rotates and deletes them once they
are folded). When the journal cannot be written (a read-only or full disk) the line is kept in a
bounded in-memory buffer the worker folds from instead, so the session is still billed by this
process (but is not crash-safe).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from typing import Any

_log = logging.getLogger("keito_instrument")

MAX_MEMORY_LINES = 100_000
TORN_END = b"!\n"  # ends a line a full disk cut short: never valid JSON, so never an event
WAKE = threading.Event()  # set when a session ends: the billing worker folds at once
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def journal_dir(ledger_path: str) -> str:
    """The journal folder of a ledger."""
    return ledger_path + ".journal"


def new_owner() -> str:
    """A journal owner id: unique per process (and per fork)."""
    return f"{os.getpid():x}-{os.urandom(4).hex()}"


class Journal:
    """This process's journal for one ledger. `append` is thread-safe and lock-free."""

    def __init__(self, ledger_path: str) -> None:
        self.ledger_path = ledger_path
        self.dir = journal_dir(ledger_path)
        self.owner = new_owner()
        self.seq = 0
        self.fd = -1
        self._lock_fd = -1
        self._open_lock = threading.Lock()
        self.memory: deque[bytes] = deque()
        self.dropped = 0
        self.failed = False
        self.torn = False  # the last write was cut short
        self._warned = False
        self.wake = WAKE

    # -- segments --------------------------------------------------------------------------------
    def segment_path(self, seq: int) -> str:
        """The path of one of this owner's segments."""
        return os.path.join(self.dir, f"{self.owner}.{seq:06d}.jsonl")

    def _open(self) -> int:
        with self._open_lock:
            if self.fd >= 0 or self.failed:
                return self.fd
            try:
                os.makedirs(self.dir, exist_ok=True)
                if self._lock_fd < 0:
                    self._lock_fd = _hold_lock(os.path.join(self.dir, f"{self.owner}.lock"))
                self.seq += 1
                self.fd = os.open(self.segment_path(self.seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                self.failed = True
                _log.error("keito-instrument: cannot write the journal in %s (%s); sessions are billed "
                           "from memory and are not crash-safe", self.dir, exc)
            return self.fd

    def rotate(self) -> int:
        """Start a new segment (the billing worker does this once the current one is folded).
        Returns the sequence number of the segment that was current."""
        with self._open_lock:
            old, self.fd = self.fd, -1
            previous = self.seq
        self._open()
        if old >= 0:
            # A host thread that read the old descriptor just before the swap may still be
            # writing to it; the worker folds old segments again before deleting them.
            _close_later(old)
        return previous

    # -- the hot path ----------------------------------------------------------------------------
    def append(self, event: list[Any], wake: bool = False) -> None:
        """Write one event durably (one `write()`); never raises."""
        self.append_line((_dumps(event) + "\n").encode("utf-8", "replace"), wake)

    def append_line(self, data: bytes, wake: bool = False) -> None:
        """Write already encoded event lines (each ending in a newline) durably, all in one
        `write()`; never raises."""
        fd = self.fd if self.fd >= 0 else self._open()
        if fd >= 0:
            try:
                # A full disk may cut a write short; the next write first ends the cut line with
                # a mark that no parser reads as an event (the lines not wholly written are kept
                # in memory; those written whole are on disk, and only there).
                out = TORN_END + data if self.torn else data
                written = os.write(fd, out)
                if written == len(out):
                    self.torn = False
                    if wake and not self.wake.is_set():  # (set() takes a lock and notifies)
                        self.wake.set()
                    return
                self.torn = True
                done = written - (len(out) - len(data))  # bytes of `data` itself written
                if done > 0:
                    data = data[data.rfind(b"\n", 0, done) + 1:]
                raise OSError("short write to the journal")
            except OSError as exc:
                self._write_failed(exc)
        self._keep_in_memory(data)
        if wake:
            self.wake.set()

    def _write_failed(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            _log.error("keito-instrument: journal write failed (%s); keeping events in memory", exc)

    def _keep_in_memory(self, data: bytes) -> None:
        # One line per item: the fold parses each item as one event.
        lines = [data] if data.count(b"\n") == 1 else [line + b"\n" for line in data.split(b"\n")[:-1]]
        for line in lines:
            if len(self.memory) >= MAX_MEMORY_LINES:
                self.dropped += 1
            else:
                self.memory.append(line)

    def close(self) -> None:
        """Close the segment and release the owner lock (the process is done with this ledger)."""
        with self._open_lock:
            for fd in (self.fd, self._lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.fd = self._lock_fd = -1

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's descriptors without touching the parent's files."""
        for fd in (self.fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's flock stays: it is held by the parent's open file
        self.__init__(self.ledger_path)  # type: ignore[misc]
        self.wake = WAKE  # (the child's, set up by the fork hook)


def _hold_lock(path: str) -> int:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def owner_alive(directory: str, owner: str) -> bool:
    """True while the process that owns these segments holds its lock (it is running)."""
    import fcntl

    path = os.path.join(directory, f"{owner}.lock")
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: never treat a possibly live owner as dead
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


_closing: list[tuple[float, int]] = []
_closing_lock = threading.Lock()


def _close_later(fd: int) -> None:
    now = time.monotonic()
    with _closing_lock:
        _closing.append((now, fd))
        due = [f for t, f in _closing if now - t > 5.0]
        _closing[:] = [(t, f) for t, f in _closing if now - t <= 5.0]
    for old in due:
        with contextlib.suppress(OSError):
            os.close(old)


_journals: dict[str, Journal] = {}
_journals_lock = threading.Lock()


def get_journal(ledger_path: str) -> Journal:
    """This process's journal for a ledger path."""
    journal = _journals.get(ledger_path)
    if journal is None:
        with _journals_lock:
            journal = _journals.get(ledger_path)
            if journal is None:
                journal = _journals[ledger_path] = Journal(ledger_path)
    return journal


def all_journals() -> list[Journal]:
    """Every journal this process has opened."""
    return list(_journals.values())


def _after_fork_in_child() -> None:
    global _journals_lock, _closing_lock, WAKE
    _journals_lock, _closing_lock, WAKE = threading.Lock(), threading.Lock(), threading.Event()
    _closing.clear()
    for journal in _journals.values():
        journal.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
