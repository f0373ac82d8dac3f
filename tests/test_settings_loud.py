"""Invalid KEITO_* variables are loud: a warning on stderr even with no logging configured,
`status` and `doctor` name the variable (never showing a default as in use), `doctor` fails, and
an invalid base URL holds delivery instead of sending to the default (production) URL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument import _config
from keito_instrument._spool import get_spool
from keito_instrument.cli import main
from keito_instrument.testing import KeitoTestServer

ROOT = Path(__file__).resolve().parent.parent


def _server_settings(server: KeitoTestServer) -> dict[str, str]:
    return {"KEITO_API_KEY": server.api_key, "KEITO_ACCOUNT_ID": server.account_id,
            "KEITO_PROJECT_ID": server.project_id, "KEITO_TASK_ID": server.task_id,
            "KEITO_EXPENSE_CATEGORY_ID": server.expense_category_id}


def _python(code: str, env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": env.get("HOME", "/nonexistent")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**base, **env}, timeout=timeout)


def test_an_invalid_variable_warns_once_on_stderr_with_no_logging_configured(tmp_path: Path) -> None:
    env = {"KEITO_BILLABLE": "maybe", "KEITO_MIN_HOURS": "lots", "KEITO_LEDGER": str(tmp_path / "l.sqlite3")}
    code = ("import keito_instrument as k; k.get_settings(); k.configure(); k.configure(project_id='p'); "
            "k.get_settings()")
    result = _python(code, env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len([line for line in lines if "KEITO_BILLABLE" in line]) == 1, result.stderr
    assert len([line for line in lines if "KEITO_MIN_HOURS" in line]) == 1, result.stderr
    assert all(line.startswith("keito-instrument: WARNING: ignoring KEITO_") for line in lines), result.stderr
    assert "'maybe'" in result.stderr


def test_with_logging_configured_the_warning_goes_through_logging_only(tmp_path: Path) -> None:
    env = {"KEITO_BILLABLE": "maybe", "KEITO_LEDGER": str(tmp_path / "l.sqlite3")}
    code = "import logging; logging.basicConfig(); import keito_instrument as k; k.get_settings(); k.configure()"
    result = _python(code, env)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "KEITO_BILLABLE" in line] == [
        "WARNING:keito_instrument:ignoring KEITO_BILLABLE: keito-instrument setting 'billable': expected "
        "true/false, got 'maybe'"]


def test_an_invalid_base_url_holds_delivery_instead_of_sending_to_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with KeitoTestServer() as server:
        for var, value in _server_settings(server).items():
            monkeypatch.setenv(var, value)
        monkeypatch.setenv("KEITO_BASE_URL", "ftp://staging.example.com")
        _config.reset_settings()
        settings = keito.get_settings()
        assert settings.has_credentials is False
        assert settings.delivery_held == "KEITO_BASE_URL is invalid"
        with keito.session(agent_id="a"):
            keito.record_llm_call("gpt-4o", "openai", input_tokens=10, output_tokens=1)
        keito.flush(2.0)
        records = get_spool().records()
        assert records and {r["state"] for r in records} == {"local"}  # kept, not queued for production
        # Fixed in code: configure(base_url=...) releases the hold.
        assert keito.configure(base_url=server.url).has_credentials


def test_status_names_the_bad_variable_and_never_shows_the_default_url(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KEITO_API_KEY", "kto_x")
    monkeypatch.setenv("KEITO_ACCOUNT_ID", "cm_x")
    monkeypatch.setenv("KEITO_BASE_URL", "ftp://x")
    monkeypatch.setenv("KEITO_BILLABLE", "maybe")
    _config.reset_settings()
    get_spool().counts()  # an existing (empty) ledger
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "KEITO_BASE_URL" in out and "KEITO_BILLABLE" in out and "'maybe'" in out
    assert "app.keito.ai" not in out
    assert main(["status", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["base_url"] is None and data["credentials"] is False
    assert set(data["setting_errors"]) == {"KEITO_BASE_URL", "KEITO_BILLABLE"}
    assert "kto_x" not in json.dumps(data)


def test_doctor_fails_on_an_invalid_variable_even_when_keito_answers(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with KeitoTestServer() as server:
        for var, value in _server_settings(server).items():
            monkeypatch.setenv(var, value)
        monkeypatch.setenv("KEITO_BASE_URL", server.url)
        monkeypatch.setenv("KEITO_BILLABLE", "maybe")
        _config.reset_settings()
        assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  KEITO_BILLABLE" in out and "'maybe'" in out
    assert "agent@example.test" in out  # the other checks still ran


def test_doctor_on_an_invalid_base_url_names_it_and_shows_no_url_in_use(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KEITO_API_KEY", "kto_x")
    monkeypatch.setenv("KEITO_ACCOUNT_ID", "cm_x")
    monkeypatch.setenv("KEITO_BASE_URL", "ftp://x")
    _config.reset_settings()
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  KEITO_BASE_URL" in out and "FAIL  base_url" in out
    assert "app.keito.ai" not in out
    assert main(["sync", "--no-progress"]) == 2
    assert "KEITO_BASE_URL is invalid" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["/api/v2", "/api/v2/", "/API/V2"])
def test_the_official_sdks_base_url_form_is_accepted(form: str) -> None:
    assert keito.configure(base_url=f"https://app.keito.ai{form}").base_url == "https://app.keito.ai"
    assert keito.configure(base_url=f"https://proxy.example.com/keito{form}").base_url == (
        "https://proxy.example.com/keito")


def test_doctor_works_with_the_sdks_base_url_form_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with KeitoTestServer() as server:
        for var, value in _server_settings(server).items():
            monkeypatch.setenv(var, value)
        monkeypatch.setenv("KEITO_BASE_URL", f"{server.url}/api/v2")
        _config.reset_settings()
        assert main(["doctor"]) == 0, capsys.readouterr().out
        assert server.requests[-1].path == "/api/v2/users/me"


def test_doctor_explains_a_404(capsys: pytest.CaptureFixture[str]) -> None:
    with KeitoTestServer() as server:
        keito.configure(api_key=server.api_key, account_id=server.account_id, base_url=f"{server.url}/elsewhere")
        assert main(["doctor"]) == 1
    assert "is KEITO_BASE_URL right" in capsys.readouterr().out


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """A server on 127.0.0.1 that answers one byte every 0.2 s, for ever."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        with conn:
            answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"x" * 10_000
            for byte in answer:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2.0)
    listener.close()


def test_doctor_honours_its_timeout_against_a_server_trickling_bytes(
        trickling_server: str, tmp_path: Path) -> None:
    env = {"KEITO_API_KEY": "kto_x", "KEITO_ACCOUNT_ID": "cm_x", "KEITO_BASE_URL": trickling_server,
           "KEITO_LEDGER": str(tmp_path / "l.sqlite3"), "HOME": str(tmp_path)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "keito_instrument.cli", "doctor", "--timeout", "1.5"],
                            capture_output=True, text=True, cwd=ROOT, timeout=30,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert "within 1.5 s" in result.stdout
    assert elapsed < 10, elapsed  # interpreter start-up plus the 1.5 s budget, not minutes
