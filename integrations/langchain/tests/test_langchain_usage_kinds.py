"""Cache writes by lifetime, audio and web searches pass through the LangChain handler."""

from __future__ import annotations

from decimal import Decimal

import pytest
from _lc_fakes import UsageChatModel
from genai_prices import Usage, calc_price
from langchain_core.messages import AIMessage

from keito_instrument._spool import Spool
from keito_instrument.integrations.langchain import KeitoCallbackHandler
from keito_instrument.integrations.langchain._usage import from_usage_metadata


def anthropic_reply() -> AIMessage:
    """A reply shaped as langchain-anthropic builds it: the lifetimes split out and the generic
    `cache_creation` zeroed, the provider's raw usage (with its web searches) in response_metadata."""
    raw = {"input_tokens": 1_000, "output_tokens": 300, "cache_read_input_tokens": 20_000,
           "cache_creation_input_tokens": 9_000,
           "cache_creation": {"ephemeral_5m_input_tokens": 2_000, "ephemeral_1h_input_tokens": 7_000},
           "server_tool_use": {"web_search_requests": 2}}
    usage = {"input_tokens": 30_000, "output_tokens": 300, "total_tokens": 30_300,
             "input_token_details": {"cache_read": 20_000, "cache_creation": 0,
                                     "ephemeral_5m_input_tokens": 2_000, "ephemeral_1h_input_tokens": 7_000}}
    return AIMessage(content="ok", usage_metadata=usage,  # type: ignore[arg-type]
                     response_metadata={"model_name": "claude-sonnet-4-5", "usage": raw})


def test_usage_metadata_lifetimes_make_the_cache_write_total() -> None:
    got = from_usage_metadata(anthropic_reply().usage_metadata)  # type: ignore[arg-type]
    assert got.cache_write_tokens == 0  # as langchain-anthropic reports it ...
    assert got.details == {"cache_write_5m_tokens": 2_000, "cache_write_1h_tokens": 7_000}  # ... with the parts


def test_anthropic_lifetimes_and_searches_are_billed_through_the_handler(ledger: Spool) -> None:
    model = UsageChatModel(replies=[anthropic_reply()], provider="anthropic")
    model.invoke("hi", config={"callbacks": [KeitoCallbackHandler()]})
    [row] = ledger.sessions()
    [meta] = [r["payload"]["metadata"] for r in ledger.records() if r["kind"] == "expense"]
    assert (meta["cache_write_tokens"], meta["cache_write_1h_tokens"], meta["cache_write_5m_tokens"]) == (
        9_000, 7_000, 2_000)
    assert meta["web_searches"] == 2
    want = calc_price(Usage(input_tokens=30_000, output_tokens=300, cache_read_tokens=20_000,
                            cache_write_tokens=9_000, cache_write_1h_tokens=7_000, web_searches=2),
                      "claude-sonnet-4-5", provider_id="anthropic").total_price
    assert row["cost_usd"] == pytest.approx(float(Decimal(want)), abs=1e-6)


def test_openai_audio_tokens_pass_through(ledger: Spool) -> None:
    usage = {"input_tokens": 800, "output_tokens": 400, "total_tokens": 1_200,
             "input_token_details": {"audio": 500, "cache_read": 0},
             "output_token_details": {"audio": 300, "reasoning": 0}}
    reply = AIMessage(content="ok", usage_metadata=usage,  # type: ignore[arg-type]
                      response_metadata={"model_name": "gpt-4o-audio-preview"})
    UsageChatModel(replies=[reply]).invoke("hi", config={"callbacks": [KeitoCallbackHandler()]})
    [meta] = [r["payload"]["metadata"] for r in ledger.records() if r["kind"] == "expense"]
    assert (meta["input_audio_tokens"], meta["output_audio_tokens"]) == (500, 300)
