"""keito-instrument: make AI-agent work billable.

Every session of an agent becomes one Keito time entry (its working time) and one Keito expense
(its LLM cost), correlated by `session_id`, priced offline and delivered exactly once.

    import keito_instrument as keito

    @keito.track_agent(agent_id="support-bot")
    def handle(ticket): ...

Importing this package loads no agent framework and starts no thread.
"""

from __future__ import annotations

from ._api import (
    begin_run,
    current_session,
    end_run,
    end_session,
    flush,
    get_session,
    log_outcome,
    record_llm_call,
    session,
    session_headers,
    shutdown,
    track_agent,
)
from ._config import Settings, configure, get_settings
from ._session import Run, Session
from ._version import __version__

__all__ = [
    "Run",
    "Session",
    "Settings",
    "__version__",
    "begin_run",
    "configure",
    "current_session",
    "end_run",
    "end_session",
    "flush",
    "get_session",
    "get_settings",
    "instrument",
    "log_outcome",
    "record_llm_call",
    "session",
    "session_headers",
    "shutdown",
    "track_agent",
]


def instrument() -> list[str]:
    """Enable every adapter whose framework is importable; returns the names of those enabled.

    Frameworks that are not installed are skipped silently (they were not asked for by name).
    """
    from .integrations import instrument_all

    return instrument_all()
