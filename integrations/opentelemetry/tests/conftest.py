"""Fixtures of the OpenTelemetry integration tests: a real TracerProvider with our processor.

Never the global tracer provider (it can be set once per process): each test gets its own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# OTEL_SDK_DISABLED (a common way to silence other libraries' telemetry) turns every TracerProvider
# into a no-op, which would leave these tests nothing to observe.
os.environ.pop("OTEL_SDK_DISABLED", None)

from _otel_fakes import Otel, make_otel


@pytest.fixture
def otel() -> Iterator[Otel]:
    """A real TracerProvider with KeitoSpanProcessor(agent_id="otel-agent")."""
    setup = make_otel(agent_id="otel-agent")
    yield setup
    setup.provider.shutdown()
