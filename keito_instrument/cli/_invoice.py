"""`keito-instrument invoice`: an invoice draft from the ledger; with --create, one invoice in Keito."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from ..invoice import LLM_PATTERNS, InvoiceDraft, InvoiceError, LineItem, create, draft
from ..invoice._model import LlmPattern
from ._report import money
from ._table import render_table


def _quantity(line: LineItem) -> str:
    """Hours with at least 2 decimals (as Keito shows them), counts as they are."""
    quantity = line.quantity.normalize()
    if line.kind == "agent_time" and quantity.as_tuple().exponent > -2:  # type: ignore[operator]
        quantity = quantity.quantize(Decimal("0.01"))
    return f"{quantity:f}"


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _number(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register `invoice`."""
    parser = subparsers.add_parser(
        "invoice", help="draft an invoice from the ledger (agent time, LLM cost, outcomes); --create sends it",
        description="Draft an invoice for one client and period from the records the ledger delivered to "
                    "Keito. Nothing is sent unless --create is given.")
    parser.add_argument("--client-id", required=True, help="the Keito client the invoice is for")
    parser.add_argument("--from", dest="period_start", required=True, type=_date, metavar="YYYY-MM-DD",
                        help="first day of the period (inclusive, workspace time zone)")
    parser.add_argument("--to", dest="period_end", required=True, type=_date, metavar="YYYY-MM-DD",
                        help="last day of the period (inclusive)")
    parser.add_argument("--project-id", dest="project_ids", action="append", metavar="P",
                        help="only this project's work (repeat for several; default: every project)")
    parser.add_argument("--hourly-rate", type=_number, metavar="N", help="price of an hour of agent time")
    parser.add_argument("--llm", choices=LLM_PATTERNS, default=None,
                        help="LLM cost: at cost (pass-through, the default), with a markup (cost-plus, the "
                             "default when --llm-markup is given) or left out (bundled)")
    parser.add_argument("--llm-markup", type=_number, default=None, metavar="PCT", help="cost-plus markup in percent")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--create", action="store_true", help="create the invoice in Keito (exactly once)")
    parser.add_argument("--include-local", action="store_true",
                        help="preview with records not delivered to Keito yet too (not with --create)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the draft; with --create, create it in Keito unless an earlier run did."""
    from . import _fold, ledger_problem

    if args.create and args.include_local:
        print("keito-instrument invoice: error: --create invoices delivered records only; drop --include-local",
              file=sys.stderr)
        return 2
    problem = ledger_problem()
    if problem:
        print(f"keito-instrument invoice: {problem}", file=sys.stderr)
        return 1
    _fold("invoice")
    llm: LlmPattern = args.llm or ("cost-plus" if args.llm_markup is not None else "pass-through")
    result = draft(args.client_id, args.period_start, args.period_end, project_ids=args.project_ids,
                   hourly_rate=args.hourly_rate, llm=llm, llm_markup_pct=args.llm_markup or 0,
                   include_local=args.include_local)
    if args.format == "json":
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        show(result)
    return _create(result) if args.create else 0


def _create(result: InvoiceDraft) -> int:
    if not result.lines:
        print("keito-instrument invoice: nothing to invoice in that period: no invoice created", file=sys.stderr)
        return 1
    try:
        outcome = create(result)
    except (InvoiceError, ValueError) as exc:
        print(f"keito-instrument invoice: {exc}", file=sys.stderr)
        return 1
    print(f"keito-instrument invoice: {outcome.message}", file=sys.stderr)
    return 1 if outcome.status == "conflict" else 0


def show(result: InvoiceDraft) -> None:
    """The draft as a table on stdout (amounts to the cent), what was left out on stderr."""
    symbol = "$" if result.currency == "USD" else ""
    scope = "every project" if result.project_ids is None else ", ".join(result.project_ids)
    llm = result.llm + (f" +{result.llm_markup_pct.normalize():f}%" if result.llm == "cost-plus" else "")
    records = "delivered and local records" if result.include_local else "delivered records"
    print(f"Invoice draft for client {result.client_id}, {result.period_start} to {result.period_end} "
          f"({scope}; LLM cost {llm}; {records})")
    if not result.lines:
        print("(no billable records in that period)")
    else:
        rows = [[line.description, line.project_id or "-", _quantity(line),
                 money(float(line.unit_price), symbol), money(float(line.amount), symbol)] for line in result.lines]
        rows.append(["TOTAL", "", "", "", money(float(result.total), symbol)])
        header = ["line", "project", "quantity", "unit price", f"amount ({result.currency})"]
        sys.stdout.write(render_table(header, rows, footer_rows=1, left=(0, 1)))
    if result.llm == "bundled" and result.llm_cost:
        print(f"LLM cost bundled into the agent rate (not listed): {money(float(result.llm_cost), symbol)}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
