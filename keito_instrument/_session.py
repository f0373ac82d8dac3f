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
from ._guard import guard
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


def add_interval(iv: list[list[float]], start: float, end: float) -> None:
    """Add a run's interval to a sorted, merged list, in place.

    Most runs end after the previous one, so this is O(1) in the common case, and parallel runs
    are never billed twice. Past `MAX_INTERVALS` separate intervals (a long session of many
    back-to-back runs) the two closest are joined, billing the shortest gap between runs (in
    practice microseconds) rather than letting the list grow without bound: the smallest half of
    the gaps are joined at once.
    """
    end = max(start, end)
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
    gaps = sorted(range(len(iv) - 1), key=lambda k: iv[k + 1][0] - iv[k][1])
    join = set(gaps[: len(iv) - MAX_INTERVALS // 2])
    out = [iv[0]]
    for k in range(1, len(iv)):
        if k - 1 in join:
            out[-1][1] = max(out[-1][1], iv[k][1])
        else:
            out.append(iv[k])
    iv[:] = out


def _scalar_line(kind: str, sid: str, ident: str, close: str, fields: tuple[Any, ...]) -> bytes | None:
    """A journal line of strings, ints, finite floats and None, written without the JSON encoder
    (parsed value for value the same; a third of its cost on the host's thread). None: use it."""
    parts = []
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
    if type(sid) is not str:
        return None
    body = ",".join(parts)
    return (f'[{_q(kind)},{_q(sid)},{_q(ident)},{_q(close)},{time.time()!r}{"," if body else ""}{body}]\n'
            .encode("utf-8", "replace"))


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
    return SessionOptions(**kept)


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

    __slots__ = ("_ended", "run_id", "session", "start")

    def __init__(self, session: "Session", run_id: int, start: float) -> None:
        self.session = session
        self.run_id = run_id
        self.start = start
        self._ended = False

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

    def _log(self, kind: str, *fields: Any, wake: bool = False) -> None:
        # The durable record of this event: one write to the journal, after our lock is released.
        journal = self._journal
        if journal is None:
            return
        line = _scalar_line(kind, self.session_id, self.ident, self.close[0], fields)
        if line is None:  # (a field that is a dict or a list, or a float that is not finite)
            journal.append([kind, self.session_id, self.ident, self.close[0], time.time(), *fields], wake)
        else:
            journal.append_line(line, wake)

    def journal_open(self, options: Mapping[str, Any]) -> None:
        """Write the session's opening event (its close rule and resolved options)."""
        self._log("o", self.close, dict(options))

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
        start = self.mono(started_at, now)
        with self._lock:
            if self.ended:
                return None
            closed: list[tuple[int, float]] = []
            while len(self._open_runs) >= max(1, max_open):
                oldest = next(iter(self._open_runs))
                closed.append((oldest, self._open_runs.pop(oldest)))
                self._add_interval(closed[-1][1], now)
            self._next_run += 1
            self._open_runs[self._next_run] = start
            self._last_activity = now
            self.had_runs = True
            run = Run(self, self._next_run, start)
        for old, old_start in closed:
            self._log("r", old, self.wall(old_start), self.wall(now))
        self._log("b", run.run_id, self.wall(start))
        return run

    def end_run(self, run: Run, ended_at: float | None = None) -> SessionSnapshot | None:
        """Close a run. If it was the last run of a session that closes with its runs, the session
        ends in the same locked step (so no other thread can join it in between) and its snapshot
        is returned; otherwise None.

        `ended_at` (wall-clock epoch seconds) is when the run's work really ended (an event's
        timestamp); it is kept between the run's start and now.
        """
        now = time.monotonic()
        end = self.mono(ended_at, now)
        with self._lock:
            if run._ended or self.ended:
                return None
            run._ended = True
            start = self._open_runs.pop(run.run_id, run.start)
            self._add_interval(start, max(start, end))
            self._last_activity = now
            last = self.close == "runs" and not self._open_runs
            snapshot = self._finish_locked("completed", now) if last else None
        self._log("r", run.run_id, self.wall(start), self.wall(max(start, end)))
        if snapshot is not None:
            self._log("e", "completed", [], self._expected(snapshot), wake=True)
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
        line = self._call_line(usage, breakdown)
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
            self._last_activity = time.monotonic()
            if breakdown:
                for dim, value in breakdown.items():
                    self._add_breakdown(f"{dim}.{value}", usage)
        journal = self._journal
        if journal is not None:
            journal.append_line(line)
        return True

    def _call_line(self, u: ModelUsage, breakdown: Mapping[str, str] | None) -> bytes:
        """The journal line of one call. The common case (plain strings and counts) is written
        with an f-string, a third of what the JSON encoder costs; anything else goes through it."""
        sid, ident, close, model, provider = self.session_id, self.ident, self.close[0], u.model, u.provider
        if breakdown or u.details or type(sid) is not str or type(model) is not str or not (
            provider is None or type(provider) is str
        ):
            return (_dumps(["c", sid, ident, close, time.time(), model, provider, u.input_tokens, u.output_tokens,
                            u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens, u.cached_calls,
                            u.usage_missing, dict(breakdown) if breakdown else None, u.details])
                    + "\n").encode("utf-8", "replace")
        return (f'["c",{_q(sid)},{_q(str(ident))},{_q(close)},{time.time()!r},{_q(model)},'
                f'{"null" if provider is None else _q(provider)},{u.input_tokens:d},{u.output_tokens:d},'
                f'{u.cache_read_tokens:d},{u.cache_write_tokens:d},{u.reasoning_tokens:d},{u.cached_calls:d},'
                f'{u.usage_missing:d},null,null]\n').encode("utf-8", "replace")

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
        with guard("record_llm_call"):
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
            self._log("e", reason, closed_runs, self._expected(snapshot, len(closed)), wake=True)
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
        for start in self._open_runs.values():
            # A run that never reported its end is billed up to the last activity we saw.
            self._add_interval(start, min(now, max(self._last_activity, start)))
        self._open_runs.clear()
        intervals = tuple((self.wall(s), self.wall(e)) for s, e in self._intervals)
        return SessionSnapshot(
            session_id=self.session_id,
            options=self.options,
            opened_at=self._wall0,
            started_at=intervals[0][0] if intervals else self.wall(self._mono0),
            ended_at=self.wall(now),
            intervals=intervals,
            usage=tuple(self._usage.values()),
            llm_calls=self.llm_calls,
            tool_calls=self.tool_calls,
            errors=self.errors,
            outcomes=tuple(self._outcomes),
            breakdown={k: dict(v) for k, v in self._breakdown.items()},
            end_reason=reason,
            had_runs=self.had_runs,
        )

    def _after_fork_in_child(self) -> None:
        # The parent bills this session; a lock held by a parent thread at fork time would never
        # be released here, so the child gets a fresh one.
        self._lock = threading.Lock()
        self.ended = True
        self.inherited = True
        self._journal = None
