"""The CrewAI event-bus listener: reads each bus event into a `CrewEvent` for the assembler.

crewai itself is imported only by `KeitoCrewListener.install()`.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from keito_instrument.adapters import current_session, guard, missing_extra

from .._kernel import add_call_probe, check_options, remove_call_probe, require_version
from . import _crew_event as kinds
from ._crew_event import CrewEvent
from ._events import KickoffAssembler

# The oldest crewai supported (integrations/crewai/constraints-min.txt): the first whose
# `llm_call_completed` event carries the call's usage, the only per-call token source.
MINIMUM = (1, 13)

_log = logging.getLogger("keito_instrument")

# Crew input keys that set the kickoff's session (they are ordinary inputs to crewai).
INPUT_KEYS = {
    "keito_session_id": "session_id",
    "keito_project_id": "project_id",
    "keito_task_id": "task_id",
    "keito_agent_id": "agent_id",
}
MAX_STREAMED = 4096  # calls streaming at once, far beyond any crew
_ROOTS = frozenset({"crew_kickoff_started", "lite_agent_execution_started"})
OPTIONS = frozenset(
    {"project_id", "task_id", "expense_category_id", "agent_id", "agent_type", "billable", "notes"} | {"metadata"}
)

# event class name -> our kind; resolved to classes when the listener is installed.
_EVENTS = {
    "CrewKickoffStartedEvent": kinds.KICKOFF_STARTED,
    "CrewKickoffCompletedEvent": kinds.KICKOFF_COMPLETED,
    "CrewKickoffFailedEvent": kinds.KICKOFF_FAILED,
    "LiteAgentExecutionStartedEvent": kinds.KICKOFF_STARTED,
    "LiteAgentExecutionCompletedEvent": kinds.KICKOFF_COMPLETED,
    "LiteAgentExecutionErrorEvent": kinds.KICKOFF_FAILED,
    "LLMCallStartedEvent": kinds.LLM_STARTED,
    "LLMCallCompletedEvent": kinds.LLM_COMPLETED,
    "LLMCallFailedEvent": kinds.LLM_FAILED,
    "ToolUsageFinishedEvent": kinds.TOOL_FINISHED,
    "ToolUsageErrorEvent": kinds.TOOL_FAILED,
    "TaskFailedEvent": kinds.TASK_FAILED,
}


def _scope_reader() -> Callable[[], tuple[tuple[str, str], ...]] | None:
    # CrewAI keeps the stack of open event scopes in a context variable and runs each handler in
    # a copy of the emitter's context, so a handler can see which kickoff its event belongs to.
    try:
        from crewai.events.event_context import _event_id_stack
    except ImportError:  # pragma: no cover - a crewai without event scopes
        return None
    return _event_id_stack.get


class KeitoCrewListener:
    """An event-bus listener that bills CrewAI kickoffs. Create it through `instrument()`.

    Args:
        settle_timeout: Seconds a finished kickoff waits for LLM completions still in flight.
        **options: Session settings for every kickoff (project_id, task_id, agent_id, billable,
            notes, metadata, expense_category_id).
    """

    def __init__(self, settle_timeout: float = 5.0, **options: Any) -> None:
        self.assembler = KickoffAssembler(settle_timeout=settle_timeout, on_unsettled=self._drain_then_settle)
        self.session_id: str | None = None
        self.options: dict[str, Any] = {}
        self.set_options(**options)
        self._crews: dict[str, dict[str, Any]] = {}  # str(crew.id) -> settings, while that crew lives
        self._lock = threading.Lock()
        self._kinds: dict[type[Any], str] = {}
        self._bus: Any = None
        self._scopes = _scope_reader()
        # Calls whose output began streaming (call id -> None, oldest first, bounded): one that then
        # fails was cut mid-stream, and the provider bills what it streamed.
        self._streamed: dict[Any, None] = {}
        self._chunk_event: Any = None
        self._call_var: Any = None  # crewai's call-id context variable, read by `records_call`

    # -- installation -----------------------------------------------------------------------------
    def install(self) -> None:
        """Register the handlers on `crewai_event_bus` (imports crewai)."""
        try:
            from crewai import events
        except ImportError as exc:
            raise missing_extra("CrewAI", "crewai") from exc
        require_version("CrewAI", "crewai", MINIMUM, "crewai")
        kinds = {getattr(events, name): kind for name, kind in _EVENTS.items()}
        if "usage" not in getattr(events.LLMCallCompletedEvent, "model_fields", {"usage": None}):
            _log.warning(
                "keito-instrument: this CrewAI's LLM events carry no token usage (crewai >= 1.13 does); "
                "LLM calls are counted without tokens"
            )
        with self._lock:
            if self._bus is not None:
                return
            self._bus, self._kinds = events.crewai_event_bus, kinds
            for cls in kinds:
                self._bus.register_handler(cls, self._handle)
            self._chunk_event = getattr(events, "LLMStreamChunkEvent", None)
            if self._chunk_event is not None:
                self._bus.register_handler(self._chunk_event, self._on_chunk)
            from crewai.llms import base_llm

            self._call_var = getattr(base_llm, "_current_call_id", None)  # (crewai's, set around each call)
            if self._call_var is not None:
                add_call_probe(self.records_call)

    def uninstall(self) -> None:
        """Unregister every handler and close the kickoffs still open (they bill what they spent)."""
        remove_call_probe(self.records_call)
        with self._lock:
            bus, self._bus = self._bus, None
            if bus is not None:
                for cls in self._kinds:
                    bus.off(cls, self._handle)
                if self._chunk_event is not None:
                    bus.off(self._chunk_event, self._on_chunk)
        self.assembler.close_all()

    def records_call(self) -> str | None:
        """"crewai" while a crewai LLM call that these events bill runs in this context (in a
        kickoff, or in an open keito session): an instrumented OpenAI or Anthropic client that
        crewai's provider calls then leaves the call (its tokens and its error) to the events,
        which know the kickoff, the agent and the task."""
        try:
            var = self._call_var
            if var is None or var.get() is None:
                return None
            return "crewai" if self._roots() or current_session() is not None else None
        except Exception:  # (a probe never raises into a client call)
            return None

    @property
    def installed(self) -> bool:
        """Whether the handlers are registered on the bus."""
        return self._bus is not None

    def set_options(self, session_id: str | None = None, **options: Any) -> None:
        """Session settings for every kickoff without settings of its own."""
        _check(options)
        self.session_id, self.options = session_id, dict(options)

    def configure_crew(self, crew: Any, **options: Any) -> None:
        """Session settings for one crew object (`session_id=` included); copies are not covered.

        The settings are forgotten when the crew is garbage collected.
        """
        _check({k: v for k, v in options.items() if k != "session_id"})
        key = str(crew.id)
        with self._lock:
            known = key in self._crews
            self._crews[key] = dict(options)
        if not known:
            weakref.finalize(crew, self._crews.pop, key, None)

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until every kickoff seen so far is closed and its session stored (tests, scripts).

        CrewAI's `kickoff()` may return before its completion handlers ran, so call
        `crewai_event_bus.flush()` first. Returns False on timeout.
        """
        return self.assembler.wait_idle(timeout)

    # -- the handler ------------------------------------------------------------------------------
    def _on_chunk(self, source: Any, event: Any) -> None:
        # Runs inline in the streaming thread, once per chunk: one dict lookup after the first.
        with guard("crewai stream chunk"):
            call_id = getattr(event, "call_id", None)
            if call_id is None or call_id in self._streamed:
                return
            if len(self._streamed) >= MAX_STREAMED:
                self._streamed.pop(next(iter(self._streamed)), None)
            self._streamed[call_id] = None

    def _handle(self, source: Any, event: Any) -> None:
        with guard("crewai event"):
            kind = self._kinds.get(type(event))
            if kind is None:
                return
            built = self._event(kind, source, event)
            if built is not None:
                self.assembler.feed(built)
            elif kind in (kinds.LLM_COMPLETED, kinds.LLM_FAILED):
                self._outside_kickoffs(kind, source, event)

    def _outside_kickoffs(self, kind: str, source: Any, event: Any) -> None:
        # A call outside every kickoff (a bare `llm.call()`) is billed to the keito session open
        # in its caller's context, if any; without one there is nothing to bill it to.
        session = current_session()
        if session is None:
            return
        call = self._llm_event(kind, "", source, event, {})
        if kind == kinds.LLM_FAILED:
            session.record_error()
            if not call.streamed:
                return
        KickoffAssembler.record_call(call, session)

    def _event(self, kind: str, source: Any, event: Any) -> CrewEvent | None:
        roots = self._roots()
        lite = False  # an `Agent.kickoff`, whose start handlers CrewAI does not wait for
        if kind == kinds.KICKOFF_STARTED:
            key: str | None = event.event_id
        elif kind in kinds.ENDING:
            key = event.started_event_id or getattr(source, "_kickoff_event_id", None)
            lite = type(event).__name__.startswith("LiteAgent")
        else:
            key, root = roots[-1] if roots else (None, None)  # None: not in a kickoff (a bare `llm.call()`)
            lite = root == "lite_agent_execution_started"
        if key is None:
            return None
        # Any event may be the first one handled for its kickoff, so each carries what is needed
        # to open its run: the enclosing kickoff, and the keito session of the kickoff's caller
        # (the bus runs handlers in a copy of the emitter's context, so it is visible here).
        outer = next((root_id for root_id, _ in reversed(roots) if root_id != key), None)
        caller = current_session()
        base: dict[str, Any] = {
            "outer": outer,
            "session_id": self.session_id,
            "caller_session": caller.session_id if caller else None,
            "options": self.options,
            "at": event_time(event),
        }
        if kind == kinds.KICKOFF_STARTED:
            base.update(self._start_settings(source, event))
            return CrewEvent(kind, key, **base)
        if lite:  # the settings its start event would have given (a crew's start is always first)
            role = getattr(event, "agent_role", None) or getattr(source, "role", None)
            base["options"] = self._agent_options(role)
        if kind in kinds.ENDING:
            error = getattr(event, "error", None) if kind == kinds.KICKOFF_FAILED else None
            # CrewAI drains its bus right before `crew_kickoff_completed`; every other end may
            # overtake the handling of the kickoff's last events.
            settled = kind == kinds.KICKOFF_COMPLETED and type(event).__name__ == "CrewKickoffCompletedEvent"
            return CrewEvent(kind, key, error=_text(error), settled=settled, **base)
        if kind in kinds.LLM_KINDS:
            return self._llm_event(kind, key, source, event, base)
        if kind in kinds.TOOL_KINDS:
            return CrewEvent(kind, key, item_id=event.started_event_id or event.event_id, **base)
        return CrewEvent(kind, key, item_id=event.event_id, **base)

    def _llm_event(self, kind: str, key: str, source: Any, event: Any, base: dict[str, Any]) -> CrewEvent:
        call_id = getattr(event, "call_id", None)
        streamed = kind != kinds.LLM_STARTED and self._streamed.pop(call_id, 0) is None
        return CrewEvent(
            kind,
            key,
            item_id=call_id,
            model=getattr(event, "model", None),
            provider=_text(getattr(source, "provider", None)),
            usage=getattr(event, "usage", None) if kind == kinds.LLM_COMPLETED else None,
            agent=getattr(event, "agent_role", None),
            task=getattr(event, "task_name", None),
            streamed=streamed,
            **base,
        )

    def _start_settings(self, source: Any, event: Any) -> dict[str, Any]:
        """Session id and options of a kickoff: per-crew settings, then crew inputs, win."""
        options = dict(self.options)
        session_id = self.session_id
        crew_name = getattr(event, "crew_name", None)
        if crew_name is not None or hasattr(source, "tasks"):
            options.setdefault("agent_type", "crew")
            crew_settings = self._crews.get(str(getattr(source, "id", "")))
            if crew_settings:
                options.update(crew_settings)
                session_id = options.pop("session_id", session_id)
            inputs = getattr(event, "inputs", None)
            if isinstance(inputs, Mapping):
                for name, option in INPUT_KEYS.items():
                    if inputs.get(name) is not None:
                        options[option] = str(inputs[name])
                session_id = options.pop("session_id", session_id)
            if crew_name:
                options["metadata"] = {"crewai_crew": str(crew_name)[:60], **(options.get("metadata") or {})}
        else:
            options = self._agent_options(getattr(source, "role", None))
        return {"session_id": session_id, "options": options}

    def _agent_options(self, role: object) -> dict[str, Any]:
        options = dict(self.options)
        options.setdefault("agent_type", "agent")
        if role:
            options["metadata"] = {"crewai_agent": str(role)[:60], **(options.get("metadata") or {})}
        return options

    def _drain_then_settle(self, key: str) -> None:
        # Runs in a CrewAI handler: waiting for the bus there would wait for ourselves, so a
        # short-lived thread waits for every handler queued so far, then settles the kickoff.
        bus = self._bus
        if bus is None:
            self.assembler.settled(key)
            return
        timeout = self.assembler.settle_timeout

        def drain() -> None:
            with guard("crewai drain"):
                bus.flush(timeout=timeout)
            self.assembler.settled(key)

        threading.Thread(target=drain, name="keito-crewai-settle", daemon=True).start()

    def _roots(self) -> tuple[tuple[str, str], ...]:
        """The open kickoff scopes of this event's context, outermost first: (event_id, type)."""
        if self._scopes is None:
            return ()
        return tuple(scope for scope in self._scopes() if scope[1] in _ROOTS)


def _check(options: Mapping[str, Any]) -> None:
    # A misspelt option would otherwise fail inside a handler, where errors are only logged.
    check_options("keito_instrument.integrations.crewai", options, OPTIONS)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def event_time(event: Any) -> float | None:
    """When a CrewAI event happened, in wall-clock epoch seconds (None if it carries no time).

    CrewAI stamps every event with `timestamp` when it is created, in the emitting thread: an
    aware UTC datetime (`datetime.now(timezone.utc)`, crewai 1.x), converted exactly. A naive
    one, as `datetime.now()` gave in older releases, is local time, which is how Python reads it.
    """
    value = getattr(event, "timestamp", None)
    if not isinstance(value, datetime):
        return None
    try:
        seconds = value.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None
