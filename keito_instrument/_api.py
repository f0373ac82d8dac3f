"""The public core API: track_agent, session, record_llm_call, log_outcome, flush, shutdown."""

from __future__ import annotations

import functools
import time
import types
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextvars import Token
from types import TracebackType
from typing import Any, TypeVar, overload

from . import _baggage, _pipeline
from ._config import get_settings
from ._guard import guard, guarded, report
from ._registry import current, new_session_id
from ._session import Run, Session, SessionOptions, call_key, session_options

F = TypeVar("F", bound=Callable[..., Any])
SessionId = str | Callable[..., str] | None
# A session joined from another process's headers and used by one request only is billed this
# long after it (as the OpenTelemetry processor does for a baggage-named trace); used by a second
# request, it is a conversation, billed after `idle_timeout`.
FIRST_JOIN_TIMEOUT = 120.0
# Code flags (as in `inspect`, which is not imported: it costs more than the rest of the package).
_CO_GENERATOR, _CO_COROUTINE, _CO_ASYNC_GENERATOR = 0x20, 0x80, 0x200


def _code_flags(func: Any) -> int:
    """The code flags of a function, seen through `functools.partial` and bound methods.

    Anything but a plain function (a callable object, a function marked as a coroutine function
    with `inspect.markcoroutinefunction`, a descriptor) is left to `inspect`, imported then.
    """
    inner = func
    while isinstance(inner, functools.partial):
        inner = inner.func
    if isinstance(inner, types.MethodType):
        inner = inner.__func__
    if type(inner) is types.FunctionType and not hasattr(inner, "_is_coroutine_marker"):
        return inner.__code__.co_flags
    import inspect

    if inspect.isasyncgenfunction(func):
        return _CO_ASYNC_GENERATOR
    if inspect.iscoroutinefunction(func):
        return _CO_COROUTINE
    return _CO_GENERATOR if inspect.isgeneratorfunction(func) else 0


def _options(**kwargs: Any) -> SessionOptions:
    # Never raises: a bad or unknown setting is dropped with a warning (see `session_options`).
    return session_options(kwargs)


def current_session() -> Session | None:
    """The open session of the calling context (thread or asyncio task), if any."""
    session = current.get()
    return session if session is not None and not session.ended else None


def begin_run(
    session_id: str | None = None,
    *,
    close: str = "runs",
    join_current: bool = True,
    started_at: float | None = None,
    **options: Any,
) -> Run | None:
    """Open a root run for an adapter: joins the enclosing or named open session, else starts one.

    `close="runs"` ends the session when its last run ends; `close="idle"` keeps it open across
    runs (a LangGraph thread, a chat) until `idle_timeout` passes or `end_session()` is called.
    `started_at` (wall-clock epoch seconds, e.g. an event's or a span's timestamp) bills the run
    from when its work began rather than from when the hook ran (never later than now).
    Never raises; returns None when disabled or on an internal error.
    """
    with guard("begin_run"):
        if get_settings().disabled:
            return None
        return _pipeline.registry.begin_run(
            call_key(session_id), _options(**options), close=close, join_current=join_current, started_at=started_at
        )
    return None


@guarded("end_run")
def end_run(run: Run | None, error: BaseException | None = None, *, ended_at: float | None = None) -> None:
    """Close a run opened with `begin_run`; an error is counted and the session still bills.

    `ended_at` (wall-clock epoch seconds) bills the run up to when its work really ended (a
    completion event handled late, a span's end time); it is kept between the run's start and now.
    """
    if run is None:
        return
    if error is not None:
        count_error(run.session, error)
    _pipeline.registry.end_run(run, ended_at)


# The attribute `count_error` sets on an exception: the session it was counted in, as its
# (session_id, ident) pair (picklable, unlike the session itself, and keeping nothing alive).
_COUNTED_IN = "_keito_counted_in"


def count_error(session: Session, error: BaseException | None = None) -> bool:
    """Count an error in `session`, an exception once: `error` counted there already (by a
    client hook that saw a call fail, then again as it propagates out of `@track_agent`, a
    nested run or a framework hook) is not counted again, nor is one raised from it or while
    handling it (a framework re-raising a client's error as its own, `raise X from e`).
    Returns whether it was counted."""
    if error is not None:
        mark = (session.session_id, session.ident)
        try:
            if _counted_in(error, mark):
                return False
            setattr(error, _COUNTED_IN, mark)
        except Exception:  # (a type refusing attributes: counted wherever it is seen)
            pass
    session.record_error()
    return True


