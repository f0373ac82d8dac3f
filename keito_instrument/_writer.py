"""Fallback writer: when the spool is busy, ended sessions are written by a background thread.

The host thread tries one durable append with a short busy timeout (the normal case: well under
a millisecond). Only if another writer holds the SQLite lock longer than that is the session
handed to this bounded queue, so the host never waits on a lock held by another process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from ._guard import guard

if TYPE_CHECKING:
    from ._records import Built

_log = logging.getLogger("keito_instrument")

MAX_QUEUED = 10_000


class Writer:
    """A lazily started daemon thread appending queued sessions to the spool, retrying while busy."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, Built, str]] = queue.Queue(maxsize=MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._warned_full = False

    def submit(self, ledger_path: str | None, built: Built, state: str) -> bool:
        """Queue a session for writing; False (and one error log) if the queue is full."""
        try:
            self._queue.put_nowait((ledger_path or "", built, state))
        except queue.Full:
            if not self._warned_full:
                self._warned_full = True
                _log.error("keito-instrument: the spool has been busy for too long; %d sessions are queued "
                           "and newer ones cannot be recorded", MAX_QUEUED)
            return False
        self._ensure_thread()
        return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="keito-instrument-writer", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        from ._spool import get_spool

        while True:
            try:
                path, built, state = self._queue.get(timeout=5.0)
            except queue.Empty:
                return  # idle: the thread ends; submit() starts a new one when needed
            delay = 0.05
            while True:
                with guard("spool writer"):
                    get_spool(path or None).append(built, state)
                    break
                time.sleep(delay)  # still busy (or failing): back off, the session stays queued
                delay = min(delay * 2, 2.0)
            self._queue.task_done()

    def pending(self) -> int:
        """Sessions waiting to be written."""
        return self._queue.unfinished_tasks

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the queue to empty; True if it did."""
        deadline = time.monotonic() + max(0.0, timeout)
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def after_fork_in_child(self) -> None:
        """The parent writes what it queued; the child starts empty."""
        self.__init__()  # type: ignore[misc]
