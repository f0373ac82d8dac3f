"""Framework-free helpers of the LangChain adapter: usage extraction and run metadata.

Nothing here imports LangChain. The adapter hands in what it pulled out of an `LLMResult`
(`AIMessage.usage_metadata`, `response_metadata`, `llm_output`) and what it saw when the call
started (invocation params, run metadata). Usage is normalised to the package's convention:
`input_tokens` includes cache reads and writes, `output_tokens` includes reasoning.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from types import CodeType
from typing import Any

from keito_instrument._metadata import text
from keito_instrument._usage import raw_details

from .._kernel import CallUsage

# Keys of the per-run metadata that name a session, strongest first. LangGraph copies
# `configurable.thread_id` into the metadata of every run of a graph, so a thread shows up here.
SESSION_KEYS = ("keito_session_id", "session_id", "thread_id")
_MODEL_KEYS = ("model_name", "model", "model_id")
# Root-run metadata keys that override the handler's session settings for that run's session.
_OPTION_KEYS = {"keito_project_id": "project_id", "keito_task_id": "task_id", "keito_agent_id": "agent_id"}
# LangGraph raises these to steer a graph (interrupts, Command(goto=parent)); they are not failures.
_CONTROL_FLOW = frozenset({"GraphBubbleUp", "GraphInterrupt", "NodeInterrupt", "ParentCommand"})


def _int(value: object) -> int:
    if type(value) is int:  # the common case, first: bool is not int here
        return value if value > 0 else 0
    if isinstance(value, float) and math.isfinite(value):  # (NaN and infinities are no count)
        return max(int(value), 0)
    return 0


def _get(mapping: object, key: str) -> object:
    return mapping.get(key) if isinstance(mapping, Mapping) else None


def from_usage_metadata(usage: Mapping[str, Any]) -> CallUsage:
    """Read langchain-core's `UsageMetadata` (already in our convention).

    A cache hit of langchain-core's LLM cache is marked by `total_cost: 0`, which langchain-core adds
    to the cached message's usage; such a call is billed at zero.
    """
    get = usage.get
    result = CallUsage(_int(get("input_tokens")), _int(get("output_tokens")))
    extra: dict[str, int] = {}
    details = get("input_token_details")
    if details and isinstance(details, Mapping):
        result.cache_read_tokens = _int(details.get("cache_read"))
        result.cache_write_tokens = _int(details.get("cache_creation"))
        # langchain-anthropic splits writes by cache lifetime and then zeroes `cache_creation`;
        # `record_llm_call` takes the total from the two parts.
        extra["cache_write_5m_tokens"] = _int(details.get("ephemeral_5m_input_tokens"))
        extra["cache_write_1h_tokens"] = _int(details.get("ephemeral_1h_input_tokens"))
        extra["input_audio_tokens"] = _int(details.get("audio"))
    details = get("output_token_details")
    if details and isinstance(details, Mapping):
        result.reasoning_tokens = _int(details.get("reasoning"))
        extra["output_audio_tokens"] = _int(details.get("audio"))
    result.details = {k: v for k, v in extra.items() if v} or None
    if "total_cost" in usage and get("total_cost") == 0:
        result.cached = True
    return result


def add_raw_details(usage: CallUsage, *blocks: object) -> None:
    """Kinds only the provider's raw usage block carries (web searches, say): the first block
    that has any adds those `usage` lacks."""
    for block in blocks:
        found = raw_details(block)
        if found:
            usage.details = {**found, **(usage.details or {})}
            return


def from_llm_output(llm_output: Mapping[str, Any] | None) -> CallUsage | None:
    """Fallback: the provider's own usage block in `llm_output` (`token_usage` or `usage`).

    Understands OpenAI's shape (prompt/completion tokens with details) and Anthropic's (input
    excludes cache reads and writes, so they are added back). None when there is no usage block.
    """
    if not isinstance(llm_output, Mapping):
        return None
    block = llm_output.get("token_usage") or llm_output.get("usage")
    if not isinstance(block, Mapping) or not block:
        return None
    if "prompt_tokens" in block or "completion_tokens" in block:
        return CallUsage(
            input_tokens=_int(block.get("prompt_tokens")),
            output_tokens=_int(block.get("completion_tokens")),
            cache_read_tokens=_int(_get(block.get("prompt_tokens_details"), "cached_tokens")),
            reasoning_tokens=_int(_get(block.get("completion_tokens_details"), "reasoning_tokens")),
            details=raw_details(block) or None,
        )
    if "input_tokens" in block or "output_tokens" in block:
        cache_read = _int(block.get("cache_read_input_tokens"))
        cache_write = _int(block.get("cache_creation_input_tokens"))
        inp = _int(block.get("input_tokens"))
        if "cache_read_input_tokens" in block or "cache_creation_input_tokens" in block:
            inp += cache_read + cache_write  # Anthropic reports input without its cache parts
        return CallUsage(
            input_tokens=inp,
            output_tokens=_int(block.get("output_tokens")),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            details=raw_details(block) or None,
        )
    return None


def has_usage(generations: Sequence[Sequence[object]], llm_output: Mapping[str, Any] | None) -> bool:
    """Whether a (failed) call's result reports usage: on its first message or in `llm_output`."""
    if generations and generations[0] and getattr(getattr(generations[0][0], "message", None), "usage_metadata", None):
        return True
    return from_llm_output(llm_output) is not None


