"""Ended session -> Keito records: one time entry per spent_date, one LLM expense, outcomes.

Pure functions of (snapshot, settings): the same session always yields the same records with
the same `record_id`s, which is what makes delivery idempotent against an API without
idempotency keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from . import _metadata as md
from ._config import Settings
from ._pricing import Cost, price, pricing_version
from ._session import SessionOptions, SessionSnapshot, session_options
from ._usage import ModelUsage, add_details

TIME_ENTRIES = "/api/v2/time_entries"
KINDS = ("time_entry", "expense", "outcome")  # the kinds of record an ended session yields
EXPENSES = "/api/v2/expenses"
_NS = uuid.UUID("6f1c7a52-3b0e-4d7c-9a51-6b8c2e4f0d13")
_NS_BYTES = _NS.bytes
_MEMO_MAX = 1024  # entries kept by each of the small caches below


@dataclass(frozen=True)
class Record:
    """One payload for Keito, with what the spool needs to deliver and reconcile it."""

    record_id: str
    kind: str  # "time_entry" | "expense" | "outcome"
    session_id: str
    spent_date: str
    project_id: str | None
    payload: dict[str, Any]
    # payload["metadata"] as compact JSON, as it was measured (see _metadata.payload_json): a
    # payload is not changed once built.
    metadata_json: str | None = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> str:
        """The API path this record is POSTed to."""
        return EXPENSES if self.kind == "expense" else TIME_ENTRIES


@dataclass(frozen=True)
class PricedUsage:
    """A model's usage with its cost."""

    usage: ModelUsage
    cost: Cost


@dataclass(frozen=True)
class Built:
    """What one ended session produced: records for Keito and rows for the local report."""

    records: list[Record]
    session_row: dict[str, Any]
    usage_rows: list[dict[str, Any]]


def record_id(snapshot: SessionSnapshot, kind: str, key: str) -> str:
    """Deterministic and unique per record: session id + when it opened + kind + key.

    `str(uuid.uuid5(_NS, name))`, computed without building a UUID object."""
    return _record_id(f"{snapshot.session_id}|{snapshot.opened_at:.6f}|", kind, key)


