"""`keito-instrument status`: records by delivery state, and the last errors with their reasons."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from .._config import get_settings
from .._spool import get_spool
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
    if args.format == "json":
        json.dump({"ledger": str(spool.path), "credentials": settings.has_credentials, "base_url": settings.base_url,
                   "counts": counts, "errors": errors}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"ledger:      {spool.path}")
    print(f"credentials: {'configured' if settings.has_credentials else 'not configured (records stay local)'}")
    print(f"keito:       {settings.base_url}\n")
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
