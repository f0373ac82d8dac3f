"""A real TracerProvider with KeitoSpanProcessor, shared by the OpenTelemetry tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from keito_instrument.integrations.otel import KeitoSpanProcessor


@dataclass
class Otel:
    """A provider with KeitoSpanProcessor first and an in-memory exporter after it."""

    provider: TracerProvider
    processor: KeitoSpanProcessor
    exported: InMemorySpanExporter
    tracer: Tracer


def make_otel(**settings: Any) -> Otel:
    """Build a fresh provider: our processor, then a second one that must always still run."""
    provider = TracerProvider()
    processor = KeitoSpanProcessor(**settings)
    exported = InMemorySpanExporter()
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return Otel(provider, processor, exported, provider.get_tracer("keito-tests"))
