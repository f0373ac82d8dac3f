"""Anthropic client integration: every Messages API call of the `anthropic` SDK is counted once.

    from keito_instrument.integrations import anthropic as keito_anthropic

    keito_anthropic.instrument()   # once; clients made before or after it are covered
    client.messages.create(...)    # counted in the current keito session, or on its own

Covered, sync and async (`Anthropic`, `AsyncAnthropic`, and the Bedrock and Vertex clients, which
share the resources): `messages.create` (plain and `stream=True`), `messages.parse`, the
`messages.stream(...)` helper, and the same under `client.beta.messages`, through
`.with_raw_response` and `.with_streaming_response` too (a body the caller reads themselves is
counted with `usage_missing`; a `parse` whose answer does not validate, with the answer's usage,
its error raised unchanged). Usage is the
response's own: Anthropic's `input_tokens` excludes the cache, so the billed input is input +
cache reads + cache writes, with the reads, the writes and their 1-hour part recorded as such
(and web searches); the model is the one the response names.

Streams are counted at `message_stop`, from `message_start` and the cumulative `message_delta`
counts; a stream cut after output began, closed early or dropped (read or not) is counted with
`usage_missing` (cost unknown, never a silent zero); a call that fails before any output is not
a call. A call that raises is one error of its session, counted once (not again as the same
exception leaves `@track_agent`). Inside `@track_agent` or
`keito.session()` a call bills to that session (a stream to the session open when it started);
outside any, on its own, as `keito.record_llm_call` does. A call a framework adapter records
itself (it marks the context, see `_kernel.framework_call`) is left to it, and a response id
counted by another layer is not counted again.

Wrapping never changes arguments, return values, exceptions or streaming behaviour, and
`uninstrument()` puts the SDK's methods back. The `anthropic` package is imported only by
`instrument()`.
"""

from __future__ import annotations

from typing import Any

from .._kernel import Switch, require_version

__all__ = ["MINIMUM", "instrument", "is_instrumented", "uninstrument"]

# The oldest anthropic SDK supported (integrations/anthropic/constraints-min.txt): the Messages
# resources under anthropic.resources.messages, the stream helpers' managers in
# anthropic.lib.streaming and a raw stream that iterates over its `_iterator` (all in 0.49.0).
MINIMUM = (0, 49)


def _install() -> Any:
    from . import _patch

    return _patch.install()


def _remove(patches: Any) -> None:
    from . import _patch

    _patch.remove(patches)


_switch = Switch(_install, _remove, client_hook=True)


def instrument() -> None:
    """Count every Anthropic Messages API call in this process (calling it again is a no-op).

    Raises:
        ImportError: anthropic is not installed, or older than the oldest supported version
            (the message names the pip extra).
    """
    require_version("Anthropic", "anthropic", MINIMUM, "anthropic")
    _switch.on()


def uninstrument() -> None:
    """Put the SDK's own methods back (streams already open are still counted when they end)."""
    _switch.off()


def is_instrumented() -> bool:
    """Whether `instrument()` is in effect."""
    return _switch.is_on
