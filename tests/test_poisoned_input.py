"""A value Keito's strict JSON cannot carry (NaN, infinity, a lone surrogate) never wedges delivery:
it is sent as null (or with the bad characters replaced), with a warning naming it, and the rest of
the session is billed."""

from __future__ import annotations

import logging

import pytest

import keito_instrument as keito
from keito_instrument.testing import KeitoTestServer


def test_nan_metadata_an_infinite_outcome_and_a_lone_surrogate_are_delivered(
    keito_server: KeitoTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        with keito.session(session_id="poisoned", metadata={"x": float("nan"), "note": "bad \udc80 text"}):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)
            keito.log_outcome("ticket_resolved", quantity=float("inf"))
        with keito.session(session_id="healthy"):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=20, output_tokens=2)
        assert keito.flush(10.0)  # nothing stuck in `sending`
    mine = [r for r in keito_server.time_entries + keito_server.expenses
            if r["metadata"]["session_id"] == "poisoned"]
    assert len(mine) == 3  # time entry, expense, outcome
    expense = next(r for r in keito_server.expenses if r["metadata"]["session_id"] == "poisoned")
    assert expense["metadata"]["input_tokens"] == 10
    assert all(r["metadata"].get("x") is None for r in mine)
    assert all("\udc80" not in str(r["metadata"].get("note", "")) for r in mine)
    assert any(r["metadata"]["session_id"] == "healthy" for r in keito_server.expenses)
    assert "metadata.x is nan" in caplog.text and "outcome_quantity is inf" in caplog.text
    assert keito_server.duplicates() == {}


def test_encodable_makes_any_payload_strict_json() -> None:
    import json

    from keito_instrument._metadata import encodable

    payload = {"hours": float("-inf"), "notes": "a \ud800 b", "metadata": {"k": [1.5, float("nan")]}}
    clean = encodable(payload)
    text = json.dumps(clean, allow_nan=False)  # would raise on any NaN left
    text.encode("utf-8")  # would raise on any lone surrogate left
    assert clean["hours"] is None and clean["metadata"]["k"] == [1.5, None] and clean["notes"] == "a ? b"
