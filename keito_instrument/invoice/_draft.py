"""`draft()`: an invoice from the ledger's records of a period (agent time, LLM costs, outcomes)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .._config import get_settings
from .._metadata import fmt_tokens
from .._spool import Spool, get_spool
from ._llm import llm_shares
from ._model import LLM_PATTERNS, InvoiceDraft, LineItem, LlmPattern, to_cents

# The records Keito has (or will have, with include_local): dead ones were refused for good.
_DELIVERED = ("delivered",)
_PREVIEW = ("local", "pending", "sending", "delivered")


def draft(
    client_id: str,
    period_start: date | str,
    period_end: date | str,
    *,
    project_ids: Iterable[str] | None = None,
    hourly_rate: float | Decimal | str | None = None,
    llm: LlmPattern = "pass-through",
    llm_markup_pct: float | Decimal | str = 0,
    include_local: bool = False,
    ledger: str | os.PathLike[str] | None = None,
) -> InvoiceDraft:
    """Draft an invoice for one client and period from the ledger; nothing is sent.

    Args:
        client_id: the Keito client the invoice is for.
        period_start, period_end: the first and last day (inclusive), as dates or YYYY-MM-DD, in
            the workspace time zone (records carry their workspace-local `spent_date`; a datetime
            is taken as its date in `get_settings().tzinfo()`).
        project_ids: only these projects' records (None: every project in the ledger).
        hourly_rate: the price of an hour of agent time, in the workspace currency.
        llm: "pass-through" (LLM cost at cost), "cost-plus" (times 1 + llm_markup_pct/100) or
            "bundled" (left out: it is inside the agent rate).
        llm_markup_pct: the cost-plus markup in percent.
        include_local: also records not yet delivered to Keito (a preview); by default only
            records the ledger knows as delivered, so the invoice matches Keito's entries.
        ledger: the ledger file (None: the configured one).

    Raises:
        ValueError: an argument is invalid (the message names it) or the ledger file is missing.
    """
    if not isinstance(client_id, str) or not client_id.strip():
        raise ValueError("client_id must be a non-empty string (the Keito client's id)")
    start, end = _day("period_start", period_start), _day("period_end", period_end)
    if start > end:
        raise ValueError(f"period_start ({start}) is after period_end ({end})")
    projects = _projects(project_ids)
    rate = None if hourly_rate is None else _amount("hourly_rate", hourly_rate)
    if llm not in LLM_PATTERNS:
        raise ValueError(f"llm must be one of {', '.join(LLM_PATTERNS)}, got {llm!r}")
    markup = _amount("llm_markup_pct", llm_markup_pct)
    if markup and llm != "cost-plus":
        raise ValueError(f"llm_markup_pct applies to llm='cost-plus' only (llm is {llm!r})")
    if not isinstance(include_local, bool):
        raise ValueError("include_local must be True or False")
    spool = _spool(ledger)
    tally = _Tally(currency=get_settings().currency)
    for kind, payload in _records(spool, start, end, projects, _PREVIEW if include_local else _DELIVERED):
        tally.add(kind, payload)
    factor = Decimal(1) + markup / 100
    lines = [*tally.time_lines(rate), *([] if llm == "bundled" else tally.llm_lines(factor)), *tally.outcome_lines()]
    notes = list(tally.notes())
    if rate is None and tally.hours:
        notes.append("no hourly rate given: agent time is listed at 0 (pass hourly_rate)")
    return InvoiceDraft(
        client_id=client_id.strip(), period_start=start, period_end=end, project_ids=projects,
        currency=tally.currency, llm=llm, llm_markup_pct=markup, hourly_rate=rate, include_local=include_local,
        lines=tuple(lines), llm_cost=to_cents(sum(tally.llm.values(), Decimal(0))), notes=tuple(notes),
    )


def _day(name: str, value: date | str) -> date:
    if isinstance(value, datetime):
        tz = get_settings().tzinfo()
        return (value.astimezone(tz) if value.tzinfo is not None else value).date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{name} must be a date or YYYY-MM-DD, got {value!r}")


def _projects(project_ids: Iterable[str] | None) -> tuple[str, ...] | None:
    if project_ids is None:
        return None
    if isinstance(project_ids, (str, bytes)):
        raise ValueError("project_ids must be a list of project ids, not one string")
    projects = tuple(project_ids)
    if not projects or not all(isinstance(p, str) and p for p in projects):
        raise ValueError("project_ids must be a non-empty list of non-empty project ids (or None for all)")
    return tuple(dict.fromkeys(projects))


def _amount(name: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _spool(ledger: str | os.PathLike[str] | None) -> Spool:
    if ledger is None:
        return get_spool()
    path = Path(ledger).expanduser()
    if not path.is_file():
        raise ValueError(f"no ledger at {path}")
    return get_spool(path)


def _records(spool: Spool, start: date, end: date, projects: tuple[str, ...] | None,
             states: tuple[str, ...]) -> Iterable[tuple[str, dict[str, Any]]]:
    sql = (f"SELECT kind, payload FROM records WHERE spent_date BETWEEN ? AND ?"
           f" AND state IN ({','.join('?' * len(states))})")
    args: list[str] = [start.isoformat(), end.isoformat(), *states]
    if projects is not None:
        sql += f" AND project_id IN ({','.join('?' * len(projects))})"
        args += projects
    for row in spool.ended().execute(sql + " ORDER BY spent_date, created_at, record_id", args):
        yield row["kind"], json.loads(row["payload"])


def _dec(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


@dataclass
class _Tally:
    """Sums of the records, per line: (agent, project), (model, project), (type, price, project)."""

    currency: str
    hours: dict[tuple[str, str | None], Decimal] = field(default_factory=dict)
    llm: dict[tuple[str, str | None], Decimal] = field(default_factory=dict)
    tokens: dict[tuple[str, str | None], list[int]] = field(default_factory=dict)
    outcomes: dict[tuple[str, Decimal, str | None], Decimal] = field(default_factory=dict)
    counts: dict[tuple[Any, ...], int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, payload: dict[str, Any]) -> None:
        meta = payload.get("metadata") or {}
        if payload.get("billable") is False:
            self._skip(f"non-billable {kind.replace('_', ' ')} records")
            return
        project = payload.get("project_id")
        if kind == "time_entry":
            hours = _dec(payload.get("hours"))
            if hours:
                self._sum(self.hours, (str(meta.get("agent_id") or "(no agent)"), project), hours)
        elif kind == "expense":
            self._expense(payload, meta, project)
        elif kind == "outcome":
            self._outcome(meta, project)

    def _expense(self, payload: dict[str, Any], meta: dict[str, Any], project: str | None) -> None:
        billed = _dec(payload.get("total_cost"))
        if billed is None:  # sent in units: Keito prices them, at a rate the ledger does not know
            self._skip("LLM expenses sent in units (unpriced models; Keito prices them)")
            return
        if str(meta.get("currency") or "USD") != self.currency:
            self._skip(f"LLM expenses in another currency than {self.currency}")
            return
        for model, share, tokens in llm_shares(billed, meta):
            key = (model, project)
            self._sum(self.llm, key, share)
            counted = self.tokens.setdefault(key, [0, 0])
            counted[0], counted[1] = counted[0] + tokens[0], counted[1] + tokens[1]

    def _outcome(self, meta: dict[str, Any], project: str | None) -> None:
        if meta.get("outcome_success") is False:
            self._skip("failed outcomes (outcome_success false)")
            return
        price, quantity = _dec(meta.get("outcome_unit_price")), _dec(meta.get("outcome_quantity", 1))
        if price is None or quantity is None:
            self._skip("outcomes without a unit price")
            return
        self._sum(self.outcomes, (str(meta.get("outcome_type") or "outcome"), price, project), quantity)

    def _sum(self, into: dict[Any, Decimal], key: Any, value: Decimal) -> None:
        into[key] = into.get(key, Decimal(0)) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def time_lines(self, rate: Decimal | None) -> list[LineItem]:
        price = rate if rate is not None else Decimal(0)
        return [LineItem("agent_time", agent, project, f"Agent time: {agent}", hours, price,
                         to_cents(hours * price), self.counts[(agent, project)])
                for (agent, project), hours in sorted(self.hours.items(), key=_order)]

    def llm_lines(self, factor: Decimal) -> list[LineItem]:
        lines = []
        for (model, project), billed in sorted(self.llm.items(), key=_order):
            amount = to_cents(billed * factor)
            tokens_in, tokens_out = self.tokens[(model, project)]
            text = f"LLM usage: {model} ({fmt_tokens(tokens_in)} input + {fmt_tokens(tokens_out)} output tokens)"
            lines.append(LineItem("llm", model, project, text, Decimal(1), amount, amount,
                                  self.counts[(model, project)]))
        return lines

    def outcome_lines(self) -> list[LineItem]:
        return [LineItem("outcome", kind, project, f"Outcome: {kind}", quantity, price, to_cents(quantity * price),
                         self.counts[(kind, price, project)])
                for (kind, price, project), quantity in sorted(self.outcomes.items(), key=_order)]

    def notes(self) -> Iterable[str]:
        for why, count in sorted(self.skipped.items()):
            yield f"left out: {count} {why}"


def _order(item: tuple[tuple[Any, ...], Decimal]) -> tuple[str, ...]:
    return tuple("" if part is None else str(part) for part in item[0])

