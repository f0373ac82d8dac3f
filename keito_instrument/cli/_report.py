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

from .. import _daily as daily
from .._config import get_settings
from .._spool import get_spool
from ._table import render_table

GROUPS = ("day", "project", "agent", "model")
_COLUMNS = ("sessions", "open", "active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens",
            "output_tokens", "cost_usd", "billed_cost", "unpriced_calls")
# cost_usd is the cost of the priced calls; unpriced_calls counts the calls of a model with no
# known price (their session's expense is sent in units of thousands of tokens instead).
# `--by model` adds the tokens by kind (parts of input or output; web searches are a count).
KINDS = daily.KINDS


def columns(by: str) -> tuple[str, ...]:
    """The columns of the report's rows for one grouping."""
    return (*_COLUMNS, *KINDS) if by == "model" else _COLUMNS


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
    row's sessions are still open (their hours are exact, not yet rounded). `cost_usd` sums the
    priced calls and `unpriced_calls` counts the others, so one unpriced model never hides the rest.
    """
    spool = get_spool()
    live = open_sessions(since) if include_open else []
    # Ended sessions are summed per day in the ledger (`_daily`): read the sums, not every session.
    compact = daily.summary(spool.ended(), by, since)
    ended, usage = ([], []) if compact is not None else (spool.sessions(since), spool.usage(since))
    usages = [*usage, *({**u, "session_key": s["session_key"], "_open": True} for s in live for u in s["usage"])]
    groups = _by_model(usages) if by == "model" else _by_session(by, ended, live, usages)
    if compact is not None:
        daily.merge(groups, compact[0], by, _empty)
    rows = []
    every: set[str] = set()
    still_open: set[str] = set()
    for name in sorted(groups):
        row = groups[name]
        every |= row["_sessions"]
        still_open |= row["_open"]
        row["sessions"] = len(row.pop("_sessions")) + row.pop("_ended", 0)
        row["open"] = len(row.pop("_open"))
        rows.append({"group": name, **{c: row[c] for c in columns(by)}})
    total = totals(rows, columns(by))
    total["sessions"], total["open"] = len(every) + (compact[1] if compact else 0), len(still_open)
    return rows, total


def _by_model(usages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for usage in usages:
        row = groups.setdefault(usage["model"], _empty())
        row["_sessions"].add(usage["session_key"])
        if usage.get("_open"):
            row["_open"].add(usage["session_key"])
        for column in ("llm_calls", "input_tokens", "output_tokens"):
            row[column] += usage[column]
        kinds = usage.get("details")
        kinds = json.loads(kinds) if isinstance(kinds, str) else kinds or {}
        for column in KINDS:
            row[column] += int(usage.get(column) or kinds.get(column) or 0)
        if usage["cost_usd"] is None:
            row["unpriced_calls"] += usage["llm_calls"]
        else:
            row["cost_usd"] = round(row["cost_usd"] + usage["cost_usd"], 8)
    for row in groups.values():
        row.update(active_seconds=None, hours=None, tool_calls=None, errors=None, billed_cost=None)
    return groups


def _by_session(by: str, ended: list[dict[str, Any]], live: list[dict[str, Any]], usages: list[dict[str, Any]]
                ) -> dict[str, dict[str, Any]]:
    # A session with an unpriced model has no total cost: take its priced part from its usage rows.
    priced_part: dict[str, list[float]] = {}
    for usage in usages:
        part = priced_part.setdefault(usage["session_key"], [0.0, 0])
        if usage["cost_usd"] is None:
            part[1] += usage["llm_calls"]
        else:
            part[0] += usage["cost_usd"]
    key = {"day": "spent_date", "project": "project_id", "agent": "agent_id"}[by]
    groups: dict[str, dict[str, Any]] = {}
    for session in [*ended, *({**s, "_open": True} for s in live)]:
        name = session[key] or "(none)"
        row = groups.setdefault(name, _empty())
        row["_sessions"].add(session["session_key"])
        if session.get("_open"):
            row["_open"].add(session["session_key"])
        for column in ("active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens",
                       "output_tokens"):
            row[column] += session[column]
        if session["cost_unknown"] or session["cost_usd"] is None:
            cost, unpriced = priced_part.get(session["session_key"], [0.0, 0])
            row["unpriced_calls"] += max(int(unpriced), 1)
        else:
            cost = session["cost_usd"]
            row["billed_cost"] = round(row["billed_cost"] + (session["billed_cost"] or 0.0), 8)
        row["cost_usd"] = round(row["cost_usd"] + cost, 8)
    return groups


def _empty() -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys((*_COLUMNS, *KINDS), 0)
    row.update(_sessions=set(), _open=set(), cost_usd=0.0, billed_cost=0.0)
    return row


def totals(rows: Iterable[dict[str, Any]], names: tuple[str, ...] = _COLUMNS) -> dict[str, Any]:
    """The totals row (sessions are counted once even when grouped by model)."""
    out: dict[str, Any] = {"group": "TOTAL"}
    rows = list(rows)
    for column in names:
        values = [r[column] for r in rows]
        out[column] = None if any(v is None for v in values) else round(sum(values), 8)
    return out


def money(value: float | None, symbol: str = "$") -> str:
    """An amount to the cent, with the sub-cent digits when there are any: $12.50, $0.000027."""
    if value is None:
        return "-"
    text = f"{abs(value):,.8f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{'-' if value < 0 else ''}{symbol}{whole}.{cents.ljust(2, '0')}"


def plain_number(value: Any) -> Any:
    """A float written without an exponent (2.7e-05 becomes 0.000027), for CSV."""
    if isinstance(value, float):
        text = f"{value:.8f}".rstrip("0").rstrip(".")
        return "0" if text in ("", "-0") else text
    return value


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _fmt_cost(value: float | None, unpriced: int | None) -> str:
    if not unpriced:
        return money(value)
    return f"{money(value)} + {unpriced:,} call{'s' if unpriced != 1 else ''} unpriced"


def run(args: argparse.Namespace) -> int:
    """Print the report."""
    rows, total = summarise(args.by, args.since)
    if args.format == "json":
        json.dump({"by": args.by, "rows": rows, "total": total}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["group", *columns(args.by)], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: plain_number(v) for k, v in row.items()} for row in rows)
        sys.stdout.write(buffer.getvalue())
        return 0
    if not rows:
        print("No billable sessions in the ledger yet.", file=sys.stderr)
        return 0
    if args.by == "model":
        sys.stdout.write(_model_table(rows, total))
        return 0
    header = [args.by, "sessions", "open", "active", "hours", "LLM calls", "tools", "errors", "input tok", "output tok",
              "cost (USD)", f"billed ({get_settings().currency})"]
    body = [_cells(r) for r in [*rows, total]]
    sys.stdout.write(render_table(header, body, footer_rows=1))
    return 0


_KIND_HEADERS = {"cache_read_tokens": "cache read", "cache_write_tokens": "cache write",
                 "cache_write_1h_tokens": "of it 1h", "reasoning_tokens": "reasoning",
                 "input_audio_tokens": "audio in", "input_image_tokens": "image in",
                 "output_audio_tokens": "audio out", "web_searches": "searches"}


def _model_table(rows: list[dict[str, Any]], total: dict[str, Any]) -> str:
    """Per model: calls, tokens by kind (a kind no model used is left out) and cost: the audit view."""
    kinds = [k for k in KINDS if k in ("cache_read_tokens", "cache_write_tokens") or total.get(k)]
    header = ["model", "sessions", "LLM calls", "input tok", *(_KIND_HEADERS[k] for k in kinds), "output tok",
              "cost (USD)"]
    body = [[str(r["group"]), f"{r['sessions']:,}", f"{r['llm_calls']:,}", f"{r['input_tokens']:,}",
             *(f"{r[k]:,}" for k in kinds), f"{r['output_tokens']:,}", _fmt_cost(r["cost_usd"], r["unpriced_calls"])]
            for r in [*rows, total]]
    return render_table(header, body, footer_rows=1)


def _cells(row: dict[str, Any]) -> list[str]:
    def num(value: Any) -> str:
        return "-" if value is None else f"{value:,}"

    hours = "-" if row["hours"] is None else f"{row['hours']:.2f}"
    return [str(row["group"]), num(row["sessions"]), num(row["open"]), _fmt_duration(row["active_seconds"]), hours,
            num(row["llm_calls"]), num(row["tool_calls"]), num(row["errors"]), num(row["input_tokens"]),
            num(row["output_tokens"]), _fmt_cost(row["cost_usd"], row["unpriced_calls"]),
            "-" if row["billed_cost"] is None else money(row["billed_cost"], _symbol())]


def _symbol() -> str:
    return "$" if get_settings().currency == "USD" else ""  # the header names any other currency
