"""Every usage kind genai-prices prices: cache writes by lifetime, audio, web searches; prices at
each call's own time; and bad counts dropped with a warning while the session is kept."""

from __future__ import annotations

import logging
import types
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price

import keito_instrument as keito
from keito_instrument import _session
from keito_instrument._spool import Spool
from keito_instrument._usage import MAX_COUNT, normalised_call, raw_details


def genai(model: str, provider: str, when: datetime | None = None, **counts: int) -> Decimal:
    when = when or datetime.now(tz=UTC)
    return Decimal(calc_price(Usage(**counts), model, provider_id=provider, genai_request_timestamp=when).total_price)


def expense(ledger: Spool) -> dict[str, Any]:
    [payload] = [r["payload"] for r in ledger.records() if r["kind"] == "expense"]
    return payload  # type: ignore[no-any-return]


def test_one_hour_cache_writes_are_priced_as_one_hour(ledger: Spool) -> None:
    with keito.session(session_id="cache-1h"):
        keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=50_000, output_tokens=800,
                              cache_write_tokens=40_000, cache_write_1h_tokens=30_000)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    want = genai("claude-sonnet-4-5", "anthropic", input_tokens=50_000, output_tokens=800,
                 cache_write_tokens=40_000, cache_write_1h_tokens=30_000)
    all_5m = genai("claude-sonnet-4-5", "anthropic", input_tokens=50_000, output_tokens=800, cache_write_tokens=40_000)
    assert row["cost_usd"] == pytest.approx(float(want), abs=1e-6)
    assert want > all_5m  # 1-hour writes cost 2x input, 5-minute ones 1.25x
    meta = expense(ledger)["metadata"]
    assert (meta["cache_write_tokens"], meta["cache_write_1h_tokens"], meta["cache_write_5m_tokens"]) == (
        40_000, 30_000, 10_000)


def test_cache_writes_given_only_by_lifetime_add_up_to_the_total(ledger: Spool) -> None:
    with keito.session(session_id="by-lifetime"):
        keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=20_000, output_tokens=100,
                              cache_write_5m_tokens=4_000, cache_write_1h_tokens=6_000)
        keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=20_000, output_tokens=100,
                              cache_read_tokens=10_000)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    want = genai("claude-sonnet-4-5", "anthropic", input_tokens=20_000, output_tokens=100,
                 cache_write_tokens=10_000, cache_write_1h_tokens=6_000) + genai(
        "claude-sonnet-4-5", "anthropic", input_tokens=20_000, output_tokens=100, cache_read_tokens=10_000)
    assert row["cost_usd"] == pytest.approx(float(want), abs=1e-6)
    [usage] = ledger.connect().execute("SELECT cache_write_tokens, details FROM usage").fetchall()
    assert usage[0] == 10_000 and '"cache_write_1h_tokens":6000' in usage[1]


def test_web_searches_and_audio_are_priced(ledger: Spool) -> None:
    with keito.session(session_id="search"):
        keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=3_000, output_tokens=200, web_searches=3)
        keito.record_llm_call("gpt-4o-audio-preview", "openai", input_tokens=2_000, output_tokens=500,
                              input_audio_tokens=1_500, output_audio_tokens=400)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    search = genai("claude-sonnet-4-5", "anthropic", input_tokens=3_000, output_tokens=200, web_searches=3)
    audio = genai("gpt-4o-audio-preview", "openai", input_tokens=2_000, output_tokens=500,
                  input_audio_tokens=1_500, output_audio_tokens=400)
    assert search > genai("claude-sonnet-4-5", "anthropic", input_tokens=3_000, output_tokens=200)
    assert row["cost_usd"] == pytest.approx(float(search + audio), abs=1e-6)
    meta = expense(ledger)["metadata"]
    assert meta["web_searches"] == 3 and meta["input_audio_tokens"] == 1_500 and meta["output_audio_tokens"] == 400


