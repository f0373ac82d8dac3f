"""Across processes: `keito.session_headers()` puts the session in W3C baggage, and a process
given those headers joins the session with `keito.session(from_headers=...)`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import keito_instrument as keito
from keito_instrument import _baggage
from keito_instrument._spool import Spool

CHILD = textwrap.dedent("""
    import json, sys
    import keito_instrument as keito

    headers = json.loads(sys.argv[1])
    with keito.session(from_headers=headers, agent_id="worker") as s:
        for _ in range(2):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1000, output_tokens=50)
        print(s.session_id)
""")


def test_the_helper_adds_the_session_to_existing_baggage() -> None:
    assert keito.session_headers({"Accept": "x"}) == {"Accept": "x"}  # outside a session: unchanged
    with keito.session("conv 1/ü"):
        out = keito.session_headers({"Baggage": "userId=alice,keito.session_id=old", "Accept": "x"})
        assert out == {"Baggage": "userId=alice,keito.session_id=conv%201%2F%C3%BC", "Accept": "x"}
        assert keito.session_headers() == {"baggage": "keito.session_id=conv%201%2F%C3%BC"}
    assert _baggage.session_id_from(out) == "conv 1/ü"


def test_the_key_is_the_one_the_span_processor_reads() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from keito_instrument.integrations.otel._attrs import BAGGAGE_SESSION_KEYS

    assert _baggage.SESSION_KEY in BAGGAGE_SESSION_KEYS


def test_the_helper_headers_read_by_opentelemetry_baggage() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import baggage
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    with keito.session("otel side"):
        headers = keito.session_headers({"baggage": "a=1"})
    ctx = W3CBaggagePropagator().extract(headers)
    assert baggage.get_all(ctx) == {"a": "1", "keito.session_id": "otel side"}


@pytest.mark.parametrize("headers", [{}, {"baggage": "userId=alice"}, {"baggage": "=;,,"}, {"baggage": 3}])
def test_headers_without_the_entry_start_a_session_as_before(headers: dict[str, object]) -> None:
    with keito.session(from_headers=headers) as s:  # type: ignore[arg-type]
        assert s.session_id and s.close == "runs"


def test_a_subprocess_given_the_headers_joins_the_session(ledger: Spool) -> None:
    @keito.track_agent(agent_id="caller")
    def orchestrate() -> tuple[str, str]:
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100, output_tokens=10)
        headers = keito.session_headers({"content-type": "application/json"})
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(headers)], capture_output=True,
                               text=True, env=dict(os.environ), timeout=120, check=True)
        return keito.current_session().session_id, child.stdout.strip()  # type: ignore[union-attr]

    sid, child_sid = orchestrate()
    assert child_sid == sid
    # The receiving process's part stays open for its later requests of the session (billed
    # FIRST_JOIN_TIMEOUT after a single one); end it now.
    (live,) = ledger.live_sessions()
    assert (live["session_id"], live["state"]["calls"]) == (sid, 2)
    assert keito.end_session(sid)
    rows = [r for r in ledger.sessions() if r["session_id"] == sid]
    assert sorted((r["agent_id"], r["llm_calls"], r["input_tokens"]) for r in rows) == [
        ("caller", 1, 100), ("worker", 2, 2000)]
    assert len(ledger.sessions()) == 2  # nothing billed under another id
    expenses = [r for r in ledger.records(session_id=sid) if r["kind"] == "expense"]
    assert len(expenses) == 2 and all(e["payload"]["metadata"]["session_id"] == sid for e in expenses)
