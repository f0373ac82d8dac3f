"""Roll-ups for high-volume agents: one time entry and one expense per key and period.

With `granularity="hour"` or `"day"`, an ended session is not sent on its own: its active seconds
(split at period boundaries in the workspace time zone) and its LLM usage and cost (in the period
it started) are added to a ledger row per (agent, project, task, expense category, period). Once
the period is over and no open session could still add to it, the row becomes one time entry
(hours rounded once, over the period's exact seconds) and one expense (the calls' own prices,
summed), both carrying the roll-up id as `session_id`. Everything happens inside the fold's
transaction, so processes sharing a ledger produce one entry per key and period, and a process
that exits mid-period leaves the row for the next fold (another process, `sync`, `report`).
Outcomes are still sent one by one: each is its own billable event.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from .. import _metadata as md
from .._config import Settings
from .._pricing import Cost
from .._records import Built, Record, build, record_id, zone
from .._session import SessionOptions, SessionSnapshot
from .._usage import ModelUsage, add_details
from .hours import HoursLedger

MAX_ENTRY_SECONDS = 24 * 3600  # Keito's cap on one time entry
_SEP = "\x1f"
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
                 "calls", "cached_calls", "usage_missing")
_IDS = ("agent_id", "project_id", "task_id", "expense_category_id", "agent_type", "billable")


def period_of(ts: float, granularity: str, tz: tzinfo | None) -> tuple[str, float, float]:
    """The period holding `ts`: its label ('2026-12-03' or '2026-12-03T14'), start and end."""
    local = datetime.fromtimestamp(ts, tz).astimezone(tz)
    if granularity == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%dT%H"), start.timestamp(), start.timestamp() + 3600.0
    day = local.date()
    begin = datetime.combine(day, datetime.min.time())
    end = datetime.combine(day + timedelta(days=1), datetime.min.time())
    if tz is not None:
        begin, end = begin.replace(tzinfo=tz), end.replace(tzinfo=tz)
    else:
        begin, end = begin.astimezone(), end.astimezone()
    return day.isoformat(), begin.timestamp(), max(end.timestamp(), ts + 1e-6)


def split_by_period(intervals: tuple[tuple[float, float], ...], granularity: str, tz: tzinfo | None
                    ) -> dict[tuple[str, float, float], float]:
    """Seconds of the intervals falling in each period."""
    out: dict[tuple[str, float, float], float] = {}
    for start, end in intervals:
        cursor = start
        while cursor < end:
            period = period_of(cursor, granularity, tz)
            stop = min(end, period[2])
            out[period] = out.get(period, 0.0) + (stop - cursor)
            cursor = stop
    return out


def _earliest(state: Mapping[str, Any]) -> float:
    # The earliest time an open session has work at: a period ending after it may still grow.
    starts = [float(state.get("first") or 0.0) or float("inf")]
    starts += [float(i[0]) for i in state.get("intervals") or ()][:1]
    starts += [float(v) for v in (state.get("open_runs") or {}).values()]
    return min(starts)


def _ids(snapshot: SessionSnapshot, settings: Settings) -> dict[str, Any]:
    ids = {}
    for name in _IDS:
        value = getattr(snapshot.options, name)
        ids[name] = getattr(settings, name) if value is None else value
    return ids


class Rollups:
    """The roll-up rows one fold touches (inside its transaction)."""

    def __init__(self, conn: sqlite3.Connection, settings: Settings, hours: HoursLedger) -> None:
        self.conn, self.settings, self.hours = conn, settings, hours
        self.granularity = settings.granularity
        self.rows: dict[str, dict[str, Any]] = {}
        self._keys: dict[tuple[Any, ...], str] = {}

    def _key(self, label: str, ids: dict[str, Any]) -> str:
        values = (label, *(ids[n] for n in _IDS))
        marked: tuple[Any, ...] | None = tuple((type(v), v) for v in values)
        try:
            found = self._keys.get(marked)  # type: ignore[arg-type]
        except TypeError:  # (an id that is not hashable)
            found, marked = None, None
        if found is None:
            ident = json.dumps([self.granularity, *values], default=str)
            found = hashlib.blake2b(ident.encode(), digest_size=10).hexdigest()  # (CPython's own, not OpenSSL's)
            if marked is not None:
                self._keys[marked] = found
        return found

    def _row(self, ids: dict[str, Any], period: tuple[str, float, float], framework: str) -> dict[str, Any]:
        label, start, end = period
        key = self._key(label, ids)
        row = self.rows.get(key)
        if row is None:
            found = self.conn.execute("SELECT state FROM rollups WHERE key = ?", (key,)).fetchone()
            row = json.loads(found[0]) if found else {
                "key": key, "granularity": self.granularity, "period": label, "start": start, "end": end,
                "ids": ids, "framework": framework, "seconds": 0.0, "sessions": 0, "llm_calls": 0,
                "tool_calls": 0, "errors": 0, "usage": {}, "cost": {},
            }
            self.rows[key] = row
        if row["framework"] != framework:
            row["framework"] = "mixed"
        return row

    def add(self, snapshot: SessionSnapshot, costs: Mapping[tuple[str, str | None], Cost]) -> None:
        """Add one ended session to its periods' rows."""
        tz = zone(self.settings)
        ids = _ids(snapshot, self.settings)
        framework = snapshot.options.framework or "python"
        if snapshot.had_runs:
            for period, seconds in split_by_period(snapshot.intervals, self.granularity, tz).items():
                self._row(ids, period, framework)["seconds"] += seconds
        row = self._row(ids, period_of(snapshot.started_at, self.granularity, tz), framework)
        row["sessions"] += 1
        for name in ("llm_calls", "tool_calls", "errors"):
            row[name] += int(getattr(snapshot, name))
        for usage in snapshot.usage:
            name = f"{usage.model}{_SEP}{usage.provider or ''}"
            slot = row["usage"].setdefault(name, [0] * 8)
            for index, field in enumerate(_USAGE_FIELDS):
                slot[index] += int(getattr(usage, field))
            if usage.details:
                kinds = row.setdefault("details", {})
                kinds[name] = add_details(kinds.get(name), usage.details)
            cost = costs.get((usage.model, usage.provider))
            money = row["cost"].setdefault(name, ["0", False, None])
            if cost is None or cost.usd is None:
                money[1] = True
            else:
                money[0] = str(Decimal(money[0]) + cost.usd)
                money[2] = money[2] or cost.basis

    def save(self) -> None:
        """Write the touched rows back."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO rollups (key, period_end, state, billed) VALUES (?,?,?,0)",
            [(key, row["end"], json.dumps(row, separators=(",", ":"))) for key, row in self.rows.items()],
        )

    def close_due(self, now: float) -> list[Built]:
        """Bill every period that is over and that no open session could still add to."""
        if self.conn.execute("SELECT 1 FROM rollups WHERE billed = 0 AND period_end <= ? LIMIT 1",
                             (now,)).fetchone() is None:
            return []  # the common case: one indexed lookup per fold
        horizon = min([now, *(_earliest(json.loads(t)) for (t,) in self.conn.execute("SELECT state FROM live"))])
        built = []
        for key, text in self.conn.execute(
            "SELECT key, state FROM rollups WHERE billed = 0 AND period_end <= ? ORDER BY period_end", (horizon,)
        ).fetchall():
            built.append(self._bill(json.loads(text)))
            self.conn.execute("UPDATE rollups SET billed = 1 WHERE key = ?", (key,))
        return built

    def _bill(self, row: dict[str, Any]) -> Built:
        ids, label = row["ids"], row["period"]
        rollup_id = f"rollup-{row['granularity']}-{label}-{row['key'][:8]}"
        usage, costs = [], {}
        for name, slot in row["usage"].items():
            model, provider = name.split(_SEP, 1)
            i, o, cr, cw, rs, calls, cached, missing = (int(v) for v in slot)
            usage.append(ModelUsage(model, provider or None, i, o, cr, cw, rs, calls, cached, missing,
                                    row.get("details", {}).get(name)))
            usd, unknown, basis = row["cost"][name]
            costs[(model, provider or None)] = Cost(None if unknown else Decimal(usd), basis or "no tokens")
        meta = {"rollup": row["granularity"], "period": label, "sessions": row["sessions"]}
        options = SessionOptions(**{n: ids.get(n) for n in _IDS}, framework=row["framework"], metadata=meta)
        snapshot = SessionSnapshot(
            session_id=rollup_id, options=options, opened_at=row["start"], started_at=row["start"],
            ended_at=row["end"], intervals=(), usage=tuple(usage), llm_calls=row["llm_calls"],
            tool_calls=row["tool_calls"], errors=row["errors"], outcomes=(), breakdown={},
            end_reason="period_closed", had_runs=False,
        )
        built = build(snapshot, self.settings, costs=costs)  # the expense, priced call by call
        entries = self._time_entries(row, snapshot, rollup_id)
        return Built([*entries, *built.records], {}, [])

    def _time_entries(self, row: dict[str, Any], snapshot: SessionSnapshot, rollup_id: str) -> list[Record]:
        ids, seconds = row["ids"], float(row["seconds"])
        day = datetime.fromtimestamp(row["start"], zone(self.settings)).date().isoformat()
        parts = []
        left = seconds
        while left > 1e-9:
            parts.append(min(left, float(MAX_ENTRY_SECONDS)))
            left -= parts[-1]
        records = []
        who = ids.get("agent_id") or row["framework"]
        for index, part in enumerate(parts):
            hours = self.hours.carry((ids["agent_id"], ids["project_id"], ids["task_id"]), day, part)
            hours = max(hours, self.settings.min_hours)
            rid = record_id(snapshot, "time_entry", f"{day}#{index}")
            core = {
                "agent_id": ids["agent_id"], "agent_type": ids["agent_type"], "framework": row["framework"],
                "rollup": row["granularity"], "period": row["period"], "sessions": row["sessions"],
                "duration_seconds": round(part, 3), "period_seconds": round(seconds, 3),
                "llm_calls": row["llm_calls"], "tool_calls": row["tool_calls"], "errors": row["errors"],
            }
            if len(parts) > 1:
                core.update(part=index + 1, parts=len(parts))
            notes = (f"{who} {row['granularity']} roll-up {row['period']}: {row['sessions']} sessions, "
                     f"{row['llm_calls']} LLM calls, {row['tool_calls']} tool calls")
            metadata, metadata_json = md.fit_json({"session_id": rollup_id, "record_id": rid}, core,
                                                  self.settings.metadata)
            payload = {
                "project_id": ids["project_id"], "task_id": ids["task_id"], "spent_date": day,
                "hours": hours, "notes": md.truncate(notes), "billable": bool(ids["billable"]), "source": "agent",
                "metadata": metadata,
            }
            records.append(Record(rid, "time_entry", rollup_id, day, ids["project_id"], payload, metadata_json))
        return records
