"""Counted once across layers: our LangChain handler and our span processor over OpenInference's
LangChain spans, and two instrumentors whose spans for one call land in different traces.

Which layer wins: our LangChain handler, wherever it records a call (it knows the session); the
processor leaves those calls, and a trace made only of them, to it. Elsewhere the provider's
response id decides: the first layer to claim it counts the call.

The handler is attached both ways (see `_layers`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import pytest
from _layers import HOW, billed, chat, config, served, sessions
from _lc_models import FakeOpenAIChat, reply
from _otel_fakes import Otel, make_otel
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import tool

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return "found"


def agent(inp: int = 100, out: int = 10) -> Runnable[Any, Any]:
    """A chain of two model calls (the same answer each time) and a tool call."""
    model = FakeOpenAIChat(messages=iter([reply(inp, out), reply(inp, out)]))

    def run(question: str) -> str:
        first = model.invoke(question)
        lookup.invoke(str(first.content))
        return str(model.invoke(question).content)

    return RunnableLambda(run)


@pytest.mark.parametrize("how", HOW)
def test_inside_a_session_each_call_and_tool_is_billed_once(instrumented: Otel, ledger: Spool, how: str) -> None:
    with keito.session("s1"):
        agent().invoke("q", config=config(how))
    assert sessions(ledger) == [("s1", "python", 2, 200, 20, 1)]
    assert instrumented.processor.open_traces == 0


@pytest.mark.parametrize("how", HOW)
def test_with_only_a_thread_id_the_handler_bills_and_no_trace_session_appears(
    instrumented: Otel, ledger: Spool, how: str
) -> None:
    agent().invoke("q", config=config(how, thread_id="t1"))
    agent().invoke("q", config=config(how, thread_id="t1"))
    assert keito.end_session("t1")
    assert sessions(ledger) == [("t1", "langchain", 4, 400, 40, 2)]


@pytest.mark.parametrize("how", HOW)
def test_without_a_session_id_the_handlers_session_is_the_only_one(instrumented: Otel, ledger: Spool, how: str) -> None:
    agent().invoke("q", config=config(how))
    [(_, framework, *counts)] = sessions(ledger)
    assert (framework, counts) == ("langchain", [2, 200, 20, 1])


@pytest.mark.parametrize("how", HOW)
def test_fifty_concurrent_identical_runs_on_threads_bill_each_call_once(
    instrumented: Otel, ledger: Spool, how: str
) -> None:
    run_config = config(how, thread_id="t-threads")
    chains = [agent() for _ in range(50)]  # one model each: the same prompt and the same usage
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda chain: chain.invoke("same", config=run_config), chains)) == ["fine"] * 50
    assert keito.end_session("t-threads")
    assert sessions(ledger) == [("t-threads", "langchain", 100, 10_000, 1_000, 50)]
    assert instrumented.processor.open_traces == 0


@pytest.mark.parametrize("how", HOW)
async def test_fifty_concurrent_identical_async_runs_bill_each_call_once(
    instrumented: Otel, ledger: Spool, how: str
) -> None:
    run_config = config(how)
    with keito.session("s-async"):
        answers = await asyncio.gather(*(agent().ainvoke("same", config=run_config) for _ in range(50)))
    assert answers == ["fine"] * 50
    assert sessions(ledger) == [("s-async", "python", 100, 10_000, 1_000, 50)]


@pytest.mark.parametrize("how", HOW)
def test_a_call_the_handler_never_saw_is_billed_by_the_processor(instrumented: Otel, ledger: Spool, how: str) -> None:
    # An instrumented model call made outside LangChain inside a chain step: the handler does not
    # record it, so the processor does (its span starts a trace of its own: OpenInference's spans
    # are not current), into the handler's session, which the run's mark names.
    model = FakeOpenAIChat(messages=iter([reply(100, 10)]))

    def step(question: str) -> str:
        with instrumented.tracer.start_as_current_span("chat gpt-4o-mini", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.provider.name": "openai",
            "gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3, "gen_ai.response.id": f"direct-{uuid4()}",
        }):
            pass
        return str(model.invoke(question).content)

    with keito.session("s1"):
        RunnableLambda(step).invoke("q", config=config(how))
    assert sessions(ledger) == [("s1", "python", 2, 107, 13, 0)]


def test_the_processor_asks_for_the_handlers_marks_while_it_is_installed() -> None:
    setup = make_otel()
    assert id(setup.processor) in _kernel.CLIENT_HOOKS  # the handler marks its calls only for hooks below it
    setup.provider.shutdown()
    assert id(setup.processor) not in _kernel.CLIENT_HOOKS


# -- two instrumentors: OpenInference's LangChain spans and the OpenAI client's spans --------------
# openinference-instrumentation-langchain never makes its spans current (LangChain callbacks cannot
# attach a context safely), so the OpenAI instrumentor's `chat` span starts a trace of its own.


def test_spans_of_one_call_in_two_traces_count_once_by_the_response_id(
    client_spans: Otel, ledger: Spool, server: Any
) -> None:
    chain = RunnableLambda(lambda q: chat(server).invoke(q).content)
    for question in ("a", "b", "c"):
        chain.invoke(question)
    spans = client_spans.exported.get_finished_spans()
    llm = [s for s in spans if (s.attributes or {}).get("openinference.span.kind") == "LLM"]
    client = [s for s in spans if (s.attributes or {}).get("gen_ai.response.id")]
    assert len(llm) == len(client) == 3
    assert {s.context.trace_id for s in llm}.isdisjoint(s.context.trace_id for s in client)  # two traces per call
    assert billed(ledger) == served(server) == (3, 3600, 900)


async def test_concurrent_calls_whose_spans_land_in_two_traces_count_once(
    client_spans: Otel, ledger: Spool, server: Any
) -> None:
    model = chat(server)
    in_flight = asyncio.Semaphore(4)  # the local server's listen backlog is 5

    async def call(question: str) -> Any:
        async with in_flight:
            return await model.ainvoke(question)

    await asyncio.gather(*(RunnableLambda(call).ainvoke("same") for _ in range(20)))
    assert billed(ledger) == served(server) == (20, 24_000, 6_000)


@pytest.mark.parametrize("how", HOW)
def test_with_the_handler_its_sessions_bill_every_call_and_no_trace_session_appears(
    client_spans: Otel, ledger: Spool, server: Any, how: str
) -> None:
    chain = RunnableLambda(lambda q: chat(server).invoke(q).content)
    run_config = config(how)
    for question in ("a", "b"):
        chain.invoke(question, config=run_config)
    assert billed(ledger) == served(server)
    assert [row["framework"] for row in ledger.sessions()] == ["langchain", "langchain"]


def test_our_client_hook_and_the_client_instrumentors_span_count_once(
    client_spans: Otel, ledger: Spool, server: Any
) -> None:
    from openai import OpenAI

    from keito_instrument.integrations import openai as keito_openai

    client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    keito_openai.instrument()  # our hook wraps the instrumentor's wrapper: its span ends first
    try:
        for n in range(3):
            with keito.session(f"s{n}"):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    finally:
        keito_openai.uninstrument()
    assert billed(ledger) == served(server) == (3, 3600, 900)
    assert sorted(row["session_id"] for row in ledger.sessions()) == ["s0", "s1", "s2"]



@pytest.mark.parametrize("how", HOW)
def test_streamed_and_failed_calls_are_the_handlers_too(instrumented: Otel, ledger: Spool, how: str) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    streamed = FakeOpenAIChat(messages=iter([reply(30, 3)]))
    failing = FakeListChatModel(responses=["x"], error_on_chunk_number=0)

    def run(question: str) -> str:
        text = "".join(str(chunk.content) for chunk in streamed.stream(question))
        with pytest.raises(Exception):  # noqa: B017 - the fake's own error type
            list(failing.stream(question))
        return text

    with keito.session("s1"):
        assert RunnableLambda(run).invoke("q", config=config(how)) == "fine"
    [row] = ledger.sessions()  # the fake streams no usage: the handler's streamed call is usage_missing
    assert (row["session_id"], row["llm_calls"], row["errors"]) == ("s1", 1, 1)


@pytest.mark.parametrize("how", HOW)
def test_a_langgraph_thread_is_the_handlers_session(instrumented: Otel, ledger: Spool, how: str) -> None:
    graph_module = pytest.importorskip("langgraph.graph")
    from langgraph.checkpoint.memory import InMemorySaver

    model = FakeOpenAIChat(messages=iter([reply(100, 10), reply(200, 20)]))

    def answer(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = graph_module.StateGraph(graph_module.MessagesState)
    builder.add_node("answer", answer)
    builder.add_edge(graph_module.START, "answer")
    graph = builder.compile(checkpointer=InMemorySaver())
    run_config = {**config(how), "configurable": {"thread_id": "thread-7"}}
    for turn in ("hi", "and then?"):
        graph.invoke({"messages": [("user", turn)]}, config=run_config)
    assert keito.end_session("thread-7")
    assert sessions(ledger) == [("thread-7", "langchain", 2, 300, 30, 0)]
