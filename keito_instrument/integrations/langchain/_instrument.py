"""Process-wide LangChain instrumentation: `instrument()`, `uninstrument()`, `is_instrumented()`.

One `KeitoCallbackHandler` is registered through langchain-core's configure hook (a context
variable whose default is the handler), so every run in the process is tracked with no `callbacks`
argument. Re-exported by `keito_instrument.integrations.langchain`, which imports this module only
after langchain-core imported (so a missing langchain-core still names the extra to install).
"""

from __future__ import annotations

import functools
import logging
import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langchain_core.tracers import context as _lc_context

from .._kernel import Switch
from ._handler import KeitoCallbackHandler

_log = logging.getLogger("keito_instrument")

ENV_VAR = "KEITO_LANGCHAIN_INSTRUMENT"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class _Hook:
    """The process-wide handler and the context variable langchain-core reads it from."""

    handler: KeitoCallbackHandler
    var: ContextVar[KeitoCallbackHandler | None]


@functools.cache
def _the_hook() -> _Hook:
    # Made once and kept: instrument() after uninstrument() brings back the same handler, with the
    # settings it had, and a context variable's default cannot be changed after it is made.
    handler = KeitoCallbackHandler()
    return _Hook(handler, ContextVar("keito_instrument_langchain", default=handler))


def _registered(var: ContextVar[KeitoCallbackHandler | None]) -> bool:
    hooks = getattr(_lc_context, "_configure_hooks", ())
    return any(entry[0] is var for entry in hooks)


def _install(**session_settings: Any) -> _Hook:
    """Give the handler the settings (if any), switch it on and register its configure hook."""
    hook = _the_hook()
    if session_settings:
        _replace_settings(hook.handler, session_settings)
    hook.handler.active = True
    if not _registered(hook.var):
        _lc_context.register_configure_hook(hook.var, inheritable=True)
    return hook


def _replace_settings(handler: KeitoCallbackHandler, session_settings: dict[str, Any]) -> None:
    fresh = KeitoCallbackHandler(**session_settings)  # validates: a typo changes nothing
    handler.session_id, handler.close = fresh.session_id, fresh.close
    handler.session_settings = fresh.session_settings


def _update(hook: _Hook, **session_settings: Any) -> None:
    _install(**session_settings)  # (the same hook: there is one per process)


def _remove(hook: _Hook) -> None:
    hook.handler.active = False  # also covers a langchain-core whose hook list we cannot edit
    hooks = getattr(_lc_context, "_configure_hooks", None)
    if isinstance(hooks, list):
        hooks[:] = [entry for entry in hooks if entry[0] is not hook.var]


_switch = Switch(_install, _remove, update=_update)


def instrument(**session_settings: Any) -> KeitoCallbackHandler | None:
    """Track every LangChain run in the process, with no `callbacks` argument.

    Registers one `KeitoCallbackHandler` through langchain-core's configure hook (a context
    variable whose default is the handler, so every thread and task sees it). Calling it again
    never registers twice; given settings replace the handler's. `KEITO_LANGCHAIN_INSTRUMENT=true`
    instruments when `keito_instrument.integrations.langchain` is imported; `=false` turns
    `instrument()` into a no-op.

    Returns:
        The process-wide handler, or None when switched off by the environment variable.

    Raises:
        TypeError: an unknown session setting (the handler's settings are left as they were).
    """
    if os.environ.get(ENV_VAR, "").strip().lower() in _FALSE:
        _log.info("keito-instrument: LangChain instrumentation switched off by %s", ENV_VAR)
        return None
    hook: _Hook = _switch.on(**session_settings)
    return hook.handler


def uninstrument() -> None:
    """Stop tracking runs that were not given a handler explicitly (runs already open finish)."""
    _switch.off()


def is_instrumented() -> bool:
    """True while `instrument()` is in effect."""
    hook: _Hook | None = _switch.handle
    return hook is not None and hook.handler.active and _registered(hook.var)
