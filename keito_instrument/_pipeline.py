"""Ended session -> records -> spool -> exporter; plus the registry singleton and exit hooks."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _forksafe
from ._config import get_settings
from ._guard import guard
from ._registry import Registry, make_registry
from ._session import Session, SessionOptions, SessionSnapshot
from ._writer import Writer

if TYPE_CHECKING:
    from ._records import Built

# Records, pricing, the SQLite spool and delivery load when the first session ends (or on the
# warm-up thread when the first one opens), never at `import keito_instrument`.

_log = logging.getLogger("keito_instrument")
HOST_BUSY_TIMEOUT = 0.05  # seconds the ending thread may wait for the spool lock
writer = Writer()
_warmed = False
_warm_once = threading.Lock()
_warm_lock = threading.Lock()
_fork_holds_warm_lock = False
_listeners: list[Callable[[Built], None]] = []
_listeners_lock = threading.Lock()


def on_session_end(snapshot: SessionSnapshot) -> None:
    """A session ended: its end is already in the journal; the billing worker bills it."""
    from . import _engine

    _engine.ensure_started()


_ledger_for: tuple[object, str] | None = None


def ledger_path() -> str:
    """The configured ledger's path (cached per settings object: the default needs platformdirs)."""
    global _ledger_for
    settings = get_settings()
    cached = _ledger_for
    if cached is not None and cached[0] is settings:
        return cached[1]
    from pathlib import Path

    from ._spool import default_path

    path = str(Path(settings.ledger_path).expanduser()) if settings.ledger_path else str(default_path())
    _ledger_for = (settings, path)
    return path


_RESOLVED = ("project_id", "task_id", "expense_category_id", "agent_id", "agent_type", "billable")


def new_session(session_id: str, options: SessionOptions, close: str = "runs") -> Session:
    """A session that journals its events to the configured ledger's journal; its opening event
    carries its options resolved against the settings in force now (a later process that bills
    it after a crash bills it as this one would have)."""
    from ._journal import get_journal

    settings = get_settings()
    session = Session(session_id, options, close, get_journal(ledger_path()))
    resolved: dict[str, object] = {
        name: getattr(options, name) for name in SessionOptions._fields if getattr(options, name) is not None
    }
    for name in _RESOLVED:
        if resolved.get(name) is None and getattr(settings, name) is not None:
            resolved[name] = getattr(settings, name)
    resolved["metadata"] = {**settings.metadata, **options.metadata}
    session.journal_open(resolved)
    return session


def settle(timeout: float) -> bool:
    """Bill, now, every session this process has ended (bounded by `timeout`)."""
    from ._journal import all_journals

    if not all_journals():
        return True
    from . import _engine

    return _engine.settle(timeout)


def end_ledger_session(session_id: str) -> bool:
    """End a named session that is open in the ledger but not in this process's memory (another
    process served it). False if the ledger has no such open session."""
    from ._journal import get_journal
    from ._spool import get_spool

    sid = str(session_id)[:200]
    path = ledger_path()
    row = get_spool(path).connect().execute("SELECT 1 FROM live WHERE key = ?", (sid,)).fetchone()
    if row is None:
        return False
    get_journal(path).append(["e", sid, f"{time.time():.6f}", "i", time.time(), "explicit", [], []], wake=True)
    return True


def add_record_listener(listener: Callable[[Built], None]) -> None:
    """Call `listener(built)` on the billing thread for every billed session (the testing kit uses it)."""
    from . import _engine

    with _listeners_lock:
        _engine.listeners.append(listener)  # type: ignore[arg-type]


def remove_record_listener(listener: Callable[[Built], None]) -> None:
    """Undo `add_record_listener`."""
    from . import _engine

    with _listeners_lock:
        if listener in _engine.listeners:
            _engine.listeners.remove(listener)  # type: ignore[arg-type]


def warm_up() -> None:
    """Once per process, on a short-lived thread: load the journal, the billing code and the price
    data, and start the billing thread, so that the first session costs the host's thread no more
    than the next. Called where a user sets us up (`configure()`, decorating a function, creating a
    handler, `instrument()`) and when the first session opens. Nothing is written on disk: the
    ledger's path may still be configured after it."""
    global _warmed
    if _warmed:  # the common case: no lock at all
        return
    if get_settings().disabled or _forksafe.unhooked:
        return
    with _warm_once:  # (never _warm_lock: the warm-up thread holds that one while it imports)
        if _warmed:
            return
        _warmed = True

    def work() -> None:
        try:
            _warm_up_imports()
        finally:
            _warm_lock.release()

    _import_httpx2_first()
    # Held from here until the imports are done, so that a fork waits for them (_before_fork): a
    # child forked in the middle of an import would find that module's import lock held forever.
    _warm_lock.acquire()
    try:
        threading.Thread(target=work, name="keito-instrument-warmup", daemon=True).start()
    except BaseException:
        _warm_lock.release()
        raise


