"""`keito-instrument report --by model`: the audit view, per model calls, tokens by kind and cost."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price

import keito_instrument as keito
from keito_instrument import cli
from keito_instrument._spool import Spool

CALLS: list[dict[str, Any]] = [
    {"model": "claude-sonnet-4-5", "provider": "anthropic", "input_tokens": 30_000, "output_tokens": 400,
     "cache_read_tokens": 20_000, "cache_write_tokens": 9_000, "cache_write_1h_tokens": 7_000, "web_searches": 2},
    {"model": "claude-sonnet-4-5", "provider": "anthropic", "input_tokens": 12_000, "output_tokens": 900,
     "cache_read_tokens": 11_000},
    {"model": "gpt-4o-mini", "provider": "openai", "input_tokens": 5_000, "output_tokens": 700,
     "cache_read_tokens": 1_024, "reasoning_tokens": 0},
    {"model": "o4-mini", "provider": "openai", "input_tokens": 2_000, "output_tokens": 3_000,
     "reasoning_tokens": 2_500},
]


def genai(call: dict[str, Any]) -> Decimal:
    counts = {k: v for k, v in call.items() if k not in ("model", "provider")}
    counts["output_reasoning_tokens"] = counts.pop("reasoning_tokens", 0)
    return Decimal(calc_price(Usage(**counts), call["model"], provider_id=call["provider"]).total_price)


def report(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert cli.main(["report", "--by", "model", *args]) == 0
    return capsys.readouterr().out


def run_calls(open_session: bool) -> None:
    with keito.session(session_id="closed"):
        for call in CALLS[:2]:
            keito.record_llm_call(**call)
    if open_session:
        keito.record_llm_call(**CALLS[2], session_id="still-open")  # a named conversation, open until idle
    with keito.session(session_id="closed-2"):
        keito.record_llm_call(**CALLS[3])
    assert keito.flush(5.0)


@pytest.mark.parametrize("since", [None, "midnight", "timestamp"])
def test_per_model_calls_tokens_by_kind_and_cost(
    ledger: Spool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, since: str | None
) -> None:
    run_calls(open_session=True)
    args = ["--format", "json"]
    if since == "midnight":
        args += ["--since", "1d"]
    elif since == "timestamp":  # not a midnight: the per-session rows are read instead of the daily sums
        from keito_instrument.cli import _report

        monkeypatch.setattr(_report, "since_arg", lambda _text: time.time() - 3600)
        args += ["--since", "1h"]
    out = json.loads(report(capsys, *args))
    rows = {r["group"]: r for r in out["rows"]}
    claude = rows["claude-sonnet-4-5"]
    assert (claude["llm_calls"], claude["input_tokens"], claude["output_tokens"]) == (2, 42_000, 1_300)
    assert (claude["cache_read_tokens"], claude["cache_write_tokens"], claude["cache_write_1h_tokens"]) == (
        31_000, 9_000, 7_000)
    assert claude["web_searches"] == 2
    assert claude["cost_usd"] == pytest.approx(float(genai(CALLS[0]) + genai(CALLS[1])), abs=1e-6)
    assert rows["o4-mini"]["reasoning_tokens"] == 2_500
    mini = rows["gpt-4o-mini"]  # from the open session: its spend so far
    assert (mini["cache_read_tokens"], mini["cost_usd"]) == (1_024, pytest.approx(float(genai(CALLS[2])), abs=1e-6))
    total = out["total"]
    assert total["cache_read_tokens"] == 31_000 + 1_024 and total["web_searches"] == 2
    assert total["cost_usd"] == pytest.approx(float(sum(genai(c) for c in CALLS)), abs=1e-6)


def test_the_table_shows_the_kinds_used(ledger: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    run_calls(open_session=False)
    text = report(capsys)
    header = text.splitlines()[0]
    for column in ("cache read", "cache write", "of it 1h", "reasoning", "searches", "cost (USD)"):
        assert column in header
    assert "audio in" not in header  # no model used audio
    assert "31,000" in text and "7,000" in text
    csv_text = report(capsys, "--format", "csv")
    assert csv_text.splitlines()[0].endswith("cache_read_tokens,cache_write_tokens,reasoning_tokens,"
                                             "cache_write_1h_tokens,input_audio_tokens,input_image_tokens,"
                                             "output_audio_tokens,web_searches")
