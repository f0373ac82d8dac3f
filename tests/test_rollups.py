"""Roll-ups: `granularity="hour" | "day"` sends one time entry and one expense per key and period,
once the period is over; hours are rounded once over the period's exact seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

import keito_instrument as keito
from keito_instrument._engine import fold
from keito_instrument._pricing import price
from keito_instrument._spool import Spool
from keito_instrument._usage import ModelUsage
from keito_instrument.testing import KeitoTestServer


def hour_window(hours: float = 1.0) -> float:
    """The start of `hours` of back-dated work within one UTC day, ending before now."""
    now = time.time()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    span = hours * 3600 + 120
    return midnight + 60 if now - midnight > span else midnight - span


def short_sessions(start: float, n: int, seconds: float = 10.0, agent: str = "bot") -> None:
    for index in range(n):
        begin = start + index * seconds
        run = keito.begin_run(started_at=begin, agent_id=agent)
        assert run is not None
        keito.record_llm_call("gpt-4o", "openai", input_tokens=100, output_tokens=10, session_id=run.session_id)
        keito.end_run(run, ended_at=begin + seconds)


def payloads(ledger: Spool, kind: str) -> list[dict[str, object]]:
    return [r["payload"] for r in ledger.records() if r["kind"] == kind]


def test_360_sessions_of_10_seconds_bill_one_hour_at_session_granularity(ledger: Spool) -> None:
    keito.configure(timezone="UTC", project_id="p", task_id="t")
    short_sessions(hour_window(), 360)
    assert keito.flush(10.0)
    entries = payloads(ledger, "time_entry")
    assert len(entries) == 360  # one per session, as before
    assert sum(Decimal(str(e["hours"])) for e in entries) == Decimal("1.00")  # not 360 x 0.00
    assert {e["metadata"]["duration_seconds"] for e in entries} == {10.0}  # exact seconds kept


def test_a_day_roll_up_is_one_entry_and_one_expense_sent_once_after_the_day(
    keito_server: KeitoTestServer, ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    keito.configure(timezone="UTC", granularity="day")
    start = hour_window()
    short_sessions(start, 360)
    assert keito.flush(10.0)
    assert payloads(ledger, "time_entry") == [] and payloads(ledger, "expense") == []  # the day is not over
    assert len(ledger.sessions()) == 360  # the report still sees every session
    day_end = datetime.fromtimestamp(start, UTC).replace(hour=0, minute=0, second=0) + timedelta(days=1)
    monkeypatch.setattr(fold, "clock", lambda: day_end.timestamp() + 1)
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == len(keito_server.expenses) == 1
    [entry], [expense] = keito_server.time_entries, keito_server.expenses
    assert entry["hours"] == 1.0
    assert entry["metadata"]["sessions"] == 360 and entry["metadata"]["duration_seconds"] == 3600.0
    assert entry["metadata"]["session_id"] == expense["metadata"]["session_id"]
    assert entry["metadata"]["session_id"].startswith("rollup-day-")
    assert expense["metadata"]["input_tokens"] == 36_000 and expense["metadata"]["llm_calls"] == 360
    one = price(ModelUsage("gpt-4o", "openai", 100, 10, 0, 0, 0, 1), {}, start).usd
    assert one is not None
    assert Decimal(str(expense["total_cost"])) == (one * 360).quantize(Decimal("0.000001"))
    day = datetime.fromtimestamp(start, UTC).date().isoformat()
    assert entry["spent_date"] == expense["spent_date"] == day
    assert keito.flush(5.0)  # folding again sends nothing more
    assert len(keito_server.time_entries) == len(keito_server.expenses) == 1
    assert keito_server.duplicates() == {}


def test_an_hour_roll_up_splits_time_at_the_hour_and_waits_for_open_sessions(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    keito.configure(timezone="UTC", granularity="hour", project_id="p", task_id="t")
    start = hour_window(3.0)
    hour = datetime.fromtimestamp(start, UTC).replace(minute=0, second=0, microsecond=0).timestamp()
    boundary = hour + 3600
    run = keito.begin_run(started_at=boundary - 600, agent_id="bot")  # 10 min before the hour..
    assert run is not None
    keito.record_llm_call("gpt-4o", "openai", input_tokens=1000, output_tokens=100, session_id=run.session_id)
    keito.end_run(run, ended_at=boundary + 1200)  # ..to 20 min after it
    chat = keito.begin_run("chat", close="idle", agent_id="bot", started_at=boundary + 1500)
    keito.end_run(chat, ended_at=boundary + 1600)  # an open conversation in the second hour
    later = boundary + 3600 + 5
    monkeypatch.setattr(fold, "clock", lambda: later)
    keito.configure(idle_timeout=1e6)  # the conversation stays open
    assert keito.flush(10.0)
    entries = payloads(ledger, "time_entry")
    # The first hour is billed; the second waits for the conversation that could still add to it.
    assert [(e["metadata"]["period"], e["hours"]) for e in entries] == [
        (datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%dT%H"), 0.17)
    ]
    [expense] = payloads(ledger, "expense")
    assert expense["metadata"]["input_tokens"] == 1000  # the cost goes to the period it started in
    assert keito.end_session("chat")
    assert keito.flush(10.0)
    second = sorted(e["hours"] for e in payloads(ledger, "time_entry"))
    assert second == [0.17, 0.36]  # 20 min of the run + 100 s of the conversation, rounded once


def test_roll_ups_keep_keys_apart(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    keito.configure(timezone="UTC", granularity="day", project_id="p", task_id="t")
    start = hour_window()
    short_sessions(start, 30, agent="alpha")
    short_sessions(start + 600, 60, agent="beta")
    monkeypatch.setattr(fold, "clock", lambda: start + 86_400 + 3600)
    assert keito.flush(10.0)
    by_agent = {e["metadata"]["agent_id"]: e for e in payloads(ledger, "time_entry")}
    assert {a: (e["hours"], e["metadata"]["sessions"]) for a, e in by_agent.items()} == {
        "alpha": (0.08, 30), "beta": (0.17, 60)
    }
    assert len(payloads(ledger, "expense")) == 2


def test_granularity_is_checked_where_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"granularity.*session, hour or day"):
        keito.configure(granularity="week")
    monkeypatch.setenv("KEITO_GRANULARITY", "day")
    assert keito.configure().granularity == "day"
