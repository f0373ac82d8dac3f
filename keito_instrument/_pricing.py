"""Token counts to USD, offline: user overrides first, then genai-prices' bundled snapshot.

We never start genai-prices' remote updater and never touch its process-global snapshot, so a
cost is reproducible from the installed version (recorded next to every cost as `pricing`).
An unknown model is priced `None`, never 0, and warned about once per model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ._usage import ModelUsage

_log = logging.getLogger("keito_instrument")

# Provider names seen in OTel `gen_ai.provider.name` / `gen_ai.system` and in frameworks that
# genai-prices does not know under that spelling.
PROVIDER_ALIASES: Mapping[str, str] = {
    "x_ai": "x-ai",
    "xai": "x-ai",
    "azure.ai.inference": "azure",
    "azure.ai.openai": "azure",
    "azure_openai": "azure",
    "gcp.gen_ai": "google",
    "gcp.vertex_ai": "google",
    "gcp.gemini": "google",
    "vertex_ai": "google",
    "vertexai": "google",
    "gemini": "google",
    "google_genai": "google",
    "google-genai": "google",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "amazon_bedrock": "aws",
    "fireworks_ai": "fireworks",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "chat-openai": "openai",
    "anthropic-chat": "anthropic",
}

_MILLION = Decimal(1_000_000)
_warned_lock = threading.Lock()
_warned: set[str] = set()


@dataclass(frozen=True)
class Cost:
    """A priced usage: `usd` is None when the model could not be priced."""

    usd: Decimal | None
    basis: str  # "genai-prices 0.2.3", "custom" or "unpriced"


_version: str | None = None


def pricing_version() -> str:
    """The pricing library and version used, e.g. 'genai-prices 0.2.3'."""
    global _version
    if _version is None:
        import genai_prices

        _version = f"genai-prices {genai_prices.__version__}"
    return _version


def _override_cost(usage: ModelUsage, prices: Mapping[str, float]) -> Decimal:
    def rate(key: str, default: str = "input") -> Decimal:
        return Decimal(str(prices.get(key, prices[default])))

    details = usage.details or {}
    one_hour = details.get("cache_write_1h_tokens", 0)
    audio_in, image_in = details.get("input_audio_tokens", 0), details.get("input_image_tokens", 0)
    audio_out = details.get("output_audio_tokens", 0)
    uncached = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens - audio_in - image_in)
    total = (
        uncached * rate("input")
        + usage.cache_read_tokens * rate("cache_read")
        + (usage.cache_write_tokens - one_hour) * rate("cache_write")
        + one_hour * rate("cache_write_1h", "cache_write" if "cache_write" in prices else "input")
        + audio_in * rate("input_audio")
        + image_in * rate("input_image")
        + (usage.output_tokens - audio_out) * rate("output")
        + audio_out * rate("output_audio", "output")
    )
    # `web_search` is USD per search; token prices are USD per million tokens.
    searches = details.get("web_searches", 0) * Decimal(str(prices.get("web_search", 0))) * _MILLION
    return (total + searches) / _MILLION


def genai_counts(usage: ModelUsage) -> dict[str, int]:
    """The usage in genai-prices' names (our detail kinds already use them)."""
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_reasoning_tokens": usage.reasoning_tokens,
    }
    if usage.details:
        counts.update(usage.details)
    return counts


def normalise_provider(provider: str | None) -> str | None:
    """Map a framework's provider name to the id genai-prices knows."""
    if not provider:
        return None
    key = provider.strip().lower()
    return PROVIDER_ALIASES.get(key, key)


def price(
    usage: ModelUsage,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
    timestamp: float | None = None,
) -> Cost:
    """Price one model's usage. Never raises for an unknown model: it returns `Cost(None, ...)`."""
    if usage.usage_missing:
        # Some calls reported no usage: whatever we compute would be too low, so it is unknown.
        return Cost(None, "usage missing")
    if usage.input_tokens == 0 and usage.output_tokens == 0 and not usage.details:
        return Cost(Decimal(0), "no tokens")
    model = usage.model
    override = (overrides or {}).get(model.lower())
    if override is not None:
        return Cost(_override_cost(usage, override), "custom")
    from . import _fastprice as _fast  # (cheap once loaded; genai-prices loads on first use)

    when = datetime.fromtimestamp(timestamp, tz=UTC) if timestamp else None
    provider = normalise_provider(usage.provider)
    attempts: list[str | None] = [provider] if provider else []
    if "/" in model:
        attempts.append("litellm")  # genai-prices splits 'openai/gpt-4o' itself in litellm mode
    attempts.append(None)
    for provider_id in attempts:
        try:
            total = _fast.total(usage, model, provider_id, when)
            if total is None:
                from genai_prices import Usage, calc_price

                # (built only here: its validation costs more than the fast path)
                gp_usage = Usage(**genai_counts(usage))
                total = calc_price(gp_usage, model, provider_id=provider_id, genai_request_timestamp=when).total_price
        except LookupError:
            continue
        return Cost(Decimal(total), pricing_version())
    with _warned_lock:
        first = model not in _warned
        _warned.add(model)
    if first:
        _log.warning(
            "keito-instrument: no price known for model %r (provider %r); its expense is sent in units "
            "(thousands of tokens) with cost_unknown=true. Add it with configure(price_overrides=...)",
            model,
            usage.provider,
        )
    return Cost(None, "unpriced")
