"""The LangChain adapter's run tree: one entry per open run, mapping each run to its root.

A root run is a `Root` (its session, the keito run it opened, the handler that owns its tree); a
nested run maps straight to its `Root`, or to a `Nested` when it had to set a run mark of its own;
a model call is a `Call`. The handler keeps them in one process-wide table made by `open_runs()`.
Nothing here imports LangChain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from keito_instrument import Run, Session, get_settings
from keito_instrument.adapters import end_run

from .._kernel import mark_framework_run, marks_run, reset_mark
from .._runs import OpenRuns

_log = logging.getLogger("keito_instrument")


class Root:
    """One root run: its session, the keito run it opened (None when it joined the caller's open
    session, whose own run already covers its time) and the handler that owns its whole tree."""

    __slots__ = ("born", "key", "last_error", "mark", "owner", "run", "session")

    def __init__(self, owner: object, session: Session, run: Run | None, key: int) -> None:
        self.owner = owner
        self.session = session
        self.run = run
        self.key = key
        self.born = time.monotonic()
        self.last_error: BaseException | None = None
        self.mark: object = None  # the kernel's run mark, set while the run runs (see `Nested`)


class Nested:
    """A nested run that had to set the run mark itself: its callbacks run in a context that does
    not carry its root's (a thread that did not copy the context). Most nested runs inherit the
    root's mark and map straight to their `Root`."""

    __slots__ = ("born", "mark", "root")

    def __init__(self, root: Root, mark: object) -> None:
        self.root = root
        self.mark = mark
        self.born = time.monotonic()


class Call:
    """One open model call: its root and what was seen at its start (read only if needed at its end)."""

    __slots__ = ("born", "mark", "metadata", "params", "root", "streamed")

    def __init__(self, root: Root, metadata: Mapping[str, Any] | None, params: object) -> None:
        self.root = root
        self.born = root.born
        self.metadata = metadata if type(metadata) is dict or isinstance(metadata, Mapping) else None
        self.params = params
        self.streamed = False  # output began: a failure after this still cost a request
        self.mark: object = None  # the kernel's framework-call mark, set while the call runs


Entry = Root | Call | Nested


def open_runs() -> OpenRuns[int, Entry]:
    """The adapter's open runs, `run_id.int -> entry`, bounded by `max_open_runs` and `max_run_age`.

    A nested run maps straight to its `Root` (no allocation; a `Nested` when it sets a run mark of
    its own); a model call to a `Call`. Integer keys hash in C (UUIDs would hash in Python). The
    table sweeps every 64 root or call inserts, re-reading both caps from the settings, and
    whenever it is over its count cap.
    """
    return OpenRuns(sweep_every=64, limits=_limits)


def _limits() -> tuple[int, float]:
    settings = get_settings()
    return settings.max_open_runs, settings.max_run_age


def log_forgotten(swept: Sequence[tuple[int, Entry]]) -> None:
    """Log the runs the table swept out (at debug level: a crashed worker is no error of ours).

    Only their entries go: the keito session of a root whose end never arrives is ended by the
    core's own sweep (`run_age_exceeded`), billed up to its last activity, so nothing is closed here.
    """
    if swept:
        _log.debug("keito-instrument: forgot %d LangChain run(s) whose end never arrived", len(swept))


def nested(root: Root) -> Root | Nested:
    """A nested run's entry while a client hook is installed: its root, whose run mark the
    context already carries; or, where it does not (a thread that did not copy the context), a
    `Nested` holding a mark of its own until the run ends."""
    if marks_run(root.session):
        return root
    return Nested(root, mark_framework_run("langchain", root.session))


def end_root(root: Root) -> None:
    """A root run ended: its mark goes (the context is as before the run) and its keito run ends."""
    if root.mark is not None:
        reset_mark(root.mark)
    if root.run is not None:
        end_run(root.run)
