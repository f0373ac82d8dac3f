"""Never into the host: internal errors stay inside, later processors run, suppressed spans are ignored."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest
from _otel_fakes import Otel
from opentelemetry import context
from opentelemetry.instrumentation.utils import suppress_instrumentation

from keito_instrument._spool import Spool
from keito_instrument.integrations.otel import KeitoSpanProcessor
from keito_instrument.integrations.otel import _attrs as _otel_attrs

CHAT: dict[str, str | int] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 10,
    "gen_ai.usage.output_tokens": 2,
}


@pytest.mark.guard_errors_expected
def test_internal_error_never_reaches_span_end_and_later_processors_run(
    otel: Otel,
    ledger: Spool,
    monkeypatch: pytest.MonkeyPatch,
    _guard_failures: list[tuple[str, BaseException]],
) -> None:
    def broken(attributes: Any) -> str:
        raise RuntimeError("forced inside the processor")

    monkeypatch.setattr(_otel_attrs, "classify", broken)
    # Both spans end (span.end()) on leaving the block: neither may raise.
    with (
        otel.tracer.start_as_current_span("agent"),
        otel.tracer.start_as_current_span("chat", attributes=CHAT),
    ):
        pass
    assert [s.name for s in otel.exported.get_finished_spans()] == ["chat", "agent"]  # the next processor ran
    assert {kind for kind, _ in _guard_failures} == {"otel on_end"}
    assert all(isinstance(exc, RuntimeError) for _, exc in _guard_failures)


@pytest.mark.guard_errors_expected
def test_internal_error_at_span_start_is_contained(
    otel: Otel, monkeypatch: pytest.MonkeyPatch, _guard_failures: list[tuple[str, BaseException]]
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("forced at start")

    monkeypatch.setattr(otel.processor._table, "open_root", broken)
    span = otel.tracer.start_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"})
    span.end()
    assert [s.name for s in otel.exported.get_finished_spans()] == ["agent"]
    assert "otel on_start" in {kind for kind, _ in _guard_failures}


def test_spans_started_while_suppressed_are_ignored(otel: Otel, ledger: Spool) -> None:
    with suppress_instrumentation(), otel.tracer.start_as_current_span("POST keito /api/v2/expenses") as span:
        span.set_attributes(CHAT)  # even a span that looks like a model call
    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        with otel.tracer.start_as_current_span("chat", attributes=CHAT):
            pass
    finally:
        context.detach(token)
    assert ledger.sessions() == [] and otel.processor.open_traces == 0
    with otel.tracer.start_as_current_span("chat", attributes=CHAT):
        pass
    [row] = ledger.sessions()
    assert row["llm_calls"] == 1


def test_unknown_session_setting_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="agent_idd"):
        KeitoSpanProcessor(agent_idd="x")


def test_disabled_records_nothing(otel: Otel, ledger: Spool) -> None:
    import keito_instrument as keito

    keito.configure(disabled=True)
    with (
        otel.tracer.start_as_current_span("agent"),
        otel.tracer.start_as_current_span("chat", attributes=CHAT),
    ):
        pass
    assert ledger.sessions() == [] and otel.processor.open_traces == 0


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    monkeypatch.delitem(sys.modules, "keito_instrument.integrations.otel")
    with pytest.raises(ImportError, match=r'pip install "keito-instrument\[otel\]"'):
        importlib.import_module("keito_instrument.integrations.otel")


def test_span_end_never_waits_for_keito(otel: Otel, ledger: Spool) -> None:
    # The server answers only after a delay: were delivery on the span's thread, the records would
    # already be stored when the root span's end() returns. They are only spooled then.
    import keito_instrument as keito
    from keito_instrument.testing import KeitoTestServer

    with KeitoTestServer() as server:
        server.set_latency(2.0)
        keito.configure(
            api_key=server.api_key,
            account_id=server.account_id,
            base_url=server.url,
            project_id=server.project_id,
            task_id=server.task_id,
            expense_category_id=server.expense_category_id,
        )
        with (
            otel.tracer.start_as_current_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"}),
            otel.tracer.start_as_current_span("chat", attributes=CHAT),
        ):
            pass
        assert server.time_entries == [] and server.expenses == []
        assert all(r["state"] in ("pending", "sending") for r in ledger.records())  # spooled, not delivered
        server.set_latency(0.0)
        assert keito.flush(timeout=20.0) and server.wait_for(time_entries=1, expenses=1)


def test_a_too_old_sdk_is_named_with_the_upgrade_line() -> None:
    import subprocess

    code = (
        "from importlib import metadata\n"
        "real = metadata.version\n"
        "metadata.version = lambda name: '1.20.0' if name == 'opentelemetry-sdk' else real(name)\n"
        "try:\n"
        "    import keito_instrument.integrations.otel\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "needs opentelemetry-sdk >= 1.27, found 1.20.0" in done.stdout
    assert 'pip install -U "keito-instrument[otel]"' in done.stdout
