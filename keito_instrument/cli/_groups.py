"""Report rows for billing: the ledger's daily sums (and the sessions still open) grouped by one
or two dimensions over a period of days, with outcomes and revenue.

Days are the workspace's (the `timezone` setting): a session counts on the day its billed time
starts (its `spent_date`, the day `--by day` shows), an outcome on the day it was logged.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, NamedTuple

from .. import _daily as daily
from .._config import Settings

DIMENSIONS = ("day", "week", "month", "project", "task", "agent", "model", "outcome")
SESSION_COLUMNS = ("sessions", "open", "active_seconds", "hours", "llm_calls", "tool_calls", "errors",
                   "input_tokens", "output_tokens", "cost_usd", "billed_cost", "unpriced_calls")
OUTCOME_COLUMNS = ("outcomes", "outcome_successes", "outcome_quantity", "outcome_revenue", "unpriced_outcomes")
REVENUE_COLUMNS = ("time_revenue", "revenue")
_NOT_BY_MODEL = ("active_seconds", "hours", "tool_calls", "errors", "billed_cost")
_SQL = {"day": "spent_date", "week": "spent_date", "month": "spent_date", "project": "project_id",
        "task": "task_id", "agent": "agent_id", "model": "model", "outcome": "outcome_type"}
LAST_DAY = "9999-12-31"


def parse_by(text: str) -> tuple[str, ...]:
    """`day` or `project,agent` (one or two dimensions); argparse turns errors into usage."""
    dims = tuple(part.strip() for part in text.split(","))
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad or not 1 <= len(dims) <= 2 or len(set(dims)) != len(dims):
        raise argparse.ArgumentTypeError(
            f"expected one or two of {', '.join(DIMENSIONS)} (like project,agent), got {text!r}")
    if {"model", "outcome"} <= set(dims):
        raise argparse.ArgumentTypeError("outcomes have no model: --by model,outcome is not a grouping")
    return dims


def columns(dims: tuple[str, ...], hourly_rate: float | None = None) -> tuple[str, ...]:
    """The columns of the report's rows for a grouping (with revenue when a rate is given)."""
    if "outcome" in dims:
        return OUTCOME_COLUMNS
    if "model" in dims:  # outcomes and time have no model
        return (*SESSION_COLUMNS, *daily.KINDS)
    return (*SESSION_COLUMNS, *OUTCOME_COLUMNS, *(REVENUE_COLUMNS if hourly_rate is not None else ()))


class Period(NamedTuple):
    """Days `first` to `last` (ISO, both included); `moment` > 0: sessions started from then on."""

    first: str = ""
    last: str = LAST_DAY
    moment: float = 0.0


def period(since: float | date | str | None, until: date | str | None, settings: Settings) -> Period:
    """The report's period. A timestamp that is not a local midnight (library callers) selects
    the sessions that started from that moment, read from the per-session rows."""
    last = LAST_DAY if until is None else str(until)
    if since is None or isinstance(since, (date, str)):
        return Period("" if since is None else str(since), last)
    day = daily.day_boundary(since)
    if day:
        return Period(day, last)
    return Period(datetime.fromtimestamp(since, settings.tzinfo()).date().isoformat(), last, since)


def bucket(dim: str, value: Any) -> str:
    """A fact's group in one dimension: an ISO week (2026-W45) or month (2026-11) of its day."""
    text = str(value or "")
    if not text:
        return "(none)"
    if dim == "week":
        year, week, _ = date.fromisoformat(text).isocalendar()
        return f"{year}-W{week:02d}"
    return text[:7] if dim == "month" else text


def _row(models: bool) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys((*SESSION_COLUMNS, *OUTCOME_COLUMNS, *daily.KINDS), 0)
    row.update(cost_usd=0.0, billed_cost=0.0, outcome_revenue=0.0, outcome_quantity=0.0)
    if models:
        row.update(dict.fromkeys(_NOT_BY_MODEL))
    return row


def add_fact(groups: dict[tuple[str, ...], dict[str, Any]], dims: tuple[str, ...], fact: dict[str, Any],
             models: bool) -> None:
    """Add one fact (sums of sessions, of a model's usage, or of outcomes) to its row."""
    key = tuple(bucket(d, fact[_SQL[d]]) for d in dims)
    row = groups.get(key)
    if row is None:
        row = groups[key] = _row(models)
    if "outcomes" in fact:
        row["outcomes"] += fact["outcomes"]
        row["outcome_successes"] += fact["successes"]
        row["outcome_quantity"] += fact["quantity"]
        row["outcome_revenue"] = round(row["outcome_revenue"] + fact["revenue"], 8)
        row["unpriced_outcomes"] += fact["unpriced_outcomes"]
        return
    names = ("llm_calls", "input_tokens", "output_tokens", *daily.KINDS) if models else (
        "active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens", "output_tokens")
    for name in ("sessions", "open", "unpriced_calls", *names):
        row[name] += fact.get(name) or 0
    row["cost_usd"] = round(row["cost_usd"] + fact["cost_usd"] + fact["priced_part"], 8)
    if not models:
        row["billed_cost"] = round(row["billed_cost"] + fact["billed_cost"], 8)


