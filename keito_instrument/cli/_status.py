"""`keito-instrument status`: records by delivery state, and the last errors with their reasons."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from .._config import get_settings
from .._spool import get_spool
from ._report import open_sessions
from ._table import render_table

_MEANING = {
    "local": "kept locally (no credentials yet; `keito-instrument sync` sends them)",
    "pending": "waiting to be sent",
    "sending": "being sent by a running process",
    "delivered": "delivered to Keito",
    "dead": "refused by Keito for good (see the reasons below)",
}


def add_parser(subparsers: Any) -> None:
    """Register `status`."""
    parser = subparsers.add_parser("status", help="records by delivery state and the last errors")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--errors", type=int, default=10, metavar="N", help="how many recent errors to list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the status."""
    if args.errors < 0:
        print("keito-instrument status: error: --errors must be >= 0", file=sys.stderr)
        return 2
    settings = get_settings()
    spool = get_spool()
    counts = spool.counts()
    errors = [dict(row) for row in spool.last_errors(args.errors)] if args.errors else []
    live = open_sessions()
    spend = _sum_cost(live)
    volume = plan_check(settings.granularity, spool.recent_records(86_400.0))
    if args.format == "json":
        json.dump({"ledger": str(spool.path), "credentials": settings.has_credentials, "base_url": settings.base_url,
                   "counts": counts, "open_sessions": {"count": len(live), "cost_usd": spend},
                   "plan_limits": volume,
                   "errors": errors}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"ledger:      {spool.path}")
    print(f"credentials: {'configured' if settings.has_credentials else 'not configured (records stay local)'}")
    print(f"keito:       {settings.base_url}")
    money = "unknown (an unpriced model)" if spend is None else f"${spend:,.4f}"
    print(f"open:        {len(live):,} session(s) not yet billed, {money} spent so far")
    if volume["warning"]:
        print(f"warning:     {volume['warning']}")
    print()
    sys.stdout.write(render_table(["state", "records", "meaning"],
                                  [[s, f"{n:,}", _MEANING[s]] for s, n in counts.items()], left=(0, 2)))
    if errors:
        print("\nlast errors:")
        rows = [[e["state"], e["kind"], e["spent_date"], e["record_id"][:8], str(e["attempts"]),
                 datetime.fromtimestamp(e["updated_at"]).strftime("%Y-%m-%d %H:%M"), e["last_error"] or ""]
                for e in errors]
        header = ["state", "kind", "date", "record", "tries", "when", "reason"]
        sys.stdout.write(render_table(header, rows, left=(0, 1, 2, 3, 5, 6)))
    return 0


def _sum_cost(rows: list[dict[str, Any]]) -> float | None:
    if any(r["cost_usd"] is None for r in rows):
        return None
    return round(float(sum(r["cost_usd"] for r in rows)), 8)


# Keito's documented API limits per account (requests a day); one record is one request.
PLAN_LIMITS = {"Free": 1_000, "Pro": 50_000}


def plan_check(granularity: str, records_per_day: int) -> dict[str, Any]:
    """Whether the last day's volume of records fits Keito's plans, and what a roll-up would do."""
    over = [plan for plan, limit in PLAN_LIMITS.items() if records_per_day > limit]
    warning = None
    if over:
        limits = ", ".join(f"{plan} {limit:,}" for plan, limit in PLAN_LIMITS.items())
        warning = (f"{records_per_day:,} records in the last 24 h exceed the {' and '.join(over)} plan's "
                   f"daily request limit ({limits} a day): delivery will fall behind")
        if granularity == "session":
            warning += "; granularity='day' (or 'hour') sends one time entry and one expense per agent and day"
    return {"records_last_24h": records_per_day, "limits_per_day": PLAN_LIMITS, "granularity": granularity,
            "warning": warning}
