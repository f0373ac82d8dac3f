"""Packaging promises: crewai is imported lazily, a missing crewai names the extra, the example runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keito_instrument._spool import Spool
from keito_instrument.integrations import crewai as keito_crewai

ROOT = Path(__file__).resolve().parents[3]

# Runs the example under a socket guard that refuses and records any non-loopback connection or
# lookup, including those made by atexit hooks (telemetry flushes), and reports them last.
GUARDED_RUN = """
import atexit, runpy, socket, sys
blocked = []
real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
def local(host):
    return str(host) in ("127.0.0.1", "::1", "localhost") or str(host).startswith("127.")
def connect(self, address):
    if isinstance(address, tuple) and not local(address[0]):
        blocked.append(address)
        raise OSError("blocked")
    return real_connect(self, address)
def getaddrinfo(host, *args, **kwargs):
    if host is not None and not local(host):
        blocked.append(host)
        raise OSError("blocked")
    return real_getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
atexit.register(lambda: print(f"blocked network attempts: {len(blocked)}"))
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_importing_the_adapter_does_not_import_crewai() -> None:
    code = (
        "import sys, keito_instrument, keito_instrument.adapters\n"
        "import keito_instrument.integrations.crewai\n"
        "assert 'crewai' not in sys.modules, 'crewai imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_missing_crewai_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    keito_crewai.uninstrument()
    monkeypatch.setitem(sys.modules, "crewai", None)
    monkeypatch.setitem(sys.modules, "crewai.events", None)
    with pytest.raises(ImportError, match=r'pip install "keito-instrument\[crewai\]"'):
        keito_crewai.instrument()
    assert not keito_crewai.is_instrumented()


def test_instrument_installs_once_and_later_calls_change_only_the_settings() -> None:
    from crewai.events import crewai_event_bus

    with crewai_event_bus.scoped_handlers():
        with pytest.raises(TypeError, match="projct_id"):
            keito_crewai.instrument(projct_id="p")
        assert not keito_crewai.is_instrumented()  # a typo installs nothing
        try:
            listener = keito_crewai.instrument(project_id="p1")
            assert keito_crewai.instrument(settle_timeout=1.5) is listener
            assert listener.options == {"project_id": "p1"} and listener.assembler.settle_timeout == 1.5
            listener.uninstall()  # taken off the bus by hand: the next instrument() puts it back
            assert not keito_crewai.is_instrumented()
            assert keito_crewai.instrument() is listener and keito_crewai.is_instrumented()
        finally:
            keito_crewai.uninstrument()
        assert not keito_crewai.is_instrumented()


def test_the_example_runs_offline_and_writes_the_ledger(tmp_path: Path) -> None:
    ledger_path = tmp_path / "example.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEITO_", "CREWAI_"))}
    env.update(KEITO_LEDGER=str(ledger_path), XDG_DATA_HOME=str(tmp_path / "data"), HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", GUARDED_RUN, str(ROOT / "examples" / "crewai_crew.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "session stored in the ledger: True" in done.stdout
    assert done.stdout.rstrip().endswith("blocked network attempts: 0"), done.stdout

    spool = Spool(ledger_path)
    [row] = spool.sessions()
    assert row["llm_calls"] == 3 and row["tool_calls"] == 1
    assert row["input_tokens"] == 3 * 850 and row["output_tokens"] == 3 * 120
    kinds = sorted(r["kind"] for r in spool.records(session_id=row["session_id"]))
    assert kinds == ["expense", "time_entry"]


def test_a_too_old_crewai_is_named_with_the_upgrade_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    keito_crewai.uninstrument()
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.9.0" if name == "crewai" else real(name))
    with pytest.raises(ImportError, match=r"needs crewai >= 1.13, found 1.9.0"):
        keito_crewai.instrument()
    assert not keito_crewai.is_instrumented()
