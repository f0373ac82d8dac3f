"""Invoices from the ledger: agent time, LLM costs and outcomes for one client and period.

    from keito_instrument import invoice

    draft = invoice.draft("cl_acme", "2026-05-01", "2026-05-31", hourly_rate=120, llm="cost-plus",
                          llm_markup_pct=15)
    print(draft.total)                  # Decimal, to the cent
    result = invoice.create(draft)      # POST /api/v2/invoices, exactly once (see create())

`draft()` reads the ledger only (nothing is sent); `create()` needs Keito credentials. See
docs/invoicing.md for the three LLM billing patterns and the rounding rule.
"""

from __future__ import annotations

from ._create import CreateResult, InvoiceError, create
from ._draft import draft
from ._model import LLM_PATTERNS, InvoiceDraft, LineItem

__all__ = ["LLM_PATTERNS", "CreateResult", "InvoiceDraft", "InvoiceError", "LineItem", "create", "draft"]
