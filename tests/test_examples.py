"""Every example runs offline, as a user would run it.

`run_example` is the one runner: the example tests in integrations/*/tests import it from here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEDGER = "ledger.sqlite3"  # the example's ledger, in its working folder


def run_example(name: str, tmp_path: Path, *, unset: tuple[str, ...] = (), **env: str) -> str:
    """Run `examples/<name>` as a user would and return its stdout, once it has exited cleanly.

    It runs in `tmp_path`, billing into `tmp_path / LEDGER`, without Keito credentials or the
    variables named in `unset` (a real API key or endpoint of the developer's), with `env` added.
    """
    environ = {**os.environ, "KEITO_LEDGER": str(tmp_path / LEDGER), "CREWAI_DISABLE_TELEMETRY": "true", **env}
    for var in ("KEITO_API_KEY", "KEITO_ACCOUNT_ID", *unset):
        environ.pop(var, None)
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True,
                            env=environ, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_decorator_quickstart(tmp_path: Path) -> None:
    out = run_example("decorator_quickstart.py", tmp_path)
    assert "chat-42: 2 LLM calls so far" in out
    assert "faq-bot" in out and "TOTAL" in out
