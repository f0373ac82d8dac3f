"""Ledger trouble is reported, never silent: sessions that cannot be written are kept (bounded),
counted, retried and written once the ledger works; a deleted ledger is noticed and recreated."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument import _config, _writer
from keito_instrument._spool import Spool


def _sessions(n: int, tokens: int = 7) -> None:
    for _ in range(n):
        with keito.session(agent_id="a"):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=tokens, output_tokens=1)


def _point_at(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("KEITO_LEDGER", str(path))
    _config.reset_settings()


def test_an_unwritable_ledger_keeps_sessions_counted_and_writes_them_once_it_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the ledger's folder should be")
    ledger = blocker / "ledger.sqlite3"
    _point_at(monkeypatch, ledger)
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        _sessions(5)
        assert keito.flush(1.0) is False
    waiting = _writer.unwritten(str(ledger))
    assert waiting["sessions"] == 5 and waiting["dropped_events"] == 0
    assert "ledger" in waiting["error"]
    assert any("5 session" in r.getMessage() and str(ledger) in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    blocker.unlink()  # the user fixes the path
    assert keito.flush(10.0) is True
    assert [r["input_tokens"] for r in Spool(ledger).sessions()] == [7] * 5
    assert _writer.unwritten(str(ledger))["sessions"] == 0


def test_a_corrupt_ledger_keeps_sessions_and_writes_them_once_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    ledger.write_bytes(b"this is not a database " * 200)
    _point_at(monkeypatch, ledger)
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        _sessions(3)
        assert keito.flush(1.0) is False
    assert _writer.unwritten(str(ledger))["sessions"] == 3
    assert any(str(ledger) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    ledger.rename(tmp_path / "ledger.broken")  # what the warning tells the user to do
    assert keito.flush(10.0) is True
    assert len(Spool(ledger).sessions()) == 3
    assert _writer.unwritten(str(ledger))["sessions"] == 0


def test_a_ledger_deleted_while_the_process_runs_is_recreated(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    _sessions(2)
    assert keito.flush(10.0) is True
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    _sessions(3, tokens=9)
    assert keito.flush(10.0) is True
    assert ledger.exists()
    # A fresh reader (another process would be the same) sees the new sessions, and only them:
    # the ones folded before the deletion are not billed a second time.
    conn = sqlite3.connect(ledger)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [r[0] for r in conn.execute("SELECT input_tokens FROM sessions")] == [9, 9, 9]


def test_only_the_main_file_deleted_is_recreated_without_its_stale_wal(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    _sessions(2)
    assert keito.flush(10.0) is True
    ledger.unlink()  # the -wal and -shm of the old file stay behind
    _sessions(1, tokens=11)
    assert keito.flush(10.0) is True
    conn = sqlite3.connect(ledger)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [r[0] for r in conn.execute("SELECT input_tokens FROM sessions")] == [11]


_FSIZE_CHILD = textwrap.dedent("""
    import json, logging, os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    import keito_instrument as keito
    from keito_instrument import _writer

    def sessions(n):
        for _ in range(n):
            with keito.session(agent_id="a"):
                keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1, output_tokens=1)

    sessions(1)
    assert keito.flush(10)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the disk is "full"
    sessions(300)
    print(json.dumps({"flushed": keito.flush(2), **_writer.unwritten()}), flush=True)
    if sys.argv[1] == "recover":
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        print(json.dumps({"flushed": keito.flush(20), **_writer.unwritten()}), flush=True)
""")


def _fsize_child(ledger: Path, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEITO_LEDGER": str(ledger)}
    return subprocess.run([sys.executable, "-c", _FSIZE_CHILD, mode], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_full_disk_keeps_sessions_and_writes_every_one_once_space_returns(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    run = _fsize_child(ledger, "recover")
    assert run.returncode == 0, run.stderr
    full, recovered = (json.loads(line) for line in run.stdout.splitlines())
    assert full["flushed"] is False and full["sessions"] > 0
    assert recovered["flushed"] is True and recovered["sessions"] == 0
    conn = sqlite3.connect(ledger)
    assert conn.execute("SELECT COUNT(*), SUM(input_tokens) FROM sessions").fetchone() == (301, 301)


def test_sessions_a_full_disk_kept_from_the_ledger_are_reported_at_exit_and_in_status(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    run = _fsize_child(ledger, "exit")
    assert run.returncode == 0, run.stderr
    [full] = (json.loads(line) for line in run.stdout.splitlines())
    assert full["sessions"] > 0
    assert f"{full['sessions']} session(s)" in run.stderr and "lost" in run.stderr
    env = {**os.environ, "KEITO_LEDGER": str(ledger)}
    status = subprocess.run([sys.executable, "-m", "keito_instrument.cli", "status", "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(status.stdout)["unwritten"]["lost_sessions"] == full["sessions"]
