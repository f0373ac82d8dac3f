"""`keito-instrument` command line: report, status, demo, sync, doctor.

Each subcommand lives in its own module exposing `add_parser(subparsers)`, which registers the
subcommand and sets `func` (taking the parsed args, returning an exit code). The global flags
(`--ledger`, `--version`) are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .._version import __version__

COMMANDS = ("report", "status", "demo", "sync", "doctor", "prune", "invoice")
READ_ONLY = ("report", "status")  # they never create a ledger: a missing one is an error
_LEDGER_HELP = "path of the ledger (default: KEITO_LEDGER or the user data dir)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="keito-instrument",
        description="Billing-grade instrumentation for AI agents: the local ledger and delivery to Keito.",
    )
    parser.add_argument("--version", action="version", version=f"keito-instrument {__version__}")
    parser.add_argument("--ledger", help=_LEDGER_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}._{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}._{name}":
                raise
            continue
        module.add_parser(subparsers)
    for sub in subparsers.choices.values():
        _add_global_flags(sub)
    return parser


def _add_global_flags(sub: argparse.ArgumentParser) -> None:
    """The global flags after the subcommand too; SUPPRESS keeps a value given before it."""
    if "--ledger" not in sub._option_string_actions:
        sub.add_argument("--ledger", default=argparse.SUPPRESS, help=_LEDGER_HELP)
    if "--version" not in sub._option_string_actions:
        sub.add_argument("--version", action="version", version=f"keito-instrument {__version__}")


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
        if args.command in READ_ONLY:
            problem = ledger_problem()
            if problem:
                print(f"keito-instrument {args.command}: {problem}", file=sys.stderr)
                return 1
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
    from .. import _engine, _pipeline

    path = _pipeline.ledger_path()
    if not os.path.exists(path) and not os.path.isdir(path + ".journal"):
        return
    try:
        _engine.fold_ledger(path, include_live=True)
    except Exception as exc:  # the command still shows what the ledger holds
        print(f"keito-instrument: could not fold the journal before {command}: {exc}", file=sys.stderr)


def ledger_problem() -> str | None:
    """Why the configured ledger cannot be read (missing, not a ledger, damaged), or None.

    Checked read-only, so a read-only command never creates a ledger. A missing file whose
    journal exists is fine: the fold creates the ledger from it.
    """
    from .. import _pipeline

    path = _pipeline.ledger_path()
    if not os.path.exists(path):
        if os.path.isdir(path + ".journal"):
            return None
        return (f"no ledger at {path}: nothing was recorded there yet; pass --ledger PATH or set KEITO_LEDGER "
                f"to the ledger your agent writes{_demo_hint(path)}")
    reason = _unreadable(path)
    if reason is None:
        return None
    return (f"cannot read the ledger {path} ({reason}): move the file aside (it is recreated empty on next use) "
            "or point --ledger / KEITO_LEDGER at a good copy")


def _demo_hint(path: str) -> str:
    from ._demo import demo_ledger_path

    demo = demo_ledger_path()
    if str(demo) != path and demo.exists():
        return f" (the demo's ledger is {demo}: keito-instrument report --ledger {demo})"
    return ""


def _unreadable(path: str) -> str | None:
    import sqlite3
    from pathlib import Path

    if os.path.isdir(path):
        return "it is a directory"
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    if names and "records" not in names:
        return "not a keito-instrument ledger"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
