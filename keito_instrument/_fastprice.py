"""genai-prices' own answer, without its cost per call.

`calc_price` takes about 90 microseconds a call (it resolves its unit registry each time), and the
billing engine prices every LLM call on its own. For a price that has no tiers, cost is linear in
the five token counts we track, so it is the dot product of those counts with five per-token
rates, and the rates are measured once per price (per model, provider and validity period) by
asking genai-prices itself for one million tokens of each kind. The first usage priced with each
price is also checked against genai-prices; a price with tiers, or one whose check differs, is
always left to genai-prices. `total()` returns None in that case.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ._usage import ModelUsage

_M = 1_000_000
_lock = threading.Lock()
# id(ModelPrice) -> (the ModelPrice, its rates or None, checked against genai-prices yet)
_rates: dict[int, tuple[Any, tuple[Decimal, ...] | None, bool]] = {}
_MAX = 4096


def _probe(model_price: Any) -> tuple[Decimal, ...] | None:
    from genai_prices import Usage
    from genai_prices.types import TieredPrices

    if any(isinstance(v, TieredPrices) for v in vars(model_price).values()):
        return None
    try:
        def cost(**counts: int) -> Decimal:
            return Decimal(model_price.calc_price(Usage(**counts))["total_price"])

        base_in, base_out = cost(input_tokens=_M), cost(output_tokens=_M)
        return (
            base_in / _M,
            (cost(input_tokens=_M, cache_read_tokens=_M) - base_in) / _M,
            (cost(input_tokens=_M, cache_write_tokens=_M) - base_in) / _M,
            base_out / _M,
            (cost(output_tokens=_M, output_reasoning_tokens=_M) - base_out) / _M,
        )
    except Exception:  # a price genai-prices will not compute from these units: use it directly
        return None


def _dot(rates: tuple[Decimal, ...], u: ModelUsage) -> Decimal:
    total = Decimal(0)  # (summed in this order, as sum() over the same terms would)
    for rate, count in zip(rates, (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens, u.output_tokens,
                                   u.reasoning_tokens), strict=True):
        if count:
            total += rate * count
    return total


_broken = False  # genai-prices' internals are not what this was written against: always ask it


def total(usage: ModelUsage, model: str, provider_id: str | None, when: datetime | None) -> Decimal | None:
    """The total price of one call as genai-prices computes it, or None: ask genai-prices.

    Raises LookupError when genai-prices does not know the model (as `calc_price` does).
    """
    global _broken
    if _broken or usage.details:  # (rarer kinds such as 1-hour cache writes: genai-prices prices them)
        return None
    try:
        return _total(usage, model, provider_id, when)
    except LookupError:
        raise
    except (AttributeError, TypeError, ImportError):  # another genai-prices version: its public API only
        _broken = True
        return None


_modules: tuple[Any, Any, Any] | None = None  # genai-prices' Usage and data_snapshot, and genai_counts


def _loaded() -> tuple[Any, Any, Any]:
    global _modules
    if _modules is None:  # (imported on first use: genai-prices takes a while to load)
        from genai_prices import Usage, data_snapshot

        from ._pricing import genai_counts

        _modules = (Usage, data_snapshot, genai_counts)
    return _modules


def _total(usage: ModelUsage, model: str, provider_id: str | None, when: datetime | None) -> Decimal | None:
    Usage, data_snapshot, genai_counts = _loaded()
    snapshot = data_snapshot.get_snapshot()
    if snapshot.from_auto_update:
        return None  # (never in keito-instrument: the updater is off) prices may change under us
    provider, info = snapshot.find_provider_model(model, None, provider_id, None)
    model_price = info.get_prices(when or datetime.now(tz=UTC), None)
    entry = _rates.get(id(model_price))
    if entry is None or entry[0] is not model_price:
        entry = (model_price, _probe(model_price), False)
        with _lock:
            if len(_rates) >= _MAX:
                _rates.clear()
            _rates[id(model_price)] = entry
    rates = entry[1]
    if rates is None:
        return None
    fast = _dot(rates, usage)
    if not entry[2]:
        exact = Decimal(info.calc_price(
            Usage(**genai_counts(usage)),
            provider, genai_request_timestamp=when, auto_update_timestamp=None, price_context=None,
        ).total_price)
        with _lock:
            _rates[id(model_price)] = (model_price, rates if exact == fast else None, True)
        return exact
    return fast
