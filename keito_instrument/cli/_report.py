"""`keito-instrument report`: billable sessions from the local ledger, grouped and totalled."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

from .._config import get_settings
from .._spool import get_spool
from ._table import render_table

GROUPS = ("day", "project", "agent", "model")
_COLUMNS = ("sessions", "open", "active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens",
            "output_tokens", "cost_usd", "billed_cost")


def since_arg(text: str) -> float:
    """`2026-11-01` or `7d` (the last 7 days) as an epoch timestamp; argparse turns errors into usage."""
    match = re.fullmatch(r"(\d+)d", text.strip())
    if match:
        start = datetime.combine(date.today() - timedelta(days=int(match.group(1))), datetime.min.time())
        return start.timestamp()
    try:
        return datetime.combine(date.fromisoformat(text.strip()), datetime.min.time()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD or a number of days like 7d, got {text!r}") from None


def add_parser(subparsers: Any) -> None:
    """Register `report`."""
    parser = subparsers.add_parser("report", help="billable sessions, hours, tokens and cost from the ledger")
    parser.add_argument("--by", choices=GROUPS, default="day", help="group rows by (default: day)")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--since", type=since_arg, default=None, help="YYYY-MM-DD or Nd (the last N days)")
    parser.set_defaults(func=run)


def open_sessions(since: float | None = None) -> list[dict[str, Any]]:
    """The ledger's open sessions with their spend so far (`sessions`-row shape, plus `usage`)."""
    from .._engine.state import LiveSession

    settings = get_settings()
    rows = [LiveSession.from_dict(r["state"]).progress(settings) for r in get_spool().live_sessions()]
    return [r for r in rows if r["started_at"] >= (since or 0.0)]


def summarise(by: str, since: float | None = None, include_open: bool = True
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Report rows for one grouping, sorted by group, and the totals row.

    A session that used two models appears in both model rows but is counted once in the total.
    Open sessions (`include_open`) count with their spend so far, and `open` says how many of a
    row's sessions are still open (their hours are exact, not yet rounded).
    """
    spool = get_spool()
    groups: dict[str, dict[str, Any]] = {}
    live = open_sessions(since) if include_open else []
    if by == "model":
        usages = [*spool.usage(since),
                  *({**u, "session_key": s["session_key"], "_open": True} for s in live for u in s["usage"])]
        for usage in usages:
            row = groups.setdefault(usage["model"], _empty(usage["model"]))
            row["_sessions"].add(usage["session_key"])
            if usage.get("_open"):
                row["_open"].add(usage["session_key"])
            row["llm_calls"] += usage["llm_calls"]
            row["input_tokens"] += usage["input_tokens"]
            row["output_tokens"] += usage["output_tokens"]
            row["cost_usd"] = _add(row["cost_usd"], usage["cost_usd"])
        for row in groups.values():
            row.update(active_seconds=None, hours=None, tool_calls=None, errors=None, billed_cost=None)
    else:
        key = {"day": "spent_date", "project": "project_id", "agent": "agent_id"}[by]
        for session in [*spool.sessions(since), *({**s, "_open": True} for s in live)]:
            name = session[key] or "(none)"
            row = groups.setdefault(name, _empty(name))
            row["_sessions"].add(session["session_key"])
            if session.get("_open"):
                row["_open"].add(session["session_key"])
            for column in ("active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens",
                           "output_tokens"):
                row[column] += session[column]
            row["cost_usd"] = _add(row["cost_usd"], session["cost_usd"], session["cost_unknown"])
            row["billed_cost"] = _add(row["billed_cost"], session["billed_cost"], session["cost_unknown"])
    rows = []
    every: set[str] = set()
    still_open: set[str] = set()
    for name in sorted(groups):
        row = groups[name]
        every |= row["_sessions"]
        still_open |= row["_open"]
        row["sessions"] = len(row.pop("_sessions"))
        row["open"] = len(row.pop("_open"))
        rows.append({"group": name, **{c: row[c] for c in _COLUMNS}})
    total = totals(rows)
    total["sessions"], total["open"] = len(every), len(still_open)
    return rows, total


def _empty(name: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(_COLUMNS, 0)
    row.update(_sessions=set(), _open=set(), cost_usd=0.0, billed_cost=0.0, cost_unknown=False)
    return row


def _add(total: Any, value: Any, unknown: Any = 0) -> Any:
    # An unpriced session makes the sum unknown rather than silently smaller.
    if total is None or value is None or unknown:
        return None
    return round(total + value, 8)


def totals(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The totals row (sessions are counted once even when grouped by model)."""
    out: dict[str, Any] = {"group": "TOTAL"}
    rows = list(rows)
    for column in _COLUMNS:
        values = [r[column] for r in rows]
        out[column] = None if any(v is None for v in values) else round(sum(values), 8)
    return out


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _fmt_money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def run(args: argparse.Namespace) -> int:
    """Print the report."""
    rows, total = summarise(args.by, args.since)
    if args.format == "json":
        json.dump({"by": args.by, "rows": rows, "total": total}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["group", *_COLUMNS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(buffer.getvalue())
        return 0
    if not rows:
        print("No billable sessions in the ledger yet.", file=sys.stderr)
        return 0
    header = [args.by, "sessions", "open", "active", "hours", "LLM calls", "tools", "errors", "input tok", "output tok",
              "cost (USD)", f"billed ({get_settings().currency})"]
    body = [_cells(r) for r in [*rows, total]]
    sys.stdout.write(render_table(header, body, footer_rows=1))
    return 0


def _cells(row: dict[str, Any]) -> list[str]:
    def num(value: Any) -> str:
        return "-" if value is None else f"{value:,}"

    hours = "-" if row["hours"] is None else f"{row['hours']:.2f}"
    return [str(row["group"]), num(row["sessions"]), num(row["open"]), _fmt_duration(row["active_seconds"]), hours,
            num(row["llm_calls"]), num(row["tool_calls"]), num(row["errors"]), num(row["input_tokens"]),
            num(row["output_tokens"]), _fmt_money(row["cost_usd"]),
            "-" if row["billed_cost"] is None and row["hours"] is None else _fmt_money(row["billed_cost"])]
