"""`create()`: POST a draft to Keito as one invoice, exactly once.

Keito has no idempotency keys, so the draft's marker (a line in the invoice's notes naming the
client, period and projects, then the line items) is what makes a rerun safe: before every POST
the client's invoices are listed (every page) and an invoice carrying the marker is reported
instead of creating a second. An ambiguous failure (a timeout, a dropped connection, a 5xx: the
invoice may or may not have been stored) is resolved the same way, by listing again before any
retry. Synchronous httpx: this runs in a user's command, not on a host's hot path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from .._config import Settings, get_settings
from .._export.client import headers
from ._model import MARKER_PREFIX, InvoiceDraft

INVOICES = "/api/v2/invoices"
PER_PAGE = 200
MAX_PAGES = 500
CreateStatus = Literal["created", "exists", "conflict"]


class InvoiceError(Exception):
    """Keito refused the invoice, or whether it was created could not be confirmed."""


@dataclass(frozen=True)
class CreateResult:
    """What `create()` did.

    Attributes:
        status: "created" (this call created it), "exists" (an earlier run had created this very
            invoice: nothing was sent) or "conflict" (an invoice for this client, period and
            projects exists with other line items, e.g. records delivered since: nothing was sent).
        invoice: the invoice as Keito returned or listed it.
        message: one line for people.
    """

    status: CreateStatus
    invoice: dict[str, Any]
    message: str


def create(draft: InvoiceDraft, *, settings: Settings | None = None, timeout: float | None = None,
           attempts: int = 3, transport: httpx.BaseTransport | None = None) -> CreateResult:
    """Create the draft as one invoice in Keito, or find the one an earlier run created.

    Args:
        draft: from `keito_instrument.invoice.draft()`.
        settings: credentials and base URL (default: the configured ones).
        timeout: seconds for each step of each request (default: `request_timeout`).
        attempts: POSTs at most, each after a listing that found no invoice with the marker.
        transport: an httpx transport (tests).

    Raises:
        InvoiceError: Keito refused the invoice (4xx), or no attempt could be confirmed; rerunning
            is safe, it finds the invoice if it was created after all.
        ValueError: no credentials, or a draft with no line items.
    """
    settings = settings or get_settings()
    if not (settings.api_key and settings.account_id):
        raise ValueError("creating an invoice needs Keito credentials (KEITO_API_KEY and KEITO_ACCOUNT_ID)")
    if not draft.lines:
        raise ValueError("the draft has no line items: nothing to invoice")
    secret = settings.api_key
    with httpx.Client(base_url=settings.base_url, headers=headers(settings), transport=transport,
                      timeout=httpx.Timeout(timeout or settings.request_timeout), follow_redirects=False) as client:
        sent, problem = False, ""
        for attempt in range(max(1, attempts)):
            if attempt:
                time.sleep(min(4.0, 0.25 * 2**attempt))
            try:
                found = find(client, draft)
            except InvoiceError as exc:
                problem = _redact(str(exc), secret)
                continue
            if found is not None:
                return _found(draft, found, sent)
            answer, problem = _post(client, draft, secret)
            sent = True
            if answer is not None:
                return CreateResult("created", answer, f"created invoice {_label(answer)}")
    raise InvoiceError(f"could not confirm the invoice was created ({problem}); rerun the same command: it "
                       "finds the invoice if Keito stored it, and creates it otherwise")


def _post(client: httpx.Client, draft: InvoiceDraft, secret: str) -> tuple[dict[str, Any] | None, str]:
    """(the created invoice, "") or (None, why it is unknown); raises InvoiceError on a refusal."""
    try:
        response = client.post(INVOICES, json=draft.payload())
    except httpx.HTTPError as exc:  # timeouts, resets, a connection closed without an answer
        return None, f"{type(exc).__name__}: {_redact(str(exc), secret) or 'no answer'}"
    if response.is_success:
        body = _json(response)
        return (body if isinstance(body, dict) else {}), ""
    reason = f"HTTP {response.status_code}: {_reason(response, secret)}"
    if response.status_code >= 500 or response.status_code in (408, 429):
        return None, reason
    raise InvoiceError(f"Keito refused the invoice ({reason})")


def find(client: httpx.Client, draft: InvoiceDraft) -> dict[str, Any] | None:
    """The client's invoice carrying the draft's period marker (any content), or None."""
    period = f"[{MARKER_PREFIX}:{draft.period_key}:"
    for invoice in list_invoices(client, draft.client_id):
        if invoice.get("client_id") in (None, draft.client_id) and period in str(invoice.get("notes") or ""):
            return invoice
    return None


def list_invoices(client: httpx.Client, client_id: str) -> Iterator[dict[str, Any]]:
    """Every invoice of one client, page after page (raises InvoiceError when a page fails)."""
    page = 1
    while True:
        try:
            response = client.get(INVOICES, params={"client_id": client_id, "page": page, "per_page": PER_PAGE})
        except httpx.HTTPError as exc:
            raise InvoiceError(f"listing invoices failed: {type(exc).__name__}") from None
        body = _json(response)
        if not response.is_success or not isinstance(body, dict) or not isinstance(body.get("invoices"), list):
            raise InvoiceError(f"listing invoices failed: HTTP {response.status_code}")
        yield from (i for i in body["invoices"] if isinstance(i, dict))
        total = body.get("total_pages")
        if not isinstance(total, int) or page >= min(total, MAX_PAGES):
            return
        page += 1


def _found(draft: InvoiceDraft, invoice: dict[str, Any], sent: bool) -> CreateResult:
    label = _label(invoice)
    if draft.marker in str(invoice.get("notes") or ""):
        if sent:  # our POST's answer was lost, but Keito had stored it
            return CreateResult("created", invoice, f"created invoice {label} (confirmed by listing after "
                                                    "the answer was lost)")
        return CreateResult("exists", invoice, f"invoice {label} already exists for this client and period: "
                                               "not creating another")
    return CreateResult("conflict", invoice, f"invoice {label} already exists for this client, period and projects "
                                             "with other line items (the ledger or the options changed): not "
                                             "creating another; update or delete it in Keito first")


def _label(invoice: dict[str, Any]) -> str:
    number = invoice.get("number")
    return f"{invoice.get('id')}" + (f" (number {number})" if number else "")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _reason(response: httpx.Response, secret: str) -> str:
    body = _json(response)
    text = ""
    if isinstance(body, dict):
        text = str(body.get("error_description") or body.get("error") or "")
    return _redact(text or response.reason_phrase or "no reason given", secret)[:300]


def _redact(text: str, secret: str | None) -> str:
    """Never let the API key reach a message (a hostile server may echo it back)."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return re.sub(r"(?i)bearer\s+\S+", "Bearer [redacted]", text)
