"""CrewAI integration: every crew kickoff (and `Agent.kickoff`) becomes a billable session.

    from keito_instrument.integrations import crewai as keito_crewai

    keito_crewai.instrument(project_id="p1", task_id="t1")   # once, before or after building crews
    crew.kickoff(inputs={...})                                # one session: time entry + LLM expense

Sessions: a kickoff's interval runs from its start event to its completed or failed event, by
the events' own timestamps (not by when our handlers ran, which may be late and in any order). A
kickoff inside an open keito session (`@track_agent`, `keito.session()`) joins it; a kickoff inside
another kickoff joins the outer one's session. Per-crew settings come from `instrument(crew=...)`
or from the crew's inputs (`keito_session_id`, `keito_project_id`, `keito_task_id`,
`keito_agent_id`), which a `@before_kickoff` hook may also set.

Usage is summed from each `llm_call_completed` event, once per `call_id`, never from the crew's
cumulative `usage_metrics` (they double count an LLM instance shared by agents and accumulate
across kickoffs). Tool uses are counted; failed LLM calls, failed tasks and a failed kickoff count
as errors, and a failed kickoff still bills what it spent.

Threading contract: CrewAI runs our handlers on its handler thread pool, in any order. Each
handler reads the event (and CrewAI's event scope, which the bus copies into the handler's
context) on that thread, feeds a `CrewEvent` to the framework-free `KickoffAssembler`, does O(1)
work under one short lock and never raises into CrewAI. crewai itself is imported only when
`instrument()` is called.
"""

from __future__ import annotations

from typing import Any

from .._kernel import Switch

# The listener's names stay importable from the package (`keito_crewai.<name>`).
from ._listener import _EVENTS as _EVENTS
from ._listener import INPUT_KEYS as INPUT_KEYS
from ._listener import MAX_STREAMED as MAX_STREAMED
from ._listener import MINIMUM, KeitoCrewListener
from ._listener import OPTIONS as OPTIONS
from ._listener import event_time as event_time

__all__ = ["MINIMUM", "KeitoCrewListener", "instrument", "is_instrumented", "uninstrument"]


def _install(crew: Any, settle_timeout: float | None, options: dict[str, Any]) -> KeitoCrewListener:
    listener = KeitoCrewListener()
    _update(listener, crew, settle_timeout, options)  # (a bad option raises before anything is installed)
    return listener


def _update(listener: KeitoCrewListener, crew: Any, settle_timeout: float | None, options: dict[str, Any]) -> None:
    if crew is not None:
        listener.configure_crew(crew, **options)
    elif options:
        listener.set_options(**options)
    if settle_timeout is not None:
        listener.assembler.settle_timeout = settle_timeout
    listener.install()  # (again if `uninstall()` was called on the listener itself)


_switch = Switch(_install, KeitoCrewListener.uninstall, update=_update)


def instrument(crew: Any = None, *, settle_timeout: float | None = None, **options: Any) -> KeitoCrewListener:
    """Bill every CrewAI kickoff in this process; returns the (single) listener.

    Calling it again with settings replaces the defaults; without any (as `keito.instrument()`
    does) it keeps them. With `crew=`, the settings (including `session_id=`) apply to that crew
    object only.

    Args:
        crew: A `Crew` whose kickoffs get these settings instead of the defaults.
        settle_timeout: Seconds a finished kickoff waits for LLM completions still in flight
            (default 5).
        **options: session_id, project_id, task_id, agent_id, agent_type, billable, notes,
            metadata, expense_category_id.

    Raises:
        ImportError: crewai is not installed or older than `MINIMUM` (the message names the
            pip extra).
        TypeError: an unknown option.
    """
    listener: KeitoCrewListener = _switch.on(crew, settle_timeout, options)
    return listener


def uninstrument() -> None:
    """Remove the listener from the CrewAI event bus; open kickoffs are closed and billed."""
    _switch.off()


def is_instrumented() -> bool:
    """Whether `instrument()` is in effect."""
    listener: KeitoCrewListener | None = _switch.handle
    return listener is not None and listener.installed
