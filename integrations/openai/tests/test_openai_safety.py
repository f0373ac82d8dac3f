"""The hook changes nothing the host sees: return values, exceptions, streams; and it reverses."""

from __future__ import annotations

import gc
from typing import Any

import openai
import pytest
from _fake_server import FakeOpenAI
from _openai_support import client, expenses, one_session
from openai.resources.chat.completions import AsyncCompletions, Completions
from openai.resources.embeddings import Embeddings
from openai.resources.responses import Responses

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import ADAPTERS
from keito_instrument.integrations import _kernel as kernel
from keito_instrument.integrations import openai as keito_openai
from keito_instrument.integrations.openai import _hooks

HI: Any = [{"role": "user", "content": "hi"}]
ORIGINALS = {cls: cls.__dict__["create"] for cls in (Completions, AsyncCompletions, Responses, Embeddings)}


def _without_ids(value: Any) -> Any:
    dumped = value.model_dump()
    dumped.pop("id", None)
    return dumped


def _chat(server: FakeOpenAI, **kwargs: Any) -> Any:
    return client(server).chat.completions.create(model="gpt-4o-mini", messages=HI, **kwargs)


def test_return_values_and_streams_are_what_the_client_returns(server: FakeOpenAI) -> None:
    bare = [_without_ids(_chat(server)), [_without_ids(c) for c in _chat(server, stream=True)]]
    keito_openai.instrument()
    reply, stream = _chat(server), _chat(server, stream=True)
    assert type(reply) is openai.types.chat.ChatCompletion and type(stream) is openai.Stream
    with stream as entered:
        assert entered is stream
        ours = [_without_ids(reply), [_without_ids(c) for c in entered]]
    assert ours == bare


def test_an_api_error_passes_through_unchanged_and_bills_nothing(ledger: Spool, server: FakeOpenAI) -> None:
    def failure() -> openai.APIStatusError:
        server.fail = (429, 1)
        with pytest.raises(openai.APIStatusError) as caught:
            _chat(server)
        return caught.value

    bare = failure()
    keito_openai.instrument()
    with keito.session():
        ours = failure()
    assert (type(ours), ours.status_code, ours.body, str(ours)) == (
        type(bare), bare.status_code, bare.body, str(bare))
    assert type(ours) is openai.RateLimitError
    assert one_session(ledger)["llm_calls"] == 0


def test_uninstrument_restores_the_original_methods(ledger: Spool, server: FakeOpenAI) -> None:
    keito_openai.instrument()
    keito_openai.instrument()  # once
    assert keito_openai.is_instrumented() and Completions.__dict__["create"] is not ORIGINALS[Completions]
    keito_openai.uninstrument()
    assert not keito_openai.is_instrumented()
    assert {cls: cls.__dict__["create"] for cls in ORIGINALS} == ORIGINALS
    with keito.session():
        _chat(server)
    assert one_session(ledger)["llm_calls"] == 0


def test_a_wrapper_put_over_ours_stays_and_ours_then_passes_calls_through(ledger: Spool, server: FakeOpenAI) -> None:
    keito_openai.instrument()
    ours = Completions.__dict__["create"]
    calls: list[str] = []

    def theirs(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("theirs")
        return ours(self, *args, **kwargs)

    Completions.create = theirs  # type: ignore[method-assign]
    try:
        keito_openai.uninstrument()
        assert Completions.__dict__["create"] is theirs
        with keito.session():
            _chat(server)
        assert calls == ["theirs"] and one_session(ledger)["llm_calls"] == 0
    finally:
        Completions.create = ORIGINALS[Completions]  # type: ignore[method-assign]


def test_clients_created_before_instrument_are_covered(ledger: Spool, server: FakeOpenAI) -> None:
    early = client(server)
    keito_openai.instrument()
    with keito.session():
        early.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert one_session(ledger)["input_tokens"] == 1200


def test_inside_a_framework_call_the_client_hook_records_nothing(ledger: Spool, server: FakeOpenAI) -> None:
    keito_openai.instrument()
    with keito.session():
        with kernel.framework_call("langchain"):
            _chat(server)
            for _ in _chat(server, stream=True, stream_options={"include_usage": True}):
                pass
        _chat(server)
    assert one_session(ledger)["llm_calls"] == 1


def test_streams_stopped_early_or_never_read_are_counted_with_usage_missing(
    ledger: Spool, server: FakeOpenAI
) -> None:
    keito_openai.instrument()
    with keito.session():
        with _chat(server, stream=True, stream_options={"include_usage": True}) as stream:
            next(iter(stream))  # the first chunk, then the consumer is done with it
        del stream
        _chat(server, stream=True, stream_options={"include_usage": True})  # dropped unread
        gc.collect()
    row = one_session(ledger)
    assert (row["llm_calls"], row["input_tokens"], row["cost_unknown"]) == (2, 0, 1)
    assert sum(e["usage_missing"] for e in expenses(ledger)) == 2


@pytest.mark.guard_errors_expected
def test_our_own_failure_never_reaches_the_host(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("keito bug")

    monkeypatch.setattr(_hooks, "record_provider_call", broken)
    monkeypatch.setattr("keito_instrument.integrations.openai._streams.record_provider_call", broken)
    keito_openai.instrument()
    assert _chat(server).choices[0].message.content == "Hello from the fake server"
    chunks = list(_chat(server, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None


def test_options_versions_and_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="'project_id'"):
        keito_openai.instrument(project_id="p")
    monkeypatch.setattr(keito_openai, "MINIMUM", (99, 0))
    with pytest.raises(ImportError, match=r'openai >= 99.0, found .*pip install -U "keito-instrument\[openai\]"'):
        keito_openai.instrument()
    assert not keito_openai.is_instrumented()
    assert ADAPTERS["openai"] == "openai"
