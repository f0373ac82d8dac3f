"""`keito-instrument demo`: an offline demo agent into the local ledger, then the report.

The agent is a support bot handling a few tickets: each ticket is one `@track_agent` session
with LLM calls (deterministic fake usage, nothing leaves the machine), a tool call and an
outcome. It writes to its own demo ledger (or `--ledger`), never to the real one, and never uses
the configured credentials; it ends by printing the `report` command that reads that ledger (and
`report` on a missing default ledger points at the demo's). With `--server` the records are
delivered to a Keito-compatible test server on 127.0.0.1, to show delivery end to end without a
Keito account. It ends with an invoice preview of that work (`invoice --include-local`).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import keito_instrument as keito

from .._spool import default_path
from ._report import run as run_report

TICKETS = (
    ("T-1001", "Refund for a duplicate charge on invoice 4411"),
    ("T-1002", "Password reset link expired twice"),
    ("T-1003", "Export to CSV drops the last column when it is empty"),
)
# (model, provider, input, cache_read, output, reasoning) per step; deterministic, so the demo's
# costs are reproducible from the installed genai-prices version.
STEPS = (
    ("gpt-4o-mini", "openai", 1800, 0, 220, 0),
    ("claude-sonnet-4-5", "anthropic", 5200, 3000, 640, 0),
    ("gpt-4o-mini", "openai", 900, 512, 120, 0),
)


def add_parser(subparsers: Any) -> None:
    """Register `demo`."""
    parser = subparsers.add_parser("demo", help="run an offline demo agent into the local ledger, then report")
    parser.add_argument("--tickets", type=int, default=len(TICKETS), help="how many tickets (sessions) to handle")
    parser.add_argument("--step-seconds", type=float, default=0.2, help="simulated thinking time per LLM call")
    parser.add_argument("--server", action="store_true",
                        help="also deliver to a Keito-compatible test server on 127.0.0.1")
    parser.set_defaults(func=run)


def run_agent(tickets: int, step_seconds: float) -> list[str]:
    """Handle `tickets` tickets, one session each; returns the session ids."""
    sessions: list[str] = []

    @keito.track_agent(agent_id="demo-support-bot", agent_type="demo", metadata={"demo": True})
    def handle(ticket_id: str, text: str) -> str:
        current = keito.current_session()
        for index, (model, provider, prompt, cached, output, reasoning) in enumerate(STEPS):
            time.sleep(step_seconds)  # the model "thinks"
            size = len(text) * 7
            keito.record_llm_call(model, provider, input_tokens=prompt + size, cache_read_tokens=cached,
                                  output_tokens=output + index * 10, reasoning_tokens=reasoning)
            if index == 0 and current is not None:
                current.record_tool_call()  # looked the customer up
        keito.log_outcome("ticket_resolved", quantity=1, unit_price=0.99, evidence={"ticket_id": ticket_id})
        if current is not None:
            sessions.append(current.session_id)
        return f"{ticket_id}: resolved"

    for n in range(tickets):
        ticket_id, text = TICKETS[n % len(TICKETS)]
        print(f"  {handle(f'{ticket_id}-{n}' if n >= len(TICKETS) else ticket_id, text)}", file=sys.stderr)
    return sessions


DEMO_IDS = {"project_id": "demo-project", "task_id": "demo-task", "expense_category_id": "demo-llm-usage"}


def demo_ledger_path() -> Path:
    """The demo's own ledger, beside (never inside) the real one."""
    return default_path().with_name("demo-ledger.sqlite3")


def _use_demo_ledger(args: argparse.Namespace) -> Path:
    # The demo never writes into the real ledger (KEITO_LEDGER) nor sends anything with the real
    # credentials: its records would be fake billing in a real workspace, and --server would mark
    # real pending records as delivered to a throwaway server.
    if args.ledger:
        path = Path(args.ledger)
    elif args.server:
        path = Path(tempfile.mkdtemp(prefix="keito-demo-")) / "ledger.sqlite3"
    else:
        path = demo_ledger_path()
        for suffix in ("", "-wal", "-shm"):  # a fresh demo each run
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        # and its journal: a past run's segments would be folded into the new ledger again
        shutil.rmtree(f"{path}.journal", ignore_errors=True)
    keito.configure(ledger_path=str(path), api_key=None, account_id=None, **DEMO_IDS)
    return path


def run(args: argparse.Namespace) -> int:
    """Run the demo agent and print the report."""
    if args.tickets < 1 or args.step_seconds < 0:
        print("keito-instrument demo: error: --tickets must be >= 1 and --step-seconds >= 0", file=sys.stderr)
        return 2
    path = _use_demo_ledger(args)
    if args.server:
        code = _run_with_server(args)
        _print_next_step(path)
        return code
    print(f"demo agent: handling {args.tickets} tickets (offline, into the demo ledger {path})", file=sys.stderr)
    run_agent(args.tickets, args.step_seconds)
    keito.flush(timeout=5.0)
    print(file=sys.stderr)
    code = _report()
    _invoice_preview()
    _print_next_step(path)
    return code


def _print_next_step(path: Path) -> None:
    print(f"\nThe demo wrote to its own ledger, {path} (never your real one). Report on it with:\n"
          f"  keito-instrument report --ledger {shlex.quote(str(path))} --by agent", file=sys.stderr)
    first, last = _demo_period()
    print(f"and preview an invoice of it with:\n  keito-instrument invoice --ledger {shlex.quote(str(path))} "
          f"--client-id {DEMO_CLIENT} --from {first} --to {last} --hourly-rate 60 --include-local", file=sys.stderr)


DEMO_CLIENT = "demo-client"


def _demo_period() -> tuple[str, str]:
    """The first and last day of the demo's records (today, unless it ran over midnight)."""
    from .._spool import get_spool

    days = sorted({str(r["spent_date"]) for r in get_spool().records()})
    return (days[0], days[-1]) if days else (date.today().isoformat(),) * 2


def _invoice_preview() -> None:
    """The invoice the demo's work would make: agent time at 60 an hour, LLM cost plus 20%, the
    outcomes at their price (--include-local: the demo delivers nothing to a real Keito)."""
    from ..invoice import draft
    from ._invoice import show

    first, last = _demo_period()
    print()
    show(draft(DEMO_CLIENT, first, last, hourly_rate=60, llm="cost-plus", llm_markup_pct=20, include_local=True))


def _report() -> int:
    code = run_report(argparse.Namespace(by="day", format="table", since=None))
    print()
    return code or run_report(argparse.Namespace(by="model", format="table", since=None))


def _run_with_server(args: argparse.Namespace) -> int:
    from ..testing import KeitoTestServer

    with KeitoTestServer() as server:
        keito.configure(api_key=server.api_key, account_id=server.account_id, base_url=server.url)
        print(f"demo agent: handling {args.tickets} tickets, delivering to {server.url}", file=sys.stderr)
        run_agent(args.tickets, args.step_seconds)
        delivered = keito.flush(timeout=30.0)
        print(f"test server received {len(server.time_entries)} time entries and {len(server.expenses)} "
              f"expenses ({'all delivered' if delivered else 'some still pending'})\n", file=sys.stderr)
        code = _report()
        _invoice_preview()
        keito.shutdown(timeout=5.0)
    return code if delivered else 1
