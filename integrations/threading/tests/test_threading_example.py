"""examples/threading_fanout.py runs offline, as a user would run it, and bills as it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from keito_instrument._spool import Spool

ROOT = Path(__file__).resolve().parents[3]


def test_the_fanout_example_bills_every_call_to_its_session(tmp_path: Path) -> None:
    env = {**os.environ, "KEITO_LEDGER": str(tmp_path / "example.sqlite3")}
    for var in ("KEITO_API_KEY", "KEITO_ACCOUNT_ID"):
        env.pop(var, None)
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "threading_fanout.py")], capture_output=True,
                            text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "9 notes; session research-1 billed every call" in result.stdout
    assert "worker process joined session research-2" in result.stdout
    assert "TOTAL" in result.stdout
    example = Spool(str(tmp_path / "example.sqlite3"))
    calls = {(r["session_id"], r["agent_id"]): r["llm_calls"] for r in example.sessions()}
    assert calls == {("research-1", "research-bot"): 9, ("research-2", "research-bot"): 0,
                     ("research-2", "research-worker"): 1}