def live_facts(live: Iterable[Any], settings: Settings, within: Period
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The open sessions (in the period) as facts: their session sums, per-model sums and outcomes."""
    sessions: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    tz = settings.tzinfo()
    for state in live:
        row = state.progress(settings)
        ids = {"project_id": row["project_id"] or "", "agent_id": row["agent_id"] or "",
               "task_id": (state.opts or {}).get("task_id") or settings.task_id or ""}
        for outcome in state.outcomes:
            day = datetime.fromtimestamp(outcome.get("logged_at") or row["started_at"], tz).date().isoformat()
            if within.first <= day <= within.last:
                outcomes.append(_live_outcome(outcome, {**ids, "spent_date": day}))
        if not within.first <= row["spent_date"] <= within.last or row["started_at"] < within.moment:
            continue
        ids["spent_date"] = row["spent_date"]
        per_model = _live_models(row["usage"], ids)
        models.extend(per_model)
        sessions.append(_live_session(row, ids, per_model))
    return sessions, models, outcomes


def _live_session(row: dict[str, Any], ids: dict[str, Any], per_model: list[dict[str, Any]]) -> dict[str, Any]:
    fact = {**ids, "model": "", "sessions": 1, "open": 1, "priced_part": 0.0, "with_usage": int(bool(per_model)),
            **{k: row[k] for k in ("active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens",
                                   "output_tokens")}}
    if row["cost_unknown"] or row["cost_usd"] is None:  # a priced part and the unpriced calls, as ended ones
        fact.update(cost_usd=0.0, billed_cost=0.0, priced_part=sum(m["cost_usd"] for m in per_model),
                    unpriced_calls=max(1, sum(m["unpriced_calls"] for m in per_model)))
    else:
        fact.update(cost_usd=row["cost_usd"], billed_cost=row["billed_cost"] or 0.0, unpriced_calls=0)
    return fact


def _live_models(usage: list[dict[str, Any]], ids: dict[str, Any]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for part in usage:  # one model through two providers is one model row
        fact = merged.setdefault(part["model"], {**ids, "model": part["model"], "sessions": 1, "open": 1,
                                                 "priced_part": 0.0, "cost_usd": 0.0, "unpriced_calls": 0,
                                                 **dict.fromkeys(("llm_calls", "input_tokens", "output_tokens",
                                                                  *daily.KINDS), 0)})
        details = part.get("details")
        details = json.loads(details) if isinstance(details, str) else details or {}
        for name in ("llm_calls", "input_tokens", "output_tokens", *daily.KINDS):
            fact[name] += int(part.get(name) or details.get(name) or 0)
        if part["cost_usd"] is None:
            fact["unpriced_calls"] += part["llm_calls"]
        else:
            fact["cost_usd"] += part["cost_usd"]
    return list(merged.values())


def _live_outcome(outcome: dict[str, Any], ids: dict[str, Any]) -> dict[str, Any]:
    quantity, price = float(outcome.get("quantity") or 0), outcome.get("unit_price")
    ok = bool(outcome.get("success", True))  # a failed outcome is counted, and earns nothing
    return {**ids, "outcome_type": outcome.get("outcome_type") or "", "outcomes": 1, "successes": int(ok),
            "quantity": quantity, "revenue": quantity * float(price) if ok and price is not None else 0.0,
            "unpriced_outcomes": int(ok and price is None)}


def finish(groups: dict[tuple[str, ...], dict[str, Any]], dims: tuple[str, ...], hourly_rate: float | None
           ) -> list[dict[str, Any]]:
    """The rows sorted by group: `group` names it (`p1 / alpha` for two), each dimension by name too."""
    names = columns(dims, hourly_rate)
    rows = []
    for key in sorted(groups):
        row = groups[key]
        quantity = row["outcome_quantity"]
        row["outcome_quantity"] = int(quantity) if float(quantity).is_integer() else round(quantity, 8)
        if hourly_rate is not None and row["hours"] is not None:
            row["time_revenue"] = round(row["hours"] * hourly_rate, 8)
            row["revenue"] = round(row["time_revenue"] + row["outcome_revenue"], 8)
        labels = dict(zip(dims, key, strict=True)) if len(dims) > 1 else {}
        rows.append({"group": " / ".join(key), **labels, **{c: row.get(c) for c in names}})
    return rows


def sql_columns(dims: tuple[str, ...]) -> tuple[str, ...]:
    """The `daily` (or `daily_outcomes`) columns a grouping reads."""
    return tuple(dict.fromkeys(_SQL[d] for d in dims))
