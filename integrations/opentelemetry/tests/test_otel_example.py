"""examples/otel_tracer_provider.py runs offline, as a user would run it, and writes the expected ledger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from keito_instrument._spool import Spool

ROOT = Path(__file__).resolve().parents[3]


def test_example_runs_and_bills_two_sessions(tmp_path: Path) -> None:
    ledger_path = tmp_path / "example.sqlite3"
    env = {**os.environ, "KEITO_LEDGER": str(ledger_path)}
    for var in ("KEITO_API_KEY", "KEITO_ACCOUNT_ID", "OTEL_SDK_DISABLED"):
        env.pop(var, None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "otel_tracer_provider.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "12 spans exported as usual" in result.stdout
    assert "research-agent" in result.stdout and "TOTAL" in result.stdout

    spool = Spool(ledger_path)
    try:
        rows = {r["session_id"]: r for r in spool.sessions()}
        assert len(rows) == 2 and "conv-2026-11-22" in rows
        conversation = rows["conv-2026-11-22"]
        # Two turns, two model calls each; the agent spans' repeated totals are not billed again.
        assert (conversation["llm_calls"], conversation["tool_calls"]) == (4, 2)
        assert (conversation["input_tokens"], conversation["output_tokens"]) == (7200, 1060)
        assert all(r["framework"] == "otel" and r["agent_id"] == "research-agent" for r in rows.values())
        kinds = sorted(r["kind"] for r in spool.records())
        assert kinds == ["expense", "expense", "time_entry", "time_entry"]
    finally:
        spool.close()
