"""What every adapter shares: option checks, version floors, the instrument/uninstrument pattern,
recording a provider call once across layers.

Framework-free: nothing here imports a framework. Adapters build on it so that a new integration
touches only its own subpackage (see docs/adapters.md).
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from .._api import count_error, current_session
from .._guard import guard, report
from .._provider_usage import usage_kwargs
from ._runs import Recent


@dataclass(slots=True)
class CallUsage:
    """Tokens of one model call, in the core's convention: input includes its cache parts, output
    its reasoning; `details` holds the rarer kinds under `record_llm_call`'s keyword names."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cached: bool = False
    missing: bool = False
    details: dict[str, int] | None = None


# The session settings an adapter accepts where the user constructs it or calls `instrument()`.
SESSION_OPTIONS = frozenset(
    {"session_id", "project_id", "task_id", "expense_category_id", "agent_id", "agent_type", "billable", "notes",
     "metadata"}
)


def check_options(where: str, options: Mapping[str, Any], allowed: frozenset[str] = SESSION_OPTIONS) -> None:
    """Raise `TypeError` naming an option `where` does not take (a typo would otherwise bill nothing)."""
    unknown = sorted(set(options) - allowed)
    if not unknown:
        prepare()
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(sorted(allowed))}"
    raise TypeError(f"{where} got an unexpected option {name!r}{hint}")


def prepare() -> None:
    """Start loading the billing code on a background thread, where a user sets an adapter up
    (a handler created, `instrument()` called), so the first session costs no more than the next."""
    from .. import _pipeline

    with guard("warm-up"):
        _pipeline.warm_up()


def require_version(framework: str, distribution: str, minimum: tuple[int, ...], extra: str) -> None:
    """Raise `ImportError` with the install line when `distribution` is older than `minimum`."""
    from importlib import metadata

    try:
        found = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"keito-instrument's {framework} integration needs {distribution}: "
            f'pip install "keito-instrument[{extra}]"'
        ) from None
    if _parse(found) < minimum:
        wanted = ".".join(map(str, minimum))
        raise ImportError(
            f"keito-instrument's {framework} integration needs {distribution} >= {wanted}, found {found}: "
            f'pip install -U "keito-instrument[{extra}]"'
        )


def _parse(version: str) -> tuple[int, ...]:
    """'1.66.0' -> (1, 66, 0); '0.66b1' -> (0, 66): the release numbers, up to the first non-digit."""
    import re

    return tuple(int(n) for n in re.findall(r"\d+", re.match(r"[\d.]*", version).group(0))[:3])  # type: ignore[union-attr]


class Switch:
    """One adapter's on/off state: `instrument()` installs once, `uninstrument()` reverses it.

    `install` returns the handle to keep (a listener, a processor, the patches made); `remove`
    undoes it. `update`, if given, is called with the handle and the arguments when `on` is
    called again while installed (new settings for the installed hook). All three run under a
    lock, so concurrent `instrument()` calls install once.
    """

    def __init__(self, install: Callable[..., Any], remove: Callable[[Any], None], *,
                 update: Callable[..., None] | None = None, client_hook: bool = False) -> None:
        self._install, self._remove, self._update = install, remove, update
        self._client_hook = client_hook
        self._lock = threading.Lock()
        self.handle: Any = None

    def on(self, *args: Any, **kwargs: Any) -> Any:
        """Install (once; later calls go to `update`) and return the handle."""
        with self._lock:
            if self.handle is None:
                prepare()
                self.handle = self._install(*args, **kwargs)
                if self._client_hook:
                    CLIENT_HOOKS.add(id(self))
            elif self._update is not None:
                self._update(self.handle, *args, **kwargs)
            return self.handle

    def off(self) -> None:
        """Remove what `on` installed (a no-op when off)."""
        with self._lock:
            handle, self.handle = self.handle, None
            CLIENT_HOOKS.discard(id(self))
            if handle is not None:
                self._remove(handle)

    @property
    def is_on(self) -> bool:
        """Whether the adapter is installed."""
        return self.handle is not None


