"""The adapter kernel: option checks, version floors, the on/off switch, counted once across layers."""

from __future__ import annotations

from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel as kernel


def test_an_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"'projet_id'.*did you mean 'project_id'"):
        kernel.check_options("KeitoCallbackHandler()", {"projet_id": "p"})
    with pytest.raises(TypeError, match=r"'colour'.*it takes"):
        kernel.check_options("instrument()", {"colour": "red"})
    kernel.check_options("instrument()", {"project_id": "p", "metadata": {}})


def test_a_missing_or_old_framework_names_the_install_line() -> None:
    with pytest.raises(ImportError, match=r'pip install "keito-instrument\[nope\]"'):
        kernel.require_version("Nope", "no-such-distribution-keito", (1,), "nope")
    with pytest.raises(ImportError, match=r"pytest >= 999.0, found"):
        kernel.require_version("pytest", "pytest", (999, 0), "test")
    kernel.require_version("pytest", "pytest", (1,), "test")


def test_the_switch_installs_once_and_reverses() -> None:
    calls: list[str] = []
    switch = kernel.Switch(lambda: calls.append("on") or "handle", lambda handle: calls.append(f"off {handle}"))
    assert switch.on() == switch.on() == "handle" and switch.is_on
    switch.off()
    switch.off()
    assert calls == ["on", "off handle"] and not switch.is_on


def test_a_response_seen_by_two_layers_is_billed_once(ledger: Spool) -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 60}}
    with keito.session(session_id="layers"):
        assert kernel.record_provider_call("gpt-4o-mini", "openai", usage, response_id="chatcmpl-1")
        assert not kernel.record_provider_call("gpt-4o-mini", "openai", usage, response_id="chatcmpl-1")
        assert kernel.record_provider_call("gpt-4o-mini", "openai", None, response_id="chatcmpl-2")
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"]) == (2, 100)
    [expense] = [r["payload"]["metadata"] for r in ledger.records() if r["kind"] == "expense"]
    assert expense["cache_read_tokens"] == 60 and expense["usage_missing"] == 1


def test_the_framework_mark_is_scoped_to_its_context() -> None:
    assert kernel.in_framework_call() is None
    with kernel.framework_call("langchain"):
        assert kernel.in_framework_call() == "langchain"
    token = kernel.mark_framework_call("agents")
    assert kernel.in_framework_call() == "agents"
    kernel.reset_mark(token)
    assert kernel.in_framework_call() is None


def test_a_run_mark_names_the_adapters_session_and_a_call_mark_overlays_it() -> None:
    with keito.session("handler") as session, kernel.framework_run("langchain", session):
        mark = kernel.in_framework_run()
        assert mark is not None and (mark.adapter, mark.session) == ("langchain", session)
        assert kernel.in_framework_call() is None  # a client hook still bills calls made in the run
        assert kernel.framework_mark() is mark and kernel.marks_run(session)
        with kernel.framework_call("langchain"):
            assert kernel.in_framework_call() == "langchain" and kernel.in_framework_run() is None
            assert kernel.framework_mark() == "langchain"
        assert kernel.in_framework_run() is mark  # the call's end brings the run's mark back
    assert kernel.framework_mark() is None


def test_a_run_mark_holds_only_while_its_session_is_the_innermost_open_one() -> None:
    from keito_instrument.adapters import begin_run, end_run

    run = begin_run("per-run", framework="langchain")
    assert run is not None
    token = kernel.mark_framework_run("langchain", run.session)
    try:
        assert kernel.in_framework_run() is not None
        with keito.session("opened-inside"):
            assert kernel.in_framework_run() is None  # the innermost session wins, as for keito.session()
        assert kernel.in_framework_run() is not None
        end_run(run)
        assert kernel.in_framework_run() is None and kernel.framework_mark() is None  # left behind
        assert kernel.marks_run(run.session)  # (still there: a nested run need not set its own)
    finally:
        kernel.reset_mark(token)
    assert kernel.marks_run(run.session) is False


