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
from . import _groups
from ._table import render_table

GROUPS = _groups.DIMENSIONS
_COLUMNS = _groups.SESSION_COLUMNS
# cost_usd is the cost of the priced calls; unpriced_calls counts the calls of a model with no
# known price (their session's expense is sent in units of thousands of tokens instead).
# `--by model` adds the tokens by kind (parts of input or output; web searches are a count).
KINDS = daily.KINDS


def columns(by: str | tuple[str, ...], hourly_rate: float | None = None) -> tuple[str, ...]:
    """The columns of the report's rows for one grouping (`model`, or `project,agent`)."""
    return _groups.columns(_groups.parse_by(by) if isinstance(by, str) else by, hourly_rate)


def since_arg(text: str) -> date:
    """`2026-11-01` or `7d` (7 days before today, in the workspace time zone) as a day;
    argparse turns errors into usage."""
    match = re.fullmatch(r"(\d+)d", text.strip())
    if match:
        today = datetime.now(get_settings().tzinfo()).date()
        return today - timedelta(days=int(match.group(1)))
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD or a number of days like 7d, got {text!r}") from None


def rate_arg(text: str) -> float:
    """A non-negative amount (`--hourly-rate 120`)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected an amount like 120 or 95.50, got {text!r}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register `report`."""
    parser = subparsers.add_parser("report", help="billable sessions, hours, tokens, cost and outcomes")
    parser.add_argument("--by", type=_groups.parse_by, default=("day",), metavar="|".join(GROUPS),
                        help="group rows by one, or two as in project,agent (default: day)")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--since", type=since_arg, default=None,
                        help="first day, YYYY-MM-DD or Nd (N days ago); days are the workspace time zone's")
    parser.add_argument("--until", type=since_arg, default=None, help="last day (included), YYYY-MM-DD or Nd")
    parser.add_argument("--hourly-rate", type=rate_arg, default=None, metavar="N",
                        help="add revenue: hours x N, plus the outcomes' quantity x unit price")
    parser.add_argument("--html", metavar="FILE", default=None,
                        help="also write one self-contained HTML page with the table and charts")
    parser.set_defaults(func=run)


def open_sessions(since: float | None = None) -> list[dict[str, Any]]:
    """The ledger's open sessions with their spend so far (`sessions`-row shape, plus `usage`)."""
    from .._engine.state import LiveSession

    settings = get_settings()
    rows = [LiveSession.from_dict(r["state"]).progress(settings) for r in get_spool().live_sessions()]
    return [r for r in rows if r["started_at"] >= (since or 0.0)]


