"""langchain_openai.ChatOpenAI against a fake OpenAI-compatible server on 127.0.0.1: real provider parsing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _lc_fakes import FakeOpenAI
from langchain_core.callbacks import UsageMetadataCallbackHandler

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations.langchain import KeitoCallbackHandler

langchain_openai = pytest.importorskip("langchain_openai")


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(prompt_tokens=21, completion_tokens=7, cached=4, reasoning=2) as fake:
        yield fake


def chat(server: FakeOpenAI, **kwargs: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10, **kwargs
    )


def test_chat_openai_non_streaming_and_streaming(ledger: Spool, server: FakeOpenAI) -> None:
    reference = UsageMetadataCallbackHandler()
    config: Any = {"callbacks": [KeitoCallbackHandler(), reference]}
    with keito.session() as s:
        assert chat(server).invoke("hi", config=config).content == "Hello there"
        streamed = "".join(
            str(c.content) for c in chat(server, stream_usage=True).stream("hi", config=config)
        )
        assert streamed == "Hello there"
    assert server.requests[1]["stream"] is True and server.requests[1]["stream_options"]["include_usage"]
    [row] = ledger.sessions()
    expected = reference.usage_metadata["gpt-4o-mini"]
    assert row["session_id"] == s.session_id
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (2, 42, 14)
    assert (row["input_tokens"], row["output_tokens"]) == (
        expected["input_tokens"],
        expected["output_tokens"],
    )
    meta = next(r for r in ledger.records(row["session_id"]) if r["kind"] == "expense")["payload"]["metadata"]
    assert (meta["cache_read_tokens"], meta["reasoning_tokens"]) == (8, 4)
    assert meta["model"] == "gpt-4o-mini" and row["cost_usd"] > 0


async def test_chat_openai_async_with_and_without_stream_usage(ledger: Spool, server: FakeOpenAI) -> None:
    reference = UsageMetadataCallbackHandler()
    config: Any = {"callbacks": [KeitoCallbackHandler(), reference], "metadata": {"session_id": "oa-async"}}
    assert (await chat(server).ainvoke("hi", config=config)).content == "Hello there"
    chunks = [c async for c in chat(server, stream_usage=True).astream("hi", config=config)]
    assert "".join(str(c.content) for c in chunks) == "Hello there"
    assert keito.end_session("oa-async")
    [row] = ledger.sessions()
    expected = reference.usage_metadata["gpt-4o-mini"]
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (
        2,
        expected["input_tokens"],
        expected["output_tokens"],
    )
    [usage] = ledger.usage()
    assert (usage["model"], usage["provider"], usage["cache_read_tokens"], usage["reasoning_tokens"]) == (
        "gpt-4o-mini",
        "openai",
        8,
        4,
    )


async def test_chat_openai_async_stream_without_usage(ledger: Spool, server: FakeOpenAI) -> None:
    handler = KeitoCallbackHandler()
    chunks = [
        c async for c in chat(server, stream_usage=False).astream("hi", config={"callbacks": [handler]})
    ]
    assert "".join(str(c.content) for c in chunks) == "Hello there"
    assert "stream_options" not in server.requests[0]  # the server really sent no usage
    [row] = ledger.sessions()
    assert row["llm_calls"] == 1 and row["input_tokens"] == 0
    [usage] = ledger.usage()
    assert usage["llm_calls"] == 1 and usage["model"] == "gpt-4o-mini"
    [expense] = [r for r in ledger.records(row["session_id"]) if r["kind"] == "expense"]
    assert expense["payload"]["metadata"].get("usage_missing")
