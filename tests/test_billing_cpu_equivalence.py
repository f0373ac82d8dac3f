"""Billing output is pinned: a fixed, varied journal folds into exactly the same ledger.

The journal lines are written here by hand (fixed ids and times), so every fold is deterministic:
the record ids (uuid5), payloads, hours with the carried rounding remainder, costs, the report
rows, the daily sums, the open sessions' states, the roll-ups and the journal offsets. What the
ledger holds after each fold is summarised as a digest pinned from the billing code before its
CPU work was cut; a few payloads are also pinned in full, so a change reads as a diff, and the
hours and costs are checked against values computed here independently. Costs come from
genai-prices 0.2.3 (constraints.txt): a newer price table changes the digests.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument._config import Settings
from keito_instrument._engine import fold
from keito_instrument._pricing import price
from keito_instrument._records import rounded_total
from keito_instrument._spool import Spool
from keito_instrument._usage import ModelUsage

SEGMENT_BYTES = 1 << 20  # as a mapped segment: lines, then zeros up to its size
_NS = uuid.UUID("6f1c7a52-3b0e-4d7c-9a51-6b8c2e4f0d13")  # the record id namespace (_records)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Writer:
    """One process's journal segment, written as the host writes it (a mapped segment)."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner, self.lines = path, owner, list[bytes]()

    def add(self, kind: str, sid: str, ident: str, mode: str, t: float, *fields: Any) -> None:
        self.lines.append(json.dumps([kind, sid, ident, mode, t, *fields]).encode() + b"\n")

    def flush(self) -> fold.Segment:
        data = b"".join(self.lines)
        self.path.write_bytes(data + b"\0" * max(0, SEGMENT_BYTES - len(data)))
        return fold.Segment(self.path.name, str(self.path), self.owner)

    def session(
        self,
        sid: str,
        start: float,
        seconds: float,
        *,
        opts: dict[str, Any] | None = None,
        calls: tuple[tuple[Any, ...], ...] = (),
        tools: int = 0,
        errors: int = 0,
        outcomes: tuple[dict[str, Any], ...] = (),
        end: bool = True,
    ) -> None:
        """A decorated session: one run of `seconds`, its calls (model, provider, input, output,
        cache read, cache write, reasoning, cached, missing, breakdown, details), counts and
        outcomes; `end=False`: the process never wrote its end."""
        ident = f"{start:.6f}"
        self.add("o", sid, ident, "r", start, "runs", {"metadata": {}, **(opts or {})})
        self.add("b", sid, ident, "r", start, 1, start)
        step = seconds / (len(calls) + len(outcomes) + 2)
        t = start
        for call in calls:
            t += step
            model, provider, i, o, cr, cw, rs, cached, missing, breakdown, details = call
            self.add("c", sid, ident, "r", t, model, provider, i, o, cr, cw, rs, cached, missing, breakdown, details)
        if tools or errors:
            self.add("n", sid, ident, "r", t, tools, errors)
        for seq, outcome in enumerate(outcomes, 1):
            t += step
            self.add(
                "x",
                sid,
                ident,
                "r",
                t,
                {
                    "quantity": 1,
                    "unit_price": None,
                    "success": True,
                    "description": None,
                    "evidence": None,
                    "metadata": {},
                    **outcome,
                    "seq": seq,
                },
            )
        if end:
            self.add("r", sid, ident, "r", start + seconds, 1, start, start + seconds)
            self.add(
                "e", sid, ident, "r", start + seconds, "completed", [], [1, len(calls), tools, errors, len(outcomes)]
            )

    def turn(
        self,
        sid: str,
        ident: str,
        start: float,
        seconds: float,
        run: int,
        calls: tuple[tuple[Any, ...], ...] = (),
        opts: dict[str, Any] | None = None,
    ) -> None:
        """One turn of a named conversation (closes when idle)."""
        if opts is not None:
            self.add("o", sid, ident, "i", start, "idle", {"metadata": {}, **opts})
        self.add("b", sid, ident, "i", start, run, start)
        for n, call in enumerate(calls, 1):
            self.add("c", sid, ident, "i", start + n, *call)
        self.add("r", sid, ident, "i", start + seconds, run, start, start + seconds)


def call(
    model: str,
    provider: str | None,
    i: int,
    o: int,
    cr: int = 0,
    cw: int = 0,
    rs: int = 0,
    cached: int = 0,
    missing: int = 0,
    breakdown: dict[str, str] | None = None,
    details: dict[str, int] | None = None,
) -> tuple[Any, ...]:
    return (model, provider, i, o, cr, cw, rs, cached, missing, breakdown, details)


