"""Zero-code OpenTelemetry: `KEITO_OTEL=true opentelemetry-instrument python app.py` adds a
`KeitoSpanProcessor` to the tracer provider the OpenTelemetry distro configures.

Registered as an `opentelemetry_post_instrument` entry point (pyproject.toml), which the
distro's auto-instrumentation calls once, after its configurator has set the global
TracerProvider and after every instrumentor has run. Without `KEITO_OTEL=true` it does nothing.
The processor takes its session settings (agent, project, task...) from the `KEITO_*`
environment, as every setting does. Never raises: a failure is logged and the process runs
with OpenTelemetry as configured.
"""

from __future__ import annotations

import logging
import os

from .._guard import guard

__all__ = ["ENV_VAR", "post_instrument"]

ENV_VAR = "KEITO_OTEL"
_TRUE = frozenset({"1", "true", "yes", "on"})
_log = logging.getLogger("keito_instrument")


def post_instrument() -> None:
    """Add a `KeitoSpanProcessor` to the global SDK TracerProvider when `KEITO_OTEL` is true."""
    if os.environ.get(ENV_VAR, "").strip().lower() not in _TRUE:
        return
    with guard("otel auto-instrumentation"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        from .otel import KeitoSpanProcessor

        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            # No SDK provider: OTEL_SDK_DISABLED, or a distro that configures none.
            _log.warning("keito-instrument: %s is set but the global tracer provider is %s, not the SDK's "
                         "TracerProvider; no KeitoSpanProcessor added", ENV_VAR, type(provider).__name__)
            return
        multi = getattr(provider, "_active_span_processor", None)
        if any(isinstance(p, KeitoSpanProcessor) for p in getattr(multi, "_span_processors", ())):
            return  # the application added its own already
        provider.add_span_processor(KeitoSpanProcessor())
        _log.debug("keito-instrument: KeitoSpanProcessor added to the auto-configured tracer provider")