def _record_id(prefix: str, kind: str, key: str) -> str:
    # (`prefix`: the session id and opening time, as `record_id` writes them)
    raw = bytearray(hashlib.sha1(_NS_BYTES + f"{prefix}{kind}|{key}".encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_ZONES: dict[str | None, tzinfo | None] = {}


def zone(settings: Settings) -> tzinfo | None:
    """`settings.tzinfo()`, looked up once per time zone name."""
    name = settings.timezone
    if name in _ZONES:
        return _ZONES[name]
    if len(_ZONES) >= _MEMO_MAX:
        _ZONES.clear()
    found = _ZONES[name] = settings.tzinfo()
    return found


_CHECKED: dict[tuple[Any, ...], SessionOptions] = {}
_METADATA = SessionOptions._fields.index("metadata")


def checked_options(options: SessionOptions) -> SessionOptions:
    """`session_options(options._asdict())`, remembered for options without metadata (the same
    values always give the same options; its warnings are once per process anyway)."""
    if options.metadata or not isinstance(options.metadata, Mapping):
        return session_options(options._asdict())
    try:  # (an empty mapping checks as {}: it is left out of the key; the types are in it)
        key = (options[:_METADATA] + options[_METADATA + 1:], tuple(map(type, options)))
        found = _CHECKED.get(key)
    except TypeError:  # (an unhashable value from an old journal: checked, dropped)
        return session_options(options._asdict())
    if found is None:
        if len(_CHECKED) >= _MEMO_MAX:
            _CHECKED.clear()
        found = _CHECKED[key] = session_options(options._asdict())
    return found


def _start_of_next_day(day: date, tz: tzinfo | None, after: float) -> float | None:
    """The instant the calendar day after `day` begins in `tz` (None: local time).

    Where a DST change skips midnight itself (Chile, Paraguay, Cuba, Lebanon), the day begins at
    the first wall-clock time that exists, so we step forward an hour at a time.
    """
    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time())
    for instant in _next_day_starts(midnight, tz):
        if instant > after:
            return instant
    return None


_STARTS: dict[tuple[datetime, tzinfo], tuple[float, ...]] = {}


def _next_day_starts(midnight: datetime, tz: tzinfo | None) -> tuple[float, ...]:
    """The instants of `midnight` and the three wall-clock hours after it, in `tz` (None: local
    time, looked up each time: the process's zone may change)."""
    found = _STARTS.get((midnight, tz)) if tz else None
    if found is None:
        found = tuple((candidate.replace(tzinfo=tz) if tz else candidate.astimezone()).timestamp()
                      for candidate in (midnight + timedelta(hours=hours) for hours in range(4)))
        if tz:
            if len(_STARTS) >= _MEMO_MAX:
                _STARTS.clear()
            _STARTS[(midnight, tz)] = found
    return found


def split_by_day(intervals: tuple[tuple[float, float], ...], tz: tzinfo | None) -> dict[date, float]:
    """Seconds of the intervals falling on each calendar day of `tz` (None: local time)."""
    days: dict[date, float] = {}
    for start, end in intervals:
        cursor = start
        while cursor < end:
            day = datetime.fromtimestamp(cursor, tz).astimezone(tz).date()
            next_day = _start_of_next_day(day, tz, cursor)
            stop = end if next_day is None else min(end, next_day)
            days[day] = days.get(day, 0.0) + (stop - cursor)
            cursor = stop
    return days


def rounded_total(seconds: float, increment: float, mode: str) -> Decimal:
    """Seconds as decimal hours on the increment, uncapped (a running total may pass 24 h)."""
    steps = Decimal(str(seconds)) / Decimal(3600) / Decimal(str(increment))
    if mode == "up":
        whole = Decimal(math.ceil(steps))
    elif mode == "down":
        whole = Decimal(math.floor(steps))
    else:
        whole = steps.quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return whole * Decimal(str(increment))


def round_hours(seconds: float, increment: float, mode: str) -> float:
    """Seconds to decimal hours on the configured increment (default: nearest 0.01 h), <= 24."""
    return float(min(Decimal(24), rounded_total(seconds, increment, mode)))


def _iso(ts: float, tz: tzinfo | None) -> str:
    return datetime.fromtimestamp(ts, tz).astimezone(tz).isoformat(timespec="seconds")


HoursCarry = Callable[[tuple[Any, ...], str, float], float]


def build(
    snapshot: SessionSnapshot,
    settings: Settings,
    costs: Mapping[tuple[str, str | None], Cost] | None = None,
    carry: HoursCarry | None = None,
    kinds: Collection[str] = KINDS,
) -> Built:
    """All records of an ended session (see DESIGN.md, "Records sent to Keito").

    `costs`: each model's cost, already priced call by call (the billing engine's); without it the
    session's per-model totals are priced here. `carry(key, day, seconds)`: the hours to bill for
    that many more seconds of (agent, project, task) on that day, rounding the day's running total
    once (the engine's ledger-backed carry); without it each entry is rounded alone. `kinds`: the
    kinds of record to build (a rolled-up session sends only its outcomes); the report rows are
    the same whatever they are.
    """
    # The options as the hot path checks them (a journal written by an older version, or an
    # adapter's own SessionOptions, may hold values no record can carry: an int for notes, say).
    options = checked_options(snapshot.options)  # (used below instead of snapshot.options)
    tz = zone(settings)
    priced = [
        PricedUsage(u, costs[(u.model, u.provider)] if costs and (u.model, u.provider) in costs
                    else price(u, settings.price_overrides, snapshot.started_at))
        for u in snapshot.usage
    ]
    if len(priced) > 1:
        priced.sort(key=lambda p: -p.usage.total_tokens)
    ids = {}
    for name in _IDS:
        value = getattr(options, name)
        ids[name] = getattr(settings, name) if value is None else value
    prefix = f"{snapshot.session_id}|{snapshot.opened_at:.6f}|"
    active = snapshot.active_seconds
    common = {
        "agent_id": ids["agent_id"],
        "agent_type": ids["agent_type"],
        "framework": options.framework or "python",
    }
    user_meta = {**settings.metadata, **options.metadata}
    days = split_by_day(snapshot.intervals, tz) if snapshot.had_runs else {}
    first_day = min(days) if days else datetime.fromtimestamp(snapshot.started_at, tz).astimezone(tz).date()
    records: list[Record] = []
    if carry is None:
        hours_by_day = {d: round_hours(s, settings.hours_increment, settings.rounding) for d, s in days.items()}
    else:
        key = (ids["agent_id"], ids["project_id"], ids["task_id"])
        hours_by_day = {d: carry(key, d.isoformat(), s) for d, s in days.items()}
    if days and sum(hours_by_day.values()) < settings.min_hours:
        longest = max(days, key=lambda d: days[d])
        hours_by_day[longest] = round(
            hours_by_day[longest] + settings.min_hours - sum(hours_by_day.values()), 6
        )
    totals = _usage_totals(priced)
    total_in, total_out = totals["input_tokens"], totals["output_tokens"]
    primary = priced[0].usage.model if priced else None
    if days and "time_entry" in kinds:
        started, ended = _iso(snapshot.started_at, tz), _iso(snapshot.ended_at, tz)
        notes = md.truncate(options.notes or _time_notes(snapshot, ids["agent_id"], options.framework))
    for index, day in enumerate(sorted(days) if "time_entry" in kinds else ()):
        spent = day.isoformat()
        rid = _record_id(prefix, "time_entry", spent)
        core = {
            **common,
            "model": primary,
            "duration_seconds": round(days[day], 3),
            "session_duration_seconds": round(active, 3),
            "llm_calls": snapshot.llm_calls,
            "tool_calls": snapshot.tool_calls,
            "errors": snapshot.errors,
            "started_at": started,
            "ended_at": ended,
            "end_reason": snapshot.end_reason,
        }
        if len(days) > 1:
            core.update(day_index=index + 1, days=len(days))
        if days[day] > 24 * 3600:
            core["duration_capped"] = True
        metadata, metadata_json = md.fit_json({"session_id": snapshot.session_id, "record_id": rid}, core, user_meta)
        payload = {
            "project_id": ids["project_id"],
            "task_id": ids["task_id"],
            "spent_date": spent,
            "hours": hours_by_day[day],
            "notes": notes,
            "billable": bool(ids["billable"]),
            "source": "agent",
            "metadata": metadata,
        }
        records.append(Record(rid, "time_entry", snapshot.session_id, spent, ids["project_id"], payload, metadata_json))
    cost_usd, unknown = _total_cost(priced)
    billed = None if cost_usd is None else float(billed_amount(cost_usd, settings))
    if priced and snapshot.llm_calls and "expense" in kinds:
        records.append(_expense(snapshot, settings, ids, common, user_meta, priced, first_day, cost_usd, unknown,
                                billed, totals, prefix, active))
    for outcome in snapshot.outcomes if "outcome" in kinds else ():
        records.append(_outcome(snapshot, settings, ids, common, user_meta, outcome, first_day))
    session_row = {
        "session_key": _record_id(prefix, "session", ""),
        "session_id": snapshot.session_id,
        "started_at": snapshot.started_at,
        "ended_at": snapshot.ended_at,
        "spent_date": first_day.isoformat(),
        "project_id": ids["project_id"],
        "task_id": ids["task_id"],
        "agent_id": ids["agent_id"],
        "agent_type": ids["agent_type"],
        "framework": common["framework"],
        "active_seconds": active,
        "hours": sum(hours_by_day.values()),
        "llm_calls": snapshot.llm_calls,
        "tool_calls": snapshot.tool_calls,
        "errors": snapshot.errors,
        "input_tokens": total_in,
        "output_tokens": total_out,
        "cost_usd": None if cost_usd is None else float(cost_usd),
        "billed_cost": billed,
        "cost_unknown": int(unknown),
        "end_reason": snapshot.end_reason,
    }
    usage_rows = [
        {
            "session_key": session_row["session_key"],
            "model": p.usage.model,
            "provider": p.usage.provider or "",
            "input_tokens": p.usage.input_tokens,
            "output_tokens": p.usage.output_tokens,
            "cache_read_tokens": p.usage.cache_read_tokens,
            "cache_write_tokens": p.usage.cache_write_tokens,
            "reasoning_tokens": p.usage.reasoning_tokens,
            "llm_calls": p.usage.calls,
            "cost_usd": None if p.cost.usd is None else float(p.cost.usd),
            "details": json.dumps(p.usage.details, separators=(",", ":")) if p.usage.details else None,
        }
        for p in priced
    ]
    return Built(records, session_row, usage_rows)


def _time_notes(snapshot: SessionSnapshot, agent_id: str | None, framework: str | None) -> str:
    who = agent_id or framework or "agent"
    text = f"{who} session: {snapshot.llm_calls} LLM calls, {snapshot.tool_calls} tool calls"
    return text + (f", {snapshot.errors} errors" if snapshot.errors else "")


def _total_cost(priced: list[PricedUsage]) -> tuple[Decimal | None, bool]:
    unknown = any(p.cost.usd is None for p in priced)
    if unknown:
        return None, True
    return sum((p.cost.usd or Decimal(0) for p in priced), Decimal(0)), False


def billed_amount(cost_usd: Decimal, settings: Settings) -> Decimal:
    """The amount billed for a USD cost, in the workspace's currency: times `exchange_rate` (for a
    currency other than USD) and the `cost_multiplier` markup, rounded to `cost_decimals`."""
    key = (settings.cost_decimals, settings.currency, settings.exchange_rate, settings.cost_multiplier,
           type(settings.cost_decimals), type(settings.exchange_rate), type(settings.cost_multiplier))
    found = _BILLING.get(key)
    if found is None:
        quantum = Decimal(1).scaleb(-settings.cost_decimals)
        rate = Decimal(str(settings.exchange_rate)) if settings.currency != "USD" and settings.exchange_rate else 1
        if len(_BILLING) >= _MEMO_MAX:
            _BILLING.clear()
        found = _BILLING[key] = (quantum, rate, Decimal(str(settings.cost_multiplier)))
    quantum, rate, multiplier = found
    amount = cost_usd * rate * multiplier
    return amount.quantize(quantum, rounding=ROUND_HALF_UP)


_BILLING: dict[tuple[Any, ...], tuple[Decimal, Decimal | int, Decimal]] = {}


_IDS = ("project_id", "task_id", "expense_category_id", "agent_id", "agent_type", "billable")
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def _usage_totals(priced: list[PricedUsage]) -> dict[str, int]:
    """The tokens of every model, by kind, and the calls that were cached or reported no usage."""
    totals = dict.fromkeys((*_TOKENS, "usage_missing", "cached_calls"), 0)
    for p in priced:
        u = p.usage
        totals["input_tokens"] += u.input_tokens
        totals["output_tokens"] += u.output_tokens
        totals["cache_read_tokens"] += u.cache_read_tokens
        totals["cache_write_tokens"] += u.cache_write_tokens
        totals["reasoning_tokens"] += u.reasoning_tokens
        totals["usage_missing"] += u.usage_missing
        totals["cached_calls"] += u.cached_calls
    return totals


def _detail_totals(priced: list[PricedUsage], cache_writes: int) -> dict[str, int]:
    """The rarer usage kinds of an expense; cache writes split by lifetime when one was 1-hour."""
    out: dict[str, int] = {}
    for p in priced:
        if p.usage.details:
            out = add_details(out, p.usage.details)
    if out.get("cache_write_1h_tokens"):
        out["cache_write_5m_tokens"] = cache_writes - out["cache_write_1h_tokens"]
    return dict(sorted(out.items()))


def token_notes(priced: list[PricedUsage]) -> str:
    """'claude-sonnet-4-5: 12.5k input + 3.2k output tokens; gpt-4o: ...'"""
    return "; ".join(
        f"{p.usage.model}: {md.fmt_tokens(p.usage.input_tokens)} input + "
        f"{md.fmt_tokens(p.usage.output_tokens)} output tokens"
        for p in priced
    )


def _expense(
    snapshot: SessionSnapshot,
    settings: Settings,
    ids: dict[str, Any],
    common: dict[str, Any],
    user_meta: dict[str, Any],
    priced: list[PricedUsage],
    day: date,
    cost_usd: Decimal | None,
    unknown: bool,
    billed: float | None,
    totals: dict[str, int],
    prefix: str,
    active: float,
) -> Record:
    rid = _record_id(prefix, "expense", "llm")
    core: dict[str, Any] = {
        **common,
        "model": priced[0].usage.model,
        "provider": priced[0].usage.provider,
        **{name: totals[name] for name in _TOKENS},
        **_detail_totals(priced, totals["cache_write_tokens"]),
        "cost_usd": None if cost_usd is None else float(cost_usd.quantize(Decimal("0.00000001"))),
        "pricing": pricing_version() if not unknown else "unpriced",
        "llm_calls": snapshot.llm_calls,
        "tool_calls": snapshot.tool_calls,
        "errors": snapshot.errors,
        "duration_seconds": round(active, 3),
    }
    if unknown:
        core["cost_unknown"] = True
        known = [p.cost.usd for p in priced if p.cost.usd is not None]
        core["cost_usd_priced_part"] = float(sum(known, Decimal(0))) if known else None
    if settings.cost_multiplier != 1:
        core["cost_multiplier"] = settings.cost_multiplier
    if settings.currency != "USD":
        core.update(currency=settings.currency, exchange_rate=settings.exchange_rate)
    if totals["usage_missing"]:
        core["usage_missing"] = totals["usage_missing"]
    if totals["cached_calls"]:
        core["cached_calls"] = totals["cached_calls"]
    breakdown: dict[str, Any] = {}
    if len(priced) > 1:
        for p in priced:
            breakdown[f"models.{p.usage.model}.input_tokens"] = p.usage.input_tokens
            breakdown[f"models.{p.usage.model}.output_tokens"] = p.usage.output_tokens
            breakdown[f"models.{p.usage.model}.cost_usd"] = None if p.cost.usd is None else float(p.cost.usd)
    for key, values in snapshot.breakdown.items():
        for name, value in values.items():
            breakdown[f"{key}.{name}"] = value
    payload: dict[str, Any] = {
        "project_id": ids["project_id"],
        "expense_category_id": ids["expense_category_id"],
        "spent_date": day.isoformat(),
    }
    if unknown or settings.expense_mode == "units" or cost_usd is None or billed is None:
        thousands = Decimal(totals["input_tokens"] + totals["output_tokens"]) / 1000
        payload["units"] = max(1, int(thousands.quantize(Decimal(1), rounding=ROUND_HALF_UP)))
    else:
        payload["total_cost"] = billed
    metadata, metadata_json = md.fit_json(
        {"session_id": snapshot.session_id, "record_id": rid}, core, user_meta, breakdown
    )
    payload.update(notes=md.truncate(token_notes(priced)), billable=bool(ids["billable"]), source="agent",
                   metadata=metadata)
    return Record(rid, "expense", snapshot.session_id, day.isoformat(), ids["project_id"], payload, metadata_json)


def _outcome(
    snapshot: SessionSnapshot,
    settings: Settings,
    ids: dict[str, Any],
    common: dict[str, Any],
    user_meta: dict[str, Any],
    outcome: Any,
    first_day: date,
) -> Record:
    tz = zone(settings)
    day = (
        datetime.fromtimestamp(outcome.logged_at, tz).astimezone(tz).date()
        if outcome.logged_at
        else first_day
    )
    rid = record_id(snapshot, "outcome", str(outcome.seq))
    core: dict[str, Any] = {
        **common,
        "outcome_type": outcome.outcome_type,
        "outcome_quantity": outcome.quantity,
        "outcome_success": outcome.success,
    }
    if outcome.unit_price is not None:
        core["outcome_unit_price"] = outcome.unit_price
    if outcome.evidence:
        core["outcome_evidence"] = dict(outcome.evidence)  # an object, as the SDK's outcomes.log sends it
    metadata, metadata_json = md.fit_json(
        {"session_id": snapshot.session_id, "record_id": rid}, core, dict(outcome.metadata), user_meta
    )
    payload = {
        "project_id": ids["project_id"],
        "task_id": ids["task_id"],
        "spent_date": day.isoformat(),
        "hours": 0,
        "notes": md.truncate(outcome.description or outcome.outcome_type),
        "billable": bool(ids["billable"]),
        "source": "agent",
        "metadata": metadata,
    }
    return Record(rid, "outcome", snapshot.session_id, day.isoformat(), ids["project_id"], payload, metadata_json)
