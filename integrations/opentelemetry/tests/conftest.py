"""Fixtures of the OpenTelemetry integration tests: a real TracerProvider with our processor.

Never the global tracer provider (it can be set once per process): each test gets its own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# OTEL_SDK_DISABLED (a common way to silence other libraries' telemetry) turns every TracerProvider
# into a no-op, which would leave these tests nothing to observe.
os.environ.pop("OTEL_SDK_DISABLED", None)

from _layers import ToTheTest
from _otel_fakes import Otel, make_otel


@pytest.fixture(autouse=True)
def _no_pending_pairs() -> Iterator[None]:
    """Calls noted for pairing by one test are not the next test's (they could not pair anyway:
    their intervals are over, but a test reading the table must see only its own)."""
    from keito_instrument.integrations.otel._pairing import pending

    pending.clear()
    yield
    pending.clear()


@pytest.fixture
def otel() -> Iterator[Otel]:
    """A real TracerProvider with KeitoSpanProcessor(agent_id="otel-agent")."""
    setup = make_otel(agent_id="otel-agent")
    yield setup
    setup.provider.shutdown()


@pytest.fixture
def instrumented() -> Iterator[Otel]:
    """OpenInference's LangChain instrumentor on a fresh provider with our processor."""
    from openinference.instrumentation.langchain import LangChainInstrumentor

    from keito_instrument.integrations import langchain as keito_lc

    setup = make_otel(agent_id="lc-otel")
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=setup.provider)
    try:
        yield setup
    finally:
        instrumentor.uninstrument()
        setup.provider.shutdown()
        keito_lc.uninstrument()
        keito_lc._table.clear()  # runs a test left open are not the next test's
        keito_lc._table.clear()


@pytest.fixture
def server() -> Iterator[Any]:
    """The local fake OpenAI API (integrations/openai/tests/_fake_server.py) on 127.0.0.1."""
    pytest.importorskip("langchain_openai")
    sys.path.insert(0, str(Path(__file__).parents[2] / "openai" / "tests"))
    from _fake_server import fake_openai

    with fake_openai() as fake:
        yield fake


@pytest.fixture(scope="session")
def _openai_instrumentor() -> Iterator[ToTheTest]:
    openai_instrumentation = pytest.importorskip("opentelemetry.instrumentation.openai")
    from opentelemetry.sdk.trace import TracerProvider

    forward = ToTheTest()
    provider = TracerProvider()
    provider.add_span_processor(forward)
    instrumentor = openai_instrumentation.OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield forward
    forward.target = None
    instrumentor.uninstrument()


@pytest.fixture
def client_spans(instrumented: Otel, _openai_instrumentor: ToTheTest) -> Iterator[Otel]:
    """OpenLLMetry's OpenAI instrumentor feeding the same processors as OpenInference's LangChain one."""
    _openai_instrumentor.target = instrumented
    try:
        yield instrumented
    finally:
        _openai_instrumentor.target = None
