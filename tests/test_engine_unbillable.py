"""A session that cannot be billed becomes one dead letter; every other session still bills."""

from __future__ import annotations

from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument._engine import fold
from keito_instrument._spool import Spool


def test_one_unbillable_session_never_blocks_the_others(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fold.build

    def build(snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        if snapshot.session_id == "poison":
            raise RuntimeError("a bug in record building")
        return real(snapshot, *args, **kwargs)

    monkeypatch.setattr(fold, "build", build)
    for sid in ("before", "poison", "after"):
        with keito.session(session_id=sid):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=2)
    assert keito.flush(5.0)
    assert sorted(s["session_id"] for s in ledger.sessions()) == ["after", "before"]
    [dead] = ledger.records(state="dead")
    assert dead["kind"] == fold.UNBILLABLE and dead["session_id"] == "poison"
    assert "a bug in record building" in dead["last_error"]
    from keito_instrument._export.queue import requeue_dead

    with keito.session(session_id="later"):  # and billing goes on
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1, output_tokens=1)
    assert keito.flush(5.0)
    assert "later" in {s["session_id"] for s in ledger.sessions()}
    monkeypatch.undo()  # fixed: the retry hands the session back to billing, never to the exporter
    assert requeue_dead(ledger) == 1
    assert keito.flush(5.0)
    [row] = [s for s in ledger.sessions() if s["session_id"] == "poison"]
    assert (row["llm_calls"], row["input_tokens"]) == (1, 10)
    assert ledger.records(state="dead") == []


def test_an_unbillable_session_is_not_in_its_days_roll_up(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    keito.configure(granularity="day")
    real = fold.build

    def build(snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        if snapshot.session_id == "poison":
            raise RuntimeError("a bug in record building")
        return real(snapshot, *args, **kwargs)

    monkeypatch.setattr(fold, "build", build)
    for sid, tokens in (("before", 10), ("poison", 500), ("after", 20)):
        with keito.session(session_id=sid, agent_id="rolled"):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=tokens, output_tokens=2)
    assert keito.flush(5.0)
    [dead] = ledger.records(state="dead")
    assert dead["session_id"] == "poison"  # kept to be billed again after a fix (sync --retry-dead)...
    rows = [json.loads(text) for (text,) in ledger.connect().execute("SELECT state FROM rollups")]
    assert sum(row["sessions"] for row in rows) == 2  # ...so its day's roll-up does not hold it too
    assert sum(slot[0] for row in rows for slot in row["usage"].values()) == 30
