"""Invoices in the test server: `GET/POST /api/v2/invoices` and `GET /api/v2/invoices/{id}`.

Create bodies are checked against the contract's `InvoiceCreate` (unknown fields refused, as for
the other creates); the stored invoice is shaped like the contract's `Invoice`, with each line's
amount (quantity x unit_price rounded to the cent, halves up) and the invoice's amount computed.
Lists filter by `client_id`, `state`, `from`/`to` (issue date) and `updated_since`, with the
pagination envelope of the other lists.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from ._contract import _type_error, is_date
from ._resources import error, list_page, now_iso

if TYPE_CHECKING:
    from ._server import Fault, KeitoTestServer

INVOICES = "/api/v2/invoices"
PAYMENT_TERMS = {"upon_receipt": 0, "net_15": 15, "net_30": 30, "net_45": 45, "net_60": 60, "custom": 30}
STATES = ("draft", "open", "paid", "closed")
_FIELDS = {
    "client_id": "string", "subject": "text", "issue_date": "date", "due_date": "date", "payment_term": "term",
    "currency": "text", "purchase_order": "text", "tax": "number", "tax2": "number", "discount": "number",
    "notes": "text", "period_start": "date", "period_end": "date", "line_items": "lines",
}
_LINE_FIELDS = {"kind": "text", "description": "text", "quantity": "number", "unit_price": "number",
                "taxed": "boolean", "taxed2": "boolean", "project_id": "string"}
_CENT = Decimal("0.01")


def check_invoice(body: Any) -> str | None:
    """Validate a `POST /api/v2/invoices` body; None when valid, else Keito's error description."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if body.get("client_id") is None:
        return "client_id is required"
    for name, value in body.items():
        kind = _FIELDS.get(name)
        if kind is None:
            return f"unknown field {name}"
        if kind == "term":
            if value not in PAYMENT_TERMS:
                return f"payment_term must be one of {', '.join(PAYMENT_TERMS)}"
        elif kind == "lines":
            problem = _check_lines(value)
            if problem:
                return problem
        else:
            problem = _type_error(name, kind, value)
            if problem:
                return problem
    return None


def _check_lines(value: Any) -> str | None:
    if not isinstance(value, list):
        return "line_items must be an array"
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            return f"line_items[{index}] must be an object"
        for name, field_value in item.items():
            kind = _LINE_FIELDS.get(name)
            if kind is None:
                return f"unknown field line_items[{index}].{name}"
            problem = _type_error(f"line_items[{index}].{name}", kind, field_value)
            if problem:
                return problem
    return None


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _num(value: Decimal) -> float:
    return float(value)