# -- counted once across layers -------------------------------------------------------------------
# One context variable carries what a framework adapter (LangChain's handler, the Agents SDK's
# processor) bills itself, so whatever carries it (a copied context, an asyncio task, the threading
# integration) carries both kinds of mark:
# - a call mark, the adapter's name (a str), while a model call runs that the adapter records: a
#   client hook (the OpenAI or Anthropic client) or the span processor leaves the call to it;
# - a run mark (a `RunMark`) while a run runs whose time, tool calls and errors the adapter bills
#   into its session: the span processor bills none of them again, and a model call the adapter
#   does not record itself (a client called directly inside a chain step) goes to that session.
# A call mark overlays its run's mark while the call runs; resetting it brings the run mark back.
_framework_call: ContextVar[Any] = ContextVar("keito_framework_call", default=None)
# The client hooks installed now (a `Switch(..., client_hook=True)` each, and the span processor):
# with none, a framework adapter need not mark at all (a context variable set and reset per call
# is not free).
CLIENT_HOOKS: set[int] = set()


@dataclass(frozen=True, slots=True, eq=False)
class RunMark:
    """Adapter `adapter` bills the run marked with this: its time, tools and errors, into `session`."""

    adapter: str
    session: Any  # the keito session the adapter bills the run into
    outer: Any  # the keito session current when the mark was set: one opened inside the run wins


@contextmanager
def framework_call(name: str) -> Iterator[None]:
    """Mark the current context as inside a model call that adapter `name` records itself."""
    token = mark_framework_call(name)
    try:
        yield
    finally:
        reset_mark(token)


@contextmanager
def framework_run(name: str, session: Any) -> Iterator[None]:
    """Mark the current context as inside a run whose time and tools adapter `name` bills into `session`."""
    token = mark_framework_run(name, session)
    try:
        yield
    finally:
        reset_mark(token)


def mark_framework_call(name: str | None) -> Any:
    """Set (or with None clear) the call mark without a `with` block; returns the token to `reset_mark`."""
    return _framework_call.set(name), name


def mark_framework_run(name: str, session: Any) -> Any:
    """Set the run mark without a `with` block; returns the token to `reset_mark`."""
    mark = RunMark(name, session, current_session())
    return _framework_call.set(mark), mark


def reset_mark(token: Any) -> None:
    """Undo `mark_framework_call` or `mark_framework_run`."""
    context_token, mark = token
    try:
        _framework_call.reset(context_token)
    except ValueError:
        # Reset from another context (one copied while the mark was set, e.g. a task that ended
        # the call): put back what the mark replaced, only where the mark is still what is there.
        if _framework_call.get() is mark:
            old = context_token.old_value
            _framework_call.set(None if old is Token.MISSING else old)


# Adapters of frameworks that keep their own "a model call of mine is running" state (CrewAI's
# call context) register a probe here rather than setting the mark: their hooks run on other
# threads, too late to mark the caller's context. A tuple, swapped whole: read without a lock.
_call_probes: tuple[Callable[[], str | None], ...] = ()
_probes_lock = threading.Lock()


def add_call_probe(probe: Callable[[], str | None]) -> None:
    """Register `probe()`: the adapter's name while a model call it records runs in this context."""
    global _call_probes
    with _probes_lock:
        if probe not in _call_probes:
            _call_probes = (*_call_probes, probe)


def remove_call_probe(probe: Callable[[], str | None]) -> None:
    """Undo `add_call_probe`."""
    global _call_probes
    with _probes_lock:
        _call_probes = tuple(p for p in _call_probes if p != probe)


def in_framework_call() -> str | None:
    """The adapter recording the model call running in this context, if any."""
    mark = _framework_call.get()
    if type(mark) is str:
        return mark
    for probe in _call_probes:
        name = probe()
        if name:
            return name
    return None


def in_framework_run() -> RunMark | None:
    """The run mark of this context, if it still holds: None inside a model call the adapter
    records (see `in_framework_call`), once the run's session has ended (a mark left behind in
    a context that outlived its run), or when a keito session was opened inside the run (the
    innermost session wins, as for `keito.session()` itself)."""
    return holding(_framework_call.get())


def framework_mark() -> str | RunMark | None:
    """Either mark of this context: the adapter recording the call running here (a str), else
    the run mark if it holds (see `in_framework_run`), else None. One read of the variable."""
    mark = _framework_call.get()
    return mark if mark is None or type(mark) is str else holding(mark)


def marks_run(session: Any) -> bool:
    """Whether this context already carries a run mark billing into `session` (a nested run
    inherits its root's mark through the context: it need not set one of its own)."""
    mark = _framework_call.get()
    return type(mark) is RunMark and mark.session is session


def holding(mark: Any) -> RunMark | None:
    """`mark` if it is a run mark that still holds here (see `in_framework_run`), else None."""
    if type(mark) is not RunMark or mark.session.ended:
        return None
    found = current_session()
    if found is not None and found is not mark.outer and found is not mark.session:
        return None
    return mark


