"""Never into the host: internal errors are logged once per kind and swallowed; the user's are not."""

from __future__ import annotations

import asyncio
import logging

import pytest

import keito_instrument as keito
from keito_instrument import _guard
from keito_instrument._spool import Spool


@pytest.mark.guard_errors_expected
def test_guard_swallows_exceptions_but_not_base_exceptions() -> None:
    seen: list[str] = []
    _guard.add_swallow_listener(lambda kind, exc: seen.append(kind))
    try:
        with _guard.guard("unit"):
            raise ValueError("ours")
        with pytest.raises(KeyboardInterrupt), _guard.guard("unit"):
            raise KeyboardInterrupt
    finally:
        _guard._listeners.pop()
    assert seen == ["unit"]


@pytest.mark.guard_errors_expected
def test_an_internal_failure_in_billing_never_reaches_the_host_and_loses_nothing(
        ledger: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        _guard_failures: list[tuple[str, BaseException]]) -> None:
    from keito_instrument._engine import fold

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("records exploded")

    monkeypatch.setattr(fold, "build", broken)  # billing looks it up at each fold

    @keito.track_agent
    def work(x: int) -> int:
        keito.record_llm_call("gpt-4o", input_tokens=1, output_tokens=1)
        return x + 1

    async def awork() -> int:
        async with keito.session():
            keito.record_llm_call("gpt-4o", input_tokens=1, output_tokens=1)
            return 5

    with caplog.at_level(logging.DEBUG, logger="keito_instrument"):
        assert [work(i) for i in range(3)] == [1, 2, 3]
        assert asyncio.run(awork()) == 5
        keito.flush(1.0)
    # Each session that could not be billed is kept, with its state and the reason, as a dead letter.
    dead = ledger.records(state="dead")
    assert len(dead) == 4 and all("records exploded" in r["last_error"] for r in dead)
    assert ledger.sessions() == [] and "records exploded" in caplog.text
    monkeypatch.undo()  # the bug is fixed: `sync --retry-dead` hands the sessions back to billing
    from keito_instrument._export.queue import requeue_dead

    assert requeue_dead(ledger) == 4
    assert keito.flush(5.0)
    assert len(ledger.sessions()) == 4 and ledger.records(state="dead") == []


def test_a_broken_ledger_keeps_the_host_running_and_bills_once_it_works(
        ledger: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(type(ledger), "transaction", full)
    with keito.session():
        keito.record_llm_call("gpt-4o", input_tokens=1, output_tokens=1)
    keito.flush(0.5)
    # Ledger trouble is not an internal error: the events wait (journal or memory), a warning says so.
    assert ledger.sessions() == [] and "disk full" in caplog.text
    monkeypatch.undo()
    assert keito.flush(5.0)
    assert [s["llm_calls"] for s in ledger.sessions()] == [1]


def test_bad_token_values_do_not_raise_into_the_host(ledger: Spool, caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from keito_instrument import _usage

    monkeypatch.setattr(_usage, "_warned", set())  # (warned once per process: earlier tests may have)
    with keito.session():
        assert keito.record_llm_call("gpt-4o", input_tokens=-5, output_tokens=3) is True
    assert ledger.sessions()[0]["input_tokens"] == 0
    assert "negative input_tokens" in caplog.text


def test_a_wrongly_typed_count_is_dropped_and_the_call_kept(ledger: Spool, caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from keito_instrument import _usage

    monkeypatch.setattr(_usage, "_warned", set())  # (warned once per process: earlier tests may have)
    with keito.session():
        assert keito.record_llm_call("gpt-4o", input_tokens="many", output_tokens=1) is True  # type: ignore[arg-type]
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (1, 0, 1)
    assert "input_tokens='many'" in caplog.text


def test_a_locked_spool_never_blocks_the_host_and_loses_nothing(ledger: Spool) -> None:
    import sqlite3
    import time

    holder = sqlite3.connect(ledger.path, isolation_level=None, check_same_thread=False)
    with keito.session():
        pass  # create the schema
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        with keito.session(session_id="while-locked"):
            keito.record_llm_call("gpt-4o", input_tokens=3, output_tokens=1)
        host_wait = time.monotonic() - started
        assert host_wait < 1.0  # the host only appends to the journal: it never waits for SQLite
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert keito.flush(timeout=10.0) is True
    assert [r["session_id"] for r in ledger.sessions() if r["session_id"] == "while-locked"] == ["while-locked"]
