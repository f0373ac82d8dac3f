"""The wrappers put on the OpenAI client's resource methods, and what they record.

A wrapper calls the original method with exactly the arguments it was given and returns exactly
what it returned (the same object) or lets exactly its exception through; only then, under a
guard, it counts the call from the result: a response object's own usage, model and id; a
stream's usage from its final chunk (see `_streams`); a raw response (`with_raw_response`) parsed
as the caller's `.parse()` will be (openai caches the parsed object, so both get the same one).
A call that raises is an error of the session it runs in (`_kernel.record_call_error`: counted
once, not again as the same exception leaves `@track_agent`); one that raises after the API
answered (`.parse()` whose answer does not validate) is counted too, from that answer (`failed`).
Nothing is recorded while a
framework adapter (LangChain's handler) records the call itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..._api import current_session
from ..._guard import guard
from .._kernel import held_where_raised, in_framework_call, record_call_error, record_provider_call
from ._streams import Seer, Watch, watch_stream

_G_CALL = guard("openai call")
_G_ERROR = guard("openai call error")

PLAIN, STREAM, RAW, OTHER = "plain", "stream", "raw", "other"


class Live:
    """One `instrument()`'s on/off flag, read by its wrappers (off: they only pass calls through)."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


class Method:
    """How to read what one patched method returns."""

    __slots__ = ("flavor", "is_async", "live", "see")

    def __init__(self, flavor: str, see: Seer, is_async: bool, live: Live) -> None:
        self.flavor, self.see, self.is_async, self.live = flavor, see, is_async, live


_shapes: dict[type, str] = {}  # result type -> PLAIN / STREAM / RAW / OTHER
_providers: dict[type, str] = {}  # client type -> provider name for pricing


def _swallow(where: guard, exc: Exception) -> None:
    where.__exit__(type(exc), exc, exc.__traceback__)


def _shape_of(tp: type) -> str:
    import openai
    from openai._legacy_response import LegacyAPIResponse

    if issubclass(tp, openai.BaseModel):
        shape = PLAIN
    elif issubclass(tp, openai.Stream | openai.AsyncStream):
        shape = STREAM
    elif issubclass(tp, LegacyAPIResponse):
        shape = RAW
    else:
        shape = OTHER  # with_streaming_response's unread response, or something new
    _shapes[tp] = shape
    return shape


def _provider_of(resource: Any) -> str:
    import openai

    tp = type(getattr(resource, "_client", None))
    provider = "openai"
    if issubclass(tp, openai.AzureOpenAI | openai.AsyncAzureOpenAI):
        provider = "azure"
    else:
        names = ("BedrockOpenAI", "AsyncBedrockOpenAI")  # (openai 2.x)
        bedrock = tuple(getattr(openai, name) for name in names if hasattr(openai, name))
        if bedrock and issubclass(tp, bedrock):
            provider = "aws"
    _providers[tp] = provider
    return provider


def after(resource: Any, method: Method, kwargs: dict[str, Any], result: Any) -> None:
    """Count the call whose result is `result` (a response, a stream or a raw response)."""
    # (`__class__`, not `type()`: another instrumentor's proxy around the result, OpenLLMetry's
    # stream wrapper, reports the class of what it wraps and passes our reads through to it)
    tp = result.__class__
    shape = _shapes.get(tp) or _shape_of(tp)
    provider = _providers.get(type(resource._client)) or _provider_of(resource)
    if shape is PLAIN:
        record_provider_call(
            result.model, provider, result.usage, flavor=method.flavor, response_id=getattr(result, "id", None)
        )
    elif shape is STREAM:
        watch = Watch(kwargs.get("model"), provider, method.flavor, current_session())
        if not watch_stream(result, watch, method.see, method.is_async):
            watch.count()
    elif shape is RAW:
        try:
            parsed = result.parse()  # cached by openai: the caller's own .parse() returns this object
        except Exception as exc:
            failed(resource, method, kwargs, exc)
            return
        if (_shapes.get(parsed.__class__) or _shape_of(parsed.__class__)) is not RAW:
            after(resource, method, kwargs, parsed)
    else:  # a response not read yet (with_streaming_response): the call happened, its usage is unknown
        record_provider_call(kwargs.get("model"), provider, None, flavor=method.flavor)


def failed(resource: Any, method: Method, kwargs: dict[str, Any], exc: BaseException) -> None:
    """A call that raised: billed only when the API had answered, from the answer the SDK had read.

    That is the completion the error carries (`.parse()`'s LengthFinishReasonError), else the
    ChatCompletion or Response an openai frame held when the SDK's parsing of it raised (`.parse()`
    whose answer does not validate against `response_format` / `text_format`, a content filter's
    ContentFilterFinishReasonError): found in the exception's traceback, read only. An error
    without an answer (an HTTP error, a timeout) bills nothing.
    """
    try:
        completion = getattr(exc, "completion", None)
        if completion is None:
            answer = held_where_raised(exc, "openai.", _answer_types())
            if answer is not None:
                after(resource, method, kwargs, answer)
        elif getattr(completion, "usage", None) is not None:  # (a stream's has none: its chunks count it)
            after(resource, method, kwargs, completion)
    except Exception as inner:
        _swallow(_G_ERROR, inner)


@functools.cache
def _answer_types() -> tuple[type, ...]:
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    return ChatCompletion, Response


def _on_result(client: Any, method: Method, kwargs: dict[str, Any], result: Any) -> None:
    # What both wrappers do with an answer: count it, unless off or a framework layer records it.
    if method.live.on and in_framework_call() is None:
        try:
            after(client, method, kwargs, result)
        except Exception as exc:
            _swallow(_G_CALL, exc)


def _on_error(client: Any, method: Method, kwargs: dict[str, Any], exc: Exception) -> None:
    # A call that raised: billed if the error carries the completion, and an error of the session.
    if method.live.on and in_framework_call() is None:
        failed(client, method, kwargs, exc)
        try:
            record_call_error(exc)
        except Exception as inner:
            _swallow(_G_ERROR, inner)


def sync_wrapper(original: Callable[..., Any], method: Method) -> Callable[..., Any]:
    """A wrapper for a sync resource method (`Completions.create`, ...)."""

    @functools.wraps(original)
    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = original(self, *args, **kwargs)
        except Exception as exc:
            _on_error(self, method, kwargs, exc)
            raise
        _on_result(self, method, kwargs, result)
        return result

    patched.__keito_original__ = original  # type: ignore[attr-defined]
    return patched


def async_wrapper(original: Callable[..., Any], method: Method) -> Callable[..., Any]:
    """A wrapper for an async resource method (`AsyncCompletions.create`, ...): a coroutine function too."""

    @functools.wraps(original)
    async def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await original(self, *args, **kwargs)
        except Exception as exc:
            _on_error(self, method, kwargs, exc)
            raise
        _on_result(self, method, kwargs, result)
        return result

    patched.__keito_original__ = original  # type: ignore[attr-defined]
    return patched
