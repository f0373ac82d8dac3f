"""Our client hook and a span of the same call without a response id: billed once, by the hook.

OpenInference's LangChain span of a streamed call has no id; our OpenAI client hook counts the
call (with the id) at the stream's usage chunk, inside that span's interval. While a
`KeitoSpanProcessor` is live the hook's call is noted for pairing (`_pairing.claim_client_call`),
so the span pairs with it and is not counted. Real `openai` clients (under ChatOpenAI) run against
the local fake OpenAI server, without our LangChain handler; hand-made spans check the order and
a third layer.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import pytest
from _layers import billed, chat, served
from _otel_fakes import Otel, make_otel
from langchain_core.runnables import RunnableLambda

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel
from keito_instrument.integrations import openai as keito_openai
from keito_instrument.integrations.otel import KeitoSpanProcessor
from keito_instrument.integrations.otel import _attrs as attrs
from keito_instrument.integrations.otel._pairing import pending

USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}


@pytest.fixture
def hook() -> Iterator[None]:
    pytest.importorskip("openai")  # (not in this integration's oldest-versions run)
    keito_openai.instrument()
    try:
        yield
    finally:
        keito_openai.uninstrument()


def streamed(model: Any) -> RunnableLambda[str, str]:
    return RunnableLambda(lambda q: "".join(str(chunk.content) for chunk in model.stream(q)))


def llm_spans(otel: Otel) -> list[Any]:
    spans = [s for s in otel.exported.get_finished_spans()
             if (s.attributes or {}).get("openinference.span.kind") == "LLM"]
    assert all(attrs.response_id(dict(s.attributes or {})) is None for s in spans)  # nothing shared by id
    return spans


def frameworks(ledger: Spool) -> set[str]:
    return {row["framework"] for row in ledger.sessions()}


def test_a_streamed_call_is_billed_once_by_the_hook(instrumented: Otel, hook: None, ledger: Spool, server: Any) -> None:
    chain = streamed(chat(server, stream_usage=True))
    with keito.session("s1"):
        for question in ("a", "b", "c"):
            assert chain.invoke(question) == "Hello from the fake server"
    assert len(llm_spans(instrumented)) == 3
    assert billed(ledger) == served(server) == (3, 3600, 900)
    assert [row["session_id"] for row in ledger.sessions()] == ["s1"]  # no trace session next to it
    assert len(pending) == 0  # each hook call paired with its span and was taken out


async def test_streamed_async_calls_are_billed_once_by_the_hook(
    instrumented: Otel, hook: None, ledger: Spool, server: Any
) -> None:
    model = chat(server, stream_usage=True)
    in_flight = asyncio.Semaphore(4)  # the local server's listen backlog is 5

    async def call(question: str) -> str:
        async with in_flight:
            return "".join([str(chunk.content) async for chunk in model.astream(question)])

    answers = await asyncio.gather(*(RunnableLambda(call).ainvoke("same") for _ in range(8)))
    assert answers == ["Hello from the fake server"] * 8
    assert len(llm_spans(instrumented)) == 8
    assert billed(ledger) == served(server) == (8, 9600, 2400)
    assert "otel" not in frameworks(ledger)


def test_twenty_concurrent_identical_streamed_calls_on_threads_bill_twenty(
    instrumented: Otel, hook: None, ledger: Spool, server: Any
) -> None:
    chain = streamed(chat(server, stream_usage=True))
    with ThreadPoolExecutor(4) as pool:  # the local server's listen backlog is 5
        assert list(pool.map(chain.invoke, ["same"] * 20)) == ["Hello from the fake server"] * 20
    assert len(llm_spans(instrumented)) == 20
    assert billed(ledger) == served(server) == (20, 24_000, 6_000)
    assert "otel" not in frameworks(ledger)


def test_a_different_call_inside_a_streamed_one_is_billed_too(
    instrumented: Otel, hook: None, ledger: Spool, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client called directly while LangChain's stream is read: the hook counts it with other
    # usage, inside the streamed call's span. Two calls, each billed once.
    import _fake_server
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    def run(question: str) -> str:
        text = ""
        for n, chunk in enumerate(chat(server, stream_usage=True).stream(question)):
            if n == 1:  # the stream's usage is fixed at its request: only the direct call gets USAGE
                with monkeypatch.context() as patch:
                    patch.setattr(_fake_server, "CHAT_USAGE", USAGE)
                    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            text += str(chunk.content)
        return text

    RunnableLambda(run).invoke("a")
    assert billed(ledger) == served(server) == (2, 1300, 310)


def test_calls_with_no_span_of_their_own_are_each_billed(
    instrumented: Otel, hook: None, ledger: Spool, server: Any
) -> None:
    # Identical hook calls never pair with each other (one layer reports a call once).
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    def call(_: int) -> str:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                                stream=True, stream_options={"include_usage": True})
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(call, range(8))) == ["Hello from the fake server"] * 8
    assert billed(ledger) == served(server) == (8, 9600, 2400)


# -- the order and a third layer, with hand-made spans ---------------------------------------------


def hook_call(response_id: str | None = None) -> bool:
    """What our OpenAI hook does when a chat call's answer (or its stream's usage chunk) arrives."""
    return _kernel.record_provider_call("gpt-4o-mini-2024-07-18", "openai", USAGE, flavor="openai-chat",
                                        response_id=response_id or f"chatcmpl-{uuid4()}")


def llm_span(otel: Otel, start_time: int | None = None) -> Any:
    return otel.provider.get_tracer("openinference.instrumentation.langchain").start_span("ChatOpenAI", attributes={
        "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini", "llm.provider": "openai",
        "llm.token_count.prompt": 100, "llm.token_count.completion": 10}, start_time=start_time)


def chat_span(otel: Otel, tracer: str, response_id: str | None) -> Any:
    values: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                              "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 100,
                              "gen_ai.usage.output_tokens": 10}
    if response_id is not None:
        values["gen_ai.response.id"] = response_id
    return otel.provider.get_tracer(tracer).start_span("openai.chat", attributes=values)


def test_a_span_without_an_id_counted_just_before_the_hook_wins(otel: Otel, ledger: Spool) -> None:
    # An instrumentor inside our hook's wrapper whose span carries no id ends first: the hook's
    # call pairs with it and is not billed again.
    chat_span(otel, "some.client.instrumentor", None).end()
    assert not hook_call()
    assert billed(ledger) == (1, 100, 10)


def test_the_hook_the_client_span_and_openinferences_span_of_one_stream_bill_once(otel: Otel, ledger: Spool) -> None:
    # The client instrumentor's span (with the id the hook claimed) ends between the hook's count
    # and OpenInference's span: the hook's note stays for OpenInference's span to find.
    response_id = f"chatcmpl-{uuid4()}"
    outer = llm_span(otel)
    inner = chat_span(otel, "opentelemetry.instrumentation.openai.v1", response_id)
    assert hook_call(response_id)
    inner.end()
    outer.end()
    assert billed(ledger) == (1, 100, 10)


def test_a_hook_call_long_before_the_span_is_another_call(otel: Otel, ledger: Spool) -> None:
    assert hook_call()
    later = time.time_ns() + 10**9  # a second after the hook's call: beyond the slack
    llm_span(otel, start_time=later).end(end_time=later + 10**6)
    assert billed(ledger) == (2, 200, 20)


def test_hooks_note_calls_only_while_a_processor_is_live(ledger: Spool) -> None:
    assert _kernel.pair_client_call is None  # no processor: nothing is noted
    assert hook_call() and len(pending) == 0
    setup = make_otel()
    assert hook_call() and len(pending) == 1
    setup.provider.shutdown()
    assert _kernel.pair_client_call is None
    processor = KeitoSpanProcessor()
    assert _kernel.pair_client_call is not None
    del processor
    gc.collect()
    assert _kernel.pair_client_call is None  # collected without shutdown: hooks stop noting


def test_a_stream_wrapped_by_openllmetry_inside_our_hook_is_read_through_its_proxy(
        client_spans: Otel, hook: None, ledger: Spool, server: Any) -> None:
    # OpenLLMetry was instrumented first (a session fixture), so our hook gets its proxy around
    # the SDK's Stream: the hook reads the stream through it (usage and all), and the chat span
    # of the same call pairs with the hook's count by its id: one call, with its tokens.
    import openai

    sdk = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)
    with keito.session("proxied"):
        stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                             stream=True, stream_options={"include_usage": True})
        assert type(stream) is not openai.Stream and isinstance(stream, openai.Stream)  # (the proxy)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake server"
    assert billed(ledger) == served(server) == (1, 1200, 300)
    [row] = ledger.sessions()
    assert row["session_id"] == "proxied"
