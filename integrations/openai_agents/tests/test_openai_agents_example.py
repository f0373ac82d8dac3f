"""examples/openai_agents_run.py runs offline, as a user would run it, and writes the expected ledger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from keito_instrument._spool import Spool

ROOT = Path(__file__).resolve().parents[3]


def test_example_runs_offline_and_bills_one_conversation(tmp_path: Path) -> None:
    ledger_path = tmp_path / "example.sqlite3"
    env = {**os.environ, "KEITO_LEDGER": str(ledger_path), "OPENAI_AGENTS_DISABLE_TRACING": "false"}
    for var in ("KEITO_API_KEY", "KEITO_ACCOUNT_ID", "OPENAI_API_KEY"):
        env.pop(var, None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "openai_agents_run.py")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "agent answered: 2 + 3 = 5." in result.stdout
    assert "gpt-4o-mini" in result.stdout and "TOTAL" in result.stdout

    spool = Spool(ledger_path)
    try:
        [row] = spool.sessions()
        assert (row["session_id"], row["framework"], row["agent_id"]) == ("math-chat", "openai-agents", "math-agent")
        assert (row["llm_calls"], row["tool_calls"]) == (2, 1)
        assert (row["input_tokens"], row["output_tokens"]) == (2400, 120)
        [expense] = [r for r in spool.records() if r["kind"] == "expense"]
        assert expense["payload"]["metadata"]["cache_read_tokens"] == 2048
    finally:
        spool.close()
