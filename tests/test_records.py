"""Records: per-day time entries, the LLM expense, metadata within 4 KB, pricing, the OpenAPI contract."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from genai_prices import Usage, calc_price

import keito_instrument as keito
from keito_instrument import _records
from keito_instrument._config import Settings
from keito_instrument._metadata import fit, fmt_tokens, size
from keito_instrument._session import SessionOptions, SessionSnapshot
from keito_instrument._spool import Spool
from keito_instrument._usage import ModelUsage
from tests.contract import validate

LONDON = ZoneInfo("Europe/London")


def ts(text: str, tz: ZoneInfo = LONDON) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def snapshot(intervals: list[tuple[float, float]], usage: tuple[ModelUsage, ...] = (),
             **options: Any) -> SessionSnapshot:
    return SessionSnapshot(
        session_id="sess-1", options=SessionOptions(**options), opened_at=intervals[0][0] if intervals else 0.0,
        started_at=intervals[0][0] if intervals else 0.0, ended_at=intervals[-1][1] if intervals else 0.0,
        intervals=tuple(intervals), usage=usage, llm_calls=sum(u.calls for u in usage), tool_calls=2, errors=0,
        outcomes=(), breakdown={}, end_reason="completed", had_runs=bool(intervals))


SETTINGS = Settings(timezone="Europe/London", project_id="p", task_id="t", expense_category_id="c")


def test_a_session_across_midnight_gives_one_entry_per_day() -> None:
    snap = snapshot([(ts("2026-11-21T23:30:00"), ts("2026-11-22T01:15:00"))],
                    (ModelUsage("gpt-4o", "openai", 1000, 100, calls=1),))
    built = _records.build(snap, SETTINGS)
    entries = [r for r in built.records if r.kind == "time_entry"]
    assert [(e.spent_date, e.payload["hours"]) for e in entries] == [("2026-11-21", 0.5), ("2026-11-22", 1.25)]
    assert [e.payload["metadata"]["duration_seconds"] for e in entries] == [1800, 4500]
    assert len({e.record_id for e in entries}) == 2
    expense = next(r for r in built.records if r.kind == "expense")
    assert expense.spent_date == "2026-11-21"
    for record in built.records:
        validate(record.kind, record.payload)


def test_midnight_is_taken_in_the_configured_time_zone() -> None:
    # 23:30-00:30 in New York is all one UTC day (04:30-05:30).
    ny = ZoneInfo("America/New_York")
    snap = snapshot([(ts("2026-11-21T23:30:00", ny), ts("2026-11-22T00:30:00", ny))])
    utc_days = [r.spent_date for r in _records.build(snap, Settings(timezone="UTC")).records]
    ny_days = [r.spent_date for r in _records.build(snap, Settings(timezone="America/New_York")).records]
    assert utc_days == ["2026-11-22"]
    assert ny_days == ["2026-11-21", "2026-11-22"]


def test_a_very_long_session_never_bills_more_than_24_hours_a_day() -> None:
    snap = snapshot([(ts("2026-11-20T00:00:00"), ts("2026-11-22T12:00:00"))])
    entries = _records.build(snap, SETTINGS).records
    assert [e.payload["hours"] for e in entries] == [24.0, 24.0, 12.0]
    for entry in entries:
        validate(entry.kind, entry.payload)


@pytest.mark.parametrize(
    ("seconds", "increment", "mode", "hours"),
    [(90, 0.01, "nearest", 0.03), (5400, 0.01, "nearest", 1.5), (17, 0.01, "nearest", 0.0),
     (18, 0.01, "nearest", 0.01), (61, 0.25, "up", 0.25), (899, 0.25, "down", 0.0), (1000, 0.1, "nearest", 0.3)],
)
def test_rounding(seconds: float, increment: float, mode: str, hours: float) -> None:
    assert _records.round_hours(seconds, increment, mode) == hours


def test_min_hours_decides_what_a_short_session_bills() -> None:
    snap = snapshot([(ts("2026-11-22T10:00:00"), ts("2026-11-22T10:00:30"))])
    default = _records.build(snap, SETTINGS).records[0]
    floor = _records.build(snap, SETTINGS._replace(min_hours=0.1)).records[0]
    assert default.payload["hours"] == 0.01  # 30 s -> nearest 0.01 h
    assert floor.payload["hours"] == 0.1
    assert floor.payload["metadata"]["duration_seconds"] == 30  # exact seconds always kept


def test_expense_cost_matches_genai_prices_and_the_notes_format() -> None:
    usage = ModelUsage("claude-sonnet-4-5", "anthropic", input_tokens=12_500, output_tokens=3_200,
                       cache_read_tokens=2_000, reasoning_tokens=500, calls=3)
    snap = snapshot([(ts("2026-11-22T10:00:00"), ts("2026-11-22T10:05:00"))], (usage,))
    expense = next(r for r in _records.build(snap, SETTINGS).records if r.kind == "expense")
    expected = calc_price(Usage(input_tokens=12_500, output_tokens=3_200, cache_read_tokens=2_000,
                                output_reasoning_tokens=500), "claude-sonnet-4-5", provider_id="anthropic")
    assert Decimal(str(expense.payload["total_cost"])) == expected.total_price.quantize(Decimal("0.000001"))
    assert expense.payload["notes"] == "claude-sonnet-4-5: 12.5k input + 3.2k output tokens"
    meta = expense.payload["metadata"]
    assert (meta["input_tokens"], meta["output_tokens"], meta["cache_read_tokens"], meta["reasoning_tokens"]) == (
        12_500, 3_200, 2_000, 500)
    assert meta["pricing"].startswith("genai-prices ")
    validate("expense", expense.payload)


def test_cost_multiplier_marks_up_the_billed_cost_only() -> None:
    usage = ModelUsage("gpt-4o", "openai", input_tokens=1_000_000, output_tokens=100_000, calls=1)
    snap = snapshot([(ts("2026-11-22T10:00:00"), ts("2026-11-22T10:01:00"))], (usage,))
    marked = SETTINGS._replace(cost_multiplier=1.25)
    expense = next(r for r in _records.build(snap, marked).records if r.kind == "expense")
    assert expense.payload["metadata"]["cost_usd"] == 3.5  # $2.50 + $1.00
    assert expense.payload["total_cost"] == 4.375
    assert expense.payload["metadata"]["cost_multiplier"] == 1.25


def test_price_overrides_price_private_models() -> None:
    prices = {"acme-ft-v1": {"input": 2, "output": 8, "cache_read": 0.5, "cache_write": 2.5}}
    usage = ModelUsage("acme-ft-v1", None, input_tokens=10_000, output_tokens=2_000, cache_read_tokens=3_000,
                       cache_write_tokens=1_000, calls=1)
    snap = snapshot([(ts("2026-11-22T10:00:00"), ts("2026-11-22T10:01:00"))], (usage,))
    expense = next(r for r in _records.build(snap, SETTINGS._replace(price_overrides=prices))
                   .records if r.kind == "expense")
    assert expense.payload["total_cost"] == 0.032
    assert expense.payload["metadata"]["pricing"].startswith("genai-prices")


def test_unknown_model_falls_back_to_units_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    usage = ModelUsage("my-private-model-x", None, input_tokens=2_400, output_tokens=700, calls=2)
    snap = snapshot([(ts("2026-11-22T10:00:00"), ts("2026-11-22T10:01:00"))], (usage,))
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        first = _records.build(snap, SETTINGS)
        _records.build(snap, SETTINGS)
    expense = next(r for r in first.records if r.kind == "expense")
    assert "total_cost" not in expense.payload and expense.payload["units"] == 3
    assert expense.payload["metadata"]["cost_unknown"] is True
    assert "cost_usd" not in expense.payload["metadata"]  # None is never reported as 0
    assert first.session_row["cost_usd"] is None
    assert caplog.text.count("my-private-model-x") == 1  # one warning per model
    validate("expense", expense.payload)


def test_units_are_at_least_one() -> None:
    usage = ModelUsage("mystery", None, input_tokens=10, output_tokens=5, calls=1)
    snap = snapshot([(ts("2026-11-22T10:00:00"), ts("2026-11-22T10:01:00"))], (usage,))
    expense = next(r for r in _records.build(snap, SETTINGS).records if r.kind == "expense")
    assert expense.payload["units"] == 1


def test_no_llm_calls_means_no_expense() -> None:
    snap = snapshot([(ts("2026-11-22T10:00:00"), ts("2026-11-22T10:01:00"))])
    assert [r.kind for r in _records.build(snap, SETTINGS).records] == ["time_entry"]


def test_metadata_over_4kb_is_trimmed_but_keeps_ids_and_stays_valid() -> None:
    usages = tuple(ModelUsage(f"model-{i:03d}-with-a-rather-long-name", None, 100 + i, 10, calls=1)
                   for i in range(60))
    big = {f"user_key_{i}": "x" * 60 for i in range(80)}
    snap = snapshot([(ts("2026-11-22T10:00:00"), ts("2026-11-22T10:01:00"))], usages, metadata=big)
    for record in _records.build(snap, SETTINGS).records:
        meta = record.payload["metadata"]
        assert size(meta) <= 4096
        assert meta["session_id"] == "sess-1" and meta["record_id"] == record.record_id
        assert meta["metadata_truncated"] is True
        assert "llm_calls" in meta  # core keys outlive user and breakdown keys
        validate(record.kind, record.payload)


def test_fit_drops_later_tiers_first() -> None:
    out = fit({"session_id": "s"}, {"core": "c" * 100}, {"opt": "o" * 100}, limit=160)
    assert out == {"session_id": "s", "core": "c" * 100, "metadata_truncated": True}


@pytest.mark.parametrize(("count", "text"), [(850, "850"), (1000, "1k"), (12_500, "12.5k"), (30_000, "30k"),
                                             (3_249, "3.2k"), (2_400_000, "2.4M")])
def test_token_format(count: int, text: str) -> None:
    assert fmt_tokens(count) == text


def test_record_ids_are_deterministic_and_unique() -> None:
    snap = snapshot([(ts("2026-11-21T23:00:00"), ts("2026-11-22T01:00:00"))],
                    (ModelUsage("gpt-4o", "openai", 10, 1, calls=1),))
    first = [r.record_id for r in _records.build(snap, SETTINGS).records]
    again = [r.record_id for r in _records.build(snap, SETTINGS).records]
    assert first == again and len(set(first)) == len(first) == 3


def test_every_payload_from_real_sessions_is_valid_against_the_contract(ledger: Spool) -> None:
    keito.configure(project_id="p", task_id="t", expense_category_id="c", agent_id="bot", agent_type="test")

    @keito.track_agent(metadata={"nested": {"not": "flat"}, "ticket": "T-9"})
    def work(model: str) -> None:
        keito.record_llm_call(model, input_tokens=5000, output_tokens=700, cache_read_tokens=1000,
                              cache_write_tokens=200, reasoning_tokens=100)
        keito.log_outcome("done", evidence={"id": 1})

    for model in ("gpt-4o", "claude-sonnet-4-5", "unknown-model-q"):
        work(model)
    records = ledger.records()
    assert sorted(r["kind"] for r in records).count("expense") == 3
    for record in records:
        validate(record["kind"], record["payload"])
        assert json.loads(record["payload"]["metadata"]["nested"]) == {"not": "flat"}


def test_anthropic_style_input_is_normalised(ledger: Spool, caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from keito_instrument import _usage

    monkeypatch.setattr(_usage, "_warned", set())  # (warned once per process: earlier tests may have)
    with keito.session():
        # input excludes the cache (Anthropic): 100 uncached + 900 cache read
        keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=100, cache_read_tokens=900,
                              output_tokens=50)
    assert ledger.sessions()[0]["input_tokens"] == 1000
    assert "input_tokens smaller than its cache parts" in caplog.text


def test_cached_responses_cost_nothing(ledger: Spool) -> None:
    with keito.session():
        keito.record_llm_call("gpt-4o", input_tokens=1000, output_tokens=100, cached=True)
    usage = ledger.usage()[0]
    assert (usage["input_tokens"], usage["llm_calls"], usage["cost_usd"]) == (0, 1, 0.0)


def test_the_worked_example_in_the_concepts_page() -> None:
    usage = ModelUsage("gpt-4o", "openai", input_tokens=5_500, output_tokens=700, calls=3)
    snap = SessionSnapshot(
        session_id="t-7", options=SessionOptions(framework="langchain"), opened_at=ts("2026-11-21T23:58:00"),
        started_at=ts("2026-11-21T23:58:00"), ended_at=ts("2026-11-22T00:35:00"),
        intervals=((ts("2026-11-21T23:58:00"), ts("2026-11-21T23:59:30")),
                   (ts("2026-11-22T00:04:00"), ts("2026-11-22T00:05:00"))),
        usage=(usage,), llm_calls=3, tool_calls=1, errors=0, outcomes=(), breakdown={}, end_reason="idle_timeout",
        had_runs=True)
    records = _records.build(snap, SETTINGS).records
    entries = [(r.spent_date, r.payload["hours"], r.payload["metadata"]["duration_seconds"])
               for r in records if r.kind == "time_entry"]
    assert entries == [("2026-11-21", 0.03, 90), ("2026-11-22", 0.02, 60)]
    expense = next(r for r in records if r.kind == "expense")
    assert expense.spent_date == "2026-11-21"
    assert expense.payload["notes"] == "gpt-4o: 5.5k input + 700 output tokens"
    assert (expense.payload["metadata"]["llm_calls"], expense.payload["metadata"]["tool_calls"]) == (3, 1)