def test_a_session_spanning_a_price_change_prices_each_call_at_its_own_time(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From 2026-03-13 genai-prices drops claude-opus-4-6's long-prompt tier (prompts over 200k
    # tokens cost more before it); the journal's timestamps are the call times priced at.
    before, after = datetime(2026, 3, 12, 12, tzinfo=UTC), datetime(2026, 3, 14, 12, tzinfo=UTC)
    keito.configure(ledger_retention_days=0)  # (months old: the background prune would take the rows)
    clock = [before.timestamp()]
    fake_time = types.SimpleNamespace(time=lambda: clock[0], monotonic=_session.time.monotonic)
    monkeypatch.setattr(_session, "time", fake_time)
    counts = {"input_tokens": 250_000, "output_tokens": 1_000}
    with keito.session(session_id="price-change"):
        keito.record_llm_call("claude-opus-4-6", "anthropic", **counts)
        clock[0] = after.timestamp()
        keito.record_llm_call("claude-opus-4-6", "anthropic", **counts)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    old = genai("claude-opus-4-6", "anthropic", before, **counts)
    new = genai("claude-opus-4-6", "anthropic", after, **counts)
    assert old > new  # the snapshot holds two prices for this model
    assert row["cost_usd"] == pytest.approx(float(old + new), abs=1e-6)


def test_price_overrides_cover_one_hour_writes_and_searches(ledger: Spool) -> None:
    keito.configure(price_overrides={"house-model": {"input": 2.0, "output": 8.0, "cache_write": 2.5,
                                                     "cache_write_1h": 4.0, "web_search": 0.01}})
    with keito.session(session_id="override"):
        keito.record_llm_call("house-model", input_tokens=1_000_000, output_tokens=1_000_000,
                              cache_write_tokens=300_000, cache_write_1h_tokens=100_000, web_searches=5)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    # 700k uncached x $2 + 200k 5-minute x $2.5 + 100k 1-hour x $4 + 1M out x $8 + 5 searches x $0.01
    assert row["cost_usd"] == pytest.approx(1.4 + 0.5 + 0.4 + 8.0 + 0.05, abs=1e-9)


def test_anthropic_and_openai_raw_usage_blocks() -> None:
    anthropic = {"input_tokens": 5, "cache_creation_input_tokens": 900, "cache_read_input_tokens": 0,
                 "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 900},
                 "server_tool_use": {"web_search_requests": 2}, "output_tokens": 10}
    assert raw_details(anthropic) == {"cache_write_1h_tokens": 900, "web_searches": 2}
    openai = {"prompt_tokens": 50, "completion_tokens": 20, "prompt_tokens_details": {"audio_tokens": 30},
              "completion_tokens_details": {"audio_tokens": 12, "reasoning_tokens": 0}}
    assert raw_details(openai) == {"input_audio_tokens": 30, "output_audio_tokens": 12}
    assert raw_details(types.SimpleNamespace(cache_creation=types.SimpleNamespace(ephemeral_1h_input_tokens=7))) == {
        "cache_write_1h_tokens": 7}
    assert raw_details(None) == raw_details("text") == {}


@pytest.mark.parametrize("bad", [2**63, float("nan"), float("inf"), "12", b"7", [3], True])
def test_a_bad_count_is_dropped_with_a_warning_and_the_call_kept(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    from keito_instrument import _usage

    _usage._warned.clear()
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        usage = normalised_call("gpt-4o-mini", "openai", input_tokens=bad, output_tokens=5)
    assert usage.output_tokens == 5 and usage.calls == 1
    assert usage.input_tokens == (MAX_COUNT if bad == 2**63 else 0)
    assert "input_tokens" in caplog.text


def test_bad_arguments_never_lose_the_session(ledger: Spool) -> None:
    with keito.session(session_id="bad-args"):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100, output_tokens=10)
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=2**63, output_tokens=10)
        keito.record_llm_call(5, "openai", input_tokens="many", output_tokens=10)  # type: ignore[arg-type]
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, web_searches=-3)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert row["llm_calls"] == 4
    assert row["input_tokens"] == 100 + MAX_COUNT + 0 + 10
    assert ledger.counts().get("local", 0) + ledger.counts().get("pending", 0) >= 2


def test_an_unknown_usage_kind_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        usage = normalised_call("m", None, input_tokens=10, details={"telepathy_tokens": 4, "web_searches": 1})
    assert usage.details == {"web_searches": 1}
    assert "telepathy_tokens" in caplog.text
