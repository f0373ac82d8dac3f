"""Fallback writer: when the spool is busy, ended sessions are written by a background thread.

The host thread tries one durable append with a short busy timeout (the normal case: well under
a millisecond). Only if another writer holds the SQLite lock longer than that is the session
handed to this bounded queue, so the host never waits on a lock held by another process.

It also keeps the account of ledger trouble (below): what could not be written yet, for the
warnings, `keito-instrument status` and `unwritten()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from ._guard import guard
from ._journal import MAX_MEMORY_LINES, SUFFIXES

if TYPE_CHECKING:
    from ._journal import Journal
    from ._records import Built
    from ._spool import Spool

_log = logging.getLogger("keito_instrument")

MAX_QUEUED = 10_000
MAX_SCAN = 64 * 1024 * 1024  # bytes of one journal segment read per count of its waiting sessions


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


# -- ledger trouble ------------------------------------------------------------------------------
# When the ledger cannot be written (an unwritable path, a corrupt file, a full disk), the billing
# worker keeps folding nothing: journalled events wait where they are (the journal on disk, or,
# when the journal cannot be written either, this process's bounded in-memory buffer of
# `MAX_MEMORY_EVENTS` events; past it events are dropped and counted) and are written by the
# first fold after the ledger works again. This tracker counts what waits, warns about it and
# leaves a small status file in the temporary directory, so that `keito-instrument status` (another
# process) can show it even when the ledger itself is unusable.

MAX_MEMORY_EVENTS = MAX_MEMORY_LINES
WARN_EVERY = 60.0  # seconds between repeated warnings while the ledger stays unusable
_END = b'["e",'


def is_ledger_error(exc: BaseException) -> bool:
    """True for the errors of an unusable ledger (not for our own bugs, such as a bad statement)."""
    import sqlite3

    return isinstance(exc, OSError) or type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError)


class Trouble:
    """What one ledger's trouble left waiting in this process."""

    def __init__(self, path: str, owner: str) -> None:
        self.path, self.owner = path, owner
        self.error = ""
        self.since = time.time()
        self.warned_at = 0.0
        self.sessions = self.events = self.dropped = 0
        self.scanned: dict[str, tuple[int, int]] = {}  # segment -> (bytes scanned, session ends)

    def as_dict(self) -> dict[str, Any]:
        return {"ledger": self.path, "pid": os.getpid(), "owner": self.owner, "error": self.error,
                "since": self.since, "sessions": self.sessions, "events": self.events,
                "dropped_events": self.dropped, "updated_at": time.time()}


_troubles: dict[str, Trouble] = {}
_committed: dict[str, dict[str, int]] = {}  # ledger -> {own segment: offset folded}


def ledger_failed(journal: Journal, exc: BaseException) -> None:
    """The fold of this journal failed on the ledger: count what waits, warn, tell `status`."""
    trouble = _troubles.get(journal.ledger_path)
    if trouble is None:
        trouble = _troubles[journal.ledger_path] = Trouble(journal.ledger_path, journal.owner)
    trouble.error = f"{type(exc).__name__}: {exc}"
    in_memory = list(journal.memory)
    on_disk = _ends_on_disk(journal, trouble)
    trouble.events = len(in_memory)
    trouble.sessions = sum(1 for line in in_memory if line.startswith(_END)) + on_disk
    grew = journal.dropped > trouble.dropped
    trouble.dropped = journal.dropped
    now = time.monotonic()
    if grew or now - trouble.warned_at >= WARN_EVERY:
        trouble.warned_at = now
        _log.warning(
            "keito-instrument: cannot write the ledger %s (%s): %d session(s) wait to be written (%d event(s) "
            "in memory, at most %d; %d dropped past that bound); they are written once the ledger works "
            "(fix or move the file aside)", journal.ledger_path, trouble.error, trouble.sessions,
            trouble.events, MAX_MEMORY_EVENTS, trouble.dropped)
    _save(trouble)


def ledger_ok(journal: Journal, spool: Spool) -> None:
    """A fold of this journal succeeded: remember what it folded; end any trouble."""
    prefix = f"{journal.owner}."
    rows = spool.connect().execute(
        "SELECT segment, offset FROM journal_offsets WHERE segment >= ? AND segment < ?",
        (prefix, f"{journal.owner}/"),
    ).fetchall()
    _committed[journal.ledger_path] = {str(name): int(offset) for name, offset in rows}
    trouble = _troubles.pop(journal.ledger_path, None)
    if trouble is None:
        return
    journal.failed = False  # the journal may be writable again too: the next event tries it
    _log.warning("keito-instrument: the ledger %s works again; the %d session(s) that waited are written "
                 "(%d event(s) were dropped while it did not)", journal.ledger_path, trouble.sessions,
                 trouble.dropped)
    with contextlib.suppress(OSError):
        os.unlink(_status_file(journal.ledger_path, journal.owner))


def committed_offsets(ledger_path: str) -> dict[str, int]:
    """The journal offsets this process last folded into a ledger (to seed a recreated ledger)."""
    return dict(_committed.get(ledger_path, {}))


