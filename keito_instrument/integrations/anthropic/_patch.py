"""The patches: the Messages resource classes' calls and the `messages.stream()` managers.

Patching the classes (not client instances) covers every client, sync or async, made before or
after `instrument()`, and `AnthropicBedrock` / `AnthropicVertex` too (they share the resources).
Each wrapper calls the SDK's own method with the same arguments and returns its result object
itself; an exception of the SDK's is re-raised unchanged. The wrapper's own work (reading the usage,
recording) runs under `guard`, so it never raises into the host.

`.with_raw_response` and `.with_streaming_response` go through the same wrappers: they wrap the
resource's `create` / `parse` as bound when a client first builds them (ours, once instrumented),
and the SDK's method then returns its raw response object instead of a Message or a stream, the
only layer that sees the call; `_after_raw` counts it.

A call that raises is an error of the session it runs in (`_kernel.record_call_error`: counted
once, not again as the same exception leaves `@track_agent`). One that raises after the API
answered (`parse()` whose structured output does not validate, a body the SDK cannot read as a
Message) was billed by Anthropic too: `_after_error` counts the call from the body the SDK read.
Either way the same exception goes through.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import weakref
from collections.abc import Callable
from typing import Any

from keito_instrument.adapters import current_session, guard

from .. import _kernel
from ._stream import PROVIDER, StreamCall, hook_stream

# (module, class, attribute, kind): kind "call" / "acall" wraps a method returning a Message or a
# stream; "enter" / "aenter" the stream helper's context manager entry, which returns a
# MessageStream over a raw SDK stream, and "exit" / "aexit" its exit, which ends the call: a
# MessageStream is kept by a reference cycle, so the end of a stream left early would otherwise
# wait for the garbage collector. Targets an SDK version lacks are skipped.
_MESSAGES = "anthropic.resources.messages.messages"
_BETA = "anthropic.resources.beta.messages.messages"
_HELPERS = "anthropic.lib.streaming"
TARGETS = (
    (_MESSAGES, "Messages", "create", "call"),
    (_MESSAGES, "Messages", "parse", "call"),
    (_MESSAGES, "AsyncMessages", "create", "acall"),
    (_MESSAGES, "AsyncMessages", "parse", "acall"),
    (_BETA, "Messages", "create", "call"),
    (_BETA, "Messages", "parse", "call"),
    (_BETA, "AsyncMessages", "create", "acall"),
    (_BETA, "AsyncMessages", "parse", "acall"),
    *((_HELPERS, manager, "__enter__", "enter") for manager in ("MessageStreamManager", "BetaMessageStreamManager")),
    *((_HELPERS, manager, "__exit__", "exit") for manager in ("MessageStreamManager", "BetaMessageStreamManager")),
    *((_HELPERS, manager, "__aenter__", "aenter")
      for manager in ("AsyncMessageStreamManager", "BetaAsyncMessageStreamManager")),
    *((_HELPERS, manager, "__aexit__", "aexit")
      for manager in ("AsyncMessageStreamManager", "BetaAsyncMessageStreamManager")),
)

_G_CALL = guard("anthropic messages call")
_G_ERROR = guard("anthropic messages call error")
_active = False  # wrappers left under someone else's wrapper by `remove` pass straight through
_managed: weakref.WeakKeyDictionary[Any, StreamCall] = weakref.WeakKeyDictionary()  # open helpers' calls


def _after_call(result: Any, kwargs: dict[str, Any], is_async: bool) -> bool:
    """Count a returned Message, or hook a returned stream; False for anything else."""
    if getattr(result, "type", None) == "message" and hasattr(result, "usage"):
        _kernel.record_provider_call(getattr(result, "model", None) or kwargs.get("model"), PROVIDER,
                                     result.usage, flavor="anthropic", response_id=getattr(result, "id", None))
    elif kwargs.get("stream") is True and _is_stream(result, is_async):
        hook_stream(result, kwargs.get("model"), current_session(), is_async)
    else:
        return False
    return True


@functools.cache
def _raw_types() -> tuple[type, ...]:
    """The SDK's raw response classes: `APIResponse` / `AsyncAPIResponse`, and the older SDKs'
    `LegacyAPIResponse` (their `.with_raw_response`)."""
    found: list[type] = []
    for module_name, class_name in (("anthropic._response", "BaseAPIResponse"),
                                    ("anthropic._legacy_response", "LegacyAPIResponse")):
        try:
            found.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _is_raw(result: Any) -> bool:
    return isinstance(result, _raw_types())


def _after_raw(raw: Any, kwargs: dict[str, Any], is_async: bool, stream: Any) -> None:
    """Count a raw response (`.with_raw_response`, `.with_streaming_response`).

    `stream=True`: `stream` is the response's `.parse()`, the SDK's Stream over the body not read
    yet (parsing it reads nothing). The SDK caches it, so the caller's own `.parse()` returns this
    very object: counted from its events if the caller reads it, else with `usage_missing` when
    it is dropped. Otherwise the call is counted from the JSON body the SDK has read (the caller's
    `.parse()` builds its own Message, as without us); a body not read yet (the caller reads it,
    `.with_streaming_response`) or not a message is counted with `usage_missing`.
    """
    model = kwargs.get("model")
    if kwargs.get("stream") is True:
        if _is_stream(stream, is_async):
            hook_stream(stream, model, current_session(), is_async)
        else:
            _kernel.record_provider_call(model, PROVIDER, None, flavor="anthropic")
        return
    body = _read_body(raw.http_response)
    _kernel.record_provider_call(body.get("model") or model, PROVIDER, body.get("usage"), flavor="anthropic",
                                 response_id=body.get("id"))


def _after_error(exc: Exception, kwargs: dict[str, Any]) -> None:
    """Count a call that raised after the API answered, from the Message body the SDK had read.

    The SDK parses the answer inside the call, so the exception is all the caller gets. The body
    is the one of the HTTP response the exception names (`APIResponseValidationError`'s), else of
    the SDK's raw response its own frames held when its parsing raised (`messages.parse`'s
    pydantic `ValidationError` carries only the text it could not validate): found in the
    exception's traceback, read only. A failure with no Message body (an HTTP error, a timeout)
    was not a billed call: nothing is counted.
    """
    if kwargs.get("stream") is True:
        return  # (a stream that fails is counted by its events, see `_stream`)
    response = getattr(exc, "response", None)
    body = _read_body(response) if response is not None else {}
    if not body:
        raw = _answered(exc)
        body = _read_body(raw.http_response) if raw is not None else {}
    if body:
        _kernel.record_provider_call(body.get("model") or kwargs.get("model"), PROVIDER, body.get("usage"),
                                     flavor="anthropic", response_id=body.get("id"))


def _answered(exc: BaseException) -> Any:
    """The SDK's raw response held by one of the SDK's frames the exception passed through, if any."""
    return _kernel.held_where_raised(exc, "anthropic.", _raw_types())


def _read_body(response: Any) -> dict[str, Any]:
    """The JSON object of a response body already read; {} for one not read or not an object."""
    if not getattr(response, "is_stream_consumed", False):
        return {}  # (reading it here would read the caller's streamed body)
    try:
        body = response.json()
    except Exception:  # (not JSON, e.g. a proxy's page: the call happened, its usage is unknown)
        return {}
    return body if isinstance(body, dict) and body.get("type") == "message" else {}


def _is_stream(result: Any, is_async: bool) -> bool:
    from anthropic import AsyncStream, Stream

    return issubclass(result.__class__, AsyncStream if is_async else Stream)  # (a proxy: what it wraps)


def _after_enter(manager: Any, stream: Any, is_async: bool) -> None:
    """Hook the raw stream under a `messages.stream()` helper's MessageStream."""
    if _kernel.in_framework_call() is not None:
        return
    raw = getattr(stream, "_raw_stream", None)
    call = hook_stream(raw, None, current_session(), is_async) if raw is not None else None
    if call is not None:
        _managed[manager] = call