def new_invoice(body: dict[str, Any], number: int) -> dict[str, Any]:
    """A created invoice as Keito returns it (amounts computed, defaults filled in)."""
    now = now_iso()
    lines, subtotal, taxed, taxed2 = [], Decimal(0), Decimal(0), Decimal(0)
    for item in body.get("line_items") or []:
        quantity, price = Decimal(str(item.get("quantity", 1))), Decimal(str(item.get("unit_price", 0)))
        amount = _cents(quantity * price)
        subtotal += amount
        taxed += amount if item.get("taxed") else 0
        taxed2 += amount if item.get("taxed2") else 0
        lines.append({"id": "li_" + uuid.uuid4().hex[:16], "kind": item.get("kind", "Service"),
                      "description": item.get("description"), "quantity": float(quantity),
                      "unit_price": float(price), "amount": _num(amount), "taxed": bool(item.get("taxed", False)),
                      "taxed2": bool(item.get("taxed2", False)), "project_id": item.get("project_id")})
    rates = {name: None if body.get(name) is None else Decimal(str(body[name])) for name in ("tax", "tax2", "discount")}
    tax_amount = None if rates["tax"] is None else _cents(taxed * rates["tax"] / 100)
    tax2_amount = None if rates["tax2"] is None else _cents(taxed2 * rates["tax2"] / 100)
    discount_amount = None if rates["discount"] is None else _cents(subtotal * rates["discount"] / 100)
    amount = subtotal + (tax_amount or 0) + (tax2_amount or 0) - (discount_amount or 0)
    term = body.get("payment_term", "net_30")
    issue = body.get("issue_date") or datetime.now(UTC).date().isoformat()
    due = body.get("due_date") or (date.fromisoformat(issue) + timedelta(days=PAYMENT_TERMS[term])).isoformat()
    return {
        "id": "inv_" + uuid.uuid4().hex[:20], "client_id": body["client_id"], "created_by_id": "usr_test",
        "client": {"id": body["client_id"], "name": None},
        "creator": {"id": "usr_test", "name": "Test Agent", "email": "agent@example.test"},
        "number": str(number), "purchase_order": body.get("purchase_order"), "subject": body.get("subject"),
        "state": "draft", "amount": _num(amount), "due_amount": _num(amount),
        "tax": body.get("tax"), "tax_amount": None if tax_amount is None else _num(tax_amount),
        "tax2": body.get("tax2"), "tax2_amount": None if tax2_amount is None else _num(tax2_amount),
        "discount": body.get("discount"), "discount_amount": None if discount_amount is None else _num(discount_amount),
        "currency": body.get("currency") or "USD", "issue_date": issue, "due_date": due, "payment_term": term,
        "notes": body.get("notes"), "period_start": body.get("period_start"), "period_end": body.get("period_end"),
        "sent_at": None, "paid_at": None, "closed_at": None, "created_at": now, "updated_at": now,
        "line_items": lines,
    }


def list_invoices(items: list[dict[str, Any]], path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
    """One page of `GET /api/v2/invoices`, filtered as the contract's listInvoices."""

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    client, state, start, end, since = (one(n) for n in ("client_id", "state", "from", "to", "updated_since"))
    if state is not None and state not in STATES:
        return 400, error("bad request", f"state must be one of {', '.join(STATES)}")
    for name, value in (("from", start), ("to", end)):
        if value is not None and not is_date(value):
            return 400, error("bad request", f"{name} must be a date (YYYY-MM-DD)")
    selected = [
        i for i in items
        if (client is None or i["client_id"] == client) and (state is None or i["state"] == state)
        and (start is None or i["issue_date"] >= start) and (end is None or i["issue_date"] <= end)
        and (since is None or i["updated_at"] >= since)
    ]
    paging = {name: values for name, values in query.items() if name in ("page", "per_page")}
    return list_page(selected, "invoices", path, paging)


def route(owner: KeitoTestServer, method: str, path: str, query: dict[str, list[str]], body: Any,
          body_error: str | None, fault: Fault | None) -> tuple[int, Any, dict[str, str] | None]:
    """(status, body, extra headers) for a request under /api/v2/invoices; status 0: drop it."""
    if path != INVOICES:
        invoice_id = path[len(INVOICES) + 1:]
        if "/" in invoice_id:
            return 404, error("not found", "Resource not found"), None
        if method != "GET":
            return 405, error("method not allowed", "The test server lists, creates and gets invoices only"), None
        with owner._lock:
            found = next((i for i in owner.invoices if i["id"] == invoice_id), None)
        return (200, found, None) if found is not None else (404, error("not found", "Invoice not found"), None)
    if method == "GET":
        with owner._lock:
            items = list(owner.invoices)
        return (*list_invoices(items, path, query), None)
    if method != "POST":
        return 405, error("method not allowed", "Method not allowed"), None
    problem = body_error or check_invoice(body)
    if problem:
        return 400, error("bad request", problem), None
    with owner._lock:
        stored = new_invoice(body, len(owner.invoices) + 1)
        owner.invoices.append(stored)
    if fault is not None and fault.kind == "drop_after_commit":
        return 0, None, None
    if fault is not None and fault.kind == "error_after_commit":
        return fault.status, error("server error", "injected fault after commit"), None
    return owner.create_status, stored, None
