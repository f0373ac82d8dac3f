"""`keito-instrument status`: records by delivery state, and the last errors with their reasons."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from .._config import Settings, get_settings, setting_problems
from .._spool import get_spool
from .._writer import health_lines, ledger_health
from ._report import money, open_sessions
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
    spend, unpriced = _sum_cost(live)
    volume = plan_check(settings.granularity, spool.recent_records(86_400.0))
    problems = setting_problems()
    health = ledger_health(spool)
    if args.format == "json":
        json.dump({"ledger": str(spool.path), "credentials": settings.has_credentials,
                   "base_url": None if settings.delivery_held else settings.base_url,
                   "delivery_held": settings.delivery_held, "setting_errors": problems,
                   "counts": counts,
                   "open_sessions": {"count": len(live), "cost_usd": spend, "unpriced_calls": unpriced},
                   "plan_limits": volume, **health,
                   "errors": errors}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"ledger:      {spool.path}")
    for line in _settings_lines(settings, problems):
        print(line)
    more = f" + {unpriced:,} call(s) unpriced" if unpriced else ""
    print(f"open:        {len(live):,} session(s) not yet billed, {money(spend)}{more} spent so far")
    if volume["warning"]:
        print(f"warning:     {volume['warning']}")
    for line in health_lines(health):
        print(line)
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


def _settings_lines(settings: Settings, problems: dict[str, str]) -> list[str]:
    """The credentials and Keito lines; an invalid variable is named, never replaced by its default."""
    held = settings.delivery_held
    if held:
        credentials = f"held: {held}, nothing is sent (records stay local until it is fixed)"
        keito = f"none in use: {held}"
    else:
        credentials = "configured" if settings.has_credentials else "not configured (records stay local)"
        keito = settings.base_url
    lines = [f"credentials: {credentials}", f"keito:       {keito}"]
    for var, why in problems.items():
        lines.append(f"invalid:     {var}: {why} (ignored until you fix or unset it)")
    if problems:
        lines.append("             `keito-instrument doctor` runs every check")
    return lines


def _sum_cost(rows: list[dict[str, Any]]) -> tuple[float, int]:
    """The priced spend of open sessions and how many of their calls are unpriced."""
    cost, unpriced = 0.0, 0
    for row in rows:
        for usage in row["usage"]:
            if usage["cost_usd"] is None:
                unpriced += usage["llm_calls"]
            else:
                cost += usage["cost_usd"]
    return round(cost, 8), unpriced


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
