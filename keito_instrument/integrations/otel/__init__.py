"""OpenTelemetry: `KeitoSpanProcessor` turns GenAI spans from any instrumentor into billed sessions.

    from opentelemetry.sdk.trace import TracerProvider
    from keito_instrument.integrations.otel import KeitoSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(KeitoSpanProcessor(agent_id="support-bot", project_id="p-1"))

Sessions: a root span (no parent, or a parent in another process) starts a trace. Its session is
the `keito.session()` enclosing the root's start if there is one, else the one named by
`session.id` / `gen_ai.conversation.id` (span attributes at start, baggage, or OpenInference's
`using_session`), kept open across traces until `idle_timeout`; else one session per trace, ending
with its root span. Billed time is the union of the root spans, by the spans' own timestamps.

The session is opened lazily, when the trace first has something to bill (a model call, its
root's end, or the trace's eviction), back-dated to its roots' starts: until then a trace is a
light record (root ids, start times, the session hints read at start, tool calls and errors held
back), so a trace with no GenAI span at all (a plain web request) never touches the core and
bills nothing. Only model-call spans add usage (see `_attrs.classify` and the README).

Counted once across layers: a Keito framework adapter (our LangChain handler) marks the context
while it tracks a run (the kernel's run mark, naming its session) and while it records a model
call (the call mark). A span that starts inside either mark, a root that ends inside one, and a
span whose parent is marked, are the adapter's: the trace bills none of their time, tool calls or
errors. A model-call span under a call mark is the adapter's call; under a run mark only, it is a
call the adapter never sees (a client called directly inside a chain step), billed once into the
adapter's session. Otherwise a call is identified by the provider's response id, shared with our
client hooks through the kernel's `seen`: the first layer to claim it counts it. When one of two
instrumentation libraries' spans of a call has no id (a streamed LangChain call under
OpenInference), the two pair by usage, model and time (`_pairing`): again the first to end counts
it. A trace whose calls were all billed by another layer bills nothing more.

Modules: `_processor` (the SpanProcessor hooks), `_table` (open traces and their sessions),
`_counting` (which layer bills a call), `_pairing` (one call's spans from two libraries without a
shared id), `_trace` (one trace's record), `_attrs` (span attributes).
"""

from __future__ import annotations

from .. import _kernel, missing_extra

try:
    import opentelemetry.sdk.trace  # noqa: F401 - the extra's check, before any module that needs it
except ImportError as exc:  # pragma: no cover - exercised through a test that hides the package
    raise missing_extra("OpenTelemetry", "otel") from exc

__all__ = ["MINIMUM", "KeitoSpanProcessor"]

# The oldest opentelemetry-sdk supported (integrations/opentelemetry/constraints-min.txt); checked
# once, at import, so an older one is named with the upgrade line instead of failing in a span hook.
MINIMUM = (1, 27)
_kernel.require_version("OpenTelemetry", "opentelemetry-sdk", MINIMUM, "otel")

from ._processor import FIRST_TRACE_TIMEOUT as FIRST_TRACE_TIMEOUT  # noqa: E402 - after the version check
from ._processor import KeitoSpanProcessor  # noqa: E402