def _ends_on_disk(journal: Journal, trouble: Trouble) -> int:
    """Session ends in this process's journal segments not yet folded (scanned incrementally)."""
    done = _committed.get(journal.ledger_path, {})
    total = 0
    try:
        names = sorted(n for n in os.listdir(journal.dir) if n.startswith(f"{journal.owner}.")
                       and n.endswith(SUFFIXES))
    except OSError:
        return 0
    for name in names:
        pos, ends = trouble.scanned.get(name, (done.get(name, 0), 0))
        try:
            with open(os.path.join(journal.dir, name), "rb") as fh:
                fh.seek(pos)
                data = fh.read(MAX_SCAN)
        except OSError:
            data = b""
        zero = data.find(b"\0")  # (a mapped segment's unwritten rest)
        data = data if zero < 0 else data[:zero]
        complete = data[: data.rfind(b"\n") + 1]
        ends += sum(1 for line in complete.splitlines() if line.startswith(_END))
        trouble.scanned[name] = (pos + len(complete), ends)
        total += ends
    return total


def unwritten(ledger_path: str | None = None) -> dict[str, Any]:
    """What this process holds that the ledger could not take yet (for one ledger, or all).

    `sessions`: ended sessions waiting (in memory or in the journal on disk); `events`: journal
    events held in memory (at most `MAX_MEMORY_EVENTS` per ledger); `dropped_events`: events past
    that bound, lost; `error`: the last ledger error ("" when none).
    """
    chosen = [t for p, t in _troubles.items() if ledger_path is None or p == ledger_path]
    return {"sessions": sum(t.sessions for t in chosen), "events": sum(t.events for t in chosen),
            "dropped_events": sum(t.dropped for t in chosen), "error": "; ".join(t.error for t in chosen)}


def warn_unwritten(reason: str) -> None:
    """Warn, once per call, about sessions still waiting (called when the billing worker stops)."""
    for trouble in list(_troubles.values()):
        if trouble.sessions or trouble.events:
            _log.warning("keito-instrument: %d session(s) (%d event(s)) could not be written to the ledger %s "
                         "(%s) and are lost if this process exits now (%s)", trouble.sessions, trouble.events,
                         trouble.path, trouble.error, reason)
            _save(trouble)


def _status_dir() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"keito-instrument-{os.getuid()}")


def _status_file(ledger_path: str, owner: str) -> str:
    import hashlib  # (here: it costs 4 ms at import)

    digest = hashlib.sha256(ledger_path.encode("utf-8", "replace")).hexdigest()[:16]
    return os.path.join(_status_dir(), f"{digest}.{owner}.json")


def _save(trouble: Trouble) -> None:
    path = _status_file(trouble.path, trouble.owner)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(trouble.as_dict(), fh)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # (a full disk may refuse even this small file: the warnings above remain)


def reported(ledger_path: str) -> dict[str, Any]:
    """What every process left in the status files of a ledger: sessions still waiting in running
    processes, and sessions lost by processes that exited with them (for `keito-instrument status`)."""
    out: dict[str, Any] = {"sessions": 0, "events": 0, "dropped_events": 0, "lost_sessions": 0,
                           "processes": 0, "errors": []}
    prefix = _status_file(ledger_path, "").rsplit(".", 1)[0]
    try:
        names = [n for n in os.listdir(_status_dir()) if os.path.join(_status_dir(), n).startswith(prefix)]
    except OSError:
        return out
    for name in sorted(names):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(_status_dir(), name), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        if _pid_alive(int(data.get("pid", 0))):
            out["processes"] += 1
            out["sessions"] += int(data.get("sessions", 0))
            out["events"] += int(data.get("events", 0))
            out["errors"].append(str(data.get("error", "")))
        else:
            out["lost_sessions"] += int(data.get("sessions", 0))
        out["dropped_events"] += int(data.get("dropped_events", 0))
    return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def ledger_health(spool: Spool) -> dict[str, Any]:
    """For `keito-instrument status`: what processes could not write (`unwritten`, see `reported`)
    and how many delivered records pruning removed (`pruned_delivered`)."""
    from ._prune import meta

    return {"unwritten": reported(str(spool.path)), "pruned_delivered": int(meta(spool.connect(), "pruned_delivered"))}


def health_lines(health: dict[str, Any]) -> list[str]:
    """`ledger_health` as the lines of the status table (none when all is well)."""
    lines, waiting = [], health["unwritten"]
    if waiting["processes"]:
        lines.append(f"unwritten:   {waiting['sessions']:,} session(s) ({waiting['events']:,} event(s) in memory) "
                     f"wait in {waiting['processes']} running process(es) that cannot write the ledger: "
                     f"{'; '.join(sorted(set(waiting['errors'])))}")
    if waiting["lost_sessions"] or waiting["dropped_events"]:
        lines.append(f"lost:        {waiting['lost_sessions']:,} session(s) held by processes that exited before "
                     f"the ledger could take them, {waiting['dropped_events']:,} event(s) dropped past the "
                     f"in-memory bound of {MAX_MEMORY_EVENTS:,}")
    if health["pruned_delivered"]:
        lines.append(f"pruned:      {health['pruned_delivered']:,} delivered record(s) past the retention "
                     "(not in the table below)")
    return lines
