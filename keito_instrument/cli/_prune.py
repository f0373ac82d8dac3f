"""`keito-instrument prune`: delete what the ledger no longer needs and give the space back."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._config import get_settings
from .._prune import prune
from .._spool import get_spool


def add_parser(subparsers: Any) -> None:
    """Register `prune`."""
    parser = subparsers.add_parser(
        "prune", help="delete delivered records and old session rows past the retention; free the space")
    parser.add_argument("--days", type=float, default=None, metavar="N",
                        help="retention in days (default: ledger_retention_days, 30)")
    parser.add_argument("--no-vacuum", dest="vacuum", action="store_false",
                        help="skip the one-time rebuild a ledger created by an older version needs")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prune the configured ledger."""
    days = get_settings().ledger_retention_days if args.days is None else args.days
    if not days > 0:
        print("keito-instrument prune: error: the retention must be > 0 days (ledger_retention_days=0 keeps "
              "everything)", file=sys.stderr)
        return 2
    spool = get_spool()
    if not spool.path.exists():
        print(f"keito-instrument prune: no ledger at {spool.path}", file=sys.stderr)
        return 1
    result = prune(spool, days, vacuum=args.vacuum)
    if args.format == "json":
        json.dump({"ledger": str(spool.path), "retention_days": days, **result._asdict()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"ledger:   {spool.path}")
    print(f"pruned:   {result.records:,} delivered record(s), {result.sessions:,} session(s) older than {days:g} "
          f"days ({result.other_rows:,} bookkeeping row(s)); reports keep their daily sums")
    rebuilt = " (rebuilt once for incremental vacuum)" if result.vacuumed else ""
    print(f"size:     {result.bytes_before / 1e6:,.1f} MB -> {result.bytes_after / 1e6:,.1f} MB{rebuilt}")
    return 0