def model_name(*sources: object) -> str | None:
    """The first model name found in the given mappings (`model_name`, `model`, `model_id`)."""
    for source in sources:
        if source and (type(source) is dict or isinstance(source, Mapping)):
            for key in _MODEL_KEYS:
                value = source.get(key)  # type: ignore[attr-defined]
                if value and isinstance(value, str):
                    return value
    return None


def session_id_from(metadata: Mapping[str, Any] | None) -> str | None:
    """The session a root run names in its metadata, if any."""
    if not metadata or not isinstance(metadata, Mapping):
        return None
    for key in SESSION_KEYS:
        value = metadata.get(key)
        if value is not None and value != "":
            return value if type(value) is str else text(value)  # (an id with no text names nothing)
    return None


def replayed(message_id: object, run_id: str) -> bool:
    """True for a message served from LangChain's LLM cache, on versions without its `total_cost` mark.

    langchain-core names a message it generated after the run that produced it (`run-<id>`, or
    `lc_run--<id>` in later releases); a cached message keeps the id of the run that first produced
    it. Provider-assigned ids (e.g. `chatcmpl-...`) say nothing, so only LangChain's own are compared.
    """
    if type(message_id) is not str or not message_id.startswith(("lc_run-", "run-")):
        return False
    return run_id not in message_id


def with_overrides(settings: dict[str, Any], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Session settings, overridden by a root run's `keito_project_id` / `_task_id` / `_agent_id`."""
    if not metadata or not isinstance(metadata, Mapping):
        return settings
    extra = {option: metadata[key] for key, option in _OPTION_KEYS.items() if metadata.get(key)}
    return {**settings, **extra} if extra else settings


def stopped(error: BaseException) -> bool:
    """The consumer stopped the run (a stream closed early, a task cancelled): not a failure."""
    return isinstance(error, (GeneratorExit, asyncio.CancelledError))


def not_a_failure(error: BaseException) -> bool:
    """Stopped by its consumer, or LangGraph control flow (an interrupt, `Command(goto=...)`)."""
    return stopped(error) or any(cls.__name__ in _CONTROL_FLOW for cls in type(error).__mro__)


def marks_cache_hits(convert_cached: object) -> bool:
    """Whether langchain-core's cached-generation converter adds the `total_cost: 0` mark."""
    codes = [getattr(convert_cached, "__code__", None)]
    while codes:  # the function's own constants and those of its nested code (comprehensions, lambdas)
        code = codes.pop()
        if isinstance(code, CodeType):
            if "total_cost" in code.co_consts:
                return True
            codes.extend(c for c in code.co_consts if isinstance(c, CodeType))
    return False
