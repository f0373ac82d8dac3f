"""A session that ended is on disk: kill -9 right after it loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from keito_instrument._spool import Spool

CHILD = textwrap.dedent("""
    import os, sys, time
    import keito_instrument as keito

    @keito.track_agent(session_id="survivor", agent_id="crashy")
    def work():
        keito.record_llm_call("gpt-4o", "openai", input_tokens=4321, output_tokens=123)

    work()
    print("ended", flush=True)
    time.sleep(60)  # killed here with SIGKILL: no atexit, no flush, nothing after the session end
""")


def test_kill_9_right_after_a_session_ends_loses_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "crash.sqlite3"
    env = {**os.environ, "KEITO_LEDGER": str(ledger)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ended"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    # A brand-new process folds the dead process's journal and finds both records, once.
    reader = textwrap.dedent("""
        import sys
        from keito_instrument import _engine
        from keito_instrument._spool import Spool
        _engine.fold_ledger(sys.argv[1], include_live=False)  # recovery: the dead process's journal
        _engine.fold_ledger(sys.argv[1], include_live=False)  # a second recovery bills nothing more
        spool = Spool(sys.argv[1])
        print(sorted((r["kind"], r["state"]) for r in spool.records(session_id="survivor")))
        print(spool.sessions()[0]["input_tokens"])
    """)
    out = subprocess.run([sys.executable, "-c", reader, str(ledger)], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[('expense', 'local'), ('time_entry', 'local')]", "4321"]


def test_appending_the_same_session_twice_changes_nothing(tmp_path: Path) -> None:
    import keito_instrument as keito
    from keito_instrument import _pipeline
    from keito_instrument._pipeline import add_record_listener, remove_record_listener
    from keito_instrument._records import Built

    captured: list[Built] = []
    add_record_listener(captured.append)
    try:
        with keito.session(session_id="twice"):
            keito.record_llm_call("gpt-4o", input_tokens=1, output_tokens=1)
        assert keito.flush(5.0)
    finally:
        remove_record_listener(captured.append)
    spool = Spool(tmp_path / "again.sqlite3")
    spool.append(captured[0], "local")
    spool.append(captured[0], "local")
    assert len(spool.records()) == 2 and len(spool.sessions()) == 1
    assert _pipeline.registry.get("twice") is None


def test_wal_mode_lets_another_process_read_while_we_write(tmp_path: Path) -> None:
    path = tmp_path / "wal.sqlite3"
    spool = Spool(path)
    assert spool.connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with spool.transaction() as conn:  # a write transaction is open in this process
        conn.execute("UPDATE records SET state = state")
        reader = "import sys; from keito_instrument._spool import Spool; print(Spool(sys.argv[1]).counts())"
        out = subprocess.run([sys.executable, "-c", reader, str(path)], capture_output=True, text=True,
                             check=True, timeout=60)
    assert "'local': 0" in out.stdout
