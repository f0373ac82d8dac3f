"""Zero-code: a process started with `opentelemetry-instrument` gets the KeitoSpanProcessor on the
provider the distro configures when KEITO_OTEL=true, and nothing without it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keito_instrument._spool import Spool

pytest.importorskip("opentelemetry.instrumentation.auto_instrumentation")
# The zero-code path needs the distro, whose configurator sets the SDK TracerProvider.
pytest.importorskip("opentelemetry.distro")

SCRIPT = textwrap.dedent("""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    names = [type(p).__name__ for p in provider._active_span_processor._span_processors]
    print("provider", type(provider).__name__, names)
    with trace.get_tracer("app").start_as_current_span("chat gpt-4o-mini") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.system", "openai")
        span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
        span.set_attribute("gen_ai.usage.input_tokens", 120)
        span.set_attribute("gen_ai.usage.output_tokens", 30)
""")
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KEITO_OTEL"))}
    environ.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                   KEITO_AGENT_ID="auto-agent", **env)
    return subprocess.run([str(INSTRUMENT), sys.executable, str(script)], capture_output=True, text=True,
                          env=environ, timeout=120, cwd=tmp_path)


@pytest.mark.skipif(not INSTRUMENT.exists(), reason="opentelemetry-distro is not installed")
def test_keito_otel_adds_the_processor_and_the_ledger_gets_the_session(tmp_path: Path, ledger: Spool) -> None:
    result = run(tmp_path, KEITO_OTEL="true")
    assert result.returncode == 0, result.stderr
    assert "provider TracerProvider ['KeitoSpanProcessor']" in result.stdout, result.stdout + result.stderr
    (row,) = ledger.sessions()  # the child wrote the test's ledger (KEITO_LEDGER)
    assert (row["agent_id"], row["llm_calls"], row["input_tokens"], row["output_tokens"]) == ("auto-agent", 1, 120, 30)


@pytest.mark.skipif(not INSTRUMENT.exists(), reason="opentelemetry-distro is not installed")
def test_without_keito_otel_nothing_is_added(tmp_path: Path, ledger: Spool) -> None:
    result = run(tmp_path, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="*")  # (post-instrument hooks still run)
    assert result.returncode == 0, result.stderr
    assert "provider TracerProvider []" in result.stdout, result.stdout + result.stderr
    assert ledger.sessions() == [] and ledger.live_sessions() == []


def test_the_entry_point_is_registered() -> None:
    from importlib.metadata import entry_points

    (found,) = [e for e in entry_points(group="opentelemetry_post_instrument") if e.name == "keito_instrument"]
    from keito_instrument.integrations.otel_auto import post_instrument

    assert found.load() is post_instrument
