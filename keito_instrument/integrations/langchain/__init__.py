"""LangChain integration: every chain, agent and LangGraph run becomes (part of) a billable session.

    from keito_instrument.integrations.langchain import KeitoCallbackHandler, instrument

    chain.invoke(x, config={"callbacks": [KeitoCallbackHandler(project_id="p1", task_id="t1")]})
    instrument()  # or: every run in the process, with no callbacks argument

A root run (a run with no parent we know of) opens a run in a keito session and its end closes it,
so root runs are the session's active intervals. Nested runs map to their root through one
process-wide table, shared by every handler instance, so an explicit handler and the `instrument()`
handler never bill a run twice: the first Keito handler to see a root run owns its whole tree.
Usage is counted once per model call, at `on_llm_end`; chain inputs and outputs are never read.
While a client hook or our span processor is installed, the handler marks the context for them
(the kernel's run mark while it tracks a run, naming the run's session; the call mark while it
records a model call), so they bill nothing of what it bills, and a call it never sees (a client
called directly inside a chain step) goes into its session. With none installed it marks nothing.

Threading contract: every hook runs inline on the caller's thread or event loop (`run_inline`),
does O(1) work without locks on the hot path, never blocks on I/O except the local ledger write
when a session ends, and never raises.
"""

from __future__ import annotations

import os

from keito_instrument.adapters import guard, missing_extra

from .._kernel import require_version

# The check: the names the handler imports (in `_handler`) are there, else name the extra to install.
try:
    from langchain_core.callbacks import BaseCallbackHandler  # noqa: F401
    from langchain_core.outputs import LLMResult  # noqa: F401
    from typing_extensions import override  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without langchain-core
    raise missing_extra("LangChain", "langchain") from exc

# The oldest langchain-core supported (integrations/langchain/constraints-min.txt); checked once,
# at import, so an older one is named with the upgrade line instead of failing inside a callback.
MINIMUM = (0, 3, 49)
require_version("LangChain", "langchain-core", MINIMUM, "langchain")

# After the checks above: the handler and the process-wide instrumentation import langchain-core.
from ._handler import KeitoCallbackHandler  # noqa: E402
from ._handler import _table as _table  # noqa: E402 - the process-wide run table (test suites clear it)
from ._instrument import _TRUE, ENV_VAR, instrument, is_instrumented, uninstrument  # noqa: E402

__all__ = ["ENV_VAR", "MINIMUM", "KeitoCallbackHandler", "instrument", "is_instrumented", "uninstrument"]

# KEITO_LANGCHAIN_INSTRUMENT=true: importing this adapter instruments the process.
if os.environ.get(ENV_VAR, "").strip().lower() in _TRUE:
    with guard("langchain auto-instrument"):
        instrument()
