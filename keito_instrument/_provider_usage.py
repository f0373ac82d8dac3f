"""A provider's own usage block -> the keyword arguments of `record_llm_call`.

One reader for every shape adapters meet: OpenAI chat completions (`prompt_tokens`, details),
OpenAI responses (`input_tokens`, `input_tokens_details`), Anthropic (`input_tokens` without its
cache parts, writes split by lifetime), Gemini / Vertex (`promptTokenCount` or the SDK's
`prompt_token_count`, thoughts apart from candidates) and Bedrock Converse (`inputTokens` without
its cache parts, writes by TTL in `cacheDetails`). The block may be a dict (the JSON) or the
provider SDK's own object (attributes). Everything comes out in the core's convention: input is
the whole prompt, output includes reasoning, rarer kinds under genai-prices' names.

Plain lookups only: adapters call this on the host's thread, once per model call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FLAVORS = ("openai-chat", "openai-responses", "anthropic", "google", "bedrock")


def _get(block: Any, key: str) -> Any:
    if isinstance(block, Mapping):
        return block.get(key)
    return getattr(block, key, None)


def _n(block: Any, *path: str) -> int:
    for key in path:
        if block is None:
            return 0
        block = _get(block, key)
    return block if type(block) is int and block > 0 else 0


def _has(block: Any, *keys: str) -> bool:
    return any(_get(block, key) is not None for key in keys)


def flavor_of(block: Any) -> str | None:
    """Which provider shape a usage block has, by its keys (None: no token counts at all)."""
    if _has(block, "prompt_tokens", "completion_tokens"):
        return "openai-chat"
    if _has(block, "promptTokenCount", "prompt_token_count", "candidatesTokenCount", "candidates_token_count"):
        return "google"
    if _has(block, "inputTokens", "outputTokens"):
        return "bedrock"
    if _has(block, "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation", "server_tool_use"):
        return "anthropic"
    if _has(block, "input_tokens", "output_tokens"):
        return "openai-responses"  # (Anthropic without cache fields reads the same)
    return None


def usage_kwargs(block: Any, flavor: str | None = None) -> dict[str, int] | None:
    """`record_llm_call` keyword arguments for one call's usage block; None when it holds no
    token counts (the adapter then records the call with `usage_missing=True`)."""
    if block is None:
        return None
    flavor = flavor or flavor_of(block)
    reader = _READERS.get(flavor or "")
    if reader is None:
        return None
    return {name: count for name, count in reader(block).items() if count}


def _openai_chat(u: Any) -> dict[str, int]:
    return {
        "input_tokens": _n(u, "prompt_tokens"),
        "output_tokens": _n(u, "completion_tokens"),
        "cache_read_tokens": _n(u, "prompt_tokens_details", "cached_tokens"),
        "cache_write_tokens": _n(u, "prompt_tokens_details", "cache_write_tokens"),
        "reasoning_tokens": _n(u, "completion_tokens_details", "reasoning_tokens"),
        "input_audio_tokens": _n(u, "prompt_tokens_details", "audio_tokens"),
        "output_audio_tokens": _n(u, "completion_tokens_details", "audio_tokens"),
    }


def _openai_responses(u: Any) -> dict[str, int]:
    return {
        "input_tokens": _n(u, "input_tokens"),
        "output_tokens": _n(u, "output_tokens"),
        "cache_read_tokens": _n(u, "input_tokens_details", "cached_tokens"),
        "cache_write_tokens": _n(u, "input_tokens_details", "cache_write_tokens"),
        "reasoning_tokens": _n(u, "output_tokens_details", "reasoning_tokens"),
    }


def _anthropic(u: Any) -> dict[str, int]:
    read, write = _n(u, "cache_read_input_tokens"), _n(u, "cache_creation_input_tokens")
    five = _n(u, "cache_creation", "ephemeral_5m_input_tokens")
    hour = _n(u, "cache_creation", "ephemeral_1h_input_tokens")
    write = max(write, five + hour)
    return {
        "input_tokens": _n(u, "input_tokens") + read + write,  # Anthropic's input excludes its cache parts
        "output_tokens": _n(u, "output_tokens"),
        "cache_read_tokens": read,
        "cache_write_tokens": write,
        "cache_write_1h_tokens": hour,
        "reasoning_tokens": _n(u, "output_tokens_details", "thinking_tokens"),
        "web_searches": _n(u, "server_tool_use", "web_search_requests"),
    }


def _google(u: Any) -> dict[str, int]:
    def count(camel: str, snake: str) -> int:
        return _n(u, camel) or _n(u, snake)

    thoughts = count("thoughtsTokenCount", "thoughts_token_count")
    return {
        # The prompt count includes cached content; a tool-use prompt is billed as input too.
        "input_tokens": count("promptTokenCount", "prompt_token_count")
        + count("toolUsePromptTokenCount", "tool_use_prompt_token_count"),
        "output_tokens": count("candidatesTokenCount", "candidates_token_count") + thoughts,
        "cache_read_tokens": count("cachedContentTokenCount", "cached_content_token_count"),
        "reasoning_tokens": thoughts,
        "input_audio_tokens": _modality(u, "AUDIO"),
        "input_image_tokens": _modality(u, "IMAGE"),
    }


def _modality(u: Any, modality: str) -> int:
    details = _get(u, "promptTokensDetails") or _get(u, "prompt_tokens_details") or ()
    total = 0
    for item in details if isinstance(details, list | tuple) else ():
        kind = _get(item, "modality")
        if str(getattr(kind, "value", kind)).upper() == modality:
            total += _n(item, "tokenCount") or _n(item, "token_count")
    return total


def _bedrock(u: Any) -> dict[str, int]:
    read, write = _n(u, "cacheReadInputTokens"), _n(u, "cacheWriteInputTokens")
    hour = 0
    details = _get(u, "cacheDetails") or ()
    for item in details if isinstance(details, list | tuple) else ():
        if _get(item, "ttl") == "1h":
            hour += _n(item, "inputTokens")
    return {
        "input_tokens": _n(u, "inputTokens") + read + write,  # Converse's input excludes its cache parts
        "output_tokens": _n(u, "outputTokens"),
        "cache_read_tokens": read,
        "cache_write_tokens": write,
        "cache_write_1h_tokens": hour,
    }


_READERS = {
    "openai-chat": _openai_chat,
    "openai-responses": _openai_responses,
    "anthropic": _anthropic,
    "google": _google,
    "bedrock": _bedrock,
}
