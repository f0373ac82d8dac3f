"""Fold journal segments into the ledger, exactly once, and bill the sessions that have ended.

One fold is one SQLite transaction: the events read from each segment since its recorded offset
are applied to the ledger's open sessions, the sessions that ended are turned into records (per
session, with the day's hours rounded once across entries), and the new offsets are stored, all
committed together. A crash anywhere before COMMIT leaves the ledger and the offsets as they
were, so the same lines are folded again by whoever folds next; after COMMIT they never are.
Any process may fold any segment: the offsets serialise them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .._config import Settings
from .._records import Built, build
from .._spool import Spool, insert_built
from .hours import HoursLedger
from .rollup import Rollups
from .state import LiveSession, row_key

_log = logging.getLogger("keito_instrument")
# The kind of the dead letter kept for a session that could not be billed (never sent: its
# payload is the session's state, for a fix and a re-fold).
UNBILLABLE = "unbillable"

MAX_READ = 8 * 1024 * 1024  # bytes read from one segment per fold
READ_BLOCK = 64 * 1024  # the first read of a segment in a fold (doubled while there is more)
MAX_DUE = 500  # open sessions examined per sweep
clock = time.time  # the engine's wall clock (tests move it forward)


class Segment(NamedTuple):
    """One journal segment: its file and the process that wrote it."""

    name: str
    path: str
    owner: str


class FoldResult(NamedTuple):
    """What a fold did."""

    built: list[Built]
    events: int
    complete: dict[str, bool]  # per segment name: folded to its end
    open_sessions: int


class _Batch:
    """The open sessions one fold touches, loaded from the ledger on first use."""

    def __init__(self, conn: sqlite3.Connection, settings: Settings) -> None:
        self.conn, self.settings = conn, settings
        self.rows: dict[str, LiveSession] = {}
        self.stored: set[str] = set()  # the sessions read from the ledger's `live` table (their keys)
        self.named: dict[str, dict[str, Any]] = {}
        self.named_end = False  # a conversation was ended explicitly in this fold

    def get(self, sid: str, ident: str, mode: str) -> LiveSession:
        key = row_key(sid, ident, mode)
        live = self.rows.get(key)
        if live is not None:
            return live
        found = self.conn.execute("SELECT state FROM live WHERE key = ?", (key,)).fetchone()
        if found is not None:
            live = LiveSession.loads(found[0])
            self.stored.add(live.key)
        else:
            live = LiveSession(key, sid, ident, mode)
            if mode == "i":  # a conversation continued after an earlier part was billed
                opts = self.conn.execute("SELECT options FROM named WHERE session_id = ?", (sid,)).fetchone()
                if opts is not None:
                    live.opts = json.loads(opts[0])
                    live.continued = True  # its id was seen in an earlier part: a conversation
        self.rows[key] = live
        return live

    def apply(self, event: list[Any], owner: str) -> None:
        kind, sid, ident, mode = event[0], str(event[1]), str(event[2]), str(event[3])
        live = self.get(sid, ident, mode)
        live.apply(event, owner, self.settings)
        if kind == "o" and mode == "i":
            self.named[sid] = dict(event[6])
        elif kind == "e" and mode == "i":
            self.named_end = True


def _read_from(path: str, offset: int) -> tuple[bytes, bool]:
    """The bytes of a segment from `offset` (at most MAX_READ, up to a mapped segment's unwritten
    zeros) and whether they reach its end. Read a block at a time, growing, so that a fold of a few
    new lines never copies the rest of a mapped segment (a megabyte of zeros) out of the kernel."""
    fd = os.open(path, os.O_RDONLY)
    try:
        blocks: list[bytes] = []
        total, size = 0, READ_BLOCK
        while True:
            want = min(size, MAX_READ - total)
            block = os.pread(fd, want, offset + total)
            zero = block.find(b"\0")
            if zero >= 0:  # a mapped segment's unwritten rest (no JSON line holds a zero byte)
                blocks.append(block[:zero])
                at_eof = True
                break
            blocks.append(block)
            total += len(block)
            if len(block) < want or total >= MAX_READ:
                at_eof = len(block) < want
                break
            size *= 2
    finally:
        os.close(fd)
    return (blocks[0] if len(blocks) == 1 else b"".join(blocks)), at_eof


def _read_lines(path: str, offset: int) -> tuple[list[bytes], int, bool]:
    """The whole lines of a segment from `offset`, the offset after them, and whether they are
    all that is there (bytes after them: a line still being written, or cut short)."""
    try:
        data, at_eof = _read_from(path, offset)
    except FileNotFoundError:
        return [], offset, True
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), offset + end, at_eof and end == len(data)


# json.loads without its wrappers (for the lines the host writes): the decoder's own scanner.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _parse(line: bytes) -> list[Any] | None:
    try:
        event = None
        if line[:1] == b"[":  # (so no byte-order mark: UTF-8, as json.loads would decode it)
            with contextlib.suppress(ValueError, StopIteration):
                text = line.decode("utf-8", "surrogatepass")
                found, end = _scan(text, 0)
                if end == len(text):
                    event = found
        if event is None:  # anything else (spaces around it, not JSON at all): as json.loads reads it
            event = json.loads(line)
    except ValueError:
        _log.warning("keito-instrument: skipping an unreadable journal line (%d bytes)", len(line))
        return None
    if not isinstance(event, list) or len(event) < 5:
        return None
    return event


def fold(
    spool: Spool,
    settings: Settings,
    segments: Iterable[Segment],
    memory: list[tuple[str, bytes]] | None = None,
    alive: Callable[[str], bool] | None = None,
    sweep: bool = True,
    others: Callable[[], Iterable[Segment]] | None = None,
    memory_key: tuple[str, int] | None = None,
) -> FoldResult:
    """Fold new journal lines (and lines kept in memory) into the ledger; end and bill what is due.

    `alive(owner)` tells whether the process behind an owner id still runs (a session whose
    process is gone ends by its idle timeout from its last activity). `others()`: the segments
    of the ledger's other processes, folded too when a conversation is ended explicitly (its
    turns served by other workers a moment ago are billed with it, not left for a second part).
    `memory_key` (name, position of the first line of `memory`): the in-memory lines are counted
    like a segment's, so a commit that failed after all (a full disk) never folds them twice.
    Raises on a SQLite error, in which case nothing was changed.
    """
    now = clock()
    built: list[Built] = []
    complete: dict[str, bool] = {}
    with spool.transaction() as conn:
        batch = _Batch(conn, settings)
        offsets: dict[str, int] = {}
        events = sum(_fold_segment(conn, batch, seg, offsets, complete, alive) for seg in segments)
        for owner, line in _unfolded(conn, memory or [], memory_key, offsets):
            event = _parse(line)
            if event is not None:
                batch.apply(event, owner)
                events += 1
        if batch.named_end and others is not None:
            events += sum(_fold_segment(conn, batch, seg, offsets, complete, alive)
                          for seg in others() if seg.name not in complete)
        if sweep:
            _load_due(conn, batch, now)
        hours = HoursLedger(conn, settings)
        rollups = Rollups(conn, settings, hours)
        state = "pending" if settings.has_credentials else "local"
        for live in batch.rows.values():
            reason = _end_reason(live, settings, now, alive)
            if reason is not None:
                if live.key in batch.stored:  # (a row this fold opened was never written)
                    conn.execute("DELETE FROM live WHERE key = ?", (live.key,))
                one = _bill_one(conn, live, reason, settings, hours, rollups, state)
                if one is not None:
                    built.append(one)
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO live (key, session_id, state, last_activity, due_at, updated_at)"
                    " VALUES (?,?,?,?,?,?)",
                    (live.key, live.sid, live.dumps(), live.last, _due_at(live, settings, now), now),
                )
        rollups.save()
        for one in rollups.close_due(now):
            insert_built(conn, one, state)
            built.append(one)
        hours.save()
        for sid, opts in batch.named.items():
            conn.execute("INSERT OR REPLACE INTO named (session_id, options, updated_at) VALUES (?,?,?)",
                         (sid, json.dumps(opts, default=str), now))
        conn.executemany(
            "INSERT OR REPLACE INTO journal_offsets (segment, offset, updated_at) VALUES (?,?,?)",
            [(name, off, now) for name, off in offsets.items()],
        )
        open_sessions = conn.execute("SELECT COUNT(*) FROM live").fetchone()[0]
    return FoldResult(built, events, complete, int(open_sessions))


def _unfolded(conn: sqlite3.Connection, memory: list[tuple[str, bytes]], key: tuple[str, int] | None,
              offsets: dict[str, int]) -> list[tuple[str, bytes]]:
    if key is None or not memory:
        return memory
    row = conn.execute("SELECT offset FROM journal_offsets WHERE segment = ?", (key[0],)).fetchone()
    offsets[key[0]] = key[1] + len(memory)
    return memory[max(0, (int(row[0]) if row else 0) - key[1]):]


def _fold_segment(conn: sqlite3.Connection, batch: _Batch, seg: Segment, offsets: dict[str, int],
                  complete: dict[str, bool], alive: Callable[[str], bool] | None = None) -> int:
    row = conn.execute("SELECT offset FROM journal_offsets WHERE segment = ?", (seg.name,)).fetchone()
    start = int(row[0]) if row else 0
    lines, new_offset, at_end = _read_lines(seg.path, start)
    events = 0
    for line in lines:
        event = _parse(line)
        if event is not None:
            batch.apply(event, seg.owner)
            events += 1
    if new_offset != start:
        offsets[seg.name] = new_offset
    # Folded to its end; for a process that is gone, a cut last line (killed while copying it,
    # before the hook returned: never promised) does not keep the segment.
    complete[seg.name] = at_end or (alive is not None and not alive(seg.owner) and _only_a_cut_line(seg.path,
                                                                                                    new_offset))
    return events


def _only_a_cut_line(path: str, offset: int) -> bool:
    try:
        rest, at_eof = _read_from(path, offset)
    except OSError:
        return True
    return at_eof and b"\n" not in rest  # (a line longer than a read is not known to be cut)


def _load_due(conn: sqlite3.Connection, batch: _Batch, now: float) -> None:
    for key, text in conn.execute(
        "SELECT key, state FROM live WHERE due_at <= ? ORDER BY due_at LIMIT ?", (now, MAX_DUE)
    ).fetchall():
        if key not in batch.rows:
            live = batch.rows[key] = LiveSession.loads(text)
            batch.stored.add(live.key)


def _end_reason(
    live: LiveSession, settings: Settings, now: float, alive: Callable[[str], bool] | None
) -> str | None:
    reason = live.end_ready(now)
    if reason is not None:
        return reason
    if live.first and now - live.first > settings.max_session_age and not live.open_runs:
        return "max_session_age"
    if now - live.last <= live.idle_timeout(settings):
        return None
    if live.open_runs:
        owners = {token.split(":", 1)[0] for token in live.open_runs}
        if alive is None or any(alive(owner) for owner in owners):
            oldest = min(live.open_runs.values())
            if now - oldest <= settings.max_run_age:
                return None  # a run is still in progress in a live process
            live.close_open_runs()
            return "run_age_exceeded"
        live.close_open_runs()
        return "process_exited"
    return "idle_timeout"


def _due_at(live: LiveSession, settings: Settings, now: float) -> float:
    due = live.last + live.idle_timeout(settings)
    pending = live.pending_end_at()
    if pending is not None:
        due = min(due, pending)
    if due <= now:  # examined and kept open (a run in progress): look again later
        due = now + min(60.0, live.idle_timeout(settings))
    if live.first:
        due = min(due, max(now, live.first + settings.max_session_age))
    return due


def _bill_one(conn: sqlite3.Connection, live: LiveSession, reason: str, settings: Settings, hours: HoursLedger,
              rollups: Rollups, state: str) -> Built | None:
    """Bill one ended session inside its own savepoint. A session whose records cannot be built
    or written (a bug, or a value SQLite refuses) becomes one dead letter holding its state and
    the reason, visible in `status`, instead of failing the fold of every other session."""
    conn.execute("SAVEPOINT bill_one")
    mark = hours.mark()
    later: list[Callable[[], None]] = []
    try:
        one = _bill(live, reason, settings, hours, rollups, later)
        if one is not None:
            insert_built(conn, one, state)
        for step in later:  # (a roll-up's rows take the session last: a failure above undoes nothing there)
            step()
    except sqlite3.OperationalError:
        conn.execute("ROLLBACK TO bill_one")
        conn.execute("RELEASE bill_one")
        raise  # the ledger itself (locked, full): the whole fold is retried
    except Exception as exc:
        conn.execute("ROLLBACK TO bill_one")
        hours.undo(mark)
        _unbillable(conn, live, exc)
        one = None
    conn.execute("RELEASE bill_one")
    return one


def _unbillable(conn: sqlite3.Connection, live: LiveSession, exc: Exception) -> None:
    why = f"could not bill this session: {type(exc).__name__}: {exc}"[:300]
    _log.error("keito-instrument: session %r %s; kept as a dead letter in the ledger", live.sid, why[5:])
    now = time.time()
    conn.execute(
        "INSERT OR REPLACE INTO records (record_id, kind, session_id, spent_date, project_id, path, payload,"
        " state, last_error, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (f"unbillable-{live.key}", UNBILLABLE, str(live.sid), time.strftime("%Y-%m-%d", time.gmtime(live.first or now)),
         None, "", live.dumps(), "dead", why, now, now),
    )


def _bill(live: LiveSession, reason: str, settings: Settings, hours: HoursLedger,
          rollups: Rollups, later: list[Callable[[], None]]) -> Built | None:
    live.close_open_runs()
    if not (live.calls or live.had_runs or live.outcomes or live.tools or live.errors):
        return None  # opened and never used (e.g. lost a race to an equal session)
    snapshot = live.snapshot(reason, {})
    costs = live.priced()
    if settings.granularity == "session":
        return build(snapshot, settings, costs=costs, carry=hours.carry)
    # Rolled up: the session's time and cost go to its periods' rows; only its outcomes are
    # sent now, and its report row shows its exact hours (the roll-up entry is rounded once).
    later.append(lambda: rollups.add(snapshot, costs))  # once its own records are in: never twice
    one = build(snapshot, settings, costs=costs, kinds=("outcome",))
    row = {**one.session_row, "hours": round(snapshot.active_seconds / 3600, 6) if snapshot.had_runs else 0.0}
    return Built(one.records, row, one.usage_rows)
