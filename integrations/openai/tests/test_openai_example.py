"""examples/openai_client.py runs offline, as a user would run it, and bills what its stand-in reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from genai_prices import Usage, calc_price

from keito_instrument._spool import Spool
from tests.test_examples import LEDGER, run_example


def test_example_runs_and_bills_two_agent_sessions(tmp_path: Path) -> None:
    out = run_example("openai_client.py", tmp_path, unset=("OPENAI_API_KEY", "OPENAI_BASE_URL"))
    assert "4 model calls made" in out
    assert "support-agent" in out and "TOTAL" in out

    spool = Spool(tmp_path / LEDGER)
    try:
        rows = spool.sessions()
        assert len(rows) == 2
        assert all(r["agent_id"] == "support-agent" and r["llm_calls"] == 2 for r in rows)
        assert sum(r["input_tokens"] for r in rows) == 4 * 1500
        per_call = calc_price(
            Usage(input_tokens=1500, cache_read_tokens=1024, output_tokens=80), "gpt-4o-mini-2024-07-18",
            provider_id="openai",
        ).total_price
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(float(4 * per_call), abs=1e-9)
        assert {u["cache_read_tokens"] for u in spool.usage()} == {2048}
    finally:
        spool.close()
