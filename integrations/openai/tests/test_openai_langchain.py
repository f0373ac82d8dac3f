"""LangChain's ChatOpenAI with our handler while the OpenAI client is instrumented: each call billed once.

The handler marks the context from `on_chat_model_start` to `on_llm_end` / `on_llm_error`; the
client hook sees the mark and leaves the call to the handler (the framework layer wins: it knows
the session the run bills to). Real `langchain_openai.ChatOpenAI` against the local fake API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _fake_server import FakeOpenAI
from _openai_support import one_session, served_totals, usage_rows

import keito_instrument as keito
from keito_instrument._spool import Spool

langchain_openai = pytest.importorskip("langchain_openai")
keito_lc = pytest.importorskip("keito_instrument.integrations.langchain")

pytestmark = pytest.mark.usefixtures("instrumented")


@pytest.fixture(autouse=True)
def _clean_langchain() -> Iterator[None]:
    keito_lc.uninstrument()
    yield
    keito_lc.uninstrument()
    keito_lc._table.clear()


def chat(server: FakeOpenAI, **kwargs: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10, **kwargs
    )


def assert_once_each(ledger: Spool, server: FakeOpenAI, calls: int) -> None:
    row = one_session(ledger)
    inp, out, cached, reasoning = served_totals(server)
    assert len(server.served) == calls
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (calls, inp, out)
    [usage] = usage_rows(ledger).values()
    assert (usage["model"], usage["cache_read_tokens"], usage["reasoning_tokens"]) == (
        "gpt-4o-mini-2024-07-18", cached, reasoning)


def test_sync_invoke_and_stream_with_the_handler_bill_once(ledger: Spool, server: FakeOpenAI) -> None:
    config: Any = {"callbacks": [keito_lc.KeitoCallbackHandler()]}
    with keito.session():
        assert chat(server).invoke("hi", config=config).content == "Hello from the fake server"
        streamed = "".join(str(c.content) for c in chat(server, stream_usage=True).stream("hi", config=config))
        chat(server).batch(["a", "b"], config=config)
    assert streamed == "Hello from the fake server"
    assert_once_each(ledger, server, 4)


async def test_async_invoke_and_stream_with_the_handler_bill_once(ledger: Spool, server: FakeOpenAI) -> None:
    config: Any = {"callbacks": [keito_lc.KeitoCallbackHandler()]}
    with keito.session():
        await chat(server).ainvoke("hi", config=config)
        [c async for c in chat(server, stream_usage=True).astream("hi", config=config)]
        await chat(server).abatch(["a", "b"], config=config)
    assert_once_each(ledger, server, 4)


async def test_both_instrumented_process_wide_bill_once(ledger: Spool, server: FakeOpenAI) -> None:
    keito_lc.instrument()
    with keito.session():
        chat(server).invoke("hi")
        await chat(server).ainvoke("hi")
    assert_once_each(ledger, server, 2)


def test_without_the_handler_the_client_hook_bills_it(ledger: Spool, server: FakeOpenAI) -> None:
    with keito.session():
        chat(server).invoke("hi")
        list(chat(server, stream_usage=True).stream("hi"))
    assert_once_each(ledger, server, 2)


def test_the_mark_ends_with_the_call(ledger: Spool, server: FakeOpenAI) -> None:
    from _openai_support import client

    config: Any = {"callbacks": [keito_lc.KeitoCallbackHandler()]}
    with keito.session():
        chat(server).invoke("hi", config=config)
        client(server).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert_once_each(ledger, server, 2)  # the direct call after the LangChain one is the client hook's
