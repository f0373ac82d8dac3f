"""One streamed Messages call: its usage from the stream's events, counted once when it ends.

Anthropic streams a call as `message_start` (the message id and model, and its usage so far:
input, cache reads and writes with their lifetimes, a first output count), content events, one
or more `message_delta` (usage counts that are cumulative totals: the output, and on newer APIs
the input and cache counts and the server tool uses too) and `message_stop`. As the SDK's own
accumulator does, a delta's counts overwrite those of the start, and a count the delta omits
keeps its start value. The call is counted at `message_stop`; a stream that ends any other way
(cut or failed after output began, closed early, or dropped by the user, read or not) is counted
with `usage_missing`, as the API bills a request it accepted; one that fails before any output is
not a call (an error, as a request refused with an HTTP status is).

The SDK's `Stream` iterates over its `_iterator`; the hook replaces it with a generator that
sees each event and yields it unchanged, so every consumer (the user's loop, `MessageStream`'s
accumulator, `text_stream`, `get_final_message()`) reads exactly the events it would have read.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

from keito_instrument.adapters import Session, guard

from .. import _kernel
from .._kernel import apassthrough, passthrough

PROVIDER = "anthropic"
# The usage fields a stream event may carry (cache_creation only on message_start).
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                 "cache_creation", "server_tool_use", "output_tokens_details")
_CONTENT = frozenset({"content_block_start", "content_block_delta", "content_block_stop"})

_KINDS = ("anthropic stream event", "anthropic stream end")
_G_END = guard(_KINDS[1])


def _swallow(where: guard, exc: Exception) -> None:
    """Hand an internal error to the guard, exactly as leaving `with where:` with it would."""
    where.__exit__(type(exc), exc, exc.__traceback__)


def merge_usage(block: Any, into: dict[str, Any]) -> dict[str, Any]:
    """Copy the counts `block` carries over those in `into` (a delta's totals replace the start's)."""
    if block is None:
        return into
    for name in _USAGE_FIELDS:
        value = block.get(name) if isinstance(block, dict) else getattr(block, name, None)
        if value is not None:
            into[name] = value
    return into


class StreamCall:
    """What one stream has shown so far. `see` runs once per event on the consumer's thread."""

    __slots__ = ("began", "done", "model", "response_id", "session", "usage")

    def __init__(self, model: str | None, session: Session | None) -> None:
        self.model, self.session = model, session
        self.response_id: str | None = None
        self.usage: dict[str, Any] | None = None
        self.began = False  # output began: a content event arrived (a failure after it still cost)
        self.done = False  # counted

    def see(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind in _CONTENT:
            self.began = True
        elif kind == "message_start":
            message = getattr(event, "message", None)
            self.response_id = getattr(message, "id", None) or self.response_id
            self.model = getattr(message, "model", None) or self.model
            self.usage = merge_usage(getattr(message, "usage", None), {})
        elif kind == "message_delta":
            self.usage = merge_usage(getattr(event, "usage", None), self.usage or {})
        elif kind == "message_stop":
            self.count(self.usage if self.usage is not None else None)

    def count(self, usage: Any) -> None:
        """Count the call once: with `usage`, or with `usage_missing` when it is None."""
        if self.done:
            return
        self.done = True
        session = self.session
        if session is not None and session.ended:
            session = None  # (its session ended while the stream was read: bill where we are now)
        _kernel.record_provider_call(self.model, PROVIDER, usage, flavor="anthropic",
                                     response_id=self.response_id, session=session)

    def end(self, failed: bool = False) -> None:
        """The stream ended (read to its end, failed, closed or dropped) without `message_stop`."""
        if self.done or (failed and not self.began) or sys.is_finalizing():
            self.done = True
            return
        self.count(None)

    def abandoned(self) -> None:
        """The SDK stream was garbage collected (perhaps never read)."""
        try:
            self.end()
        except Exception as exc:
            _swallow(_G_END, exc)


def hook_stream(raw: Any, model: str | None, session: Session | None, is_async: bool) -> StreamCall | None:
    """Make the SDK stream `raw` show its events to a new `StreamCall` (once per stream)."""
    inner = raw._iterator
    code = getattr(inner, "ag_code" if is_async else "gi_code", None)
    if code is (apassthrough if is_async else passthrough).__code__:
        return None  # already observed (a helper built on a hooked call)
    call = StreamCall(model, session)
    raw._iterator = (apassthrough if is_async else passthrough)(inner, call.see, call.end, _KINDS)
    finalizer = weakref.finalize(raw, call.abandoned)  # dropped, read or not (the call was accepted)
    finalizer.atexit = False
    return call
