"""examples/openai_agents_run.py runs offline, as a user would run it, and writes the expected ledger."""

from __future__ import annotations

from pathlib import Path

from keito_instrument._spool import Spool
from tests.test_examples import LEDGER, run_example


def test_example_runs_offline_and_bills_one_conversation(tmp_path: Path) -> None:
    out = run_example("openai_agents_run.py", tmp_path, unset=("OPENAI_API_KEY",),
                      OPENAI_AGENTS_DISABLE_TRACING="false")
    assert "agent answered: 2 + 3 = 5." in out
    assert "gpt-4o-mini" in out and "TOTAL" in out

    spool = Spool(tmp_path / LEDGER)
    try:
        [row] = spool.sessions()
        assert (row["session_id"], row["framework"], row["agent_id"]) == ("math-chat", "openai-agents", "math-agent")
        assert (row["llm_calls"], row["tool_calls"]) == (2, 1)
        assert (row["input_tokens"], row["output_tokens"]) == (2400, 120)
        [expense] = [r for r in spool.records() if r["kind"] == "expense"]
        assert expense["payload"]["metadata"]["cache_read_tokens"] == 2048
    finally:
        spool.close()
