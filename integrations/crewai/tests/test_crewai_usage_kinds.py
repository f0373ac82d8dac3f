"""CrewAI calls with Anthropic-shaped usage: cache writes by lifetime and web searches are billed."""

from __future__ import annotations

import types

from keito_instrument._spool import Spool
from keito_instrument.integrations.crewai import _events as ev
from keito_instrument.integrations.crewai._events import CrewEvent, KickoffAssembler, tokens_from_usage

# Anthropic's own usage block: input excludes the cache parts, and `cache_creation` splits the
# writes by lifetime (a dict, or the anthropic SDK's object when a provider passes it through).
RAW = {"input_tokens": 1_000, "output_tokens": 200, "cache_read_input_tokens": 4_000,
       "cache_creation_input_tokens": 3_000,
       "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 2_000},
       "server_tool_use": {"web_search_requests": 1}}


def test_anthropic_usage_keeps_its_lifetimes_and_searches() -> None:
    tokens = tokens_from_usage(RAW)
    assert tokens is not None
    assert (tokens.input_tokens, tokens.cache_read_tokens, tokens.cache_write_tokens) == (8_000, 4_000, 3_000)
    assert tokens.details == {"cache_write_1h_tokens": 2_000, "cache_write_5m_tokens": 1_000, "web_searches": 1}
    sdk_shaped = {**RAW, "cache_creation": types.SimpleNamespace(ephemeral_1h_input_tokens=2_000,
                                                                 ephemeral_5m_input_tokens=1_000)}
    sdk_tokens = tokens_from_usage(sdk_shaped)
    assert sdk_tokens is not None and sdk_tokens.details == tokens.details


def test_a_kickoff_bills_one_hour_writes_as_such(ledger: Spool) -> None:
    assembler = KickoffAssembler()
    for event in (
        CrewEvent(ev.KICKOFF_STARTED, "k"),
        CrewEvent(ev.LLM_STARTED, "k", item_id="c1"),
        CrewEvent(ev.LLM_COMPLETED, "k", item_id="c1", model="claude-sonnet-4-5", provider="anthropic", usage=RAW),
        CrewEvent(ev.KICKOFF_COMPLETED, "k"),
    ):
        assembler.feed(event)
    [meta] = [r["payload"]["metadata"] for r in ledger.records() if r["kind"] == "expense"]
    assert (meta["cache_write_tokens"], meta["cache_write_1h_tokens"], meta["cache_write_5m_tokens"]) == (
        3_000, 2_000, 1_000)
    assert meta["web_searches"] == 1
