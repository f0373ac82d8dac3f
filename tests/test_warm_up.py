"""The warm-up starts where a user sets us up, so the first session does not import on the host.

`configure()`, `@track_agent` and an adapter's handler (or `instrument()`) start a short-lived
thread that loads the journal, the billing code and the price data and starts the billing
thread, without touching the disk (the ledger's path may be configured after); `import
keito_instrument` alone starts nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_CHECK = """
import os, sys, threading, time
ledger = sys.argv[1]
os.environ["KEITO_LEDGER"] = ledger
import keito_instrument as keito
assert "genai_prices" not in sys.modules, "imported at import time"
assert [t.name for t in threading.enumerate()] == ["MainThread"], "a thread started at import time"
{setup}
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    names = {{t.name for t in threading.enumerate()}}
    if "genai_prices" in sys.modules and "keito-instrument-billing" in names and \\
            "keito-instrument-warmup" not in names:
        break
    time.sleep(0.01)
else:
    raise SystemExit(f"not warmed up: {{sorted(names)}}")
assert "keito_instrument._engine.fold" in sys.modules and "keito_instrument._journal" in sys.modules
assert not os.path.exists(ledger) and not os.path.exists(ledger + ".journal"), "touched the disk"
print("warm")
"""

_SETUPS = {
    "configure": "keito.configure(agent_id='bot')",
    "track_agent": "@keito.track_agent(agent_id='bot')\ndef agent():\n    pass",
    "langchain handler": "from keito_instrument.integrations.langchain import KeitoCallbackHandler\n"
                         "KeitoCallbackHandler()",
}


@pytest.mark.parametrize("setup", list(_SETUPS))
def test_setting_up_warms_the_billing_code_without_touching_the_disk(setup: str, tmp_path: Path) -> None:
    if setup == "langchain handler":
        pytest.importorskip("langchain_core")
    script = textwrap.dedent(_CHECK).format(setup=_SETUPS[setup])
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "l.sqlite3")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "warm"


def test_a_disabled_configure_starts_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, threading, time
        import keito_instrument as keito
        keito.configure(disabled=True)
        time.sleep(0.3)
        assert [t.name for t in threading.enumerate()] == ["MainThread"]
        assert "genai_prices" not in sys.modules
        print("idle")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "idle"
