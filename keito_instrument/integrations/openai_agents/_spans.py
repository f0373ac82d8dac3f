"""Reading the Agents SDK's spans: what a span is, the model call it carries, its times.

Framework-free (duck-typed on the span data's `type`, which every SDK release since 0.0.x sets),
so the processor never imports a span class and these readers are tested with plain objects.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NamedTuple

from ..._provider_usage import usage_kwargs

MODEL_KINDS = frozenset({"response", "generation"})  # one model call each (Responses API; chat / LiteLLM)
TOOL_KINDS = frozenset({"function", "handoff"})  # a handoff is the model's call of a transfer tool


class ModelCall(NamedTuple):
    """What a finished model-call span says about its call."""

    model: str | None
    provider: str
    usage: Any  # the provider's usage block (the SDK's Response.usage or its span dict), or None
    response_id: str | None


def kind(span: Any) -> str:
    """The span's kind ('agent', 'response', 'generation', 'function', 'handoff', ...)."""
    found = getattr(span.span_data, "type", None)
    return found if isinstance(found, str) else ""


def model_call(span: Any) -> ModelCall:
    """The model call of a 'response' or 'generation' span (call only for those kinds).

    A response span holds the SDK's `Response` (its usage, id and model) unless the run was told
    not to trace sensitive data; it then still carries the usage (as a dict of the same shape,
    since openai-agents 0.4), but no model and no response id.
    """
    data = span.span_data
    if data.type == "response":
        response = getattr(data, "response", None)
        usage = getattr(response, "usage", None) if response is not None else None
        if usage is None:
            usage = getattr(data, "usage", None)
        model = getattr(response, "model", None)
        response_id = getattr(response, "id", None)
        return ModelCall(_text(model), "openai", _counted(usage), _text(response_id))
    # A generation span (chat completions, LiteLLM): its usage is in the Responses shape too.
    model = _text(getattr(data, "model", None))
    provider = model.split("/", 1)[0] if model and "/" in model else "openai"
    return ModelCall(model, provider, _counted(getattr(data, "usage", None)), None)


def _counted(usage: Any) -> Any:
    # The SDK writes a usage of zeros for a response that reported none: that is no usage (the
    # call is then counted as usage_missing, never as a free call).
    return usage if usage is not None and usage_kwargs(usage, "openai-responses") else None


def failed(span: Any) -> bool:
    """Whether the SDK marked the span as failed."""
    return getattr(span, "error", None) is not None


def epoch(iso: Any) -> float | None:
    """A span's ISO 8601 timestamp in epoch seconds (None when missing or unreadable)."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:  # the SDK writes UTC with its offset; a bare time is taken as local
        moment = moment.astimezone()
    seconds = moment.timestamp()
    return seconds if math.isfinite(seconds) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