# Provider response ids already billed: the second layer to see one call, in any session or
# trace, skips it.
seen: Recent[str, None] = Recent(65_536, max_age=3600.0)
# Set while a span processor pairs calls by their usage (`otel._pairing.claim_client_call`), None
# otherwise (nothing to pay): a client hook's call takes part, so a span of the same call without
# a response id (OpenInference's span of a streamed LangChain call) is not billed again. Called
# with the model, the usage's `record_llm_call` arguments and the response id; False: such a span
# of this call was counted first.
pair_client_call: Callable[[str | None, Mapping[str, int], str | None], bool] | None = None


def record_provider_call(
    model: str | None,
    provider: str,
    usage: Any,
    *,
    flavor: str | None = None,
    response_id: str | None = None,
    session: Any = None,
) -> bool:
    """Count one model call from a provider's usage block: into `session` if given, else the
    session of the framework run marked here (a client called directly inside a LangChain step
    bills to that run's session), else the current session (or on its own, as
    `keito.record_llm_call` does). No usage block: the call is counted with `usage_missing`,
    never as zero. Returns False when another layer had it."""
    if not seen.claim(response_id):
        return False
    found = usage_kwargs(usage, flavor)
    pair = pair_client_call
    if pair is not None and found is not None and not pair(model, found, response_id):
        return False
    kwargs: dict[str, Any] = found if found is not None else {"usage_missing": True}
    if session is None:
        run = in_framework_run()
        session = run.session if run is not None else None
    if session is not None:
        return bool(session.record_llm_call(model or "unknown", provider, call_id=response_id, **kwargs))
    from .. import record_llm_call

    return bool(record_llm_call(model or "unknown", provider, call_id=response_id, **kwargs))


def record_call_error(error: BaseException) -> None:
    """A client call raised (an HTTP error, a timeout, the SDK's parsing of the answer): count
    the error once (see `count_error`: not again as it propagates out of `@track_agent`, a
    LangChain step or `end_run`) into the session of the framework run marked here, else the
    current session; outside both, nothing (an error alone opens no session). Client hooks skip
    a call a framework adapter records (`in_framework_call`): the adapter counts its error."""
    run = in_framework_run()
    session = run.session if run is not None else current_session()
    if session is not None:
        count_error(session, error)


def held_where_raised(error: BaseException, package: str, types: tuple[type, ...]) -> Any:
    """The first object of `types` held by a frame of `package` (say "openai.") that `error` went
    through: the answer an SDK had read when its own parsing of it raised. Read only; nothing of
    the traceback is kept."""
    tb, frame = error.__traceback__, None
    try:
        while tb is not None:
            frame = tb.tb_frame
            if str(frame.f_globals.get("__name__", "")).startswith(package):
                for value in frame.f_locals.values():
                    if isinstance(value, types):
                        return value
            tb = tb.tb_next
        return None
    finally:
        tb = frame = None  # (no reference to the frames outlives the walk, even if it raised)


# -- streams watched in place ---------------------------------------------------------------------
def passthrough(items: Iterator[Any], see: Callable[[Any], None], end: Callable[[bool], None],
                where: tuple[str, str]) -> Iterator[Any]:
    """Yield `items` unchanged, showing each to `see`; at the end (`end(failed)`: the stream's own
    error passes through unchanged, `failed` says there was one) close `items`. Our errors are
    reported under `where` (the kinds for `see` and for `end`), never raised."""
    failed = False
    try:
        for item in items:
            try:
                see(item)
            except Exception as exc:
                report(where[0], exc)
            yield item
    except Exception:
        failed = True
        raise
    finally:
        _finish(end, failed, where)
        close = getattr(items, "close", None)
        if close is not None:
            close()


async def apassthrough(items: AsyncIterator[Any], see: Callable[[Any], None], end: Callable[[bool], None],
                       where: tuple[str, str]) -> AsyncIterator[Any]:
    """The async form of `passthrough`."""
    failed = False
    try:
        async for item in items:
            try:
                see(item)
            except Exception as exc:
                report(where[0], exc)
            yield item
    except Exception:
        failed = True
        raise
    finally:
        _finish(end, failed, where)
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _finish(end: Callable[[bool], None], failed: bool, where: tuple[str, str]) -> None:
    try:
        end(failed)
    except Exception as exc:
        report(where[1], exc)
