"""OpenAI client integration: every model call of the `openai` package is counted, with its usage.

    from keito_instrument.integrations import openai as keito_openai

    keito_openai.instrument()  # or keito.instrument(), which enables every installed integration

Patches the client's resource classes (so clients created before `instrument()` are covered, and
Azure's clients, which share them): `chat.completions.create` (plain, `stream=True`, the
`.stream()` helper) and `.parse`, `responses.create` (plain and streaming, the `.stream()` helper)
and `.parse`, `embeddings.create`, sync and async. Each call is counted once, in the current
keito session (`@track_agent`, `keito.session()`) or on its own as `keito.record_llm_call` does:
input with cache reads included, cache reads from `cached_tokens`, output with reasoning
included, the model the response names. A stream without usage (no
`stream_options={"include_usage": True}`) is counted with `usage_missing`, never as zero.
A call that raises is one error of its session, counted once (not again as the same exception
leaves `@track_agent`); outside any session it records nothing.

A framework adapter that records the call itself (LangChain's `KeitoCallbackHandler`) marks the
context while the call runs; the client hook then leaves the call to it, so one call is billed
once. `uninstrument()` restores the original methods.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._kernel import Switch, check_options, require_version
from ._hooks import Live, Method, async_wrapper, sync_wrapper
from ._streams import see_chat, see_response_event

__all__ = ["MINIMUM", "instrument", "is_instrumented", "uninstrument"]

MINIMUM = (1, 66)  # the oldest openai this integration supports (scripts/test-compat tests it)

# (module, sync class, async class, methods, usage flavor, stream reader); a class or method an
# openai version lacks is skipped (openai 1.x has `beta.chat.completions.parse`, 2.x does not).
_TARGETS = (
    ("openai.resources.chat.completions", "Completions", "AsyncCompletions", ("create", "parse"), "openai-chat",
     see_chat),
    ("openai.resources.beta.chat.completions", "Completions", "AsyncCompletions", ("parse",), "openai-chat",
     see_chat),
    ("openai.resources.responses", "Responses", "AsyncResponses", ("create", "parse"), "openai-responses",
     see_response_event),
    ("openai.resources.embeddings", "Embeddings", "AsyncEmbeddings", ("create",), "openai-chat", see_chat),
)

Patch = tuple[type, str, Any, Any]  # (class, method name, original, wrapper)


def _settle_imports() -> None:
    """Import httpx2 (openai's optional transport) now, on the caller's thread, if installed.

    openai 2.x looks `httpx2` up in `sys.modules` on every request; keito's warm-up thread
    imports genai-prices, which imports httpx2, and a request made meanwhile would find it half
    imported and fail (AttributeError on `httpx2.Timeout`). Imported here, it is whole first.
    """
    import importlib.util

    if importlib.util.find_spec("httpx2") is not None:
        importlib.import_module("httpx2")


def _install() -> tuple[Live, list[Patch]]:
    require_version("OpenAI", "openai", MINIMUM, "openai")
    _settle_imports()
    live = Live()
    patches: list[Patch] = []
    for module_name, sync_name, async_name, names, flavor, see in _TARGETS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for class_name, is_async in ((sync_name, False), (async_name, True)):
            cls = getattr(module, class_name, None)
            for name in names:
                original = getattr(cls, "__dict__", {}).get(name)
                if original is None:
                    continue
                wrap = async_wrapper if is_async else sync_wrapper
                wrapper = wrap(original, Method(flavor, see, is_async, live))
                setattr(cls, name, wrapper)
                patches.append((cls, name, original, wrapper))  # type: ignore[arg-type]
    return live, patches


def _remove(handle: tuple[Live, list[Patch]]) -> None:
    live, patches = handle
    live.on = False  # a wrapper someone else wrapped over stays in place, passing calls through
    for cls, name, original, wrapper in reversed(patches):
        if cls.__dict__.get(name) is wrapper:
            setattr(cls, name, original)


_switch = Switch(_install, _remove, client_hook=True)


def instrument(**options: Any) -> None:
    """Count every OpenAI client call in this process (once; calling it again changes nothing).

    Raises:
        ImportError: openai is not installed or older than `MINIMUM` (the message says what to
            install).
        TypeError: an option was given (this integration takes none; the session comes from
            `@track_agent` / `keito.session()`).
    """
    check_options("keito_instrument.integrations.openai.instrument()", options, frozenset())
    _switch.on()


def uninstrument() -> None:
    """Restore the original client methods (streams already open still finish being counted)."""
    _switch.off()


def is_instrumented() -> bool:
    """Whether `instrument()` is in effect."""
    return _switch.is_on