def _after_exit(manager: Any) -> None:
    call = _managed.pop(manager, None)
    if call is not None:
        call.end()  # (a no-op when the stream was read to its end)


def _on_error(exc: Exception, kwargs: dict[str, Any] | None) -> None:
    # A wrapped call raised (`kwargs` None: a stream helper's entry): billed if the API answered,
    # and an error of the session, counted once (`_kernel.record_call_error`).
    if _active and _kernel.in_framework_call() is None:
        if kwargs is not None:
            with _G_ERROR:
                _after_error(exc, kwargs)
        with _G_ERROR:
            _kernel.record_call_error(exc)


def _wrap(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    if kind == "call":
        @functools.wraps(original)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                result = original(self, *args, **kwargs)
            except Exception as exc:
                _on_error(exc, kwargs)
                raise
            if _active and _kernel.in_framework_call() is None:  # (else a framework adapter records it)
                with _G_CALL:
                    if not _after_call(result, kwargs, False) and _is_raw(result):
                        _after_raw(result, kwargs, False, result.parse() if kwargs.get("stream") is True else None)
            return result
        return call
    if kind == "acall":
        @functools.wraps(original)
        async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                result = await original(self, *args, **kwargs)
            except Exception as exc:
                _on_error(exc, kwargs)
                raise
            if _active and _kernel.in_framework_call() is None:
                with _G_CALL:
                    if not _after_call(result, kwargs, True) and _is_raw(result):
                        stream = result.parse() if kwargs.get("stream") is True else None
                        if inspect.isawaitable(stream):  # (AsyncAPIResponse's: done at once for a stream)
                            stream = await stream
                        _after_raw(result, kwargs, True, stream)
            return result
        return acall
    return _wrap_manager(original, kind)


def _wrap_manager(original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    if kind == "enter":
        @functools.wraps(original)
        def enter(self: Any) -> Any:
            try:
                stream = original(self)
            except Exception as exc:
                _on_error(exc, None)
                raise
            if _active:
                with _G_CALL:
                    _after_enter(self, stream, False)
            return stream
        return enter
    if kind == "aenter":
        @functools.wraps(original)
        async def aenter(self: Any) -> Any:
            try:
                stream = await original(self)
            except Exception as exc:
                _on_error(exc, None)
                raise
            if _active:
                with _G_CALL:
                    _after_enter(self, stream, True)
            return stream
        return aenter
    if kind == "exit":
        @functools.wraps(original)
        def exit_(self: Any, *exc_info: Any) -> Any:
            try:
                return original(self, *exc_info)
            finally:
                with _G_CALL:
                    _after_exit(self)
        return exit_

    @functools.wraps(original)
    async def aexit(self: Any, *exc_info: Any) -> Any:
        try:
            return await original(self, *exc_info)
        finally:
            with _G_CALL:
                _after_exit(self)
    return aexit


Patch = tuple[type, str, Any, Any]  # (class, attribute, original, wrapper)


def install() -> list[Patch]:
    """Wrap every target this SDK has; returns what `remove` needs to undo it."""
    global _active
    patches: list[Patch] = []
    for module_name, class_name, attribute, kind in TARGETS:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        current = cls.__dict__.get(attribute)
        if current is None or any(p[0] is cls and p[1] == attribute for p in patches):
            continue  # (not in this SDK, or an alias of a class already patched)
        if getattr(current, "__keito_wrapped__", False):  # ours, put back by someone who wrapped it
            patches.append((cls, attribute, current.__wrapped__, current))
            continue
        wrapper = _wrap(current, kind)
        wrapper.__keito_wrapped__ = True  # type: ignore[attr-defined]
        setattr(cls, attribute, wrapper)
        patches.append((cls, attribute, current, wrapper))
    _active = True
    return patches


def remove(patches: list[Patch]) -> None:
    """Put the SDK's own methods back (a wrapper someone else wrapped since is switched off)."""
    global _active
    _active = False
    for cls, attribute, original, wrapper in reversed(patches):
        if cls.__dict__.get(attribute) is wrapper:
            setattr(cls, attribute, original)
