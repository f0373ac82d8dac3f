"""Amounts in the workspace's currency: USD cost x exchange rate x markup, with the USD cost kept."""

from __future__ import annotations

import logging
from decimal import ROUND_HALF_UP, Decimal

import pytest

import keito_instrument as keito
from keito_instrument._config import get_settings, reset_settings
from keito_instrument._spool import Spool


def one_session() -> None:
    with keito.session(session_id="gbp"):
        keito.record_llm_call("gpt-4o", "openai", input_tokens=120_000, output_tokens=9_000)
    assert keito.flush(5.0)


def test_gbp_with_a_rate_bills_usd_cost_times_rate_times_markup(ledger: Spool) -> None:
    keito.configure(currency="gbp", exchange_rate=0.79, cost_multiplier=1.2, cost_decimals=2)
    one_session()
    [expense] = [r["payload"] for r in ledger.records() if r["kind"] == "expense"]
    usd = Decimal(str(expense["metadata"]["cost_usd"]))
    expected = (usd * Decimal("0.79") * Decimal("1.2")).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert Decimal(str(expense["total_cost"])) == expected and expected > 0
    assert expense["metadata"]["currency"] == "GBP" and expense["metadata"]["exchange_rate"] == 0.79
    assert expense["metadata"]["cost_multiplier"] == 1.2
    [row] = ledger.sessions()
    assert row["billed_cost"] == float(expected) and row["cost_usd"] == pytest.approx(float(usd), abs=1e-8)


def test_usd_records_carry_no_currency_keys(ledger: Spool) -> None:
    one_session()
    [expense] = [r["payload"] for r in ledger.records() if r["kind"] == "expense"]
    assert "currency" not in expense["metadata"]
    assert Decimal(str(expense["total_cost"])) == Decimal(str(expense["metadata"]["cost_usd"])).quantize(
        Decimal("0.000001"), rounding=ROUND_HALF_UP)


def test_a_currency_without_a_rate_is_refused_where_it_is_set() -> None:
    with pytest.raises(ValueError, match=r"'currency': GBP needs exchange_rate"):
        keito.configure(currency="GBP")
    assert get_settings().currency == "USD"  # nothing was installed
    with pytest.raises(ValueError, match="ISO 4217"):
        keito.configure(currency="pounds", exchange_rate=0.8)
    with pytest.raises(ValueError, match="exchange_rate"):
        keito.configure(currency="EUR", exchange_rate=0)


def test_from_the_environment_a_currency_without_a_rate_warns_and_stays_usd(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KEITO_CURRENCY", "EUR")
    reset_settings()
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        assert get_settings().currency == "USD"
    assert "KEITO_EXCHANGE_RATE is not set" in caplog.text
    monkeypatch.setenv("KEITO_EXCHANGE_RATE", "0.92")
    reset_settings()
    assert (get_settings().currency, get_settings().exchange_rate) == ("EUR", 0.92)
