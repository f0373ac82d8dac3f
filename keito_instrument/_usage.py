"""Token usage per model, in the one convention every input is normalised to.

`input_tokens` is the whole prompt, cache reads and writes included; `cache_read_tokens` and
`cache_write_tokens` are parts of it. `output_tokens` includes `reasoning_tokens`. This is the
convention of langchain-core's `usage_metadata`, the OTel GenAI conventions and genai-prices.

Rarer kinds ride along in `details`, under genai-prices' own names: `cache_write_1h_tokens` is the
part of `cache_write_tokens` written to the 1-hour cache (the rest is the 5-minute kind),
`input_audio_tokens` and `input_image_tokens` are parts of `input_tokens`, `output_audio_tokens` a
part of `output_tokens`, and `web_searches` counts searches (not tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ._metadata import describe, text

_log = logging.getLogger("keito_instrument")
_warned: set[str] = set()

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
# The kinds kept in `ModelUsage.details` (a key is present only when its count is not zero).
DETAIL_FIELDS = (
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "input_image_tokens",
    "output_audio_tokens",
    "web_searches",
)
_INPUT_PARTS = ("input_audio_tokens", "input_image_tokens")


class ModelUsage:
    """Totals for one (model, provider) pair inside a session.

    A plain slotted class rather than a dataclass: `dataclasses` imports `inspect`, which would
    triple the cost of `import keito_instrument`.
    """

    __slots__ = (
        "cache_read_tokens",
        "cache_write_tokens",
        "cached_calls",
        "calls",
        "details",
        "input_tokens",
        "model",
        "output_tokens",
        "provider",
        "reasoning_tokens",
        "usage_missing",
    )

    def __init__(
        self,
        model: str,
        provider: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        calls: int = 0,
        cached_calls: int = 0,
        usage_missing: int = 0,
        details: dict[str, int] | None = None,
    ) -> None:
        self.model = model
        self.provider = provider
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read_tokens = cache_read_tokens
        self.cache_write_tokens = cache_write_tokens
        self.reasoning_tokens = reasoning_tokens
        self.calls = calls
        self.cached_calls = cached_calls
        self.usage_missing = usage_missing
        self.details = details or None

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ModelUsage({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelUsage):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def add(self, other: ModelUsage) -> None:
        """Add another usage of the same model into this one."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.calls += other.calls
        self.cached_calls += other.cached_calls
        self.usage_missing += other.usage_missing
        if other.details:
            self.details = add_details(self.details, other.details)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens (cache and reasoning are already inside them)."""
        return self.input_tokens + self.output_tokens


def add_details(into: dict[str, int] | None, more: dict[str, int]) -> dict[str, int]:
    """`into` plus `more`, kind by kind (a new dict when `into` is None)."""
    out = dict(into) if into else {}
    for name, count in more.items():
        out[name] = out.get(name, 0) + count
    return out


# No real call reports more; a bigger count is a bug upstream, and SQLite stops at 2**63.
MAX_COUNT = 10**12


def _count(name: str, value: object) -> int:
    """A token count as a non-negative int. A value that is not a count is dropped (counted as
    0) with a warning naming it, so one bad field never loses the call or its session."""
    if type(value) is int and 0 <= value <= MAX_COUNT:  # the common case first
        return value
    if value is None:
        return 0
    try:
        if isinstance(value, bool | str | bytes):
            raise TypeError
        number: int = int(value)  # type: ignore[call-overload]  # (floats, numpy ints; NaN/inf raise)
    except Exception:  # (TypeError, ValueError, OverflowError; or a broken __int__ of its own)
        warn_once(f"bad:{name}", f"keito-instrument: {name}={describe(value)} is not a token count; counted as 0")
        return 0
    if number < 0:
        warn_once(f"negative:{name}", f"keito-instrument: negative {name} ({number}) counted as 0")
        return 0
    if number > MAX_COUNT:
        warn_once(f"huge:{name}", f"keito-instrument: {name}={number} is beyond any real call; counted as {MAX_COUNT}")
        return MAX_COUNT
    return number


def warn_once(key: str, message: str) -> None:
    """Log a warning once per `key` for the life of the process (a bad value seen on every call
    warns once, not per call)."""
    if key not in _warned:
        _warned.add(key)
        _log.warning(message)


def normalised_call(
    model: str,
    provider: str | None,
    *,
    input_tokens: object = 0,
    output_tokens: object = 0,
    cache_read_tokens: object = 0,
    cache_write_tokens: object = 0,
    reasoning_tokens: object = 0,
    cached: bool = False,
    usage_missing: bool = False,
    details: Mapping[str, object] | None = None,
) -> ModelUsage:
    """One model call as a `ModelUsage`, checked against the token convention.

    A prompt smaller than its own cache parts can only mean the caller passed the uncached count
    (Anthropic's convention), so the cache parts are added back; likewise for reasoning in output.
    A cached response (served from a local LLM cache) costs nothing: its tokens are not billed.
    `details` holds the rarer kinds (`DETAIL_FIELDS`); `cache_write_5m_tokens` is accepted there
    too and only raises `cache_write_tokens` to the sum of both lifetimes.
    """
    usage = ModelUsage(  # (positional: this runs on the host's thread for every call)
        (model.strip() or "unknown") if type(model) is str else _name(model),
        (provider.strip() or None) if type(provider) is str else None if provider is None else _name(provider),
        _count("input_tokens", input_tokens),
        _count("output_tokens", output_tokens),
        _count("cache_read_tokens", cache_read_tokens),
        _count("cache_write_tokens", cache_write_tokens),
        _count("reasoning_tokens", reasoning_tokens),
        1,
    )
    if details:
        _apply_details(usage, details)
    if (details or usage.input_tokens < usage.cache_read_tokens + usage.cache_write_tokens
            or usage.output_tokens < usage.reasoning_tokens):
        _check_parts(usage)
    if cached:
        for name in TOKEN_FIELDS:
            setattr(usage, name, 0)
        usage.details = None
        usage.cached_calls = 1
    if usage_missing:
        usage.usage_missing = 1
    return usage


def _name(value: object) -> str:
    if not isinstance(value, str):
        warn_once(f"name:{type(value).__name__}", f"keito-instrument: model name {describe(value)} is not a string")
        value = text(value) or ""
    return value.strip() or "unknown"


def _apply_details(usage: ModelUsage, details: Mapping[str, object]) -> None:
    kept: dict[str, int] = {}
    five_minutes = 0
    for name, value in details.items():
        if name == "cache_write_5m_tokens":
            five_minutes = _count(name, value)
        elif name in DETAIL_FIELDS:
            count = _count(name, value)
            if count:
                kept[name] = count
        else:
            warn_once(f"kind:{name}", f"keito-instrument: unknown usage kind {describe(name)} dropped")
    writes = five_minutes + kept.get("cache_write_1h_tokens", 0)
    # Given by lifetime only: the total is their sum.
    usage.cache_write_tokens = max(usage.cache_write_tokens, writes)
    usage.details = kept or None


def _check_parts(usage: ModelUsage) -> None:
    details = usage.details or {}
    cache_parts = usage.cache_read_tokens + usage.cache_write_tokens
    if usage.input_tokens < cache_parts:
        warn_once(
            "exclusive-input",
            "keito-instrument: input_tokens smaller than its cache parts; "
            "treating it as the uncached count and adding cache tokens back (input includes cache)",
        )
        usage.input_tokens += cache_parts
    media = sum(details.get(name, 0) for name in _INPUT_PARTS)
    if usage.input_tokens < media:
        warn_once("media-input", "keito-instrument: input_tokens smaller than its audio and image parts")
        usage.input_tokens = media
    if usage.output_tokens < usage.reasoning_tokens + details.get("output_audio_tokens", 0):
        warn_once(
            "exclusive-output",
            "keito-instrument: output_tokens smaller than reasoning_tokens; "
            "adding reasoning back (output includes reasoning)",
        )
        usage.output_tokens = max(usage.output_tokens + usage.reasoning_tokens, details.get("output_audio_tokens", 0))


def _n(block: object, *path: str) -> int:
    for key in path:  # (a dict, or the provider SDK's own objects, such as anthropic's CacheCreation)
        block = block.get(key) if isinstance(block, Mapping) else getattr(block, key, None)
    return block if type(block) is int and block > 0 else 0


def raw_details(block: object) -> dict[str, int]:
    """The detail kinds of a provider's own usage block, as OpenAI and Anthropic report them.

    Anthropic: `cache_creation.ephemeral_1h_input_tokens` / `ephemeral_5m_input_tokens`, and
    `server_tool_use.web_search_requests`. OpenAI (chat and responses): the `audio_tokens` of
    `prompt_tokens_details` / `input_tokens_details` and of the completion or output details.
    Framework-free and cheap (plain dict lookups): adapters call it on the host's thread.
    """
    if block is None:
        return {}
    found = {
        "cache_write_1h_tokens": _n(block, "cache_creation", "ephemeral_1h_input_tokens"),
        "cache_write_5m_tokens": _n(block, "cache_creation", "ephemeral_5m_input_tokens"),
        "web_searches": _n(block, "server_tool_use", "web_search_requests"),
        "input_audio_tokens": _n(block, "prompt_tokens_details", "audio_tokens")
        or _n(block, "input_tokens_details", "audio_tokens"),
        "output_audio_tokens": _n(block, "completion_tokens_details", "audio_tokens")
        or _n(block, "output_tokens_details", "audio_tokens"),
    }
    return {name: count for name, count in found.items() if count}
