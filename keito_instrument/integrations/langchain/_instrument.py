"""Process-wide LangChain instrumentation: `instrument()`, `uninstrument()`, `is_instrumented()`.

One `KeitoCallbackHandler` is registered through langchain-core's configure hook (a context
variable whose default is the handler), so every run in the process is tracked with no `callbacks`
argument. Re-exported by `keito_instrument.integrations.langchain`, which imports this module only
after langchain-core imported (so a missing langchain-core still names the extra to install).
"""

from __future__ import annotations

import logging
import os
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from langchain_core.tracers import context as _lc_context

if TYPE_CHECKING:
    from . import KeitoCallbackHandler

_log = logging.getLogger("keito_instrument")

ENV_VAR = "KEITO_LANGCHAIN_INSTRUMENT"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

_instrument_lock = threading.Lock()
_global: KeitoCallbackHandler | None = None
_hook_var: ContextVar[KeitoCallbackHandler | None] | None = None


def _hook_registered(var: ContextVar[KeitoCallbackHandler | None]) -> bool:
    hooks = getattr(_lc_context, "_configure_hooks", ())
    return any(entry[0] is var for entry in hooks)


def instrument(**session_settings: Any) -> KeitoCallbackHandler | None:
    """Track every LangChain run in the process, with no `callbacks` argument.

    Registers one `KeitoCallbackHandler` through langchain-core's configure hook (a context
    variable whose default is the handler, so every thread and task sees it). Calling it again
    never registers twice; given settings replace the handler's. `KEITO_LANGCHAIN_INSTRUMENT=true`
    instruments when `keito_instrument.integrations.langchain` is imported; `=false` turns
    `instrument()` into a no-op.

    Returns:
        The process-wide handler, or None when switched off by the environment variable.
    """
    global _global, _hook_var
    if os.environ.get(ENV_VAR, "").strip().lower() in _FALSE:
        _log.info("keito-instrument: LangChain instrumentation switched off by %s", ENV_VAR)
        return None
    from . import KeitoCallbackHandler  # at call time: the package imports this module

    with _instrument_lock:
        if _global is None or _hook_var is None:
            _global = KeitoCallbackHandler(**session_settings)
            _hook_var = ContextVar("keito_instrument_langchain", default=_global)
        elif session_settings:
            fresh = KeitoCallbackHandler(**session_settings)  # validates, then settings move over
            _global.session_id, _global.close = fresh.session_id, fresh.close
            _global.session_settings = fresh.session_settings
        _global.active = True
        if not _hook_registered(_hook_var):
            _lc_context.register_configure_hook(_hook_var, inheritable=True)
        return _global


def uninstrument() -> None:
    """Stop tracking runs that were not given a handler explicitly (runs already open finish)."""
    with _instrument_lock:
        if _global is not None:
            _global.active = False  # also covers a langchain-core whose hook list we cannot edit
        hooks = getattr(_lc_context, "_configure_hooks", None)
        if isinstance(hooks, list) and _hook_var is not None:
            hooks[:] = [entry for entry in hooks if entry[0] is not _hook_var]


def is_instrumented() -> bool:
    """True while `instrument()` is in effect."""
    return _global is not None and _global.active and _hook_var is not None and _hook_registered(_hook_var)
