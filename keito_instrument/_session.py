"""A billable session: active intervals, per-model usage and counts, safe across threads.

Every method runs on the caller's thread, takes one short lock, does O(1) work and no I/O.
Times are kept on the monotonic clock and mapped to wall time through one anchor taken when the
session opens, so a wall-clock jump (NTP, DST) cannot stretch or shrink what is billed.
"""

import math
import threading
import time
from collections.abc import Mapping
from json.encoder import encode_basestring as _q  # (C; what the JSON encoder uses for a str)
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _metadata as md
from ._config import get_settings
from ._guard import report
from ._journal import _dumps
from ._usage import MAX_COUNT, ModelUsage, normalised_call, warn_once

if TYPE_CHECKING:
    from ._journal import Journal

MAX_CALL_IDS = 100_000
MAX_BREAKDOWN_KEYS = 200
# How far back an adapter may date a run (an event handled late, a span's own start time); a
# run older than this is closed by the registry's age sweep anyway (`max_run_age`'s default).
MAX_BACKDATE = 86_400.0
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})
_NO_RUNS: list[tuple[int, float]] = []  # (never added to: a list is made where runs are listed)

# The frozen records below are NamedTuples, not dataclasses: `dataclasses` imports `inspect`,
# which would triple the cost of `import keito_instrument`.


def add_breakdown(table: dict[str, dict[str, int]], key: str, usage: ModelUsage) -> None:
    """Count one call's tokens under a breakdown key ('feature.search'), at most MAX_BREAKDOWN_KEYS keys."""
    slot = table.get(key)
    if slot is None:
        if len(table) >= MAX_BREAKDOWN_KEYS:
            return
        slot = table[key] = {"input_tokens": 0, "output_tokens": 0, "llm_calls": 0}
    slot["input_tokens"] += usage.input_tokens
    slot["output_tokens"] += usage.output_tokens
    slot["llm_calls"] += 1


MAX_INTERVALS = 256  # separate run intervals a session keeps (memory and ledger state stay bounded)
# Every journal line carries its time stamp: the wall clock when it was written. A run's begin
# or end line whose own time (on the session's clock, `wall`) is within this many seconds of it
# writes that time for both: formatting a float is most of what a line costs, and a stamp is
# only ever compared in seconds (activity, idle timeouts).
STAMP_SLACK = 0.001
# A run begun while another run of its session is open whose begin line is on disk, less than
# this many seconds after the session's last line reached the disk, writes no begin line: its
# end line carries its start, and while it runs the open run covers it (a process killed
# meanwhile bills that run up to its last line, under COVERED_GAP before this run began). If
# every covering run ends first, its begin line is written then. A burst of nested steps (a
# decorated function called in a loop inside a session) writes one line each, not two. Only
# for sessions that end with their runs (a conversation's runs are always written).
COVERED_GAP = 0.001


def add_interval(iv: list[list[float]], start: float, end: float) -> None:
    """Add a run's interval to a sorted, merged list, in place.

    Most runs end after the previous one, so this is O(1) in the common case, and parallel runs
    are never billed twice. Past `MAX_INTERVALS` separate intervals (a long session of many
    back-to-back runs) the two closest are joined, billing the shortest gap between runs (in
    practice microseconds) rather than letting the list grow without bound: the smallest half of
    the gaps are joined at once.
    """
    end = max(start, end)
    if not iv or iv[-1][1] < start:  # after every interval so far: the common case
        iv.append([start, end])
        if len(iv) > MAX_INTERVALS:
            _compact(iv)
        return
    if iv[-1][0] <= start:  # overlaps the last one only
        iv[-1][1] = max(iv[-1][1], end)
        return
    i = len(iv)
    while i > 0 and iv[i - 1][0] > start:
        i -= 1
    if i > 0 and iv[i - 1][1] >= start:
        i -= 1
        iv[i][1] = max(iv[i][1], end)
    else:
        iv.insert(i, [start, end])
    while i + 1 < len(iv) and iv[i + 1][0] <= iv[i][1]:
        iv[i][1] = max(iv[i][1], iv[i + 1][1])
        del iv[i + 1]
    if len(iv) > MAX_INTERVALS:
        _compact(iv)


