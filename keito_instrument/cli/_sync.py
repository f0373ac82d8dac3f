"""`keito-instrument sync`: send the local ledger's records to Keito, with a progress bar on stderr."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from .. import _export
from .._config import get_settings
from .._export.queue import requeue_dead
from .._spool import get_spool

_WIDTH = 30


def add_parser(subparsers: Any) -> None:
    """Register `sync`."""
    parser = subparsers.add_parser(
        "sync",
        help="send records kept in the local ledger to Keito (needs KEITO_API_KEY and KEITO_ACCOUNT_ID)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument(
        "--retry-dead", action="store_true", help="also send dead letters again (once their cause is fixed)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def bar(done: int, total: int) -> str:
    """'[###########-------------------]  110/300 records'"""
    filled = _WIDTH if total <= 0 else min(_WIDTH, done * _WIDTH // total)
    return f"[{'#' * filled}{'-' * (_WIDTH - filled)}] {done:>{len(str(total))}}/{total} records"


def _draw(out: TextIO, text: str, final: bool) -> None:
    if out.isatty():
        out.write("\r" + text + ("\n" if final else ""))
    elif final:
        out.write(text + "\n")
    out.flush()


def run(args: argparse.Namespace) -> int:
    """Release local records, deliver everything pending within --timeout; 0 when nothing is left."""
    settings = get_settings()
    err = sys.stderr
    if args.timeout <= 0:
        print("keito-instrument sync: error: --timeout must be > 0", file=err)
        return 2
    if settings.delivery_held:
        print(f"keito-instrument sync: {settings.delivery_held}: fix or unset it, then sync again "
              "(see `keito-instrument doctor`; the records stay in the local ledger)", file=err)
        return 2
    if not settings.has_credentials:
        missing = [
            var
            for var, value in (("KEITO_API_KEY", settings.api_key), ("KEITO_ACCOUNT_ID", settings.account_id))
            if not value
        ]
        print(
            f"keito-instrument sync: no credentials: set {' and '.join(missing)} "
            "(records stay in the local ledger)",
            file=err,
        )
        return 2
    spool = get_spool()
    released = spool.release_local()
    revived = requeue_dead(spool) if args.retry_dead else 0
    total = _export.state().open
    print(
        f"ledger {spool.path}: {released} local record(s) released, {revived} dead letter(s) retried, "
        f"{total} to send to {settings.base_url}",
        file=err,
    )
    deadline = time.monotonic() + args.timeout
    state = _export.state()
    try:
        while total:
            done = _export.flush(min(0.25, max(0.0, deadline - time.monotonic())))
            state = _export.state()
            if not args.no_progress:
                _draw(err, bar(total - state.open, total), final=False)
            if done or state.open == 0 or time.monotonic() >= deadline:
                break
            if state.paused or state.open == state.blocked:
                break  # nothing can progress: say why below
    finally:
        paused = _export.state().paused  # known only while the exporter runs
        _export.shutdown(min(2.0, max(0.1, deadline - time.monotonic())))
    state = _export.state()
    if not args.no_progress and total:
        _draw(err, bar(total - state.open, total), final=True)
    if state.open == 0 and state.dead == 0:
        print("everything is delivered", file=err)
        return 0
    if paused:
        print("Keito refused the requests (credentials or base URL): run `keito-instrument doctor`", file=err)
    if state.blocked:
        print(
            f"{state.blocked} record(s) wait for a project, task or expense category id: "
            "see `keito-instrument status`",
            file=err,
        )
    if state.open > state.blocked and not paused:
        print(
            f"{state.open - state.blocked} record(s) still pending (Keito unreachable or busy); "
            "they stay in the ledger: run sync again later",
            file=err,
        )
    if state.dead:
        print(
            f"{state.dead} dead letter(s) refused by Keito: see `keito-instrument status`; "
            "fix the cause, then `keito-instrument sync --retry-dead`",
            file=err,
        )
    return 1
