"""The public API for adapter authors (LangChain, CrewAI, OpenTelemetry and your own).

An adapter maps its framework's start/end hooks onto runs:

    run = begin_run(session_id, framework="myframework", close="runs")
    ...  run.session.record_llm_call(model, provider, input_tokens=..., output_tokens=...)
    end_run(run, error=None)

and wraps every hook body in `with guard("myframework hook"):` so nothing reaches the host.
"""

from __future__ import annotations

from ._api import begin_run, current_session, end_run, end_session, get_session
from ._guard import guard, guarded
from ._session import Run, Session
from .integrations import missing_extra

__all__ = [
    "Run",
    "Session",
    "begin_run",
    "current_session",
    "end_run",
    "end_session",
    "get_session",
    "guard",
    "guarded",
    "missing_extra",
]