def _compact(iv: list[list[float]]) -> None:
    # Join across the smallest half of the gaps at once, so this runs once per MAX_INTERVALS / 2
    # new intervals (amortised O(1)) and the longest pauses between runs are never billed.
    widths = [iv[k + 1][0] - iv[k][1] for k in range(len(iv) - 1)]
    gaps = sorted(range(len(widths)), key=widths.__getitem__)  # (a key in C: no call per gap)
    join = set(gaps[: len(iv) - MAX_INTERVALS // 2])
    out = [iv[0]]
    for k in range(1, len(iv)):
        if k - 1 in join:
            out[-1][1] = max(out[-1][1], iv[k][1])
        else:
            out.append(iv[k])
    iv[:] = out


def _scalar_body(fields: tuple[Any, ...]) -> str | None:
    """`,v1,v2,...` for strings, ints, finite floats and None, as the JSON encoder writes them
    ("" for no fields); None when a field is anything else (the encoder writes that line)."""
    parts = [""]
    for value in fields:
        kind_of = type(value)
        if kind_of is int:
            parts.append(str(value))
        elif kind_of is float and value - value == 0:  # (finite: inf - inf and nan - nan are nan)
            parts.append(repr(value))
        elif kind_of is str:
            parts.append(_q(value))
        elif value is None:
            parts.append("null")
        else:
            return None
    return ",".join(parts)


def _scalar_line(kind: str, sid: str, ident: str, close: str, fields: tuple[Any, ...]) -> bytes | None:
    """A journal line of strings, ints, finite floats and None, written without the JSON encoder
    (parsed value for value the same; a third of its cost on the host's thread). None: use it."""
    body = _scalar_body(fields)
    if body is None or type(sid) is not str:
        return None
    return f'[{_q(kind)},{_q(sid)},{_q(ident)},{_q(close)},{time.time()!r}{body}]\n'.encode("utf-8", "replace")


def _line_head(sid: str, ident: str, close: str) -> bytes | None:
    """The part every journal line of a session repeats after its kind (`,sid,ident,mode,`),
    encoded once per session; None when the session id is not a plain string (the JSON encoder
    writes those lines)."""
    if type(sid) is not str or type(close) is not str or not close:
        return None
    return f",{_q(sid)},{_q(ident)},{_q(close[0])},".encode("utf-8", "replace")


# The end of a session's opening line (`,close,{options}]\n`) per (options, settings, close):
# sessions opened with the same settings (every call of one decorated function) share it.
_OPENINGS: dict[tuple[int, int, str], tuple[object, object, dict[str, Any], bytes]] = {}
MAX_OPENINGS = 64


class SessionOptions(NamedTuple):
    """Per-session settings; None falls back to the global setting when records are built."""

    project_id: str | None = None
    task_id: str | None = None
    expense_category_id: str | None = None
    agent_id: str | None = None
    agent_type: str | None = None
    framework: str | None = None
    billable: bool | None = None
    notes: str | None = None
    metadata: Mapping[str, Any] = _NO_METADATA
    idle_timeout: float | None = None
    # A named session seen in one run only ends this long after it (None: idle_timeout applies
    # from the first run); from its second run on it is a conversation (see the OTel adapter).
    first_run_timeout: float | None = None


_INTERNED: dict[tuple[tuple[str, Any], ...], SessionOptions] = {}
_TEXT_OPTIONS = ("project_id", "task_id", "expense_category_id", "agent_id", "agent_type", "framework", "notes")
_SECONDS_OPTIONS = ("idle_timeout", "first_run_timeout")


def _dropped(name: str, value: object, what: str) -> None:
    warn_once(f"option:{name}:{type(value).__name__}",
              f"keito-instrument: {name}={md.describe(value)} is not {what}; ignored (the setting applies)")


def _option(name: str, value: Any) -> Any:
    """One checked session option; None to drop it (see `session_options`)."""
    if name in _TEXT_OPTIONS:
        found = value
        if type(value) is not str:
            # An id may be given as a number or bytes; anything else is no id (notes: any text).
            convertible = name == "notes" or (isinstance(value, str | int | bytes) and not isinstance(value, bool))
            found = md.text(value) if convertible else None
            if found is None:
                _dropped(name, value, "a string")
                return None
        if not found.strip():
            if name != "notes":
                _dropped(name, value, "a non-empty id")
            return None
        return found
    if name == "billable":
        if not isinstance(value, bool):
            _dropped(name, value, "True or False")
            return None
        return value
    if name in _SECONDS_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            _dropped(name, value, "a number of seconds")
            return None
        return float(value)
    if name == "metadata":
        if not isinstance(value, Mapping):
            _dropped(name, value, "a mapping")
            return None
        return md.plain(value)
    warn_once(f"option:{name}", f"keito-instrument: unknown session setting {md.describe(name)} ignored")
    return None


def session_options(values: Mapping[str, Any]) -> SessionOptions:
    """`SessionOptions` from a caller's keyword arguments (`session()`, `track_agent`, adapters).

    Hot-path arguments are never refused: a value that can never be right is dropped (the global
    setting applies) with a warning naming it, so one bad argument never loses the session. Ids
    and notes are strings (an int id becomes its text; an empty id is no id), `billable` a bool,
    timeouts finite seconds >= 0, `metadata` a mapping made plain JSON (`_metadata.plain`);
    unknown names are dropped.
    """
    kept: dict[str, Any] = {}
    for name, value in values.items():
        if value is not None:
            checked = _option(name, value)
            if checked is not None:
                kept[name] = checked
    if "metadata" in kept:
        return SessionOptions(**kept)
    # The same settings give the same (immutable) object, so sessions opened with them share
    # their encoded opening line (`Session.journal_open`). Every kept value has its one type.
    key = tuple(kept.items())
    found = _INTERNED.get(key)
    if found is None:
        if len(_INTERNED) >= MAX_OPENINGS:
            _INTERNED.clear()
        found = _INTERNED[key] = SessionOptions(**kept)
    return found


def outcome_fields(
    outcome_type: object, quantity: object = 1, unit_price: object = None, success: object = True,
    description: object = None, evidence: object = None, metadata: object = None,
) -> dict[str, Any]:
    """An outcome's fields as records carry them; a bad value is replaced (with a warning naming it).

    Quantities and prices are numbers (a non-finite float is kept here: `encodable` sends it as
    null with its own warning), `success` a bool, texts strings, evidence and metadata plain JSON
    mappings (`_metadata.plain`).
    """
    kind = md.text(outcome_type) if not isinstance(outcome_type, bool) else None
    if kind is None or not kind.strip():
        _dropped("outcome_type", outcome_type, "a name")
        kind = "outcome"
    numbers: dict[str, Any] = {"quantity": quantity, "unit_price": unit_price}
    for name, value in numbers.items():
        if value is None and name == "unit_price":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            _dropped(name, value, "a number")
            numbers[name] = 1.0 if name == "quantity" else None
        elif isinstance(value, int) and abs(value) > 2**53:  # beyond what JSON readers keep exactly
            numbers[name] = float(value)
        else:
            numbers[name] = float(value) if type(value) is not int else value
    if not isinstance(success, bool):
        _dropped("success", success, "True or False")
        success = True
    if description is not None and type(description) is not str:
        description = md.text(description)
    mappings: dict[str, Any] = {"evidence": evidence, "metadata": metadata}
    for name, given in mappings.items():
        if given is not None and not isinstance(given, Mapping):
            _dropped(name, given, "a mapping")
            given = None  # noqa: PLW2901
        mappings[name] = md.plain(given) if given else None
    return {
        "outcome_type": kind, "quantity": numbers["quantity"], "unit_price": numbers["unit_price"],
        "success": success, "description": description or None, "evidence": mappings["evidence"],
        "metadata": mappings["metadata"] or {},
    }


def _event_count(name: str, value: object) -> int:
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    warn_once(f"count:{name}", f"keito-instrument: {name} count {md.describe(value)} is not a count; counted as 0")
    return 0


def call_key(value: object) -> str | None:
    """A call id or session id as the string it is keyed by; None when it has no text (with a warning)."""
    if value is None or type(value) is str:
        return value  # type: ignore[return-value]
    found = md.text(value)
    if found is None:
        warn_once(f"id:{type(value).__name__}", f"keito-instrument: id {md.describe(value)} has no text; ignored")
    return found


class Outcome(NamedTuple):
    """A business outcome logged in a session: billed as a time entry with hours 0."""

    outcome_type: str
    quantity: float
    unit_price: float | None
    success: bool
    description: str | None
    evidence: Mapping[str, Any] | None
    metadata: Mapping[str, Any]
    seq: int
    logged_at: float | None = None  # wall clock


class SessionSnapshot(NamedTuple):
    """Everything a session produced, frozen when it ended; the input of record building."""

    session_id: str
    options: SessionOptions
    opened_at: float  # wall clock when the session object was created: part of every record_id
    started_at: float  # wall clock, epoch seconds
    ended_at: float
    intervals: tuple[tuple[float, float], ...]  # merged wall-clock intervals of root runs
    usage: tuple[ModelUsage, ...]
    llm_calls: int
    tool_calls: int
    errors: int
    outcomes: tuple[Outcome, ...]
    breakdown: Mapping[str, Mapping[str, int]]
    end_reason: str
    had_runs: bool

    @property
    def active_seconds(self) -> float:
        """Billed working time: the length of the union of root-run intervals."""
        return sum(end - start for start, end in self.intervals)


class Run:
    """One root run inside a session (a decorated call, a root chain, a kickoff, a root span)."""

    __slots__ = ("_ended", "run_id", "session", "start", "text")

    def __init__(self, session: "Session", run_id: int, start: float) -> None:
        self.session = session
        self.run_id = run_id
        self.start = start
        self._ended = False
        self.text: str | None = None  # its start as its begin line wrote it

    @property
    def session_id(self) -> str:
        """The id of the session this run belongs to."""
        return self.session.session_id


class Session:
    """A billable session. Read `session_id`; record into it with the `record_*` methods."""

    def __init__(
        self, session_id: str, options: SessionOptions, close: str = "runs", journal: "Journal | None" = None
    ) -> None:
        self.session_id = session_id
        self.options = options
        self.close = close  # "runs": ends when its last run ends; "idle": ends after idle_timeout
        self._lock = threading.Lock()
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._last_activity = self._mono0
        self._intervals: list[list[float]] = []
        self._open_runs: dict[int, float] = {}
        self._next_run = 0
        self._usage: dict[tuple[str, str | None], ModelUsage] = {}
        self._call_ids: set[str] = set()
        self._breakdown: dict[str, dict[str, int]] = {}
        self._outcomes: list[Outcome] = []
        self.llm_calls = 0
        self.tool_calls = 0
        self.errors = 0
        self.had_runs = False
        self.ended = False
        self.inherited = False  # a forked child's copy of its parent's session (the parent bills it)
        self._journal = journal
        self.ident = f"{self._wall0:.6f}"
        self._head = _line_head(session_id, self.ident, close)
        self._opening = b""  # the opening line, written with the session's first event
        self._unlogged: set[int] = set()  # open runs whose begin line is not written (COVERED_GAP)
        self._logged_at = -math.inf  # monotonic time (at most) of the last line on disk

    # -- the journal ----------------------------------------------------------------------------
    # Every event is written durably (one write, after our lock is released) before the method
    # that counted it returns; lines of one instant (a run's end and the session's end) share
    # that write and its time stamp. The common lines are f-strings after the session's encoded
    # `_head`, parsed value for value as the JSON encoder's (which writes anything else).
    def _write(self, line: bytes, stamp: str, wake: bool = False, now: float | None = None) -> None:
        # `stamp`: the time stamp of `line`, for the opening line if it is still to be written.
        # `now`: a monotonic reading taken before `line` was made, kept once the line is on disk
        # as (no later than) the time of this session's last durable line.
        journal = self._journal
        if journal is None:
            return
        opening = self._opening
        if opening:
            # (Two threads racing here may both write it: folding an opening twice changes nothing.)
            self._opening = b""
            head = self._head
            line = (opening if head is None else b'["o"' + head + stamp.encode() + opening) + line
        journal.append_line(line, wake)
        if now is not None:
            self._logged_at = now

    def _line(self, kind: str, fields: tuple[Any, ...], stamp: str) -> bytes:
        head = self._head
        if head is not None:
            body = _scalar_body(fields)
            if body is not None:
                return f"[{_q(kind)}".encode() + head + f"{stamp}{body}]\n".encode("utf-8", "replace")
        # (a field that is a dict or a list, a float that is not finite, an id that is not a str)
        return (_dumps([kind, self.session_id, self.ident, self.close[0], float(stamp), *fields])
                + "\n").encode("utf-8", "replace")

    def _log(self, kind: str, *fields: Any, wake: bool = False) -> None:
        if self._journal is not None:
            stamp = repr(time.time())
            self._write(self._line(kind, fields, stamp), stamp, wake)

    def _begin_line(self, run_id: int, start: float, stamp: str | None = None) -> tuple[bytes, str | None, str]:
        """A run's begin line, its start as the line writes it (None: not a plain float) and its
        time stamp (made unless given: see STAMP_SLACK)."""
        head = self._head
        if head is None or start - start != 0:
            stamp = stamp or repr(time.time())
            return self._line("b", (run_id, start), stamp), None, stamp
        text = repr(start)
        if stamp is None:
            t = time.time()
            stamp = text if -STAMP_SLACK < t - start < STAMP_SLACK else repr(t)
        return b'["b"' + head + f"{stamp},{run_id:d},{text}]\n".encode(), text, stamp

    def _run_line(self, run_id: int, start: float, end: float, stamp: str | None = None,
                  text: str | None = None) -> tuple[bytes, str]:
        """A run's end line and its time stamp (made unless given: see STAMP_SLACK). `text`:
        `start` as its begin line wrote it."""
        head = self._head
        if head is None or start - start != 0 or end - end != 0:
            stamp = stamp or repr(time.time())
            return self._line("r", (run_id, start, end), stamp), stamp
        end_text = repr(end)
        if stamp is None:
            t = time.time()
            stamp = end_text if -STAMP_SLACK < t - end < STAMP_SLACK else repr(t)
        return b'["r"' + head + f"{stamp},{run_id:d},{text or repr(start)},{end_text}]\n".encode(), stamp

    def _end_line(self, reason: str, closed: list[list[float]], expected: list[int], stamp: str) -> bytes:
        head = self._head
        if head is None or type(reason) is not str or not all(s - s == 0 and e - e == 0 for s, e in closed):
            return self._line("e", (reason, closed, expected), stamp)
        runs = ",".join(f"[{s!r},{e!r}]" for s, e in closed)
        ran, calls, tools, errors, outcomes = expected
        return b'["e"' + head + (f"{stamp},{_q(reason)},[{runs}],"
                                 f"[{ran:d},{calls:d},{tools:d},{errors:d},{outcomes:d}]]\n").encode("utf-8", "replace")

    def journal_open(self, options: Mapping[str, Any]) -> None:
        """Prepare the session's opening event (its close rule and resolved options). It is
        written with the session's first event, in the same write: an opening alone bills
        nothing, and no other event of the session can be on disk before it."""
        if self._journal is None:
            return
        if self._head is None:
            self._opening = self._line("o", (self.close, dict(options)), repr(time.time()))
            return
        settings = get_settings()
        key = (id(self.options), id(settings), self.close)
        found = _OPENINGS.get(key)
        if found is not None and found[0] is self.options and found[1] is settings and found[2] == options:
            self._opening = found[3]
            return
        resolved = dict(options)
        # (What follows the time stamp: `_write` puts the kind, the head and the stamp before it.)
        self._opening = ("," + _dumps([self.close, resolved])[1:] + "\n").encode("utf-8", "replace")
        if len(_OPENINGS) >= MAX_OPENINGS:
            _OPENINGS.clear()
        _OPENINGS[key] = (self.options, settings, resolved, self._opening)

    # -- runs ---------------------------------------------------------------------------------
    def mono(self, wall: float | None, now: float) -> float:
        """A wall-clock time (epoch seconds, e.g. an event's timestamp) on this session's monotonic
        clock, kept between `MAX_BACKDATE` seconds before the session opened and `now`; None (or a
        value that is not a finite number) gives `now`, so a bad timestamp can never bill days of
        work. (The floor is fixed, not relative to `now`, so two bad times map to the same point.)"""
        if wall is None or not math.isfinite(wall):
            return now
        return min(now, max(self._mono0 - MAX_BACKDATE, self._mono0 + (wall - self._wall0)))

    def begin_run(self, max_open: int = 10_000, started_at: float | None = None) -> Run | None:
        """Open a run; None if the session already ended.

        `started_at` (wall-clock epoch seconds) back-dates the run to when its work really began,
        e.g. the timestamp of a framework event handled late; it is never later than now.
        Beyond `max_open` open runs the oldest is closed now (its end evidently never arrives), so
        a leaking caller cannot grow this table without bound.
        """
        now = time.monotonic()
        start = now if started_at is None else self.mono(started_at, now)
        closed = late = _NO_RUNS
        with self._lock:
            if self.ended:
                return None
            open_runs, unlogged = self._open_runs, self._unlogged
            limit = max_open if max_open > 1 else 1
            if len(open_runs) >= limit:
                closed = []
                while len(open_runs) >= limit:
                    oldest = next(iter(open_runs))
                    closed.append((oldest, open_runs.pop(oldest)))
                    unlogged.discard(oldest)
                    self._add_interval(closed[-1][1], now)
                late = [(r, open_runs[r]) for r in unlogged]  # (the runs covering them may be gone)
                unlogged.clear()
            self._next_run = run_id = self._next_run + 1
            # Covered (see COVERED_GAP): a run begun now starts no earlier than any open run.
            covered = (len(open_runs) > len(unlogged) and started_at is None and not closed
                       and self.close == "runs" and now - self._logged_at < COVERED_GAP)
            open_runs[run_id] = start
            if covered:
                unlogged.add(run_id)
            self._last_activity = now
            self.had_runs = True
            run = Run(self, run_id, start)
        if self._journal is not None and not covered:
            line, run.text, stamp = self._begin_line(run_id, self._wall0 + (start - self._mono0))
            if closed or late:
                line = b"".join([*(self._run_line(old, self.wall(old_start), self.wall(now), stamp)[0]
                                   for old, old_start in closed),
                                 *(self._begin_line(r, self.wall(s), stamp)[0] for r, s in late), line])
            self._write(line, stamp, now=now)
        return run

    def end_run(self, run: Run, ended_at: float | None = None) -> SessionSnapshot | None:
        """Close a run. If it was the last run of a session that closes with its runs, the session
        ends in the same locked step (so no other thread can join it in between) and its snapshot
        is returned; otherwise None.

        `ended_at` (wall-clock epoch seconds) is when the run's work really ended (an event's
        timestamp); it is kept between the run's start and now.
        """
        now = time.monotonic()
        end = now if ended_at is None else self.mono(ended_at, now)
        late = _NO_RUNS
        with self._lock:
            if run._ended or self.ended:
                return None
            run._ended = True
            open_runs = self._open_runs
            start = open_runs.pop(run.run_id, run.start)
            end = max(end, start)
            unlogged = self._unlogged
            if unlogged:
                unlogged.discard(run.run_id)
                if unlogged and len(open_runs) == len(unlogged):
                    # The last open run whose begin is on disk ends: the runs it covered, still
                    # going, write theirs now (before this end, in the same write).
                    late = [(r, open_runs[r]) for r in unlogged]
                    unlogged.clear()
            add_interval(self._intervals, start, end)
            self._last_activity = now
            snapshot = self._finish_locked("completed", now) if self.close == "runs" and not open_runs else None
        if self._journal is not None:
            wall0, mono0 = self._wall0, self._mono0  # (`wall`, inline)
            line, stamp = self._run_line(run.run_id, wall0 + (start - mono0), wall0 + (end - mono0), None, run.text)
            if late:
                line = b"".join([*(self._begin_line(r, self.wall(s), stamp)[0] for r, s in late), line])
            if snapshot is None:
                self._write(line, stamp, now=now)
            else:
                self._write(line + self._end_line("completed", [], self._expected(snapshot), stamp), stamp, True)
        return snapshot

    def _add_interval(self, start: float, end: float) -> None:
        add_interval(self._intervals, start, end)

    @property
    def open_runs(self) -> int:
        """How many runs of this session are still open."""
        return len(self._open_runs)

    def idle_for(self, now: float) -> float:
        """Seconds since the last activity, or 0 while a run is open."""
        return 0.0 if self._open_runs else now - self._last_activity

    def oldest_run_age(self, now: float) -> float:
        """Age in seconds of the oldest open run (0 when none is open)."""
        runs = list(self._open_runs.values())
        return now - min(runs) if runs else 0.0

    # -- usage ----------------------------------------------------------------------------------
    def add_usage(
        self, usage: ModelUsage, call_id: str | None = None, breakdown: Mapping[str, str] | None = None
    ) -> bool:
        """Add one model call; a repeated `call_id` is ignored. Returns False if not counted."""
        # Encoded first, while `usage` is still the caller's alone: once stored as the model's
        # total, another thread's call may add into it.
        stamp = repr(time.time())
        line = self._call_line(usage, breakdown, stamp)
        with self._lock:
            if self.ended:
                return False
            if call_id is not None:
                if call_id in self._call_ids:
                    return False
                if len(self._call_ids) < MAX_CALL_IDS:
                    self._call_ids.add(call_id)
            key = (usage.model, usage.provider)
            total = self._usage.get(key)
            if total is None:
                self._usage[key] = usage
            else:
                total.add(usage)
            self.llm_calls += 1
            self._last_activity = now = time.monotonic()
            if breakdown:
                for dim, value in breakdown.items():
                    self._add_breakdown(f"{dim}.{value}", usage)
        if self._journal is not None:
            self._write(line, stamp, now=now)
        return True

    def _call_line(self, u: ModelUsage, breakdown: Mapping[str, str] | None, stamp: str | None = None) -> bytes:
        """The journal line of one call. The common case (plain strings and counts) is written
        with an f-string, a third of what the JSON encoder costs; anything else goes through it."""
        head, model, provider = self._head, u.model, u.provider
        stamp = stamp or repr(time.time())
        if breakdown or u.details or head is None or type(model) is not str or not (
            provider is None or type(provider) is str
        ):
            return (_dumps(["c", self.session_id, self.ident, self.close[0], float(stamp), model, provider,
                            u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,
                            u.reasoning_tokens, u.cached_calls, u.usage_missing,
                            dict(breakdown) if breakdown else None, u.details])
                    + "\n").encode("utf-8", "replace")
        return b'["c"' + head + (
            f'{stamp},{_q(model)},{"null" if provider is None else _q(provider)},{u.input_tokens:d},'
            f"{u.output_tokens:d},{u.cache_read_tokens:d},{u.cache_write_tokens:d},{u.reasoning_tokens:d},"
            f"{u.cached_calls:d},{u.usage_missing:d},null,null]\n").encode("utf-8", "replace")

    def _add_breakdown(self, key: str, usage: ModelUsage) -> None:
        add_breakdown(self._breakdown, key, usage)

    def record_llm_call(
        self,
        model: str,
        provider: str | None = None,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        cache_write_5m_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        input_audio_tokens: int = 0,
        input_image_tokens: int = 0,
        output_audio_tokens: int = 0,
        web_searches: int = 0,
        cached: bool = False,
        usage_missing: bool = False,
        call_id: str | None = None,
        breakdown: Mapping[str, str] | None = None,
    ) -> bool:
        """Count one model call in this session (token convention: see `keito_instrument.record_llm_call`).

        Returns True if it was counted (False for a repeated `call_id` or an ended session).
        """
        try:  # (guarded as `guard` does, inline: this is the hot path)
            if call_id is not None and type(call_id) is not str:
                call_id = call_key(call_id)
            if breakdown and not all(type(k) is str and type(v) is str for k, v in breakdown.items()):
                # Labels from a framework's run metadata (a LangGraph node): kept only as text.
                breakdown = {k: label for k, v in breakdown.items()
                             if type(k) is str and (label := md.text(v)) is not None}
            details = None
            if cache_write_5m_tokens or cache_write_1h_tokens or input_audio_tokens or input_image_tokens \
                    or output_audio_tokens or web_searches:
                details = {
                    "cache_write_5m_tokens": cache_write_5m_tokens, "cache_write_1h_tokens": cache_write_1h_tokens,
                    "input_audio_tokens": input_audio_tokens, "input_image_tokens": input_image_tokens,
                    "output_audio_tokens": output_audio_tokens, "web_searches": web_searches,
                }
            usage = normalised_call(
                model,
                provider,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read_tokens,
                cache_write_tokens=cache_write_tokens,
                reasoning_tokens=reasoning_tokens,
                cached=cached,
                usage_missing=usage_missing,
                details=details,
            )
            return self.add_usage(usage, call_id, breakdown)
        except Exception as exc:
            report("record_llm_call", exc)
            return False

    def record_tool_call(self, count: int = 1) -> None:
        """Count tool calls."""
        self.count(tool_calls=count)

    def record_error(self, count: int = 1) -> None:
        """Count errors (the session still bills what was spent)."""
        self.count(errors=count)

    def count(self, *, tool_calls: int = 0, errors: int = 0) -> None:
        """Count tool calls and errors (a count that is not a count is 0, with a warning)."""
        if type(tool_calls) is not int or type(errors) is not int or not 0 <= tool_calls <= MAX_COUNT \
                or not 0 <= errors <= MAX_COUNT:
            tool_calls, errors = _event_count("tool_calls", tool_calls), _event_count("errors", errors)
        with self._lock:
            if self.ended:
                return
            self.tool_calls += tool_calls
            self.errors += errors
            self._last_activity = time.monotonic()
        self._log("n", tool_calls, errors)

    def add_outcome(self, outcome_type: str, **fields: Any) -> None:
        """Attach an outcome (billed at session end as an hours-0 time entry); bad fields are
        replaced with a warning (`outcome_fields`)."""
        checked = outcome_fields(outcome_type, **fields)
        with self._lock:
            if self.ended:
                return
            outcome = Outcome(seq=len(self._outcomes) + 1, logged_at=time.time(), **checked)
            self._outcomes.append(outcome)
        self._log("x", {f: getattr(outcome, f) for f in Outcome._fields if f != "logged_at"})

    def usage(self) -> list[ModelUsage]:
        """A copy of the per-model usage so far."""
        with self._lock:
            return [ModelUsage(**{f: getattr(u, f) for f in u.__slots__}) for u in self._usage.values()]

    # -- end ----------------------------------------------------------------------------------
    def wall(self, mono: float) -> float:
        """Map a monotonic reading to wall-clock epoch seconds."""
        return self._wall0 + (mono - self._mono0)

    def finish(self, reason: str, at: float | None = None) -> SessionSnapshot | None:
        """End the session once; returns its snapshot, or None if it had already ended."""
        now = time.monotonic() if at is None else at
        with self._lock:
            closed = [(s, min(now, max(self._last_activity, s))) for s in self._open_runs.values()]
            snapshot = self._finish_locked(reason, now)
        if snapshot is not None:
            closed_runs = [[self.wall(s), self.wall(e)] for s, e in closed]
            if self._journal is not None:
                stamp = repr(time.time())
                self._write(self._end_line(reason, closed_runs, self._expected(snapshot, len(closed)), stamp), stamp,
                            True)
        return snapshot

    def _expected(self, snapshot: SessionSnapshot, closed: int = 0) -> list[int]:
        # What the journal holds for this session once every thread that counted something has
        # written its line (a thread may write just after the end): the billing worker waits
        # for them before it bills the session.
        return [self._next_run - closed, snapshot.llm_calls, snapshot.tool_calls, snapshot.errors,
                len(snapshot.outcomes)]

    def age(self, now: float) -> float:
        """Seconds since the session opened."""
        return now - self._mono0

    def _finish_locked(self, reason: str, now: float) -> SessionSnapshot | None:
        if self.ended:
            return None
        self.ended = True
        self._unlogged.clear()  # (the end line carries every open run)
        for start in self._open_runs.values():
            # A run that never reported its end is billed up to the last activity we saw.
            self._add_interval(start, min(now, max(self._last_activity, start)))
        self._open_runs.clear()
        wall0, mono0 = self._wall0, self._mono0  # (`wall`, inline)
        intervals = tuple([(wall0 + (s - mono0), wall0 + (e - mono0)) for s, e in self._intervals])
        return SessionSnapshot(  # (positional, in the order of its fields: this runs at every session end)
            self.session_id,
            self.options,
            wall0,  # opened_at
            intervals[0][0] if intervals else wall0,  # started_at
            wall0 + (now - mono0),  # ended_at
            intervals,
            tuple(self._usage.values()),
            self.llm_calls,
            self.tool_calls,
            self.errors,
            tuple(self._outcomes),
            {k: dict(v) for k, v in self._breakdown.items()} if self._breakdown else {},
            reason,  # end_reason
            self.had_runs,
        )

    def _after_fork_in_child(self) -> None:
        # The parent bills this session; a lock held by a parent thread at fork time would never
        # be released here, so the child gets a fresh one.
        self._lock = threading.Lock()
        self.ended = True
        self.inherited = True
        self._journal = None