def summarise(by: str | tuple[str, ...], since: float | date | str | None = None, include_open: bool = True,
              *, until: date | str | None = None, hourly_rate: float | None = None
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Report rows for one grouping (`day`, `project,agent`, ...), sorted by group, and the totals row.

    `since` and `until` are days (both included, the workspace's); a timestamp `since` that is not
    a local midnight reads the sessions started from that moment out of the per-session rows. A
    session that used two models appears in both model rows but is counted once in the total.
    Open sessions (`include_open`) count with their spend so far, and `open` says how many of a
    row's sessions are still open (their hours are exact, not yet rounded). `cost_usd` sums the
    priced calls and `unpriced_calls` counts the others, so one unpriced model never hides the rest.
    """
    from .._engine.state import LiveSession

    dims = _groups.parse_by(by) if isinstance(by, str) else tuple(by)
    settings, spool = get_settings(), get_spool()
    within = _groups.period(since, until, settings)
    live = [LiveSession.from_dict(r["state"]) for r in spool.live_sessions()] if include_open else []
    open_sessions, open_models, open_outcomes = _groups.live_facts(live, settings, within)
    # Ended sessions are summed per day in the ledger (`_daily`): read the sums, not every session.
    conn, models, keys = spool.ended(), "model" in dims, _groups.sql_columns(dims)
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    if "outcome" not in dims:
        ended = daily.facts(conn, keys, models, within.first, within.last, within.moment)
        for fact in [*ended, *(open_models if models else open_sessions)]:
            _groups.add_fact(found, dims, fact, models)
    if not models:
        for fact in [*daily.outcome_facts(conn, keys, within.first, within.last), *open_outcomes]:
            _groups.add_fact(found, dims, fact, models)
    rows = _groups.finish(found, dims, hourly_rate)
    total = totals(rows, _groups.columns(dims, hourly_rate))
    if "outcome" not in dims:
        every = daily.facts(conn, (), False, within.first, within.last, within.moment)
        still_open = sum(1 for s in open_sessions if not models or s["with_usage"])
        ended_count = int(every[0]["with_usage" if models else "sessions"] or 0) if every else 0
        total["sessions"], total["open"] = ended_count + still_open, still_open
    return rows, total


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
    """Print the report (and write the HTML page with `--html`)."""
    by = getattr(args, "by", ("day",))
    dims = _groups.parse_by(by) if isinstance(by, str) else tuple(by)
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    rate, html = getattr(args, "hourly_rate", None), getattr(args, "html", None)
    if isinstance(since, date) and isinstance(until, date) and until < since:
        print(f"keito-instrument report: --until {until} is before --since {since}", file=sys.stderr)
        return 2
    rows, total = summarise(dims, since, until=until, hourly_rate=rate)
    if html:
        _write_html(html, dims, rows, total, args)
    if args.format == "json":
        json.dump({"by": ",".join(dims), "since": _day(since), "until": _day(until), "hourly_rate": rate,
                   "rows": rows, "total": total}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.format == "csv":
        buffer = io.StringIO()
        labels = list(dims) if len(dims) > 1 else []
        writer = csv.DictWriter(buffer, fieldnames=["group", *labels, *columns(dims, rate)], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: plain_number(v) for k, v in row.items()} for row in rows)
        sys.stdout.write(buffer.getvalue())
        return 0
    if not rows:
        print("No billable sessions in the ledger yet." if since is None and until is None
              else "Nothing billable in this period.", file=sys.stderr)
        return 0
    header, body = table_cells(dims, rows, total, rate)
    sys.stdout.write(render_table(header, body, footer_rows=1, left=tuple(range(len(dims)))))
    return 0


def _day(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _write_html(path: str, dims: tuple[str, ...], rows: list[dict[str, Any]], total: dict[str, Any],
                args: argparse.Namespace) -> None:
    from ._html import Charts, page

    since, until, rate = args.since, getattr(args, "until", None), getattr(args, "hourly_rate", None)
    charts = Charts(cost=summarise(("day", "model"), since, until=until)[0],
                    hours=summarise(("agent",), since, until=until)[0],
                    outcomes=summarise(("outcome",), since, until=until)[0])
    header, body = table_cells(dims, rows, total, rate)
    period = f"{_day(since) or 'the first day'} to {_day(until) or 'today'}"
    with open(path, "w", encoding="utf-8") as out:
        out.write(page(f"Agent work, {period}", header, body, len(dims), charts, _symbol()))
    print(f"Wrote {path}", file=sys.stderr)


_KIND_HEADERS = {"cache_read_tokens": "cache read", "cache_write_tokens": "cache write",
                 "cache_write_1h_tokens": "of it 1h", "reasoning_tokens": "reasoning",
                 "input_audio_tokens": "audio in", "input_image_tokens": "image in",
                 "output_audio_tokens": "audio out", "web_searches": "searches"}


def table_cells(dims: tuple[str, ...], rows: list[dict[str, Any]], total: dict[str, Any],
                rate: float | None = None) -> tuple[list[str], list[list[str]]]:
    """The report as a table: its header and rows of text cells (the total last), for the
    terminal and the HTML page."""
    lead = [[str(r[d]) for d in dims] if len(dims) > 1 else [str(r["group"])] for r in rows]
    lead.append(["TOTAL", *([""] * (len(dims) - 1))])
    every = [*rows, total]
    if "outcome" in dims:
        header = [*dims, "outcomes", "succeeded", "quantity", f"revenue ({get_settings().currency})"]
        return header, [[*k, *_outcome_cells(r)] for k, r in zip(lead, every, strict=True)]
    if "model" in dims:
        kinds = [k for k in KINDS if k in ("cache_read_tokens", "cache_write_tokens") or total.get(k)]
        header = [*dims, "sessions", "LLM calls", "input tok", *(_KIND_HEADERS[k] for k in kinds), "output tok",
                  "cost (USD)"]
        return header, [[*k, f"{r['sessions']:,}", f"{r['llm_calls']:,}", f"{r['input_tokens']:,}",
                         *(f"{r[c]:,}" for c in kinds), f"{r['output_tokens']:,}",
                         _fmt_cost(r["cost_usd"], r["unpriced_calls"])] for k, r in zip(lead, every, strict=True)]
    currency = get_settings().currency
    header = [*dims, "sessions", "open", "active", "hours", "LLM calls", "tools", "errors", "input tok",
              "output tok", "cost (USD)", f"billed ({currency})"]
    extra = bool(total.get("outcomes"))
    header += ["outcomes", f"outcome rev. ({currency})"] if extra else []
    header += [f"time rev. ({currency})", f"revenue ({currency})"] if rate is not None else []
    body = []
    for key, row in zip(lead, every, strict=True):
        cells = [*key, *_cells(row)[1:]]
        if extra:
            cells += [f"{row['outcomes']:,}", _fmt_money_unpriced(row["outcome_revenue"], row["unpriced_outcomes"])]
        if rate is not None:
            cells += [money(row["time_revenue"], _symbol()), money(row["revenue"], _symbol())]
        body.append(cells)
    return header, body


def _outcome_cells(row: dict[str, Any]) -> list[str]:
    return [f"{row['outcomes']:,}", f"{row['outcome_successes']:,}", f"{row['outcome_quantity']:,}",
            _fmt_money_unpriced(row["outcome_revenue"], row["unpriced_outcomes"])]


def _fmt_money_unpriced(value: float | None, unpriced: int) -> str:
    return money(value, _symbol()) + (f" + {unpriced:,} unpriced" if unpriced else "")


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
