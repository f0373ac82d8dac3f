"""Model-call spans with Anthropic-shaped usage: cache writes by lifetime, audio and searches billed."""

from __future__ import annotations

from decimal import Decimal

import pytest
from _otel_fakes import make_otel
from genai_prices import Usage, calc_price

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations.otel import _attrs as attrs

SPAN = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "anthropic",
    "gen_ai.request.model": "claude-sonnet-4-5",
    "gen_ai.usage.input_tokens": 12_000,
    "gen_ai.usage.output_tokens": 400,
    "gen_ai.usage.cache_creation.input_tokens": 5_000,
    "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 4_000,
    "gen_ai.usage.cache_creation.ephemeral_5m_input_tokens": 1_000,
    "gen_ai.usage.details.web_search_requests": 2,
}


def test_span_attributes_give_the_detail_kinds() -> None:
    kwargs = attrs.call_kwargs(SPAN, 7)
    assert kwargs["cache_write_tokens"] == 5_000
    assert (kwargs["cache_write_1h_tokens"], kwargs["cache_write_5m_tokens"], kwargs["web_searches"]) == (
        4_000, 1_000, 2)
    audio = attrs.call_kwargs({"llm.token_count.prompt": 50, "llm.token_count.completion": 9,
                               "llm.token_count.prompt_details.audio": 30,
                               "llm.token_count.completion_details.audio": 6}, 8)
    assert (audio["input_audio_tokens"], audio["output_audio_tokens"]) == (30, 6)
    assert "web_searches" not in attrs.call_kwargs({"gen_ai.usage.input_tokens": 3}, 9)


def test_a_trace_bills_one_hour_writes_and_searches(ledger: Spool) -> None:
    otel = make_otel()
    with otel.tracer.start_as_current_span("agent run"), otel.tracer.start_as_current_span("chat") as span:
        span.set_attributes(SPAN)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    [meta] = [r["payload"]["metadata"] for r in ledger.records() if r["kind"] == "expense"]
    assert (meta["cache_write_1h_tokens"], meta["cache_write_5m_tokens"], meta["web_searches"]) == (4_000, 1_000, 2)
    want = calc_price(Usage(input_tokens=12_000, output_tokens=400, cache_write_tokens=5_000,
                            cache_write_1h_tokens=4_000, web_searches=2),
                      "claude-sonnet-4-5", provider_id="anthropic").total_price
    assert row["cost_usd"] == pytest.approx(float(Decimal(want)), abs=1e-6)
