"""Every example runs offline, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEITO_LEDGER": str(tmp_path / "ledger.sqlite3"), "CREWAI_DISABLE_TELEMETRY": "true"}
    for var in ("KEITO_API_KEY", "KEITO_ACCOUNT_ID"):
        env.pop(var, None)
    return subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)


def test_decorator_quickstart(tmp_path: Path) -> None:
    result = run_example("decorator_quickstart.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "chat-42: 2 LLM calls so far" in result.stdout
    assert "faq-bot" in result.stdout and "TOTAL" in result.stdout
