"""Reading the token counts out of the usage dict a CrewAI provider reports."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..._usage import raw_details
from .._kernel import CallUsage

Tokens = CallUsage  # (the kernel's one usage type; the name this adapter has always exported)


def _int(usage: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = usage.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)  # (the core clamps what no real call reports)
    return None


def _detail(usage: Mapping[str, Any], parent: str, name: str) -> int | None:
    details = usage.get(parent)
    if details is None:  # the common case, without the ABC check below
        return None
    if isinstance(details, Mapping):
        return _int(details, name)
    value = getattr(details, name, None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def tokens_from_usage(usage: Mapping[str, Any] | None) -> Tokens | None:
    """Map a CrewAI provider usage dict to keito's token buckets; None when it holds no counts.

    CrewAI's native providers report OpenAI-shaped keys (`prompt_tokens` including cached tokens,
    `completion_tokens` including reasoning; LiteLLM too), Gemini's (`prompt_token_count`,
    `candidates_token_count` without thoughts), already-normalised Anthropic ones, or Bedrock's
    Converse usage (`inputTokens` beside `cacheReadInputTokens`). Raw Anthropic and Bedrock
    input counts exclude cache reads and writes, so the cache parts are added back.
    """
    if not usage:
        return None
    cache_read = _int(usage, "cached_prompt_tokens", "cached_tokens", "cache_read_tokens")
    raw_cache_read = _int(usage, "cache_read_input_tokens", "cacheReadInputTokens")
    if cache_read is None:
        cache_read = raw_cache_read
    if cache_read is None:
        cache_read = _detail(usage, "prompt_tokens_details", "cached_tokens")
    cache_write = _int(usage, "cache_creation_tokens", "cache_write_tokens")
    raw_cache_write = _int(usage, "cache_creation_input_tokens", "cacheWriteInputTokens")
    if cache_write is None:
        cache_write = raw_cache_write
    reasoning = _int(usage, "reasoning_tokens", "thoughts_token_count")
    if reasoning is None:
        reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    prompt = _int(usage, "prompt_tokens", "prompt_token_count")
    if prompt is None:
        # Anthropic's `input_tokens` and Bedrock's `inputTokens` exclude cache reads and writes,
        # unless crewai already added them (it then reports `cached_prompt_tokens`).
        prompt = _int(usage, "input_tokens", "inputTokens")
        exclusive = (raw_cache_read is not None or raw_cache_write is not None) and (
            "cached_prompt_tokens" not in usage and "cache_creation_tokens" not in usage
        )
        if prompt is not None and exclusive:
            prompt += (raw_cache_read or 0) + (raw_cache_write or 0)
    completion = _int(usage, "completion_tokens", "output_tokens", "outputTokens")
    if completion is None:
        candidates = _int(usage, "candidates_token_count")
        if candidates is not None:
            completion = candidates + (reasoning or 0)  # Gemini counts thoughts apart from candidates
    if prompt is None and completion is None:
        return None
    return Tokens(
        input_tokens=prompt or 0,
        output_tokens=completion or 0,
        cache_read_tokens=cache_read or 0,
        cache_write_tokens=cache_write or 0,
        reasoning_tokens=reasoning or 0,
        details=dict(raw_details(usage)) or None,
    )
