"""`report --html`: one self-contained page (inline CSS and SVG, no script, no remote resource)
with the report's table and three charts: cost per day stacked by model, hours per agent, and
outcomes per type. It works offline and is small enough to attach to an email."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, timedelta
from html import escape
from typing import Any, NamedTuple

# Colour-blind-safe series colours (Okabe-Ito), then greys for the rest.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER = "#999999"
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM = 720, 260, 64, 48

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 24px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
p.note { color: #666; margin: 0 0 16px; }
div.wide { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; } td.key, th.key { text-align: left; }
tr.total td { font-weight: 600; border-top: 2px solid #888; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: -1px; }
.empty { color: #888; font-style: italic; }
"""


class Charts(NamedTuple):
    """The rows the charts draw: `report --by day,model`, `--by agent` and `--by outcome`."""

    cost: list[dict[str, Any]]
    hours: list[dict[str, Any]]
    outcomes: list[dict[str, Any]]


def page(title: str, header: Sequence[str], body: Sequence[Sequence[str]], keys: int, charts: Charts,
         symbol: str = "$") -> str:
    """The whole page: `header` and `body` are the report's table as text (total last)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        '<p class="note">From the local keito-instrument ledger; days are the workspace time zone\'s.</p>',
        _table(header, body, keys),
        "<h2>LLM cost per day, by model (USD)</h2>",
        cost_chart(charts.cost),
        "<h2>Hours per agent</h2>",
        bar_chart([(str(r["group"]), float(r["hours"] or 0)) for r in charts.hours], "hours", lambda v: f"{v:.2f}"),
        "<h2>Outcomes per type</h2>",
        bar_chart([(str(r["group"]), float(r["outcomes"] or 0)) for r in charts.outcomes], "outcomes",
                  lambda v: f"{v:,.0f}", notes=[_revenue_note(r, symbol) for r in charts.outcomes]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _revenue_note(row: dict[str, Any], symbol: str) -> str:
    from ._report import money

    return money(row["outcome_revenue"], symbol) if row["outcome_revenue"] else ""


def _table(header: Sequence[str], body: Sequence[Sequence[str]], keys: int) -> str:
    def cell(tag: str, index: int, text: str) -> str:
        return f'<{tag}{" class=key" if index < keys else ""}>{escape(text)}</{tag}>'

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    rows = [f"<tr{' class=total' if n == len(body) - 1 else ''}>{''.join(cell('td', i, c) for i, c in enumerate(r))}"
            "</tr>" for n, r in enumerate(body)]
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _nice_max(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(f * power for f in (1, 2, 5, 10) if f * power >= value * (1 - 1e-12))


def _axis(top: float, fmt: Any, width: int = WIDTH) -> list[str]:
    """Horizontal grid lines and their labels for a chart of height HEIGHT (0 to `top`)."""
    out = []
    for i in range(5):
        y = HEIGHT - PAD_BOTTOM - (HEIGHT - PAD_BOTTOM - 16) * i / 4
        out.append(f'<line x1="{PAD_LEFT}" y1="{y:.1f}" x2="{width - 8}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(top * i / 4))}</text>')
    return out


def cost_chart(rows: list[dict[str, Any]]) -> str:
    """Stacked columns: one per day, one segment per model (the 7 costliest, then "other")."""
    spend: dict[str, float] = {}
    for row in rows:
        spend[row["model"]] = spend.get(row["model"], 0.0) + float(row["cost_usd"] or 0)
    ranked = sorted((m for m in spend if spend[m] > 0), key=lambda m: -spend[m])
    shown = ranked if len(ranked) <= len(PALETTE) else ranked[:len(PALETTE) - 1]
    colour = {m: PALETTE[i] for i, m in enumerate(shown)}
    days: dict[str, dict[str, float]] = {}
    for row in rows:
        series = row["model"] if row["model"] in colour else "other"
        sums = days.setdefault(row["day"], {})
        sums[series] = sums.get(series, 0.0) + float(row["cost_usd"] or 0)
    if not ranked:
        return '<p class="empty">No priced LLM calls in this period.</p>'
    series = [*shown, *(["other"] if len(ranked) > len(shown) else [])]
    colour["other"] = OTHER
    top = _nice_max(max(sum(d.values()) for d in days.values()))
    order = _every_day(sorted(days))
    slot = (WIDTH - PAD_LEFT - 8) / len(order)
    bar = max(2.0, min(48.0, slot * 0.7))
    scale = (HEIGHT - PAD_BOTTOM - 16) / top
    out = [_svg_open("cost per day by model"), *_axis(top, lambda v: f"${v:,.4g}")]
    for n, day in enumerate(order):
        x, y = PAD_LEFT + slot * n + (slot - bar) / 2, float(HEIGHT - PAD_BOTTOM)
        for name in series:
            value = days.get(day, {}).get(name, 0.0)
            if value <= 0:
                continue
            h = max(value * scale, 1.0)
            y -= h
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                       f'fill="{colour[name]}"><title>{escape(day)} {escape(name)}: ${value:,.6f}</title></rect>')
        if len(order) <= 16 or n % max(1, len(order) // 12) == 0:
            out.append(f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" text-anchor="middle">'
                       f"{escape(day[5:])}</text>")
    out.append("</svg>")
    legend = "".join(f'<span><i style="background:{colour[s]}"></i>{escape(s)}</span>' for s in series)
    return "".join(out) + f'<div class="legend">{legend}</div>'


def _every_day(days: list[str]) -> list[str]:
    """The days from the first to the last, the ones without cost included (up to a year)."""
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    if (last - first).days > 366:
        return days
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def bar_chart(values: list[tuple[str, float]], what: str, fmt: Any, notes: Sequence[str] = ()) -> str:
    """Horizontal bars, one per name, largest first, with its value (and a note) at the end."""
    items = sorted(((n, v, notes[i] if i < len(notes) else "") for i, (n, v) in enumerate(values) if v > 0),
                   key=lambda item: -item[1])
    if not items:
        return f'<p class="empty">No {escape(what)} in this period.</p>'
    row_h, left = 26, 180
    height = row_h * len(items) + 12
    top = max(v for _n, v, _t in items)
    span = WIDTH - left - 150
    out = [_svg_open(f"{what} per group", height)]
    for n, (name, value, note) in enumerate(items):
        y = 6 + n * row_h
        w = max(span * value / top, 2.0)
        label = name if len(name) <= 26 else name[:25] + "\u2026"
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="{row_h - 8}" '
                   f'fill="{PALETTE[n % len(PALETTE)] if what == "outcomes" else PALETTE[0]}">'
                   f"<title>{escape(name)}: {escape(fmt(value))}</title></rect>")
        extra = f" ({note})" if note else ""
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{escape(fmt(value) + extra)}</text>')
    out.append("</svg>")
    return "".join(out)


def _svg_open(label: str, height: int = HEIGHT) -> str:
    return (f'<svg width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}">')
