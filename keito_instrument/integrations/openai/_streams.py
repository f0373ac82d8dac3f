"""Watching an OpenAI stream without changing it: its usage is read from the final chunk.

The client returns its own `Stream` / `AsyncStream`; the user keeps that very object. We replace
only its private `_iterator` (what `__iter__` and `__next__` draw from) with a generator that
yields every item of the original one, unchanged and in order, looking at each as it passes.
The call is counted once, at the first of: the final usage chunk (chat: usage with no choices;
responses: a `response.completed` / `incomplete` / `failed` event), the end of the stream, a
failure after output began, the consumer closing it, or the stream being dropped unread. A call
whose usage never came is counted with `usage_missing` (cost unknown, never zero).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from ..._guard import guard
from .._kernel import apassthrough, passthrough, record_provider_call

_KINDS = ("openai stream chunk", "openai stream end")
_G_END = guard(_KINDS[1])

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _swallow(where: guard, exc: Exception) -> None:
    where.__exit__(type(exc), exc, exc.__traceback__)


class Watch:
    """One streamed call: what it has shown so far, and whether it was counted."""

    __slots__ = ("began", "done", "flavor", "model", "provider", "response_id", "session", "usage")

    def __init__(self, model: str | None, provider: str, flavor: str, session: Any) -> None:
        self.model, self.provider, self.flavor, self.session = model, provider, flavor, session
        self.usage: Any = None
        self.response_id: str | None = None
        self.began = False  # output began: a failure after this still cost a request
        self.done = False

    def count(self) -> None:
        """Count the call (once) with the usage seen, or with `usage_missing` if none came."""
        if self.done:
            return
        self.done = True
        record_provider_call(
            self.model, self.provider, self.usage, flavor=self.flavor, response_id=self.response_id,
            session=self.session,
        )

    def abandoned(self) -> None:
        """The stream was dropped (or closed) before its end: count what it showed."""
        try:
            self.count()
        except Exception as exc:
            _swallow(_G_END, exc)


def see_chat(watch: Watch, chunk: Any) -> None:
    """A chat completion chunk: the usage chunk (usage, no choices) is the last word."""
    if not watch.began:
        watch.began = True
        watch.model = getattr(chunk, "model", None) or watch.model
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        watch.usage, watch.model, watch.response_id = usage, chunk.model or watch.model, chunk.id
        if not chunk.choices:
            watch.count()


def see_response_event(watch: Watch, event: Any) -> None:
    """A responses stream event: the terminal event carries the whole response and its usage."""
    kind = getattr(event, "type", None)
    if not watch.began:
        watch.began = True
        watch.model = getattr(getattr(event, "response", None), "model", None) or watch.model
    if kind in _TERMINAL:
        response = event.response
        watch.usage, watch.model, watch.response_id = response.usage, response.model or watch.model, response.id
        watch.count()


Seer = Callable[[Watch, Any], None]


def _end(watch: Watch, failed: bool) -> None:
    """The stream ended, failed or was closed: count it, unless it failed before any output."""
    if watch.done or (failed and not watch.began):
        watch.done = True  # a request that failed before its first chunk is an error, not a call
        return
    try:
        watch.count()
    except Exception as exc:
        _swallow(_G_END, exc)


def watch_stream(stream: Any, watch: Watch, see: Seer, is_async: bool) -> bool:
    """Put the watcher on `stream` in place; False when this stream has no iterator to watch."""
    inner = getattr(stream, "_iterator", None)
    if inner is None:
        return False

    def show(item: Any) -> None:
        if not watch.done:
            see(watch, item)

    stream._iterator = (apassthrough if is_async else passthrough)(inner, show, lambda failed: _end(watch, failed),
                                                                   _KINDS)
    finalizer = weakref.finalize(stream, watch.abandoned)  # dropped before (or without) reading
    finalizer.atexit = False
    return True
