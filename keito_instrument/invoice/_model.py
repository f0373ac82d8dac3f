"""What a drafted invoice is: its line items, its totals and the `InvoiceCreate` body it becomes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

LineKind = Literal["agent_time", "llm", "outcome"]
LlmPattern = Literal["pass-through", "cost-plus", "bundled"]
LLM_PATTERNS: tuple[LlmPattern, ...] = ("pass-through", "cost-plus", "bundled")
CENT = Decimal("0.01")
MARKER_PREFIX = "keito-instrument-invoice"
# Keito's line-item kinds are Harvest's item categories: work is a Service, re-billed costs a Product.
_API_KIND = {"agent_time": "Service", "outcome": "Service", "llm": "Product"}


def to_cents(value: Decimal) -> Decimal:
    """An amount rounded to the cent, halves away from zero (0.125 -> 0.13, -0.125 -> -0.13)."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _number(value: Decimal) -> float | int:
    """A Decimal as the JSON number Keito expects (integral values as integers)."""
    return int(value) if value == value.to_integral_value() else float(value)


def _plain(value: Decimal) -> str:
    return f"{value.normalize():f}"


@dataclass(frozen=True)
class LineItem:
    """One line of the invoice.

    Attributes:
        kind: "agent_time" (quantity = hours billed, unit_price = the hourly rate), "llm" (one
            model's cost: quantity 1, unit_price = amount) or "outcome" (quantity = outcomes of
            one type, unit_price = their unit price).
        key: the agent id, the model or the outcome type the line is for.
        project_id: the Keito project the work was recorded on (None when the records had none).
        description: the text on the invoice.
        quantity, unit_price: as sent to Keito.
        amount: quantity x unit_price rounded to the cent (for "llm", the billed cost with the
            markup, rounded to the cent).
        records: how many ledger records the line sums.
    """

    kind: LineKind
    key: str
    project_id: str | None
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    records: int

    def payload(self) -> dict[str, Any]:
        """This line as an `InvoiceCreate.line_items` entry."""
        item: dict[str, Any] = {
            "kind": _API_KIND[self.kind],
            "description": self.description,
            "quantity": _number(self.quantity),
            "unit_price": _number(self.unit_price),
        }
        if self.project_id is not None:
            item["project_id"] = self.project_id
        return item

    def to_dict(self) -> dict[str, Any]:
        """This line as plain JSON (amounts as numbers)."""
        return {"kind": self.kind, "key": self.key, "project_id": self.project_id, "description": self.description,
                "quantity": _number(self.quantity), "unit_price": _number(self.unit_price),
                "amount": _number(self.amount), "records": self.records}


@dataclass(frozen=True)
class InvoiceDraft:
    """An invoice drafted from the ledger (nothing is sent; see `keito_instrument.invoice.create`).

    Attributes:
        client_id, period_start, period_end, project_ids: what was asked for (project_ids None:
            every project in the ledger).
        currency: the workspace currency every amount is in.
        llm: the LLM billing pattern; llm_markup_pct its markup (cost-plus only).
        hourly_rate: the rate agent time is billed at (None: not given, agent time at 0).
        lines: agent time, then LLM costs, then outcomes.
        llm_cost: the LLM cost as Keito's expenses bill it (before any markup), also when bundled.
        notes: what was left out and why (unpriced calls, non-billable records, ...).
    """

    client_id: str
    period_start: date
    period_end: date
    project_ids: tuple[str, ...] | None
    currency: str
    llm: LlmPattern
    llm_markup_pct: Decimal
    hourly_rate: Decimal | None
    include_local: bool
    lines: tuple[LineItem, ...]
    llm_cost: Decimal
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> Decimal:
        """The invoice total: the sum of the lines' amounts (each already to the cent)."""
        return sum((line.amount for line in self.lines), Decimal("0.00"))

    def subtotal(self, kind: LineKind) -> Decimal:
        """The sum of one kind of line."""
        return sum((line.amount for line in self.lines if line.kind == kind), Decimal("0.00"))

    @property
    def period_key(self) -> str:
        """Names the invoice of this client, period and set of projects (the same on every rerun)."""
        projects = "*" if self.project_ids is None else ",".join(sorted(self.project_ids))
        text = f"{self.client_id}|{self.period_start}|{self.period_end}|{projects}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def content_key(self) -> str:
        """Changes when any line, the currency or the pattern changes."""
        body = json.dumps([self.currency, self.llm, [line.payload() for line in self.lines]],
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @property
    def marker(self) -> str:
        """The line put in the invoice's notes that lets a rerun find the invoice it created."""
        return f"[{MARKER_PREFIX}:{self.period_key}:{self.content_key}]"

    def payload(self) -> dict[str, Any]:
        """The `POST /api/v2/invoices` body (the contract's `InvoiceCreate`)."""
        pattern = {"pass-through": "LLM costs at cost", "bundled": "LLM costs included in the agent rate",
                   "cost-plus": f"LLM costs plus {_plain(self.llm_markup_pct)}%"}[self.llm]
        return {
            "client_id": self.client_id,
            "subject": f"Agent work {self.period_start.isoformat()} to {self.period_end.isoformat()}",
            "currency": self.currency,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "notes": f"Drafted by keito-instrument from its ledger ({pattern}).\n{self.marker}",
            "line_items": [line.payload() for line in self.lines],
        }

    def to_dict(self) -> dict[str, Any]:
        """The draft as plain JSON: the request, the lines with their amounts, the totals and notes."""
        return {
            "client_id": self.client_id,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "project_ids": None if self.project_ids is None else list(self.project_ids),
            "currency": self.currency,
            "llm": self.llm,
            "llm_markup_pct": _number(self.llm_markup_pct),
            "hourly_rate": None if self.hourly_rate is None else _number(self.hourly_rate),
            "include_local": self.include_local,
            "lines": [line.to_dict() for line in self.lines],
            "subtotals": {kind: _number(self.subtotal(kind)) for kind in ("agent_time", "llm", "outcome")},
            "total": _number(self.total),
            "llm_cost": _number(self.llm_cost),
            "marker": self.marker,
            "notes": list(self.notes),
            "request": self.payload(),
        }
