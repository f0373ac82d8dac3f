"""`keito-instrument` command line: report, status, demo, sync, doctor.

Each subcommand lives in its own module exposing `add_parser(subparsers)`, which registers the
subcommand and sets `func` (taking the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .._version import __version__

COMMANDS = ("report", "status", "demo", "sync", "doctor")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="keito-instrument",
        description="Billing-grade instrumentation for AI agents: the local ledger and delivery to Keito.",
    )
    parser.add_argument("--version", action="version", version=f"keito-instrument {__version__}")
    parser.add_argument("--ledger", help="path of the ledger (default: KEITO_LEDGER or the user data dir)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}._{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}._{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script. Bad arguments exit with status 2 and a usage message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if args.ledger:
        from .. import configure

        configure(ledger_path=args.ledger)
    try:
        if args.command in ("report", "status", "sync"):
            _fold(args.command)
        code: int = args.func(args)
    except ValueError as exc:  # bad settings from configure() or the environment
        print(f"keito-instrument: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def _fold(command: str) -> None:
    """Bring the ledger up to date first: fold every process's journal (open sessions show their
    spend so far) and end what is due, such as the sessions of a process that died."""
    import os

    from .. import _engine, _pipeline

    path = _pipeline.ledger_path()
    if not os.path.exists(path) and not os.path.isdir(path + ".journal"):
        return
    try:
        _engine.fold_ledger(path, include_live=True)
    except Exception as exc:  # the command still shows what the ledger holds
        print(f"keito-instrument: could not fold the journal before {command}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
