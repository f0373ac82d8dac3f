"""The testing kit never writes into the user's real ledger, and puts the user's settings back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keito_instrument as keito
from keito_instrument import testing
from keito_instrument._spool import Spool
from keito_instrument.testing import KeitoTestServer

USER_TESTS = """
import keito_instrument as keito


def test_a_ticket_is_billed(keito_server):
    with keito.session(agent_id="support-bot"):
        keito.record_llm_call("gpt-4o", "openai", input_tokens=1200, output_tokens=300)
    assert keito.flush(5.0)
    assert len(keito_server.expenses) == 1


def test_an_open_conversation_at_teardown(keito_server):
    run = keito.begin_run("chat-1", close="idle")
    keito.record_llm_call("gpt-4o", "openai", input_tokens=10, output_tokens=1, session_id="chat-1")
    keito.end_run(run)


def test_settings_are_restored_afterwards():
    settings = keito.get_settings()
    assert settings.ledger_path is None and settings.api_key is None
    assert settings.base_url == "https://app.keito.ai" and settings.project_id == "mine"
"""


def test_a_users_suite_with_the_fixture_leaves_their_real_ledger_alone(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    (suite / "conftest.py").write_text("import keito_instrument as keito\n\nkeito.configure(project_id='mine')\n")
    data_home = tmp_path / "xdg"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "XDG_DATA_HOME": str(data_home)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(suite)],
        cwd=suite, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    real = [path for path in data_home.rglob("*") if path.is_file()]
    assert real == [], real  # no ledger (nor journal) in the user data directory
    report = subprocess.run([sys.executable, "-m", "keito_instrument.cli", "report"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert report.returncode == 1 and "no ledger" in report.stderr


def test_use_test_server_records_into_a_temporary_ledger_and_restores_settings(tmp_path: Path) -> None:
    mine = str(tmp_path / "mine.sqlite3")
    keito.configure(ledger_path=mine, project_id="mine")
    with testing.use_test_server() as server:
        inside = keito.get_settings()
        assert inside.ledger_path != mine and inside.base_url == server.url
        with keito.session(agent_id="a"):
            keito.record_llm_call("gpt-4o", "openai", input_tokens=10, output_tokens=1)
        assert keito.flush(5.0) and len(server.expenses) == 1
        assert server.expenses[0]["project_id"] == "mine"  # configured before: kept
        temporary = Path(str(inside.ledger_path))
        assert Spool(temporary).sessions()
    after = keito.get_settings()
    assert (after.ledger_path, after.api_key, after.project_id, after.base_url) == (
        mine, None, "mine", "https://app.keito.ai")
    assert not server.running and not temporary.parent.exists()
    assert not Path(mine).exists()


def test_use_test_server_with_a_running_server_leaves_it_running(tmp_path: Path) -> None:
    with KeitoTestServer() as server:
        with testing.use_test_server(server, ledger_dir=tmp_path) as same:
            assert same is server
            with keito.session():
                keito.record_llm_call("gpt-4o", "openai", input_tokens=10, output_tokens=1)
        assert server.running and len(server.time_entries) == 1  # ended and delivered on exit
        assert Spool(tmp_path / "ledger.sqlite3").counts()["delivered"] == 2
    assert keito.get_settings().api_key is None


def test_the_fixture_uses_the_tests_own_temporary_ledger(keito_server: KeitoTestServer, tmp_path: Path) -> None:
    ledger = keito.get_settings().ledger_path
    assert ledger is not None and Path(ledger).is_relative_to(tmp_path)
    assert ledger != os.environ["KEITO_LEDGER"]
