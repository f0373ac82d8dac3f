"""Each LLM call is priced on its own, at its own time: a session's cost is the sum of its calls'."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

import keito_instrument as keito
from keito_instrument._spool import Spool


def priced_alone(model: str, provider: str, calls: int, **usage: int) -> Decimal:
    when = datetime.now(tz=UTC)
    one = calc_price(Usage(**usage), model, provider_id=provider, genai_request_timestamp=when).total_price
    return Decimal(one) * calls


@pytest.mark.parametrize(
    ("model", "provider", "calls", "prompt", "cached"),
    [("claude-sonnet-4-5", "anthropic", 20, 20_000, 0),  # 400k in all: past the 200k tier as one request
     ("gemini-2.5-pro", "google", 10, 30_000, 0),
     ("gemini-2.5-pro", "google", 10, 30_000, 20_000)],
)
def test_a_long_tool_loop_on_a_tiered_model_bills_the_sum_of_its_calls(
    ledger: Spool, model: str, provider: str, calls: int, prompt: int, cached: int
) -> None:
    with keito.session(session_id=f"loop-{model}-{cached}"):
        for _ in range(calls):
            keito.record_llm_call(model, provider, input_tokens=prompt, output_tokens=500, cache_read_tokens=cached)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    expected = priced_alone(model, provider, calls, input_tokens=prompt, output_tokens=500, cache_read_tokens=cached)
    as_one = priced_alone(model, provider, 1, input_tokens=prompt * calls, output_tokens=500 * calls,
                          cache_read_tokens=cached * calls)
    assert row["cost_usd"] == pytest.approx(float(expected), abs=1e-6)
    assert as_one > expected * Decimal("1.2")  # what pricing the session as one request would have billed
    [expense] = [r["payload"] for r in ledger.records() if r["kind"] == "expense"]
    assert expense["total_cost"] == pytest.approx(float(expected), abs=1e-6)


def test_one_call_past_the_tier_is_billed_at_the_high_tier(ledger: Spool) -> None:
    with keito.session(session_id="big-prompt"):
        keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=250_000, output_tokens=1_000)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    high = priced_alone("claude-sonnet-4-5", "anthropic", 1, input_tokens=250_000, output_tokens=1_000)
    small = priced_alone("claude-sonnet-4-5", "anthropic", 1, input_tokens=100_000, output_tokens=400)
    low_rate = small * Decimal("2.5")
    assert row["cost_usd"] == pytest.approx(float(high), abs=1e-6)
    assert high > low_rate  # the whole prompt at the higher rate, not 2.5 small requests' worth
