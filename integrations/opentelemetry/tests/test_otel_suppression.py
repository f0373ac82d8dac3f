"""Our own deliveries to Keito never come back as spans: the real exporter, a real local server, and an
HTTP instrumentation on httpx's transport.

The instrumentation is the real `opentelemetry-instrumentation-httpx` when it is installed, and
otherwise a stand-in that applies the same gate every OpenTelemetry HTTP instrumentation applies
(`opentelemetry.instrumentation.utils.is_http_instrumentation_enabled()`, checked per request).
A control request from the test's own thread proves the instrumentation is live on the very
transport the exporter uses, so a missing suppression could not pass unseen.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from _otel_fakes import Otel
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled

import keito_instrument as keito
from keito_instrument._export import worker
from keito_instrument._spool import Spool
from keito_instrument.testing import KeitoTestServer

CHAT: dict[str, str | int] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 100,
    "gen_ai.usage.output_tokens": 10,
}
HAS_HTTPX_INSTRUMENTATION = importlib.util.find_spec("opentelemetry.instrumentation.httpx") is not None


def _real_instrumentation(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=otel.provider)

    def undo() -> None:
        instrumentor.uninstrument()

    return undo


def _stand_in_instrumentation(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    tracer = otel.provider.get_tracer("stand-in httpx instrumentation")
    original = httpx.AsyncHTTPTransport.handle_async_request

    async def traced(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        if not is_http_instrumentation_enabled():
            return await original(self, request)
        with tracer.start_as_current_span(f"{request.method}", attributes={"http.request.method": request.method}):
            return await original(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", traced)
    return lambda: None


@pytest.fixture(
    params=[
        pytest.param(
            _real_instrumentation,
            id="opentelemetry-instrumentation-httpx",
            marks=pytest.mark.skipif(not HAS_HTTPX_INSTRUMENTATION, reason="opentelemetry-instrumentation-httpx"),
        ),
        pytest.param(_stand_in_instrumentation, id="stand-in"),
    ]
)
def http_traced(request: pytest.FixtureRequest, otel: Otel, monkeypatch: pytest.MonkeyPatch) -> Iterator[Otel]:
    """`otel`, with every httpx request (sync and async transports alike) traced into its provider."""
    undo = request.param(otel, monkeypatch)
    try:
        yield otel
    finally:
        undo()


def http_spans(otel: Otel) -> list[Any]:
    """HTTP client spans, under the old (`http.method`) or the stable (`http.request.method`) names."""
    names = ("http.method", "http.request.method")
    return [s for s in otel.exported.get_finished_spans() if any(n in (s.attributes or {}) for n in names)]


def control_request(url: str) -> None:
    """A request of the host's own, on the same async transport as the exporter's: it must be traced."""

    async def get() -> None:
        async with httpx.AsyncClient() as client:
            await client.get(f"{url}/health")

    asyncio.run(get())


def deliver_one_session(otel: Otel, server: KeitoTestServer) -> None:
    keito.configure(
        api_key=server.api_key,
        account_id=server.account_id,
        base_url=server.url,
        project_id=server.project_id,
        task_id=server.task_id,
        expense_category_id=server.expense_category_id,
    )
    with (
        otel.tracer.start_as_current_span("invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}),
        otel.tracer.start_as_current_span("chat", attributes=CHAT),
    ):
        pass
    assert keito.flush(timeout=20.0)
    assert server.wait_for(time_entries=1, expenses=1)


def test_exporter_requests_are_not_traced(http_traced: Otel, ledger: Spool) -> None:
    with KeitoTestServer() as server:
        control_request(server.url)
        assert len(http_spans(http_traced)) == 1  # the instrumentation is live
        deliver_one_session(http_traced, server)
        keito_posts = [r for r in server.requests if r.method == "POST"]
        assert len(keito_posts) >= 2  # the time entry and the expense went over that transport
    assert len(http_spans(http_traced)) == 1  # ... and none of them came back as a span
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"]) == (1, 100)


def test_unsuppressed_exporter_spans_would_show_and_still_bill_nothing(
    http_traced: Otel, ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the exporter's suppression its requests do come back (so the test above can fail),
    # and the processor still bills nothing for them: they carry no GenAI attribute.
    monkeypatch.setattr(worker, "_suppress_otel", lambda: None)
    with KeitoTestServer() as server:
        deliver_one_session(http_traced, server)
        keito.shutdown(timeout=5.0)  # the exporter's requests have all ended
    if not http_spans(http_traced):
        # The oldest instrumentor traces only clients of the class it swaps in at instrument()
        # time; the exporter's own client class is never traced by it, suppressed or not.
        pytest.skip("this opentelemetry-instrumentation-httpx does not trace the exporter's client class")
    assert len(http_spans(http_traced)) >= 2
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"]) == (1, 100)
    assert http_traced.processor.open_traces == 0


LATE_IMPORT = """
import sys
import keito_instrument as keito
from keito_instrument.testing import KeitoTestServer

server = KeitoTestServer().start()
keito.configure(api_key=server.api_key, account_id=server.account_id, base_url=server.url,
                project_id=server.project_id, task_id=server.task_id,
                expense_category_id=server.expense_category_id)
with keito.session():  # the exporter thread starts here, before the host imports OpenTelemetry
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1, output_tokens=1)
assert keito.flush(20) and "opentelemetry.context" not in sys.modules

from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

provider = TracerProvider()
exported = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exported))
HTTPXClientInstrumentor().instrument(tracer_provider=provider)
with keito.session():
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1, output_tokens=1)
assert keito.flush(20) and len([r for r in server.requests if r.method == "POST"]) == 4
print(len(exported.get_finished_spans()))
keito.shutdown(5)
server.stop()
"""


@pytest.mark.skipif(not HAS_HTTPX_INSTRUMENTATION, reason="needs opentelemetry-instrumentation-httpx")
def test_opentelemetry_imported_after_the_exporter_started_is_suppressed_too(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEITO_", "OTEL_"))}
    env["KEITO_LEDGER"] = str(tmp_path / "late.sqlite3")
    result = subprocess.run(
        [sys.executable, "-c", LATE_IMPORT], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    if result.returncode != 0:  # not the known gap: a real failure, never taken for the expected one
        pytest.fail(result.stderr)
    assert result.stdout.strip() == "0"  # no span for our own two POSTs
