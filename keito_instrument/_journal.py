"""The host side of billing: one durable append per counted event, and nothing else.

Every event a session records (a run's start and end, an LLM call, tool calls and errors, an
outcome, the session's end) is one JSON line appended to this process's journal segment (lines
of one instant, such as a run's end and the session's end, in one append). A segment is a file
of `SEGMENT_BYTES` zeros written up front and mapped into memory (`mmap`, shared): an append is
a copy into the page cache under a lock, with no system call, so it never gives up the GIL (a
host thread that gives it up while the billing or delivery thread wants it may wait milliseconds
to get it back). Once the copy is done the line is in the operating system's page cache, like a
`write()`'s: a SIGKILL of the process an instant later loses nothing (only an OS crash or power
loss can, as with the ledger's own WAL mode). Readers stop at the first zero byte: a JSON line
never holds one, so a line still being copied (or cut short by a kill) is never read as an event.
Where a segment cannot be mapped, it is a plain file opened with O_APPEND and each append is one
`write()`. No lock is held across I/O, nothing is priced, no record is built and no SQLite
transaction runs on the host's thread; the billing worker (`_engine`) folds the journal into the
ledger in the background, and starts the next segment there before this one fills.

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
import mmap
import os
import threading
import time
from collections import deque
from typing import Any

from . import _forksafe

_log = logging.getLogger("keito_instrument")

MAX_MEMORY_LINES = 100_000
SEGMENT_BYTES = 1 << 20  # the size of a mapped segment (zeros written up front: ~0.3 ms, once)
# A mapped segment has its own suffix: a reader that predates mapped segments (another process
# sharing the ledger during a rolling upgrade) would not stop at their zeros, so it never sees one.
MAPPED_SUFFIX, PLAIN_SUFFIX = ".jmap", ".jsonl"
SUFFIXES = (MAPPED_SUFFIX, PLAIN_SUFFIX)
MAPPED = os.environ.get("KEITO_JOURNAL_MMAP", "1") != "0"  # (0: plain write() segments)
ROTATE_BYTES = 4 * 1024 * 1024  # a plain segment's size past which the worker starts the next one
_ZEROS = bytes(64 * 1024)
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
        self.mapped = MAPPED
        self.mm: mmap.mmap | None = None  # the current segment's mapping (None: a plain segment)
        self.pos = 0  # bytes appended to the mapped segment
        self.suffix = MAPPED_SUFFIX if self.mapped else PLAIN_SUFFIX  # the current segment's
        self._put_lock = threading.Lock()  # held for one copy into the mapping: never across I/O
        self._lock_fd = -1
        self._open_lock = threading.Lock()
        self.memory: deque[bytes] = deque()
        self.dropped = 0
        self.failed = False
        self.torn = False  # the last write was cut short
        self._warned = False
        self.wake = WAKE

    # -- segments --------------------------------------------------------------------------------
    def segment_path(self, seq: int, suffix: str | None = None) -> str:
        """The path of one of this owner's segments (by default with the current segment's
        suffix: `.jmap` for a mapped one, `.jsonl` for a plain one)."""
        return os.path.join(self.dir, f"{self.owner}.{seq:06d}{suffix or self.suffix}")

    def _open(self, room: int = 0) -> int:
        """Open a first segment (or the next, after a failed rotation); the current fd."""
        with self._open_lock:
            if self.fd < 0 and not self.failed:
                self._start_segment(room)
            return self.fd

    def rotate(self, room: int = 0) -> int:
        """Start a new segment (the billing worker does this once the current one is folded).
        The new segment is made before it replaces the current one, which takes appends until
        then. Returns the sequence number of the segment that was current."""
        with self._open_lock:
            previous = self.seq
            self._start_segment(room)
            return previous

    def _rotate_with(self, data: bytes, full: mmap.mmap | None) -> bool:
        # A host thread found no room (`full`: the mapping it found full, None before the first
        # segment): unless another thread has moved on already and the new segment has room,
        # start the next one with `data` copied in as its first lines, in the same step as the
        # swap, so that other threads cannot fill it first. False: `data` is not written (a
        # plain segment now, or none could be made).
        with self._open_lock:
            if self.failed:
                return False
            if (self.mm is not full or full is None) and self.fd >= 0 and self._put(data):
                return True
            if self.fd >= 0 and self.mm is None:
                return False  # a plain segment: the caller writes
            return self._start_segment(len(data), data)

    def _start_segment(self, room: int, first: bytes | None = None) -> bool:
        # (under _open_lock) Make the next segment, then swap it in under the copy lock (with
        # `first` copied in): no copy into the old mapping starts after the swap, so it closes at
        # once; an old plain descriptor may still be in a host thread's write(): the worker folds
        # old segments again before deleting them, and it is closed later. True: `first` written.
        try:
            os.makedirs(self.dir, exist_ok=True)
            if self._lock_fd < 0:
                self._lock_fd = _hold_lock(os.path.join(self.dir, f"{self.owner}.lock"))
            seq, fd, mm = self.seq + 1, -1, None
            if self.mapped and _mappable(self.dir):
                fd, mm = _mapped_segment(self.segment_path(seq, MAPPED_SUFFIX), max(SEGMENT_BYTES, room))
            if mm is None:
                fd = os.open(self.segment_path(seq, PLAIN_SUFFIX), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            if self.fd < 0:
                self.failed = True
                _log.error("keito-instrument: cannot write the journal in %s (%s); sessions are billed "
                           "from memory and are not crash-safe", self.dir, exc)
            return False
        written = False
        with self._put_lock:
            old_fd, old_mm = self.fd, self.mm
            self.fd, self.mm, self.pos, self.seq = fd, mm, 0, seq
            self.suffix = PLAIN_SUFFIX if mm is None else MAPPED_SUFFIX
            if mm is not None and first is not None and len(first) <= len(mm):
                mm[: len(first)] = first
                self.pos, written = len(first), True
        if old_mm is not None:
            with contextlib.suppress(Exception):
                old_mm.close()
            with contextlib.suppress(OSError):
                os.close(old_fd)
        elif old_fd >= 0:
            _close_later(old_fd)
        return written

    def should_rotate(self) -> bool:
        """Whether the current segment is big enough for the worker to start the next one (once
        it has folded this one): a mapped one half full, a plain one past `ROTATE_BYTES`."""
        mm = self.mm
        if mm is not None:
            return self.pos > len(mm) // 2
        try:
            return self.fd >= 0 and os.fstat(self.fd).st_size > ROTATE_BYTES
        except OSError:
            return False

    # -- the hot path ----------------------------------------------------------------------------
    def append(self, event: list[Any], wake: bool = False) -> None:
        """Write one event durably (one append); never raises."""
        self.append_line((_dumps(event) + "\n").encode("utf-8", "replace"), wake)

    def append_line(self, data: bytes, wake: bool = False) -> None:
        """Write already encoded event lines (each ending in a newline) durably, all in one
        append; never raises."""
        if not self._put(data):
            self._append_slow(data)
        if wake and not self.wake.is_set():  # (set() takes a lock and notifies)
            self.wake.set()

    def _put(self, data: bytes) -> bool:
        # The copy into the mapped segment: all of `data` or nothing.
        with self._put_lock:
            mm = self.mm
            if mm is None:
                return False
            pos = self.pos
            end = pos + len(data)
            if end > len(mm):
                return False
            try:
                mm[pos:end] = data
            except Exception:  # (a mapping that went bad: the slow path takes over)
                return False
            self.pos = end
            return True

    def _append_slow(self, data: bytes) -> None:
        # No mapped segment with room: start one (the first append, or a full segment), else
        # write() to a plain segment, else (the journal cannot be written) keep it in memory.
        if self._rotate_with(data, self.mm):
            return
        fd = self.fd
        if fd >= 0 and self.mm is None:
            try:
                # A full disk may cut a write short; the next write first ends the cut line with
                # a mark that no parser reads as an event (the lines not wholly written are kept
                # in memory; those written whole are on disk, and only there).
                out = TORN_END + data if self.torn else data
                written = os.write(fd, out)
                if written == len(out):
                    self.torn = False
                    return
                self.torn = True
                done = written - (len(out) - len(data))  # bytes of `data` itself written
                if done > 0:
                    data = data[data.rfind(b"\n", 0, done) + 1:]
                raise OSError("short write to the journal")
            except OSError as exc:
                self._write_failed(exc)
        self._keep_in_memory(data)

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
            with self._put_lock:
                mm, self.mm = self.mm, None
            if mm is not None:
                with contextlib.suppress(Exception):
                    mm.close()
            for fd in (self.fd, self._lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.fd = self._lock_fd = -1

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's descriptors without touching the parent's files."""
        if self.mm is not None:
            with contextlib.suppress(Exception):
                self.mm.close()  # (this process's view only: the parent's mapping and file stay)
        for fd in (self.fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's flock stays: it is held by the parent's open file
        self.__init__(self.ledger_path)  # type: ignore[misc]
        self.wake = WAKE  # (the child's, set up by the fork hook)


# File systems that write a file's pages in place, so that a copy into a mapped page whose
# blocks were written up front never needs new disk space: on copy-on-write ones (btrfs, ZFS,
# APFS, bcachefs) a page fault on a full disk is a SIGBUS, which would kill the host. There, and
# wherever the type cannot be told, segments are plain files written with write().
_IN_PLACE = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs", "overlay"})
_mappable_dirs: dict[str, bool] = {}


def _mappable(directory: str) -> bool:
    """Whether segments in `directory` may be mapped (its file system writes in place)."""
    found = _mappable_dirs.get(directory)
    if found is None:
        found = _mappable_dirs[directory] = _fs_type(directory) in _IN_PLACE
    return found


def _fs_type(directory: str) -> str:
    """The type of the file system holding `directory` ("" when it cannot be told)."""
    try:
        path = os.path.realpath(directory)
        best, kind = "", ""
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
        return kind
    except OSError:
        return ""


def _mapped_segment(path: str, size: int) -> tuple[int, mmap.mmap | None]:
    """A new segment of `size` zero bytes, mapped; (-1, None) when it cannot be. The zeros are
    written (not a sparse file, not fallocate): the disk space is taken now, where a full disk is
    an error here rather than a SIGBUS in a later copy, and the pages are in the page cache."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return -1, None
    try:
        done = 0
        while done < size:
            done += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), size - done)], done)
        return fd, mmap.mmap(fd, size)
    except (OSError, ValueError, OverflowError):
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return -1, None


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


_forksafe.in_child(_after_fork_in_child)
