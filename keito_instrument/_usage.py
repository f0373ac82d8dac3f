"""Token usage per model, in the one convention every input is normalised to.

`input_tokens` is the whole prompt, cache reads and writes included; `cache_read_tokens` and
`cache_write_tokens` are parts of it. `output_tokens` includes `reasoning_tokens`. This is the
convention of langchain-core's `usage_metadata`, the OTel GenAI conventions and genai-prices.
"""

from __future__ import annotations

import logging

_log = logging.getLogger("keito_instrument")
_warned: set[str] = set()

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


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

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens (cache and reasoning are already inside them)."""
        return self.input_tokens + self.output_tokens


def _count(name: str, value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer token count, got {value!r}")
    number: int = int(value)  # type: ignore[call-overload]
    if number < 0:
        _warn_once(f"negative:{name}", f"keito-instrument: negative {name} ({number}) counted as 0")
        return 0
    return number


def _warn_once(key: str, message: str) -> None:
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
) -> ModelUsage:
    """One model call as a `ModelUsage`, checked against the token convention.

    A prompt smaller than its own cache parts can only mean the caller passed the uncached count
    (Anthropic's convention), so the cache parts are added back; likewise for reasoning in output.
    A cached response (served from a local LLM cache) costs nothing: its tokens are not billed.
    """
    usage = ModelUsage(
        model=(model or "unknown").strip() or "unknown",
        provider=(provider or None),
        input_tokens=_count("input_tokens", input_tokens),
        output_tokens=_count("output_tokens", output_tokens),
        cache_read_tokens=_count("cache_read_tokens", cache_read_tokens),
        cache_write_tokens=_count("cache_write_tokens", cache_write_tokens),
        reasoning_tokens=_count("reasoning_tokens", reasoning_tokens),
        calls=1,
    )
    cache_parts = usage.cache_read_tokens + usage.cache_write_tokens
    if usage.input_tokens < cache_parts:
        _warn_once(
            "exclusive-input",
            "keito-instrument: input_tokens smaller than its cache parts; "
            "treating it as the uncached count and adding cache tokens back (input includes cache)",
        )
        usage.input_tokens += cache_parts
    if usage.output_tokens < usage.reasoning_tokens:
        _warn_once(
            "exclusive-output",
            "keito-instrument: output_tokens smaller than reasoning_tokens; "
            "adding reasoning back (output includes reasoning)",
        )
        usage.output_tokens += usage.reasoning_tokens
    if cached:
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            setattr(usage, name, 0)
        usage.cached_calls = 1
    if usage_missing:
        usage.usage_missing = 1
    return usage
