"""A plain terminal table (no dependency): first column left-aligned, the others right-aligned."""

from __future__ import annotations

from collections.abc import Sequence


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], footer_rows: int = 0,
                 left: Sequence[int] = (0,)) -> str:
    """Render rows under a header; the last `footer_rows` rows are set off by a rule.

    Columns whose index is in `left` are left-aligned (text); the others right-aligned (numbers).
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        parts = [str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in pairs]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule]
    body = list(rows)
    split = len(body) - footer_rows
    out += [line(r) for r in body[:split]]
    if footer_rows:
        out.append(rule)
        out += [line(r) for r in body[split:]]
    return "\n".join(out) + "\n"