def ledger_dump(spool: Spool) -> dict[str, list[dict[str, Any]]]:
    """Everything billing wrote, in a canonical order (without the wall-clock bookkeeping times)."""
    conn = spool.connect()
    tables = {
        "records": "SELECT record_id, kind, session_id, spent_date, project_id, path, payload, state, last_error"
        " FROM records ORDER BY record_id",
        "sessions": "SELECT * FROM sessions ORDER BY session_key",
        "usage": "SELECT * FROM usage ORDER BY session_key, model, provider",
        "daily": "SELECT * FROM daily ORDER BY spent_date, project_id, task_id, agent_id, model",
        "daily_outcomes": "SELECT * FROM daily_outcomes ORDER BY spent_date, project_id, task_id, agent_id,"
        " outcome_type",
        "hours_carry": "SELECT * FROM hours_carry ORDER BY agent_id, project_id, task_id, spent_date",
        "rollups": "SELECT * FROM rollups ORDER BY key",
        "live": "SELECT * FROM live ORDER BY key",
        "named": "SELECT * FROM named ORDER BY session_id",
        "journal_offsets": "SELECT * FROM journal_offsets ORDER BY segment",
    }
    return {name: [dict(r) for r in conn.execute(sql)] for name, sql in tables.items()}


def digest(spool: Spool) -> str:
    text = json.dumps(ledger_dump(spool), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def payload(spool: Spool, session_id: str, kind: str) -> list[dict[str, Any]]:
    rows = spool.connect().execute(
        "SELECT payload FROM records WHERE session_id = ? AND kind = ? ORDER BY spent_date, record_id",
        (session_id, kind),
    )
    return [json.loads(r[0]) for r in rows]


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Set the billing engine's clock."""

    def move(when: float) -> None:
        monkeypatch.setattr(fold, "clock", lambda: when)

    return move


@pytest.fixture
def quiet_ledger(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "billing.sqlite3")
    yield spool
    spool.close()


def alive_w1(owner: str) -> bool:
    return owner == "w1"


T0 = utc("2025-03-10T04:30:00")  # 10:00 in Kolkata
TINY = 200  # sessions of 7.3 s: their hours add up to the day's exact time, rounded once
POISON_TOKENS = 2**70  # more than SQLite stores: the session becomes a dead letter, nothing else does


def session_journal(w1: Writer, w2: Writer) -> None:
    team = {"agent_id": "tiny-bot", "framework": "langchain"}
    for n in range(TINY):
        w1.session(
            f"tiny-{n:03d}", T0 + n * 10.0, 7.3, opts=team, calls=(call("gpt-4o-mini", "openai", 900 + n, 120 + n % 7),)
        )
    w1.session("basic", T0 + 3000, 12.5, calls=(call("gpt-4o-mini", "openai", 1200, 300),))
    w1.session(
        "multi",
        T0 + 3100,
        95.0,
        opts={
            "agent_id": "researcher",
            "agent_type": "planner",
            "project_id": "proj-r",
            "task_id": "task-r",
            "billable": False,
            "metadata": {"team": "search", "tier": 2},
            "expense_category_id": "cat-r",
        },
        calls=(
            call("gpt-4o", "openai", 5000, 800, cr=4096, rs=0, breakdown={"feature": "search"}),
            call("gpt-4o", "openai", 700, 90, breakdown={"feature": "answer"}),
            call(
                "claude-sonnet-4-5",
                "anthropic",
                20_000,
                1500,
                cr=12_000,
                cw=4000,
                details={"cache_write_1h_tokens": 1000},
            ),
            call("my-local-model", "local", 300, 40),
            call("o3-mini", "openai", 2000, 3000, rs=2500),
            call("gpt-4o-mini", "openai", 0, 0, cached=1),
        ),
        tools=3,
        errors=1,
    )
    w1.session(
        "outcomes",
        T0 + 3300,
        40.0,
        opts={"agent_id": "closer", "notes": "Ticket work"},
        calls=(call("claude-haiku-4-5", "anthropic", 3000, 400),),
        outcomes=(
            {
                "outcome_type": "ticket_resolved",
                "quantity": 2,
                "unit_price": 0.99,
                "evidence": {"ticket_id": "T-1", "links": ["a", "b"]},
                "metadata": {"channel": "mail"},
            },
            {"outcome_type": "refund", "success": False, "description": "customer refused"},
            {"outcome_type": "odd", "quantity": math.nan, "description": "bad \ud800 text"},
        ),
    )
    w1.session("errors-only", T0 + 3400, 5.0, tools=4, errors=2)
    w1.session(
        "missing-usage",
        T0 + 3450,
        6.0,
        calls=(call("gpt-4o-mini", "openai", 0, 0, missing=1), call("gpt-4o-mini", "openai", 100, 10)),
    )
    midnight = utc("2025-03-10T18:30:00")  # 00:00 in Kolkata
    w1.session("midnight", midnight - 600, 1800.0, calls=(call("gpt-4o", "azure.ai.openai", 400, 50),))
    w1.session("three-days", T0 - 40 * 3600, 30 * 3600.0, calls=(call("gpt-4o-mini", None, 10, 1),))
    w1.session("poison", T0 + 3500, 3.0, calls=(call("unknown-model", "nobody", POISON_TOKENS, 1),))
    w1.session("stuck", T0 - 30 * 3600, 60.0, calls=(call("gpt-4o-mini", "openai", 10, 2),), end=False)
    w2.session(
        "orphan",
        T0 + 7000,
        60.0,
        opts={"agent_id": "crashed"},
        calls=(call("gpt-4o-mini", "openai", 50, 5),),
        end=False,
    )
    w1.turn(
        "chat-1",
        "c1",
        T0 + 3600,
        20.0,
        1,
        (call("gpt-4o", "openai", 800, 60),),
        opts={"agent_id": "chat-bot", "idle_timeout": 1800},
    )
    w1.turn("chat-2", "c2", T0 + 3700, 15.0, 1, (call("gpt-4o", "openai", 500, 50),), opts={"agent_id": "chat-bot"})
    w1.turn("chat-2", "c2", T0 + 3800, 25.0, 2, (call("gpt-4o-mini", "openai", 600, 70),))
    w1.add("e", "chat-2", f"{T0 + 3830:.6f}", "i", T0 + 3830, "explicit", [], [])


# Pinned from the billing code before its CPU work was cut (see the module docstring).
SESSION_DIGESTS = ["27f87cbe51cf6c82", "d86e1444bc08dcad", "d86e1444bc08dcad", "37cc343acc951d38"]
ROLLUP_DIGESTS = ["edb9086adc279f12", "edb9086adc279f12", "1c663a368c54bf76"]
BASIC_ENTRY: dict[str, Any] = {
    "project_id": "proj-1",
    "task_id": "task-1",
    "spent_date": "2025-03-10",
    "hours": 0.0,
    "notes": "agent session: 1 LLM calls, 0 tool calls",
    "billable": True,
    "source": "agent",
    "metadata": {
        "session_id": "basic",
        "record_id": "937e36cf-0443-51b4-a650-6afa08921db1",
        "framework": "python",
        "model": "gpt-4o-mini",
        "duration_seconds": 12.5,
        "session_duration_seconds": 12.5,
        "llm_calls": 1,
        "tool_calls": 0,
        "errors": 0,
        "started_at": "2025-03-10T10:50:00+05:30",
        "ended_at": "2025-03-10T10:50:12+05:30",
        "end_reason": "completed",
        "env": "ci",
    },
}
BASIC_EXPENSE: dict[str, Any] = {
    "project_id": "proj-1",
    "expense_category_id": "cat-llm",
    "spent_date": "2025-03-10",
    "total_cost": 0.000414,
    "notes": "gpt-4o-mini: 1.2k input + 300 output tokens",
    "billable": True,
    "source": "agent",
    "metadata": {
        "session_id": "basic",
        "record_id": "5d6d0346-51f5-50ba-a30a-4c2a0dbfcd66",
        "framework": "python",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.00036,
        "pricing": "genai-prices 0.2.3",
        "llm_calls": 1,
        "tool_calls": 0,
        "errors": 0,
        "duration_seconds": 12.5,
        "cost_multiplier": 1.25,
        "currency": "EUR",
        "exchange_rate": 0.92,
        "env": "ci",
    },
}
MULTI_EXPENSE: dict[str, Any] = {
    "project_id": "proj-r",
    "expense_category_id": "cat-r",
    "spent_date": "2025-03-10",
    "units": 33,
    "notes": "claude-sonnet-4-5: 20k input + 1.5k output tokens; gpt-4o: 5.7k input + 890 output tokens; "
    "o3-mini: 2k input + 3k output tokens; my-local-model: 300 input + 40 output tokens; gpt-4o-mini: "
    "0 input + 0 output tokens",
    "billable": False,
    "source": "agent",
    "metadata": {
        "session_id": "multi",
        "record_id": "b058f612-6991-5bea-a5a3-a9e1912e3d98",
        "agent_id": "researcher",
        "agent_type": "planner",
        "framework": "python",
        "model": "claude-sonnet-4-5",
        "provider": "anthropic",
        "input_tokens": 28000,
        "output_tokens": 5430,
        "cache_read_tokens": 16096,
        "cache_write_tokens": 4000,
        "reasoning_tokens": 2500,
        "cache_write_1h_tokens": 1000,
        "cache_write_5m_tokens": 3000,
        "pricing": "unpriced",
        "llm_calls": 6,
        "tool_calls": 3,
        "errors": 1,
        "duration_seconds": 95.0,
        "cost_unknown": True,
        "cost_usd_priced_part": 0.08878,
        "cost_multiplier": 1.25,
        "currency": "EUR",
        "exchange_rate": 0.92,
        "cached_calls": 1,
        "env": "ci",
        "team": "search",
        "tier": 2,
        "models.claude-sonnet-4-5.input_tokens": 20000,
        "models.claude-sonnet-4-5.output_tokens": 1500,
        "models.claude-sonnet-4-5.cost_usd": 0.05535,
        "models.gpt-4o.input_tokens": 5700,
        "models.gpt-4o.output_tokens": 890,
        "models.gpt-4o.cost_usd": 0.01803,
        "models.o3-mini.input_tokens": 2000,
        "models.o3-mini.output_tokens": 3000,
        "models.o3-mini.cost_usd": 0.0154,
        "models.my-local-model.input_tokens": 300,
        "models.my-local-model.output_tokens": 40,
        "models.gpt-4o-mini.input_tokens": 0,
        "models.gpt-4o-mini.output_tokens": 0,
        "models.gpt-4o-mini.cost_usd": 0.0,
        "feature.search.input_tokens": 5000,
        "feature.search.output_tokens": 800,
        "feature.search.llm_calls": 1,
        "feature.answer.input_tokens": 700,
        "feature.answer.output_tokens": 90,
        "feature.answer.llm_calls": 1,
    },
}
OUTCOMES: list[dict[str, Any]] = [
    {
        "project_id": "proj-1",
        "task_id": "task-1",
        "spent_date": "2025-03-10",
        "hours": 0,
        "notes": "bad ? text",
        "billable": True,
        "source": "agent",
        "metadata": {
            "session_id": "outcomes",
            "record_id": "57261c96-95d7-5b19-96f3-766ef2441e75",
            "agent_id": "closer",
            "framework": "python",
            "outcome_type": "odd",
            "outcome_quantity": None,
            "outcome_success": True,
            "env": "ci",
        },
    },
    {
        "project_id": "proj-1",
        "task_id": "task-1",
        "spent_date": "2025-03-10",
        "hours": 0,
        "notes": "customer refused",
        "billable": True,
        "source": "agent",
        "metadata": {
            "session_id": "outcomes",
            "record_id": "ab4d5641-0387-53f1-9a61-3e73fdca96c4",
            "agent_id": "closer",
            "framework": "python",
            "outcome_type": "refund",
            "outcome_quantity": 1,
            "outcome_success": False,
            "env": "ci",
        },
    },
    {
        "project_id": "proj-1",
        "task_id": "task-1",
        "spent_date": "2025-03-10",
        "hours": 0,
        "notes": "ticket_resolved",
        "billable": True,
        "source": "agent",
        "metadata": {
            "session_id": "outcomes",
            "record_id": "d973e6c3-00aa-563f-bac6-927ca7dde608",
            "agent_id": "closer",
            "framework": "python",
            "outcome_type": "ticket_resolved",
            "outcome_quantity": 2,
            "outcome_success": True,
            "outcome_unit_price": 0.99,
            "outcome_evidence": {"ticket_id": "T-1", "links": ["a", "b"]},
            "channel": "mail",
            "env": "ci",
        },
    },
]
ROLLUP_ENTRY: dict[str, Any] = {
    "project_id": "proj-1",
    "task_id": "task-1",
    "spent_date": "2025-03-09",
    "hours": 0.42,
    "notes": "alpha day roll-up 2025-03-09: 18 sessions, 33 LLM calls, 14 tool calls",
    "billable": True,
    "source": "agent",
    "metadata": {
        "session_id": "rollup-day-2025-03-09-0dd1e90c",
        "record_id": "a0e24215-50b1-5ce1-8871-2080e485ae66",
        "agent_id": "alpha",
        "framework": "crewai",
        "rollup": "day",
        "period": "2025-03-09",
        "sessions": 18,
        "duration_seconds": 1505.5,
        "period_seconds": 1505.5,
        "llm_calls": 33,
        "tool_calls": 14,
        "errors": 3,
    },
}
ROLLUP_EXPENSE: dict[str, Any] = {
    "project_id": "proj-1",
    "expense_category_id": None,
    "spent_date": "2025-03-09",
    "units": 99,
    "notes": "claude-sonnet-4-5: 75k input + 3k output tokens; gpt-4o-mini: 17.7k input + 2.3k output tokens; "
    "secret-model: 999 input + 99 output tokens; gpt-4o: 100 input + 10 output tokens",
    "billable": True,
    "source": "agent",
    "metadata": {
        "session_id": "rollup-day-2025-03-09-0dd1e90c",
        "record_id": "6e680ed2-5e1a-540d-8d1e-c765df50327e",
        "agent_id": "alpha",
        "framework": "crewai",
        "model": "claude-sonnet-4-5",
        "provider": "anthropic",
        "input_tokens": 93839,
        "output_tokens": 5369,
        "cache_read_tokens": 2100,
        "cache_write_tokens": 15000,
        "reasoning_tokens": 0,
        "cache_write_1h_tokens": 2000,
        "cache_write_5m_tokens": 13000,
        "pricing": "unpriced",
        "llm_calls": 33,
        "tool_calls": 14,
        "errors": 3,
        "duration_seconds": 0,
        "cost_unknown": True,
        "cost_usd_priced_part": 0.2899595,
        "rollup": "day",
        "period": "2025-03-09",
        "sessions": 18,
        "models.claude-sonnet-4-5.input_tokens": 75000,
        "models.claude-sonnet-4-5.output_tokens": 3000,
        "models.claude-sonnet-4-5.cost_usd": 0.28575,
        "models.gpt-4o-mini.input_tokens": 17740,
        "models.gpt-4o-mini.output_tokens": 2260,
        "models.gpt-4o-mini.cost_usd": 0.0038595,
        "models.secret-model.input_tokens": 999,
        "models.secret-model.output_tokens": 99,
        "models.gpt-4o.input_tokens": 100,
        "models.gpt-4o.output_tokens": 10,
        "models.gpt-4o.cost_usd": 0.00035,
    },
}


def configure_sessions() -> Settings:
    return keito.configure(
        timezone="Asia/Kolkata",
        project_id="proj-1",
        task_id="task-1",
        expense_category_id="cat-llm",
        cost_multiplier=1.25,
        currency="EUR",
        exchange_rate=0.92,
        metadata={"env": "ci"},
        ledger_retention_days=0,
    )


def test_session_billing_is_unchanged(tmp_path: Path, quiet_ledger: Spool, at: Callable[[float], None]) -> None:
    settings = configure_sessions()
    w1, w2 = Writer(tmp_path / "w1.000001.jsonl", "w1"), Writer(tmp_path / "w2.000001.jsonl", "w2")
    session_journal(w1, w2)
    digests = []
    at(T0 + 3 * 3600)
    result = fold.fold(quiet_ledger, settings, [w1.flush(), w2.flush()], None, alive_w1)
    assert result.complete == {"w1.000001.jsonl": True, "w2.000001.jsonl": True}
    digests.append(digest(quiet_ledger))

    # More lines in the segment and lines kept in memory; the conversation goes on.
    w1.turn("chat-1", "c1", T0 + 3 * 3600 + 600, 30.0, 2, (call("gpt-4o", "openai", 900, 80),))
    w1.session("late", T0 + 3 * 3600 + 700, 9.0, calls=(call("gpt-4o-mini", "openai", 10_000, 2000),))
    memory = Writer(tmp_path / "unused", "w1")
    memory.session("in-memory", T0 + 3 * 3600 + 800, 4.0, calls=(call("gpt-4o-mini", "openai", 77, 7),))
    at(T0 + 4 * 3600)
    fold.fold(
        quiet_ledger,
        settings,
        [w1.flush(), w2.flush()],
        [("w1", line) for line in memory.lines],
        alive_w1,
        memory_key=("w1.memory", 0),
    )
    digests.append(digest(quiet_ledger))

    at(T0 + 6 * 3600)  # chat-1 has been idle for its timeout: billed
    fold.fold(quiet_ledger, settings, [w1.flush(), w2.flush()], None, alive_w1)
    digests.append(digest(quiet_ledger))

    w1.turn("chat-1", "c1b", T0 + 6 * 3600 + 900, 10.0, 1, (call("gpt-4o", "openai", 100, 10),))
    at(T0 + 9 * 3600)  # a later part of the same conversation
    fold.fold(quiet_ledger, settings, [w1.flush(), w2.flush()], None, alive_w1)
    digests.append(digest(quiet_ledger))

    assert payload(quiet_ledger, "basic", "time_entry") == [BASIC_ENTRY]
    assert payload(quiet_ledger, "basic", "expense") == [BASIC_EXPENSE]
    assert payload(quiet_ledger, "multi", "expense") == [MULTI_EXPENSE]
    assert payload(quiet_ledger, "outcomes", "outcome") == OUTCOMES
    check_session_invariants(quiet_ledger, settings)
    assert digests == SESSION_DIGESTS


def check_session_invariants(spool: Spool, settings: Settings) -> None:
    """What is computed here without the billing code."""
    [dead] = spool.records(state="dead")
    assert dead["record_id"].startswith("unbillable-poison|") and "OverflowError" in dead["last_error"]
    tiny = [p for n in range(TINY) for p in payload(spool, f"tiny-{n:03d}", "time_entry")]
    assert len(tiny) == TINY
    exact = sum(p["metadata"]["duration_seconds"] for p in tiny)
    assert sum(Decimal(str(p["hours"])) for p in tiny) == rounded_total(exact, 0.01, "nearest")
    for n in (0, 57, TINY - 1):
        [expense] = payload(spool, f"tiny-{n:03d}", "expense")
        start = T0 + n * 10.0 + 7.3 / 3
        cost = price(ModelUsage("gpt-4o-mini", "openai", 900 + n, 120 + n % 7, 0, 0, 0, 1), {}, start).usd
        assert cost is not None
        billed = (cost * Decimal("0.92") * Decimal("1.25")).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
        assert Decimal(str(expense["total_cost"])) == billed
        assert expense["metadata"]["cost_usd"] == float(cost.quantize(Decimal("0.00000001")))
        start_id = f"{T0 + n * 10.0:.6f}"
        assert expense["metadata"]["record_id"] == str(uuid.uuid5(_NS, f"tiny-{n:03d}|{start_id}|expense|llm"))
    midnight = payload(spool, "midnight", "time_entry")
    assert [p["spent_date"] for p in midnight] == ["2025-03-10", "2025-03-11"]
    assert [p["metadata"]["duration_seconds"] for p in midnight] == [600.0, 1200.0]
    assert {
        s["session_id"]: s["end_reason"] for s in spool.sessions() if s["session_id"] in ("orphan", "stuck", "chat-1")
    } == {"orphan": "process_exited", "stuck": "run_age_exceeded", "chat-1": "idle_timeout"}
    assert len(payload(spool, "chat-1", "time_entry")) == 3  # idle twice, then a later part
    assert payload(spool, "errors-only", "expense") == []


def rollup_journal(w1: Writer, day_start: float) -> None:
    for n in range(30):
        agent = ("alpha", "beta")[n % 2]
        w1.session(
            f"r-{n:02d}",
            day_start + 3600 * (1 + n % 20) + n,
            61.7 + n,
            opts={"agent_id": agent, "framework": "crewai"},
            calls=(
                call("gpt-4o-mini", "openai", 1000 + 13 * n, 150, cr=n * 10),
                call(
                    "claude-sonnet-4-5",
                    "anthropic",
                    5000,
                    200,
                    cw=1000,
                    details={"cache_write_1h_tokens": 400} if n % 3 == 0 else None,
                ),
            ),
            tools=n % 4,
            errors=n % 5 == 0,
            outcomes=({"outcome_type": "lead", "quantity": 1, "unit_price": 5.0},) if n % 7 == 0 else (),
        )
    w1.session(
        "r-unknown",
        day_start + 5 * 3600,
        30.0,
        opts={"agent_id": "alpha", "framework": "crewai"},
        calls=(call("secret-model", "acme", 999, 99),),
    )
    w1.session(
        "r-late",
        day_start + 23 * 3600 - 300,
        900.0,
        opts={"agent_id": "alpha", "framework": "crewai"},
        calls=(call("gpt-4o-mini", "openai", 10, 10),),
    )  # (until 00:10: the day has 23 hours)
    w1.turn(
        "r-chat",
        "rc",
        day_start + 22.8 * 3600,
        40.0,
        1,
        (call("gpt-4o", "openai", 100, 10),),
        opts={"agent_id": "alpha", "framework": "crewai"},
    )


def test_day_roll_up_billing_is_unchanged(tmp_path: Path, quiet_ledger: Spool, at: Callable[[float], None]) -> None:
    settings = keito.configure(
        timezone="America/New_York", granularity="day", project_id="proj-1", task_id="task-1", ledger_retention_days=0
    )
    day_start = utc("2025-03-09T05:00:00")  # midnight in New York; the clocks go forward at 2:00
    w1 = Writer(tmp_path / "w1.000001.jsonl", "w1")
    rollup_journal(w1, day_start)
    digests = []
    at(day_start + 21 * 3600)
    fold.fold(quiet_ledger, settings, [w1.flush()], None, alive_w1)  # the day is not over: outcomes only
    digests.append(digest(quiet_ledger))
    at(day_start + 23 * 3600 + 600)  # over, but the conversation that began in it is open
    fold.fold(quiet_ledger, settings, [w1.flush()], None, alive_w1)
    digests.append(digest(quiet_ledger))
    at(day_start + 26 * 3600)  # the conversation is billed (idle), then the day
    fold.fold(quiet_ledger, settings, [w1.flush()], None, alive_w1)
    digests.append(digest(quiet_ledger))
    rollups = [r for r in quiet_ledger.records() if r["session_id"].startswith("rollup-day-")]
    assert {(r["kind"], r["payload"]["metadata"].get("agent_id")) for r in rollups} == {
        ("time_entry", "alpha"),
        ("time_entry", "beta"),
        ("expense", "alpha"),
        ("expense", "beta"),
    }
    [entry] = [
        r["payload"] for r in rollups if r["kind"] == "time_entry" and r["payload"]["metadata"]["agent_id"] == "alpha"
    ]
    [expense] = [
        r["payload"] for r in rollups if r["kind"] == "expense" and r["payload"]["metadata"]["agent_id"] == "alpha"
    ]
    assert entry == ROLLUP_ENTRY and expense == ROLLUP_EXPENSE
    seconds = sum(61.7 + n for n in range(0, 30, 2)) + 30.0 + 300.0 + 40.0  # (r-late: until midnight)
    assert entry["metadata"]["duration_seconds"] == round(seconds, 3)
    assert Decimal(str(entry["hours"])) == rounded_total(seconds, 0.01, "nearest")
    assert digests == ROLLUP_DIGESTS


def read_whole(path: Path, offset: int, limit: int) -> tuple[list[bytes], int, bool]:
    """The lines a fold reads, as one read of `limit` bytes gives them."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(limit)
    at_eof = len(data) < limit
    zero = data.find(b"\0")
    if zero >= 0:
        data, at_eof = data[:zero], True
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), offset + end, at_eof and end == len(data)


@pytest.mark.parametrize("limit", [100, 4096, 70_000, fold.MAX_READ])
@pytest.mark.parametrize("tail", [b"", b"\0" * 5000, b'["c","cut sho', b'["c","cut sho' + b"\0" * 9])
def test_a_segment_read_block_by_block_gives_the_lines_of_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int, tail: bytes
) -> None:
    monkeypatch.setattr(fold, "MAX_READ", limit)
    monkeypatch.setattr(fold, "READ_BLOCK", 1000)
    path = tmp_path / "w.000001.jsonl"
    path.write_bytes(b"".join(b'["n","s%d","i","r",1.5,%d,0]\n' % (n, n) for n in range(3000)) + tail)
    for offset in (0, 29, 1000, 50_000, path.stat().st_size, path.stat().st_size + 10):
        assert fold._read_lines(str(path), offset) == read_whole(path, offset, limit)
        data = path.read_bytes()[offset:][:limit]
        rest = data.split(b"\0")[0]
        at_eof = len(data) < limit or len(rest) < len(data)
        assert fold._only_a_cut_line(str(path), offset) == (at_eof and b"\n" not in rest)


class Frozen(dict[str, Any]):
    """A mapping subclass (JSON would see a dict; `encodable` makes it one)."""


@pytest.mark.parametrize(
    "value",
    [
        {"notes": "plain", "hours": 0.25, "billable": True, "metadata": {"a": 1, "b": None, "c": [1, 2.5, "x"]}},
        {"notes": "emoji 😀 and accents é", "metadata": {}},
        {"notes": "lone \ud800 surrogate", "metadata": {"k\udfff": "v"}},
        {"hours": math.nan, "metadata": {"q": math.inf, "r": -math.inf}},
        {"cost": Decimal("1.50"), "when": datetime(2025, 1, 1, tzinfo=UTC), "metadata": {"t": (1, 2)}},
        {"metadata": Frozen(a=1), "list": [Frozen(b=math.nan)]},
        {"notes": "a literal \\ud800 backslash", "control": "\x00\x1f\x7f"},
    ],
)
def test_payload_json_is_what_encodable_then_dumps_gives(value: dict[str, Any]) -> None:
    from keito_instrument._metadata import encodable, strict_json

    old = json.dumps(encodable(value, "payload"), separators=(",", ":"), allow_nan=False, default=str)
    assert strict_json(value, "payload") == old


@pytest.mark.parametrize("session_id", ["basic", "ünïcode-😀", "a|b|c", "", "x" * 500])
@pytest.mark.parametrize("opened_at", [0.0, 1741584500.123456, 1e10 + 0.5])
def test_record_ids_are_uuid5_of_the_session_its_opening_kind_and_key(session_id: str, opened_at: float) -> None:
    from keito_instrument._records import record_id

    snapshot = SimpleNamespace(session_id=session_id, opened_at=opened_at)
    for kind, key in (("time_entry", "2025-03-10"), ("expense", "llm"), ("outcome", "3"), ("session", "")):
        name = f"{session_id}|{opened_at:.6f}|{kind}|{key}"
        assert record_id(snapshot, kind, key) == str(uuid.uuid5(_NS, name))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "line",
    [
        b'["c","s","i","r",1741584500.25,"gpt-4o","openai",1,2,0,0,0,0,0,null,null]',
        b'["x","s","i","r",1.0,{"quantity":NaN,"description":"bad \\ud800 text"}]',
        b'["o","s","i","r",1.0,"runs",{"metadata":{"k":"\xc3\xa9\xf0\x9f\x98\x80"}}]',
        b' ["n","s","i","r",1.0,1,0]',
        b'["n","s","i","r",1.0,1,0] ',
        b'["n","s","i","r",1.0,1,0]\r',
        b'\xef\xbb\xbf["n","s","i","r",1.0,1,0]',
        b'["n","s","i","r",1.0,1,0]]',
        b'["n","s","i","r",1.0,1,0][1]',
        b'["n","s","i","r",1.0,1,\xff]',
        b'["n","s","i","r",1.0,1',
        b'["too","short"]',
        b'{"kind":"c"}',
        b"[]",
        b"[",
        b"",
    ],
)
def test_a_journal_line_parses_as_json_loads_reads_it(line: bytes) -> None:
    try:
        expected = json.loads(line)
    except ValueError:
        expected = None
    if not isinstance(expected, list) or len(expected) < 5:
        expected = None
    parsed = fold._parse(line)
    assert json.dumps(parsed) == json.dumps(expected)  # (NaN compares unequal to itself)


@pytest.mark.parametrize(
    "tiers",
    [
        ({"framework": "python", "cost_usd": 0.00036, "llm_calls": 1, "billable": True}, {"env": "ci"}),
        ({"notes": "emoji 😀 é", "n": 1}, {}),
        ({"quantity": math.nan, "price": math.inf}, {"text": "NaN and Infinity as words"}),
        ({"outcome_evidence": {"ticket": "T-1", "links": ["a", "b"], "deep": {"x": 1.5}}}, {"k": "del \x7f"}),
        ({"control": "tab\tnew\nline\x01", "quote": 'say "hi" \\ back'}, {}),
        ({"lone": "bad \ud800"}, {}),
        ({f"key_{n}": "x" * 100 for n in range(60)}, {"user": "y" * 300}),  # over the limit: truncated
    ],
)
def test_a_payload_joined_to_its_measured_metadata_is_its_strict_json(tiers: tuple[dict[str, Any], ...]) -> None:
    from keito_instrument._metadata import fit, fit_json, payload_json, strict_json

    try:
        metadata, text = fit_json({"session_id": "s", "record_id": "r"}, *tiers)
    except UnicodeEncodeError:  # (a lone surrogate cannot be measured: that session is a dead letter)
        with pytest.raises(UnicodeEncodeError):
            fit({"session_id": "s", "record_id": "r"}, *tiers)
        return
    assert metadata == fit({"session_id": "s", "record_id": "r"}, *tiers)
    assert text == json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, default=str)
    for head in ({"project_id": "p", "hours": 0.25, "notes": "n"}, {"hours": math.nan}, {"notes": "é \ud800"}, {}):
        payload = {**head, "metadata": metadata}
        assert payload_json(payload, "payload", text) == strict_json(payload, "payload")