def _counted_in(error: BaseException, mark: tuple[str, str]) -> bool:
    # The exception and the ones it was raised from or during, a few deep (a chain is short;
    # the bound keeps a cyclic or very long one cheap).
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if getattr(seen, _COUNTED_IN, None) == mark:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@guarded("end_session", default=False)
def end_session(session_id: str) -> bool:
    """End an open session now (e.g. a chat thread closed by the user), whichever process of the
    ledger served its turns. False if none is open."""
    key = call_key(session_id)
    if key is None:
        return False
    if _pipeline.registry.end_session(key):
        return True
    return _pipeline.end_ledger_session(key)


def get_session(session_id: str) -> Session | None:
    """The open session with this id, if any."""
    key = call_key(session_id)
    return None if key is None else _pipeline.registry.get(key)


class _Scope:
    """One run, shared by the sync, async and generator forms of `track_agent` and `session()`.

    Each step is guarded as `guard` does (an `Exception` is reported and swallowed), written out
    as try/except rather than `with guard(...)`: on this path, taken twice per decorated call,
    the two calls a `with` block makes are a measurable share of the cost.
    """

    __slots__ = ("close", "options", "run", "session_id", "token")

    def __init__(self, session_id: str | None, options: SessionOptions, close: str = "runs") -> None:
        self.session_id = session_id if session_id is None or type(session_id) is str else call_key(session_id)
        self.options, self.close = options, close
        self.run: Run | None = None
        self.token: Token[Session | None] | None = None

    def begin(self) -> None:
        try:
            if not get_settings().disabled:
                self.run = _pipeline.registry.begin_run(self.session_id, self.options, close=self.close)
        except Exception as exc:
            report("session start", exc)

    def start(self) -> None:
        """`begin` then `enter` (a decorated call, a `with` block)."""
        try:
            if not get_settings().disabled:
                self.run = run = _pipeline.registry.begin_run(self.session_id, self.options, close=self.close)
                if run is not None:
                    self.token = current.set(run.session)
        except Exception as exc:
            report("session start", exc)

    def stop(self, exc: BaseException | None) -> None:
        """`leave` if still inside, then end the run (`exc`: what the body raised, if anything)."""
        token = self.token
        if token is not None:
            self.token = None
            try:
                current.reset(token)
            except Exception as error:
                report("session context", error)
        run = self.run
        if run is not None:
            try:
                if exc is not None and isinstance(exc, Exception):
                    count_error(run.session, exc)
                _pipeline.registry.end_run(run)
            except Exception as error:
                report("session end", error)

    def enter(self) -> None:
        if self.run is not None:
            self.token = current.set(self.run.session)

    def leave(self) -> None:
        if self.token is not None:
            try:
                current.reset(self.token)
            except Exception as exc:
                report("session context", exc)
            self.token = None