def _import_httpx2_first() -> None:
    # genai-prices imports httpx2. openai 2.x looks httpx2 up in sys.modules on every request and
    # uses it if present: a request made on another thread while our warm-up is still executing
    # httpx2's import finds a half-initialised module and fails. When openai is loaded, import
    # httpx2 here, once, on the caller's thread (a few tens of ms), before any thread of ours can.
    import contextlib
    import sys

    if "openai" in sys.modules and "httpx2" not in sys.modules:
        # (not installed, or broken: genai-prices will say so on its own thread)
        with contextlib.suppress(Exception):
            import httpx2  # noqa: F401


def _warm_up_imports() -> None:
    with guard("warm-up"):
        # What a session's host thread needs first (the journal, the billing thread's module and
        # the default ledger path), then the price data (about 0.1 s), pricing, record building
        # and the ledger for the billing thread, which starts idle: it folds once a session ends.
        import importlib

        for name in ("._journal", "._engine", "platformdirs", "genai_prices", "._engine.fold"):
            importlib.import_module(name, __package__)
        from . import _engine

        _engine.ensure_started()
        if get_settings().has_credentials:
            # httpx and asyncio (about 0.1 s), which the billing thread's first wake of the
            # exporter would otherwise import.
            from ._export import worker  # noqa: F401


registry: Registry = make_registry(on_session_end, on_open=warm_up, new_session=new_session)


def _before_fork() -> None:
    global _fork_holds_warm_lock
    # Wait for a warm-up still importing (a child forked in the middle of an import would find
    # that module's lock held forever); bounded, so a stuck one never blocks a fork for long.
    # The warm-up starts where a user sets us up, which in a preforking server is the master,
    # just before it forks: a slow machine's imports get ample time.
    _fork_holds_warm_lock = _warm_lock.acquire(timeout=10.0)


def _after_fork_in_parent() -> None:
    global _fork_holds_warm_lock
    if _fork_holds_warm_lock:
        _fork_holds_warm_lock = False
        _warm_lock.release()


def _after_fork_in_child() -> None:
    global _warmed, _warm_once, _warm_lock, _fork_holds_warm_lock
    _warmed, _warm_once, _warm_lock, _fork_holds_warm_lock = False, threading.Lock(), threading.Lock(), False
    writer.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)
_forksafe.in_child(_after_fork_in_child)


def shutdown(timeout: float) -> bool:
    """End every open session, write what the fallback writer holds, then drain the exporter;
    all within `timeout` seconds."""
    deadline = time.monotonic() + max(0.0, timeout)
    # A named conversation is ended here only if no other live process shares the ledger: one
    # that does may continue it (it then ends after idle_timeout, in whichever process looks).
    registry.close_all("shutdown", named=not _others_alive())
    written = writer.drain(max(0.0, deadline - time.monotonic()))
    # A warm-up still importing (set up a moment ago) is waited for, bounded: the billing module
    # it imports must be whole before it is stopped, and the billing thread it starts must stop.
    if _warm_lock.acquire(timeout=max(0.0, min(2.0, deadline - time.monotonic()))):
        _warm_lock.release()
    engine = sys.modules.get(f"{__package__}._engine")
    stop_billing = getattr(engine, "stop", None)  # (None while another thread is importing it)
    if stop_billing is not None:
        stop_billing(max(0.0, deadline - time.monotonic()))
    export = sys.modules.get(f"{__package__}._export")  # never started if never imported
    stop = getattr(export, "shutdown", None)  # (None too while another thread is importing it)
    if stop is None:
        return written
    return bool(stop(max(0.0, deadline - time.monotonic()))) and written


def _others_alive() -> bool:
    import sys as _sys

    journal_mod = _sys.modules.get(f"{__package__}._journal")
    if journal_mod is None:
        return False
    with guard("shutdown"):
        for journal in journal_mod.all_journals():
            directory = journal.dir
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                owner = name[: -len(".lock")]
                if name.endswith(".lock") and owner != journal.owner and journal_mod.owner_alive(directory, owner):
                    return True
    return False


@atexit.register
def _at_exit() -> None:
    # Bounded: sessions still open are ended (billing what was spent so far) and the exporter gets
    # at most `atexit_timeout` seconds; whatever is left stays in the spool for the next process.
    with guard("atexit"):
        shutdown(get_settings().atexit_timeout)
