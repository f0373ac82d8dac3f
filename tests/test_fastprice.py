"""The fast per-call price is genai-prices' own answer, for every model it knows."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import Usage, calc_price, data_snapshot

from keito_instrument import _fastprice
from keito_instrument._pricing import price
from keito_instrument._usage import ModelUsage


def test_every_model_prices_exactly_as_genai_prices_does() -> None:
    rng = random.Random(7)
    compared = linear = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            prompt = rng.randint(0, 400_000)  # past the 200k tier of the models that have one
            read = rng.randint(0, prompt // 2)
            write = rng.randint(0, (prompt - read) // 3)
            out = rng.randint(0, 30_000)
            reasoning = rng.randint(0, out)
            when = datetime.fromtimestamp(time.time() - rng.randint(0, 500 * 86_400), tz=UTC)
            try:
                expected = calc_price(
                    Usage(input_tokens=prompt, output_tokens=out, cache_read_tokens=read,
                          cache_write_tokens=write, output_reasoning_tokens=reasoning),
                    model.id, provider_id=provider.id, genai_request_timestamp=when,
                ).total_price
            except Exception:  # a usage genai-prices itself will not price
                continue
            usage = ModelUsage(model.id, provider.id, prompt, out, read, write, reasoning, 1)
            for _ in range(2):  # the first call is checked against genai-prices; the second is fast
                got = _fastprice.total(usage, model.id, provider.id, when)
                if got is not None:
                    assert Decimal(got) == Decimal(expected), (provider.id, model.id)
                    linear += 1
            compared += 1
    assert compared > 500 and linear > compared  # most prices took the fast path, and agreed


def test_a_tiered_price_is_left_to_genai_prices() -> None:
    long_prompt = ModelUsage("claude-sonnet-4-5", "anthropic", 300_000, 1_000, 0, 0, 0, 1)
    assert _fastprice.total(long_prompt, "claude-sonnet-4-5", "anthropic", None) is None
    cost = price(long_prompt, {}, time.time()).usd
    assert cost is not None and cost > 0
