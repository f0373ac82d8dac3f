"""Counted once across layers: the Agents SDK calls the OpenAI client itself, and both may be on.

The framework layer wins (it knows the trace's session): while a model call's span is open the
processor marks the context, the OpenAI client hook sees the mark and leaves the call alone, and
the processor bills it with the response's id, which the kernel counts once per process.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
from _fake_responses import fake_responses
from agents import RunConfig

import keito_instrument as keito
from conftest import SCRIPT, Recorder, adder, run
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel


def _client_hook() -> Any:
    try:
        module = importlib.import_module("keito_instrument.integrations.openai")
    except ImportError:
        return None
    return module if hasattr(module, "instrument") and hasattr(module, "uninstrument") else None


@pytest.fixture
def client_hook(recorder: Recorder) -> Iterator[Any]:
    """The OpenAI client integration on as well (skipped where it has not landed)."""
    hook = _client_hook()
    if hook is None:
        pytest.skip("keito_instrument.integrations.openai (the OpenAI client hook) is not in this tree")
    hook.instrument()
    try:
        yield hook
    finally:
        hook.uninstrument()


@pytest.mark.parametrize("mode", ["run", "run_sync", "run_streamed"])
def test_with_the_client_hook_on_each_model_call_is_billed_once(
    client_hook: Any, recorder: Recorder, ledger: Spool, mode: str
) -> None:
    with fake_responses(SCRIPT) as server:
        run(mode, adder(server.base_url), "What is 2 + 3?")
    assert keito.flush(5.0)
    # One session (the trace's): no stray one-off expense from the client layer.
    [row] = ledger.sessions()
    assert row["session_id"] == recorder.traces[0].trace_id
    assert row["llm_calls"] == len(server.sent) == 2
    assert (row["input_tokens"], row["output_tokens"]) == (server.totals()["input"], server.totals()["output"])


def test_with_tracing_disabled_the_client_hook_bills_the_calls(client_hook: Any, ledger: Spool) -> None:
    # No trace, no processor call, no mark: the client layer is the only one that sees the calls.
    with fake_responses(SCRIPT) as server, keito.session("no-tracing"):
        run("run", adder(server.base_url), "What is 2 + 3?", RunConfig(tracing_disabled=True))
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"]) == ("no-tracing", 2)
    assert row["input_tokens"] == server.totals()["input"]


def test_keito_instrument_enables_the_agents_processor(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import set_trace_processors

    from keito_instrument import integrations
    from keito_instrument.integrations import openai_agents as keito_agents

    # keito.instrument() over the two layers of this test (the others' frameworks stay out of it).
    layers = {name: probe for name, probe in integrations.ADAPTERS.items() if name in {"openai_agents", "openai"}}
    monkeypatch.setattr(integrations, "ADAPTERS", layers)
    set_trace_processors([])
    try:
        assert "openai_agents" in keito.instrument()
        assert keito_agents.is_instrumented()
        with fake_responses(SCRIPT) as server:
            run("run", adder(server.base_url), "What is 2 + 3?")
    finally:
        keito_agents.uninstrument()
        hook = _client_hook()
        if hook is not None:
            hook.uninstrument()
        set_trace_processors([])
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert row["llm_calls"] == len(server.sent)
    assert (row["input_tokens"], row["output_tokens"]) == (server.totals()["input"], server.totals()["output"])


def test_a_response_the_processor_billed_is_not_billed_again_by_its_id(recorder: Recorder, ledger: Spool) -> None:
    # What any other layer (a client hook, an OTel span of the same call) meets: the same id.
    with fake_responses(SCRIPT) as server:
        run("run", adder(server.base_url), "What is 2 + 3?")
    for response in server.sent:
        assert not _kernel.record_provider_call(response["model"], "openai", response["usage"],
                                                flavor="openai-responses", response_id=response["id"])
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert row["llm_calls"] == 2
