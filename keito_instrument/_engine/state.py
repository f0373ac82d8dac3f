"""A session as the ledger holds it while it is open: what every journalled event added up to.

Pure data and arithmetic (no I/O): `LiveSession.apply` folds one journal event in, each LLM call
priced on its own at its own time; `snapshot()` turns a closed one into the input of record
building. It serialises to JSON for the ledger's `live` table, so a session is the ledger's, not
a process's: turns journalled by several processes fold into one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .._config import Settings
from .._pricing import Cost, price
from .._session import Outcome, SessionOptions, SessionSnapshot, add_breakdown, add_interval
from .._usage import ModelUsage, add_details

# How long the worker waits, after a session's end event, for lines that threads counted before
# the end but wrote just after it (microseconds in practice) before billing it anyway.
END_GRACE = 5.0
MAX_OUTCOMES = 10_000
OPTION_FIELDS = SessionOptions._fields
_SEP = "\x1f"
_STATE = json.JSONEncoder(separators=(",", ":"), default=str).encode  # (built once, not per session)


def row_key(sid: str, ident: str, mode: str) -> str:
    """A named conversation ('i': closes when idle) is one ledger session per id; any other
    session is one per opening."""
    return sid if mode == "i" else f"{sid}|{ident}"


class LiveSession:
    """The folded state of one open session."""

    def __init__(self, key: str, sid: str, ident: str, mode: str) -> None:
        self.key, self.sid, self.ident, self.mode = key, sid, ident, mode
        self.opts: dict[str, Any] | None = None
        self.intervals: list[list[float]] = []
        self.open_runs: dict[str, float] = {}
        self.usage: dict[str, list[Any]] = {}
        self.calls = self.tools = self.errors = 0
        self.outcomes: list[dict[str, Any]] = []
        self.breakdown: dict[str, dict[str, int]] = {}
        self.seen: dict[str, list[int]] = {}
        self.ends: dict[str, list[Any]] = {}
        self.end_reason: str | None = None
        self.first = self.last = 0.0
        self.owners: dict[str, float] = {}
        self.had_runs = False
        self.turns = 0  # times a run began with none open: a named session with two is a conversation
        self.continued = False  # a conversation billed in parts: this is a later part

    # -- serialisation ---------------------------------------------------------------------------
    def dumps(self) -> str:
        """The JSON stored in the ledger."""
        return _STATE(self.__dict__)

    @classmethod
    def loads(cls, text: str) -> LiveSession:
        """The inverse of `dumps`."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LiveSession:
        """A session from its decoded JSON."""
        live = cls(data["key"], data["sid"], data["ident"], data["mode"])
        live.__dict__.update(data)
        return live

    # -- folding ---------------------------------------------------------------------------------
    def apply(self, event: list[Any], owner: str, settings: Settings) -> None:
        """Fold one journal event (`[kind, sid, ident, mode, t, *fields]`) from `owner`."""
        kind, _sid, ident, _mode, t = event[:5]
        fields = event[5:]
        t = float(t)
        if not self.first and self.mode == "i":
            # A conversation can be billed in several parts (it went idle, then came back): each
            # part's record ids come from when that part began, so no part collides with another.
            self.ident = f"{t:.6f}"
        self.first = min(self.first, t) if self.first else t
        self.last = max(self.last, t)
        self.owners[owner] = max(self.owners.get(owner, 0.0), t)
        seen = self.seen.setdefault(ident, [0, 0, 0, 0, 0])
        if kind == "o":
            if self.opts is None:
                self.opts = dict(fields[1])
        elif kind == "b":
            if not self.open_runs:
                self.turns += 1
            self.open_runs[f"{owner}:{ident}:{fields[0]}"] = float(fields[1])
            self.had_runs = True
        elif kind == "r":
            self.open_runs.pop(f"{owner}:{ident}:{fields[0]}", None)
            self.add_interval(float(fields[1]), float(fields[2]))
            self.had_runs = True
            seen[0] += 1
        elif kind == "c":
            self._add_call(fields, t, settings)
            seen[1] += 1
        elif kind == "n":
            self.tools += int(fields[0])
            self.errors += int(fields[1])
            seen[2] += int(fields[0])
            seen[3] += int(fields[1])
        elif kind == "x":
            if len(self.outcomes) < MAX_OUTCOMES:
                self.outcomes.append({**fields[0], "logged_at": t, "ident": ident})
            seen[4] += 1
        elif kind == "e":
            reason, closed, expected = fields[0], fields[1], fields[2]
            for start, end in closed:
                self.add_interval(float(start), float(end))
            prefix = f"{owner}:{ident}:"
            for token in [k for k in self.open_runs if k.startswith(prefix)]:
                del self.open_runs[token]
            self.ends[ident] = [list(expected), reason, t]

    def _add_call(self, fields: list[Any], t: float, settings: Settings) -> None:
        model, provider, i, o, cr, cw, rs, cached, missing, breakdown = fields[:10]
        details = fields[10] if len(fields) > 10 and isinstance(fields[10], dict) else None
        usage = ModelUsage(model, provider, int(i), int(o), int(cr), int(cw), int(rs), 1, int(cached), int(missing),
                           details)
        # Per request: a tiered price (prompts over 200k tokens) applies to this call alone, at
        # the price in force at its own time.
        cost = price(usage, settings.price_overrides, t)
        slot = self.usage.get(f"{model}{_SEP}{provider or ''}")
        if slot is None:
            slot = self.usage[f"{model}{_SEP}{provider or ''}"] = [0, 0, 0, 0, 0, 0, 0, 0, "0", 0, None, None]
        for index, value in enumerate((usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                                       usage.cache_write_tokens, usage.reasoning_tokens, 1, usage.cached_calls,
                                       usage.usage_missing)):
            slot[index] += value
        if details:
            if len(slot) < 12:  # (a state saved before usage details were kept)
                slot.append(None)
            slot[11] = add_details(slot[11], details)
        if cost.usd is None:
            slot[9] += 1
        else:
            slot[8] = str(Decimal(slot[8]) + cost.usd)
            slot[10] = cost.basis if slot[10] in (None, "no tokens") else slot[10]
        self.calls += 1
        if breakdown:
            for dim, value in breakdown.items():
                add_breakdown(self.breakdown, f"{dim}.{value}", usage)

    def add_interval(self, start: float, end: float) -> None:
        """Add a run's interval, keeping the list sorted, merged and bounded (parallel runs bill once)."""
        add_interval(self.intervals, float(start), float(end))

    # -- closing ---------------------------------------------------------------------------------
    def end_ready(self, now: float) -> str | None:
        """The reason this session ends now, if an end event says so and every line it counted
        has been folded (or the grace for late lines has passed)."""
        for ident, (expected, reason, t) in self.ends.items():
            if self.mode == "i":
                # A conversation's counts per process may span rows already billed: never wait
                # (a line written after its end opens a new row, billed on its own, not lost).
                return str(reason)
            seen = self.seen.get(ident, [0, 0, 0, 0, 0])
            if all(s >= e for s, e in zip(seen, expected, strict=False)) or now - t > END_GRACE:
                return str(reason)
        return None

    def pending_end_at(self) -> float | None:
        """When the grace of a pending end event expires, if there is one."""
        return min((t + END_GRACE for _e, _r, t in self.ends.values()), default=None)

    def idle_timeout(self, settings: Settings) -> float:
        """This session's idle timeout (`first_run_timeout` while it has seen one run only)."""
        opts = self.opts or {}
        value = opts.get("idle_timeout")
        timeout = float(value) if value else settings.idle_timeout
        first = opts.get("first_run_timeout")
        if first is not None and self.turns <= 1 and not self.continued:
            return min(timeout, float(first))
        return timeout

    def _open_run_spans(self) -> list[tuple[float, float]]:
        # A run whose end has not come counts up to its own process's last activity (not the
        # conversation's: other workers may have served it since).
        spans = []
        for token, start in self.open_runs.items():
            last = self.owners.get(token.split(":", 1)[0], self.last)
            spans.append((start, max(start, last)))
        return spans

    def close_open_runs(self) -> None:
        """Runs whose end never came (their process died) are billed up to that process's last
        activity."""
        for start, end in self._open_run_spans():
            self.add_interval(start, end)
        self.open_runs.clear()

    def priced(self) -> dict[tuple[str, str | None], Cost]:
        """The cost of each model: the sum of its calls' own prices (None if one was unpriced)."""
        out: dict[tuple[str, str | None], Cost] = {}
        for name, slot in self.usage.items():
            model, provider = name.split(_SEP, 1)
            unknown = slot[9] or slot[7]
            basis = "unpriced" if unknown else (slot[10] or "no tokens")
            out[(model, provider or None)] = Cost(None if unknown else Decimal(slot[8]), basis)
        return out

    def progress(self, settings: Settings) -> dict[str, Any]:
        """What this open session has spent so far, in the shape of a ledger `sessions` row (for
        `report` and `status`): runs still going count up to the last activity, hours are exact
        (rounding happens once, when the session is billed)."""
        from datetime import datetime

        from .._records import billed_amount

        opts = self.opts or {}
        merged = [list(i) for i in self.intervals]
        for start, end in self._open_run_spans():
            add_interval(merged, start, end)
        active = sum(hi - lo for lo, hi in merged)
        priced = self.priced().values()
        unknown = any(c.usd is None for c in priced)
        cost = None if unknown else float(sum((c.usd or Decimal(0) for c in priced), Decimal(0)))
        started = merged[0][0] if merged else self.first
        slots = list(self.usage.values())
        return {
            "session_key": self.key, "session_id": self.sid,
            "agent_id": opts.get("agent_id") or settings.agent_id,
            "project_id": opts.get("project_id") or settings.project_id,
            "spent_date": datetime.fromtimestamp(started, settings.tzinfo()).date().isoformat(),
            "started_at": started, "last_activity": self.last,
            "active_seconds": round(active, 3), "hours": round(active / 3600, 4),
            "llm_calls": self.calls, "tool_calls": self.tools, "errors": self.errors,
            "input_tokens": sum(int(u[0]) for u in slots), "output_tokens": sum(int(u[1]) for u in slots),
            "cost_usd": cost, "cost_unknown": unknown,
            "billed_cost": None if cost is None else float(billed_amount(Decimal(str(cost)), settings)),
            "usage": [
                {"model": name.split(_SEP, 1)[0], "input_tokens": int(slot[0]), "output_tokens": int(slot[1]),
                 "cache_read_tokens": int(slot[2]), "cache_write_tokens": int(slot[3]),
                 "reasoning_tokens": int(slot[4]), "details": slot[11] if len(slot) > 11 else None,
                 "llm_calls": int(slot[5]), "cost_usd": None if slot[9] or slot[7] else float(Decimal(slot[8]))}
                for name, slot in self.usage.items()
            ],
        }

    def snapshot(self, reason: str, fallback: Mapping[str, Any]) -> SessionSnapshot:
        """The input of record building, once this session has ended."""
        opts = {**fallback, **{k: v for k, v in (self.opts or {}).items() if v is not None}}
        options = SessionOptions(**{k: opts.get(k) for k in OPTION_FIELDS if k != "metadata"},
                                 metadata=dict(opts.get("metadata") or {}))
        usage = []
        for name, slot in self.usage.items():
            model, provider = name.split(_SEP, 1)
            i, o, cr, cw, rs, calls, cached, missing = map(int, slot[:8])
            usage.append(ModelUsage(model, provider or None, i, o, cr, cw, rs, calls, cached, missing,
                                    slot[11] if len(slot) > 11 else None))
        outcomes = tuple(
            Outcome(**{k: v for k, v in o.items() if k in Outcome._fields and k != "seq"},
                    seq=index + 1)
            for index, o in enumerate(self.outcomes)
        ) if self.outcomes else ()
        intervals = tuple([(s, e) for s, e in self.intervals])
        return SessionSnapshot(  # (positional, in the order of its fields)
            self.sid,  # session_id
            options,
            float(self.ident),  # opened_at
            intervals[0][0] if intervals else self.first,  # started_at
            max([self.last, *[e for _s, e in intervals]]),  # ended_at
            intervals,
            tuple(usage),
            self.calls,  # llm_calls
            self.tools,  # tool_calls
            self.errors,
            outcomes,
            {k: dict(v) for k, v in self.breakdown.items()} if self.breakdown else {},
            reason,  # end_reason
            self.had_runs,
        )