def _resolve_id(session_id: SessionId, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    if callable(session_id):
        with guard("session_id callable"):
            return call_key(session_id(*args, **kwargs))
        return None
    return call_key(session_id)


@overload
def track_agent(fn: F, /) -> F: ...
@overload
def track_agent(
    *,
    session_id: SessionId = None,
    agent_id: str | None = None,
    agent_type: str | None = None,
    project_id: str | None = None,
    task_id: str | None = None,
    billable: bool | None = None,
    notes: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    framework: str | None = None,
    expense_category_id: str | None = None,
) -> Callable[[F], F]: ...
def track_agent(
    fn: Callable[..., Any] | None = None, /, *, session_id: SessionId = None, **options: Any
) -> Any:
    """Bill every call of a function as (part of) a session.

    Works on sync, async, generator and async-generator functions, bare (`@track_agent`) or with
    settings (`@track_agent(agent_id="support-bot", project_id=...)`). A call inside an open
    session joins it; otherwise it starts one that ends when the call returns. `session_id` may be
    a string or a callable given the function's arguments. The function's own exceptions
    propagate unchanged; the session counts the error and still bills what was spent.
    """
    opts = _options(**options)
    with guard("warm-up"):
        _pipeline.warm_up()  # (a background thread: the first call costs as the next)

    def decorate(func: F) -> F:
        flags = _code_flags(func)
        if flags & _CO_ASYNC_GENERATOR:
            wrapper: Callable[..., Any] = _wrap_async_gen(func, session_id, opts)
        elif flags & _CO_COROUTINE:
            wrapper = _wrap_async(func, session_id, opts)
        elif flags & _CO_GENERATOR:
            wrapper = _wrap_gen(func, session_id, opts)
        else:
            wrapper = _wrap_sync(func, session_id, opts)
        return functools.wraps(func)(wrapper)  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def _wrap_sync(func: Callable[..., Any], sid: SessionId, opts: SessionOptions) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope = _Scope(None if sid is None else _resolve_id(sid, args, kwargs), opts)
        scope.start()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            scope.stop(exc)
            raise
        scope.stop(None)
        return result

    return wrapper


def _wrap_async(func: Callable[..., Any], sid: SessionId, opts: SessionOptions) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope = _Scope(None if sid is None else _resolve_id(sid, args, kwargs), opts)
        scope.start()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            scope.stop(exc)
            raise
        scope.stop(None)
        return result

    return wrapper


def _wrap_gen(func: Callable[..., Any], sid: SessionId, opts: SessionOptions) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        scope = _Scope(None if sid is None else _resolve_id(sid, args, kwargs), opts)
        scope.begin()
        gen = func(*args, **kwargs)
        error: BaseException | None = None
        # Drive the inner generator step by step so the session is current only while its body
        # runs, never in the consumer's code between two items.
        throw, value = False, None
        try:
            while True:
                scope.enter()
                try:
                    item = gen.throw(value) if throw else gen.send(value)  # type: ignore[arg-type]
                except StopIteration as stop:
                    return stop.value
                finally:
                    scope.leave()
                try:
                    value, throw = (yield item), False
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as exc:
                    value, throw = exc, True
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            scope.stop(error)

    return wrapper


def _wrap_async_gen(func: Callable[..., Any], sid: SessionId, opts: SessionOptions) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        scope = _Scope(None if sid is None else _resolve_id(sid, args, kwargs), opts)
        scope.begin()
        agen = func(*args, **kwargs)
        error: BaseException | None = None
        throw, value = False, None
        try:
            while True:
                scope.enter()
                try:
                    item = await (agen.athrow(value) if throw else agen.asend(value))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
                finally:
                    scope.leave()
                try:
                    value, throw = (yield item), False
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as exc:
                    value, throw = exc, True
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            scope.stop(error)

    return wrapper


class session:
    """`with keito.session() as s:` (or `async with`): everything inside is one session.

    Joins the enclosing open session, or the open session named by `session_id`; otherwise starts
    one that ends when the block exits. `s.session_id` is readable inside the block.

    `from_headers` (a request's headers, e.g. made by `session_headers()` in the calling process)
    joins the session named by their W3C baggage entry `keito.session_id`: the block is a part of
    that session kept open across the requests this process serves for it, billed
    `FIRST_JOIN_TIMEOUT` seconds after a single request or `idle_timeout` after the last of several
    (or at `keito.end_session(id)`). Headers without the entry: as if none were given.
    """

    def __init__(
        self, session_id: str | None = None, *, from_headers: Mapping[str, str] | None = None, **options: Any
    ) -> None:
        close = "runs"
        if session_id is None and from_headers is not None:
            with guard("session from_headers"):
                session_id = _baggage.session_id_from(from_headers)
                if session_id is not None:
                    close = "idle"
                    options.setdefault("first_run_timeout", FIRST_JOIN_TIMEOUT)
        self._scope = _Scope(session_id, _options(**options), close)

    def __enter__(self) -> Session:
        self._scope.start()
        run = self._scope.run
        return run.session if run is not None else Session("disabled", SessionOptions())

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._scope.stop(exc)

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(tp, exc, tb)


@guarded("session_headers", default={})
def session_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Outgoing request headers that carry the current session to another process.

    Returns a copy of `headers` whose W3C `baggage` header also holds `keito.session_id=<id>`
    (entries already there are kept); outside a session, an unchanged copy. The receiving
    process joins with `keito.session(from_headers=request.headers)`, or through OpenTelemetry
    baggage, which `KeitoSpanProcessor` reads.
    """
    enclosing = current_session()
    if enclosing is None:
        return dict(headers or {})
    return _baggage.with_session(headers, enclosing.session_id)


def _target(session_id: str | None) -> tuple[Session, bool]:
    """The session a record_* call goes to, and whether it is a one-off to end right away."""
    session_id = call_key(session_id)
    if session_id is not None:
        found = _pipeline.registry.get(session_id)
        if found is not None:
            return found, False
        return _pipeline.registry.resolve(
            session_id, SessionOptions(), close="idle", join_current=False
        ), False
    enclosing = current.get()
    if enclosing is not None:
        if not enclosing.ended:
            return enclosing, False
        # Work the session started (a thread, a task) still running after it was ended
        # explicitly: billed as a continuation under the same id and settings, not as a stray.
        # (Not in a forked child: its parent's session is the parent's to bill.)
        if enclosing.inherited:
            return _pipeline.new_session(new_session_id(), SessionOptions()), True
        if enclosing.close == "idle":
            return _pipeline.registry.resolve(enclosing.session_id, enclosing.options, close="idle",
                                              join_current=False), False
        return _pipeline.new_session(enclosing.session_id, enclosing.options), True
    return _pipeline.new_session(new_session_id(), SessionOptions()), True


@guarded("record_llm_call", default=False)
def record_llm_call(
    model: str,
    provider: str | None = None,
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    cache_write_5m_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    input_audio_tokens: int = 0,
    input_image_tokens: int = 0,
    output_audio_tokens: int = 0,
    web_searches: int = 0,
    cached: bool = False,
    usage_missing: bool = False,
    call_id: str | None = None,
    session_id: str | None = None,
) -> bool:
    """Count one LLM call.

    Token convention: `input_tokens` is the whole prompt, cache reads and writes included;
    `output_tokens` includes `reasoning_tokens`. Cache writes may be split by lifetime:
    `cache_write_1h_tokens` (and `cache_write_5m_tokens`) are parts of `cache_write_tokens`,
    which may be left 0 when both parts are given; audio and image tokens are parts of input or
    output; `web_searches` counts the provider's web searches. The call goes to `session_id` (kept open until
    `idle_timeout`), else the current session; outside any session it is billed on its own as an
    expense with no time entry. A repeated `call_id` in the same session is counted once.
    """
    if get_settings().disabled:
        return False
    target, one_off = _target(session_id)
    counted = target.record_llm_call(
        model,
        provider,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
        reasoning_tokens=reasoning_tokens,
        cache_write_5m_tokens=cache_write_5m_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
        input_audio_tokens=input_audio_tokens,
        input_image_tokens=input_image_tokens,
        output_audio_tokens=output_audio_tokens,
        web_searches=web_searches,
        cached=cached,
        usage_missing=usage_missing,
        call_id=call_id,
    )
    if one_off:
        _pipeline.registry.finish(target, "completed")
    return counted


@guarded("log_outcome")
def log_outcome(
    outcome_type: str,
    *,
    quantity: float = 1,
    unit_price: float | None = None,
    success: bool = True,
    description: str | None = None,
    evidence: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    session_id: str | None = None,
) -> None:
    """Log a business outcome (Keito's outcome shape: a time entry with hours 0 and `outcome_*` metadata).

    It is sent with the session's records when the session ends; outside a session, at once.
    """
    if get_settings().disabled:
        return
    target, one_off = _target(session_id)
    target.add_outcome(
        outcome_type,
        quantity=quantity,
        unit_price=unit_price,
        success=success,
        description=description,
        evidence=evidence,
        metadata=metadata,
    )
    if one_off:
        _pipeline.registry.finish(target, "completed")


@guarded("flush", default=False)
def flush(timeout: float = 10.0) -> bool:
    """Wait up to `timeout` seconds for stored records to reach Keito. Never blocks longer.

    Sessions that have ended are billed first (the billing worker's work, done now). Returns True
    when nothing is left pending (with no credentials configured, records are kept in the local
    ledger and this returns True once they are written). Open sessions are not ended.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    written = _pipeline.writer.drain(timeout)  # sessions waiting for a busy spool come first
    written = _pipeline.settle(max(0.0, deadline - time.monotonic())) and written
    if not get_settings().has_credentials:
        return written
    from . import _export  # the delivery machinery loads on first use

    return _export.flush(max(0.0, deadline - time.monotonic())) and written


@guarded("shutdown", default=False)
def shutdown(timeout: float = 10.0) -> bool:
    """End every open session, deliver what can be delivered within `timeout`, stop the exporter."""
    return _pipeline.shutdown(timeout)
