"""OpenAI Agents SDK: every agent run (one SDK trace) becomes a billed Keito session.

    from keito_instrument.integrations import openai_agents as keito_agents

    keito_agents.instrument(project_id="p-1")        # once; `keito.instrument()` does it too
    result = await Runner.run(agent, "question")       # one session: time entry + LLM expense

`instrument()` adds a tracing processor beside the SDK's own exporter (which keeps sending traces
to OpenAI), or with `replace_exporter=True` instead of it. One keito session per trace
(`Runner.run`, `run_sync`, `run_streamed`, or your `with trace(...)` around several runs): named
by the trace's `group_id` when it has one (a conversation: its traces share one session, ended
by `idle_timeout`), the enclosing `@track_agent` / `keito.session()` when there is one, else the
trace's own id. Tokens come from the SDK's own usage on its response and generation spans (cache
reads and reasoning included); function calls and handoffs are tool calls; failed spans are errors.
Time is billed from the trace's first span's start to its last span's end, by the spans' own
timestamps. With the OpenAI client integration on as well, each model call is billed once, here.

The SDK's tracing must be on: with `OPENAI_AGENTS_DISABLE_TRACING=1` or
`RunConfig(tracing_disabled=True)` it calls no processor, and nothing is billed through this path.
"""

from __future__ import annotations

from typing import Any

from .._kernel import Switch, check_options, require_version

__all__ = ["MIN_VERSION", "SESSION_SETTINGS", "instrument", "is_instrumented", "uninstrument"]

MIN_VERSION = (0, 2)  # the oldest openai-agents tested (integrations/openai_agents/constraints-min.txt)
SESSION_SETTINGS = frozenset(
    {"project_id", "task_id", "expense_category_id", "agent_id", "agent_type", "billable", "notes", "metadata",
     "idle_timeout"}
)
_BOUNDS = frozenset({"max_traces", "max_spans", "max_trace_age"})


class _Installed:
    """What `instrument()` changed: our processor, and the processors it replaced (if it did)."""

    def __init__(self, processor: Any, replaced: tuple[Any, ...] | None) -> None:
        self.processor, self.replaced = processor, replaced


def _install(replace_exporter: bool, options: dict[str, Any]) -> _Installed:
    require_version("OpenAI Agents SDK", "openai-agents", MIN_VERSION, "openai-agents")
    import agents

    from ._processor import KeitoTracingProcessor

    processor = KeitoTracingProcessor(**options)
    replaced = None
    if replace_exporter:
        replaced = _registered() or ()
        agents.set_trace_processors([processor])
    else:
        agents.add_trace_processor(processor)
    return _Installed(processor, replaced)


def _update(installed: _Installed, replace_exporter: bool, options: dict[str, Any]) -> None:
    """New settings for the installed processor (the bounds stay those it was built with)."""
    settings = {k: v for k, v in options.items() if k not in _BOUNDS}
    if settings:
        installed.processor.set_options(**settings)
    if replace_exporter and installed.replaced is None:  # on already, alongside the exporter
        import agents

        installed.replaced = tuple(p for p in _registered() or () if p is not installed.processor)
        agents.set_trace_processors([installed.processor])


def _remove(installed: _Installed) -> None:
    import agents

    processor = installed.processor
    processor.active = False  # (a custom trace provider may not let us take it out)
    current = _registered()
    if current is not None:
        kept = [p for p in current if p is not processor]
        agents.set_trace_processors([*(installed.replaced or ()), *kept])
    processor.close_all()


def _registered() -> tuple[Any, ...] | None:
    """The processors on the SDK's default trace provider (None: a provider we cannot read)."""
    from agents.tracing import get_trace_provider

    multi = getattr(get_trace_provider(), "_multi_processor", None)
    found = getattr(multi, "_processors", None)
    return tuple(found) if isinstance(found, tuple | list) else None


_switch = Switch(_install, _remove, update=_update)


def instrument(replace_exporter: bool = False, **options: Any) -> Any:
    """Bill every Agents SDK trace in this process; returns the (single) tracing processor.

    Calling it again with settings replaces the session settings; without any (as
    `keito.instrument()` does) it keeps them.

    Args:
        replace_exporter: Replace the SDK's trace processors (its exporter to OpenAI's traces
            dashboard included) with ours, instead of adding ours beside them.
        **options: Session settings for every session: project_id, task_id, agent_id,
            agent_type, billable, notes, metadata, expense_category_id, idle_timeout (for
            group_id conversations); and the bounds max_traces, max_spans, max_trace_age.

    Raises:
        ImportError: openai-agents is missing or older than supported (the message names the
            pip extra).
        TypeError: an unknown option.
    """
    check_options("openai_agents.instrument()", options, SESSION_SETTINGS | _BOUNDS)
    installed: _Installed = _switch.on(replace_exporter, options)
    return installed.processor


def uninstrument() -> None:
    """Take the processor out (restoring the processors it replaced); open traces are billed."""
    _switch.off()


def is_instrumented() -> bool:
    """Whether `instrument()` is in effect."""
    return _switch.is_on
