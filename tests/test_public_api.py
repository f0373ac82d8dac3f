"""The public surface is pinned, and importing the package costs nothing a host would notice."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keito_instrument

PUBLIC = {
    "Run", "Session", "Settings", "__version__", "begin_run", "configure", "current_session", "end_run",
    "end_session", "flush", "get_session", "get_settings", "instrument", "log_outcome", "record_llm_call",
    "session", "session_headers", "shutdown", "track_agent",
}


def test_public_names_are_pinned() -> None:
    assert set(keito_instrument.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(keito_instrument, name), name


def test_adapter_api_is_pinned() -> None:
    from keito_instrument import adapters

    assert set(adapters.__all__) == {"Run", "Session", "begin_run", "current_session", "end_run", "end_session",
                                     "get_session", "guard", "guarded", "missing_extra"}


def test_import_loads_no_framework_and_starts_no_thread() -> None:
    code = textwrap.dedent("""
        import sys, threading
        import keito_instrument, keito_instrument.adapters, keito_instrument.integrations
        heavy = [m for m in ("langchain_core", "crewai", "opentelemetry", "genai_prices", "httpx")
                 if m in sys.modules]
        threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        print(heavy, threads)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


def test_a_session_end_without_credentials_starts_no_thread(ledger: object) -> None:
    import threading

    before = {t.ident for t in threading.enumerate()}

    @keito_instrument.track_agent
    def work() -> int:
        keito_instrument.record_llm_call("gpt-4o", "openai", input_tokens=10, output_tokens=5)
        return 1

    assert work() == 1
    # Only the one-off warm-up thread (price data, ledger schema) and the billing thread may run
    # (both daemons); no exporter without credentials. Shutdown stops the billing thread.
    for thread in threading.enumerate():
        if thread.ident not in before:
            assert thread.name in ("keito-instrument-warmup", "keito-instrument-billing") and thread.daemon
    assert keito_instrument.shutdown(5.0)
    for thread in threading.enumerate():
        if thread.ident not in before:
            thread.join(timeout=30)
    assert {t.ident for t in threading.enumerate() if t.is_alive()} == before
