"""Bounded state: runs whose end never arrives are forgotten (count and age); their sessions still end."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from _lc_fakes import UsageChatModel, reply
from langchain_core.prompts import ChatPromptTemplate

import keito_instrument as keito
from keito_instrument import _pipeline
from keito_instrument._spool import Spool
from keito_instrument.integrations import langchain as keito_lc
from keito_instrument.integrations.langchain import KeitoCallbackHandler


def start_roots(handler: KeitoCallbackHandler, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    for run_id in ids:  # a crashed worker: starts that never see their end
        handler.on_chain_start({}, {}, run_id=run_id, parent_run_id=None)
        handler.on_chain_start({}, {}, run_id=uuid.uuid4(), parent_run_id=run_id)
    return ids


def test_open_runs_are_capped_in_count(ledger: Spool) -> None:
    keito.configure(max_open_runs=50)
    handler = KeitoCallbackHandler()
    ids = start_roots(handler, 200)
    assert len(keito_lc._table) <= 50
    assert ids[-1].int in keito_lc._table and ids[0].int not in keito_lc._table  # the oldest went first
    # A late end of a forgotten run is ignored, a tracked one still closes its session.
    handler.on_chain_end({}, run_id=ids[0])
    handler.on_chain_end({}, run_id=ids[-1])
    assert len(ledger.sessions()) == 1
    # Normal runs keep working at the cap.
    (
        ChatPromptTemplate.from_messages([("human", "{q}")]) | UsageChatModel(replies=[reply(inp=3, out=1)])
    ).invoke({"q": "x"}, config={"callbacks": [handler]})
    assert len(ledger.sessions()) == 2


def test_old_runs_are_forgotten_and_their_sessions_end(ledger: Spool) -> None:
    keito.configure(max_run_age=0.05)
    handler = KeitoCallbackHandler()
    start_roots(handler, 5)
    assert len(keito_lc._table) == 10
    time.sleep(0.1)
    assert len(keito_lc._table.sweep()) == 10 and len(keito_lc._table) == 0
    _pipeline.registry.sweep()  # the core ends sessions whose runs outlived max_run_age
    rows = ledger.sessions()
    assert _pipeline.registry.open_sessions() == []
    assert all(r["end_reason"] == "run_age_exceeded" for r in rows)


def test_ordinary_traffic_forgets_stale_runs_without_a_manual_sweep(ledger: Spool) -> None:
    keito.configure(max_run_age=0.05)
    handler = KeitoCallbackHandler()
    stale = start_roots(handler, 5)
    time.sleep(0.1)
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | UsageChatModel(replies=[reply(inp=3, out=1)])
    for i in range(40):  # 80 root and call inserts: the table sweeps itself on the way
        chain.invoke({"q": str(i)}, config={"callbacks": [handler]})
    assert not any(run_id.int in keito_lc._table for run_id in stale)
    assert len(keito_lc._table) == 0


def test_unknown_run_ends_are_ignored(ledger: Spool) -> None:
    handler = KeitoCallbackHandler()
    handler.on_chain_end({}, run_id=uuid.uuid4())
    handler.on_llm_error(RuntimeError("x"), run_id=uuid.uuid4())
    handler.on_tool_error(RuntimeError("x"), run_id=uuid.uuid4())
    assert ledger.sessions() == [] and len(keito_lc._table) == 0


def test_model_calls_whose_end_never_arrives_are_capped_too(ledger: Spool) -> None:
    keito.configure(max_open_runs=30)
    handler = KeitoCallbackHandler()
    [root] = start_roots(handler, 1)
    calls = [uuid.uuid4() for _ in range(100)]
    for run_id in calls:  # model calls inside the root that never end (a stream never closed, say)
        handler.on_chat_model_start({}, [], run_id=run_id, parent_run_id=root)
    assert len(keito_lc._table) <= 30
    assert calls[-1].int in keito_lc._table and calls[0].int not in keito_lc._table


def test_ordinary_traffic_brings_the_table_back_within_its_count_cap(ledger: Spool) -> None:
    keito.configure(max_open_runs=20)
    handler = KeitoCallbackHandler()
    start_roots(handler, 40)  # 80 entries stuck open, over the cap
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | UsageChatModel(replies=[reply(inp=3, out=1)])
    for i in range(20):  # 40 more root and call inserts: the cap is read again at a sweep on the way
        chain.invoke({"q": str(i)}, config={"callbacks": [handler]})
    assert len(keito_lc._table) <= 20
    rows = ledger.sessions()  # the calls that ran were all billed, whatever was forgotten around them
    assert len(rows) == 20 and all((r["llm_calls"], r["input_tokens"]) == (1, 3) for r in rows)


def test_forgotten_runs_are_logged_at_debug_level(ledger: Spool, caplog: pytest.LogCaptureFixture) -> None:
    keito.configure(max_open_runs=4)
    handler = KeitoCallbackHandler()
    with caplog.at_level(logging.DEBUG, logger="keito_instrument"):
        start_roots(handler, 70)  # past the first sweep (every 64 root inserts)
    assert any("forgot" in r.getMessage() and "LangChain run" in r.getMessage() for r in caplog.records)
