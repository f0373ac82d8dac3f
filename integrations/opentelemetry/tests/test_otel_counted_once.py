"""Counted once across layers: our LangChain handler and our span processor over OpenInference's
LangChain spans, and two instrumentors whose spans for one call land in different traces.

Which layer wins: our LangChain handler, wherever it records a call (it knows the session); the
processor leaves those calls, and a trace made only of them, to it. Elsewhere the provider's
response id decides: the first layer to claim it counts the call.

The handler is attached both ways LangChain orders callbacks differently: passed in the run's
config (it sees each event before OpenInference's tracer) and process-wide with `instrument()`
(after it).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from _lc_models import FakeOpenAIChat, reply
from _otel_fakes import Otel, make_otel
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import tool
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel
from keito_instrument.integrations import langchain as keito_lc

HOW = ("config", "instrument")


@pytest.fixture
def instrumented() -> Iterator[Otel]:
    setup = make_otel(agent_id="lc-otel")
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=setup.provider)
    try:
        yield setup
    finally:
        instrumentor.uninstrument()
        setup.provider.shutdown()
        keito_lc.uninstrument()
        keito_lc._table.clear()


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


def config(how: str, **metadata: Any) -> dict[str, Any]:
    """The run's config: with our handler in it, or nothing (the handler is process-wide)."""
    if how == "instrument":
        keito_lc.instrument()
        return {"metadata": metadata}
    return {"metadata": metadata, "callbacks": [keito_lc.KeitoCallbackHandler()]}


def sessions(ledger: Spool) -> list[tuple[Any, ...]]:
    keys = ("session_id", "framework", "llm_calls", "input_tokens", "output_tokens", "tool_calls")
    return sorted(tuple(row[k] for k in keys) for row in ledger.sessions())


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
    # record it, so the processor does (OpenInference's spans are not its parent: a trace of its own).
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


@pytest.fixture
def server() -> Iterator[Any]:
    pytest.importorskip("langchain_openai")
    sys.path.insert(0, str(Path(__file__).parents[2] / "openai" / "tests"))
    from _fake_server import fake_openai

    with fake_openai() as fake:
        yield fake


class _ToTheTest(SpanProcessor):  # type: ignore[misc]
    """Hands spans to the current test's processors.

    OpenLLMetry's OpenAI instrumentor cannot be taken off again (on openai 2.x its `uninstrument`
    leaves its wrapper, which goes on sending spans to the provider it was given), so it is
    instrumented once, with a provider that forwards to the test's own.
    """

    target: Otel | None = None

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.target is not None:
            self.target.provider._active_span_processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: Any) -> None:
        if self.target is not None:
            self.target.provider._active_span_processor.on_end(span)


@pytest.fixture(scope="module")
def _openai_instrumentor() -> Iterator[_ToTheTest]:
    openai_instrumentation = pytest.importorskip("opentelemetry.instrumentation.openai")
    forward = _ToTheTest()
    provider = TracerProvider()
    provider.add_span_processor(forward)
    instrumentor = openai_instrumentation.OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield forward
    forward.target = None
    instrumentor.uninstrument()


@pytest.fixture
def client_spans(instrumented: Otel, _openai_instrumentor: _ToTheTest) -> Iterator[Otel]:
    """OpenLLMetry's OpenAI instrumentor feeding the same processors as OpenInference's LangChain one."""
    _openai_instrumentor.target = instrumented
    try:
        yield instrumented
    finally:
        _openai_instrumentor.target = None


def chat(server: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)


def served(server: Any) -> tuple[int, int, int]:
    return (len(server.served), sum(u["prompt_tokens"] for u in server.served),
            sum(u["completion_tokens"] for u in server.served))


def billed(ledger: Spool) -> tuple[int, int, int]:
    rows = ledger.sessions()
    return (sum(r["llm_calls"] for r in rows), sum(r["input_tokens"] for r in rows),
            sum(r["output_tokens"] for r in rows))


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
