"""The `keito_server` fixture as a user gets it: the installed pytest plugin, in a separate suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

USER_TESTS = """
import keito_instrument as keito


def test_a_ticket_is_billed(keito_server):
    with keito.session(agent_id="support-bot"):
        keito.record_llm_call("gpt-4o", "openai", input_tokens=1200, output_tokens=300)
    assert keito.flush(5.0)
    assert len(keito_server.time_entries) == 1
    assert keito_server.expenses[0]["metadata"]["input_tokens"] == 1200
    assert keito_server.time_entries[0]["project_id"] == "mine"  # kept: configured before


def test_settings_are_restored_afterwards():
    settings = keito.get_settings()
    assert settings.api_key is None and settings.base_url == "https://app.keito.ai"
    assert settings.project_id == "mine" and settings.task_id is None
"""

USER_CONFTEST = """
import keito_instrument as keito

keito.configure(project_id="mine")
"""


def test_users_get_the_fixture_from_the_installed_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    (tmp_path / "conftest.py").write_text(textwrap.dedent(USER_CONFTEST))
    env_free = {"PATH": "/usr/bin:/bin", "KEITO_LEDGER": str(tmp_path / "ledger.sqlite3")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env_free,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_plugin_imports_cheaply() -> None:
    code = (
        "import sys, threading, keito_instrument.testing.plugin as p; "
        "print(threading.active_count(), sorted(m for m in ('httpx', 'asyncio', 'http.server', "
        "'keito_instrument._export.worker', 'keito_instrument.testing._server') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1 []"  # no thread, no HTTP stack until a fixture is used