def test_a_client_call_inside_a_marked_run_bills_to_the_runs_session(ledger: Spool) -> None:
    from keito_instrument.adapters import begin_run, end_run

    usage = {"prompt_tokens": 40, "completion_tokens": 4}
    run = begin_run("thread-7", framework="langchain")  # a framework's session, not the current one
    assert run is not None and keito.current_session() is None
    token = kernel.mark_framework_run("langchain", run.session)
    try:
        assert kernel.record_provider_call("gpt-4o-mini", "openai", usage, flavor="openai-chat",
                                           response_id="chatcmpl-run-1")
    finally:
        kernel.reset_mark(token)
    end_run(run)
    assert kernel.record_provider_call("gpt-4o-mini", "openai", usage, flavor="openai-chat",
                                       response_id="chatcmpl-run-2")  # no mark: on its own
    assert keito.flush(5.0)
    rows = {row["session_id"]: row for row in ledger.sessions()}
    assert rows["thread-7"]["llm_calls"] == 1 and rows["thread-7"]["input_tokens"] == 40
    assert sum(row["llm_calls"] for row in rows.values()) == 2


def test_a_mark_reset_from_another_context_puts_back_what_it_replaced() -> None:
    import contextvars

    with keito.session("outer") as session, kernel.framework_run("langchain", session):
        outer = kernel.in_framework_run()
        token = kernel.mark_framework_call("langchain")
        copied = contextvars.copy_context()  # e.g. a task created while the call ran, which ends it
        copied.run(kernel.reset_mark, token)  # the token is not of that context: no ValueError
        assert copied.run(kernel.in_framework_run) is outer and copied.run(kernel.in_framework_call) is None
        kernel.reset_mark(token)
        assert kernel.in_framework_run() is outer
        token = kernel.mark_framework_call("langchain")
        elsewhere = contextvars.copy_context()
        elsewhere.run(kernel.mark_framework_call, "agents")  # that context moved on to another mark
        elsewhere.run(kernel.reset_mark, token)
        assert elsewhere.run(kernel.in_framework_call) == "agents"  # not ours to undo there
        kernel.reset_mark(token)


def test_every_adapter_names_a_misspelt_option() -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("crewai")
    from keito_instrument.integrations import crewai as keito_crewai
    from keito_instrument.integrations.langchain import KeitoCallbackHandler
    from keito_instrument.integrations.otel import KeitoSpanProcessor

    with pytest.raises(TypeError, match=r"KeitoCallbackHandler\(\).*'projet_id'.*'project_id'"):
        KeitoCallbackHandler(projet_id="p")
    with pytest.raises(TypeError, match=r"KeitoSpanProcessor\(\).*'agent'"):
        KeitoSpanProcessor(agent="a")
    with pytest.raises(TypeError, match=r"'taks_id'.*'task_id'"):
        keito_crewai.KeitoCrewListener(taks_id="t")
    KeitoCallbackHandler(project_id="p", idle_timeout=60)  # the documented settings still work


def test_every_adapter_subpackage_is_registered_for_keito_instrument() -> None:
    import pathlib

    from keito_instrument import integrations

    here = pathlib.Path(integrations.__file__).parent
    subpackages = {p.name for p in here.iterdir() if (p / "__init__.py").exists()}
    # otel needs the application's TracerProvider: it is added as a span processor, not switched on
    assert set(integrations.discover()) == subpackages - {"otel"}
    assert integrations.discover()["langchain"] == "langchain_core"


def test_another_packages_adapter_is_discovered_and_enabled(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Any) -> None:
    import sys
    from importlib import metadata

    from keito_instrument import integrations

    (tmp_path / "acme_keito_adapter.py").write_text("calls = []\ndef instrument():\n    calls.append(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ours = list(metadata.entry_points(group=integrations.GROUP))
    theirs = metadata.EntryPoint(name="json", value="acme_keito_adapter", group=integrations.GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [*ours, theirs] if group == integrations.GROUP else [])
    found = integrations.discover()
    assert found["acme_keito_adapter"] == "json" and "openai" in found
    monkeypatch.setattr(integrations, "ADAPTERS", {"acme_keito_adapter": "json", "nope": "no_such_module_keito"})
    assert integrations.instrument_all() == ["acme_keito_adapter"]
    assert sys.modules["acme_keito_adapter"].calls == [1]


def test_no_registered_adapter_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from keito_instrument import integrations

    monkeypatch.setattr(integrations, "ADAPTERS", {})
    assert integrations.instrument_all() == []
    assert "no adapters registered" in caplog.text and "pip install keito-instrument" in caplog.text
