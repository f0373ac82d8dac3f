"""A LangChain run's time and tool calls are billed once across layers: our handler bills them
into its session, and the span processor, over OpenInference's spans of the same run, bills none
of them again, even when the run makes no model call at all (a tool-only chain, a retriever).

A model call the handler never sees (a real `openai` client called directly inside a chain step,
traced by OpenLLMetry's OpenAI instrumentor in a trace of its own) is billed once, into the
handler's session: the run's mark carries it. Each test checks time as well as counts: the
sessions' billed seconds add up to no more than the run took.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from _layers import HOW, billed, config, served, sessions
from _otel_fakes import Otel
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableParallel
from langchain_core.tools import tool

import keito_instrument as keito
from keito_instrument._spool import Spool

PAUSE = 0.05  # each run's own work, so that billing its time twice would show


@tool
def lookup(query: str) -> str:
    """Look something up."""
    time.sleep(PAUSE / 2)
    return "found"


@tool
def broken(query: str) -> str:
    """Fail."""
    raise ValueError("no such record")


def tools_only() -> Runnable[Any, Any]:
    """A chain step that calls two tools and no model."""

    def run(question: str) -> str:
        lookup.invoke(question)
        return str(lookup.invoke(question))

    return RunnableLambda(run)


class Shelf(BaseRetriever):
    """A retriever with nothing behind it but a pause."""

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        time.sleep(PAUSE)
        return [Document(page_content="found")]


def seconds(ledger: Spool) -> float:
    return float(sum(row["active_seconds"] for row in ledger.sessions()))


def timed(run: Any) -> float:
    started = time.monotonic()
    run()
    return time.monotonic() - started


# -- (a) runs with no model call ------------------------------------------------------------------
@pytest.mark.parametrize("how", HOW)
def test_a_tool_only_run_is_the_handlers_session_alone(instrumented: Otel, ledger: Spool, how: str) -> None:
    took = timed(lambda: tools_only().invoke("q", config=config(how)))
    [(_, framework, *counts)] = sessions(ledger)
    assert (framework, counts) == ("langchain", [0, 0, 0, 2])
    assert PAUSE <= seconds(ledger) <= took
    assert instrumented.processor.open_traces == 0
    assert any(s.attributes and s.attributes.get("openinference.span.kind") == "TOOL"
               for s in instrumented.exported.get_finished_spans())  # OpenInference did trace the run


@pytest.mark.parametrize("how", HOW)
def test_a_retriever_run_is_the_handlers_session_alone(instrumented: Otel, ledger: Spool, how: str) -> None:
    took = timed(lambda: Shelf().invoke("q", config=config(how)))
    [(_, framework, *counts)] = sessions(ledger)
    assert (framework, counts) == ("langchain", [0, 0, 0, 0])
    assert PAUSE <= seconds(ledger) <= took


@pytest.mark.parametrize("how", HOW)
def test_a_failing_tool_is_one_error_in_the_handlers_session(instrumented: Otel, ledger: Spool, how: str) -> None:
    def run(question: str) -> str:
        lookup.invoke(question)
        return str(broken.invoke(question))

    with pytest.raises(ValueError, match="no such record"):
        RunnableLambda(run).invoke("q", config=config(how))
    [row] = ledger.sessions()
    assert (row["framework"], row["tool_calls"], row["errors"]) == ("langchain", 2, 1)


@pytest.mark.parametrize("how", HOW)
def test_tool_only_turns_of_a_thread_are_one_session(instrumented: Otel, ledger: Spool, how: str) -> None:
    took = sum(timed(lambda: tools_only().invoke("q", config=config(how, thread_id="t1"))) for _ in range(2))
    assert keito.end_session("t1")
    assert sessions(ledger) == [("t1", "langchain", 0, 0, 0, 4)]
    assert 2 * PAUSE <= seconds(ledger) <= took


@pytest.mark.parametrize("how", HOW)
def test_inside_a_session_a_tool_only_run_adds_only_its_tools(instrumented: Otel, ledger: Spool, how: str) -> None:
    with keito.session("s1"):
        tools_only().invoke("q", config=config(how))
    assert sessions(ledger) == [("s1", "python", 0, 0, 0, 2)]


@pytest.mark.parametrize("how", HOW)
def test_fifty_concurrent_tool_only_runs_on_threads_are_fifty_handler_sessions(
    instrumented: Otel, ledger: Spool, how: str
) -> None:
    run_config = config(how)
    chain = tools_only()
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: chain.invoke("same", config=run_config), range(50))) == ["found"] * 50
    rows = ledger.sessions()
    assert Counter(row["framework"] for row in rows) == {"langchain": 50}
    assert sum(row["tool_calls"] for row in rows) == 100
    assert instrumented.processor.open_traces == 0


@pytest.mark.parametrize("how", HOW)
async def test_fifty_concurrent_async_tool_only_runs_are_fifty_handler_sessions(
    instrumented: Otel, ledger: Spool, how: str
) -> None:
    async def run(question: str) -> str:
        await lookup.ainvoke(question)
        return str(await lookup.ainvoke(question))

    run_config = config(how)
    answers = await asyncio.gather(*(RunnableLambda(run).ainvoke("same", config=run_config) for _ in range(50)))
    assert answers == ["found"] * 50
    rows = ledger.sessions()
    assert Counter(row["framework"] for row in rows) == {"langchain": 50}
    assert sum(row["tool_calls"] for row in rows) == 100


@pytest.mark.parametrize("how", HOW)
def test_a_nested_run_in_a_plain_thread_is_the_handlers_too(instrumented: Otel, ledger: Spool, how: str) -> None:
    # OpenInference parents the thread's spans explicitly; the thread's context carries no mark of
    # the run, so the handler marks the nested run there itself. (Under a web request's span, the
    # LangChain root is not the trace's root: its own mark does not cover the trace.)
    def step(question: str, config: RunnableConfig) -> None:
        worker = threading.Thread(target=lambda: tools_only().invoke(question, config=config))
        worker.start()
        worker.join()

    with instrumented.tracer.start_as_current_span("POST /ask", attributes={"http.request.method": "POST"}):
        RunnableLambda(step).invoke("q", config=config(how))
    [(_, framework, *counts)] = sessions(ledger)
    assert (framework, counts) == ("langchain", [0, 0, 0, 2])


@pytest.mark.parametrize("how", HOW)
def test_a_langgraph_thread_of_tool_only_turns_is_the_handlers_session(
    instrumented: Otel, ledger: Spool, how: str
) -> None:
    graph_module = pytest.importorskip("langgraph.graph")
    from langgraph.checkpoint.memory import InMemorySaver

    def look(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [("ai", lookup.invoke("q"))]}

    builder = graph_module.StateGraph(graph_module.MessagesState)
    builder.add_node("look", look)
    builder.add_edge(graph_module.START, "look")
    graph = builder.compile(checkpointer=InMemorySaver())
    run_config = {**config(how), "configurable": {"thread_id": "graph-7"}}
    for turn in ("hi", "and then?"):
        graph.invoke({"messages": [("user", turn)]}, config=run_config)
    assert keito.end_session("graph-7")
    assert sessions(ledger) == [("graph-7", "langchain", 0, 0, 0, 2)]


# -- (b) a client called directly inside a chain step ---------------------------------------------
@pytest.fixture
def client(server: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)


def ask(client: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def step_calling(client: Any) -> Runnable[Any, Any]:
    """A chain step that calls the OpenAI client itself (no LangChain model), then a tool."""

    def run(question: str) -> str:
        answer = ask(client).choices[0].message.content
        return str(lookup.invoke(answer))

    return RunnableLambda(run)


@pytest.mark.parametrize("how", HOW)
def test_a_client_called_in_a_chain_step_is_billed_once_into_the_handlers_session(
    client_spans: Otel, ledger: Spool, server: Any, client: Any, how: str
) -> None:
    took = timed(lambda: step_calling(client).invoke("q", config=config(how)))
    assert billed(ledger) == served(server) == (1, 1200, 300)
    [row] = ledger.sessions()
    assert (row["framework"], row["llm_calls"], row["tool_calls"]) == ("langchain", 1, 1)
    assert seconds(ledger) <= took
    spans = client_spans.exported.get_finished_spans()
    [call] = [s for s in spans if (s.attributes or {}).get("gen_ai.response.id")]
    assert call.parent is None  # the client's span is a trace of its own, next to OpenInference's


@pytest.mark.parametrize("how", HOW)
def test_client_calls_in_the_steps_of_a_thread_are_that_threads_session(
    client_spans: Otel, ledger: Spool, server: Any, client: Any, how: str
) -> None:
    for _ in range(2):
        step_calling(client).invoke("q", config=config(how, thread_id="t-client"))
    assert keito.end_session("t-client")
    assert sessions(ledger) == [("t-client", "langchain", 2, 2400, 600, 2)]


@pytest.mark.parametrize("how", HOW)
def test_inside_a_session_a_client_called_in_a_chain_step_is_billed_once(
    client_spans: Otel, ledger: Spool, server: Any, client: Any, how: str
) -> None:
    with keito.session("s1"):
        step_calling(client).invoke("q", config=config(how))
    assert sessions(ledger) == [("s1", "python", 1, 1200, 300, 1)]


@pytest.mark.parametrize("how", HOW)
def test_fifty_concurrent_runs_on_threads_bill_each_client_call_once_into_its_run(
    client_spans: Otel, ledger: Spool, server: Any, client: Any, how: str
) -> None:
    run_config, chain = config(how), step_calling(client)
    with ThreadPoolExecutor(4) as pool:  # the local server's listen backlog is 5
        assert list(pool.map(lambda _: chain.invoke("same", config=run_config), range(50))) == ["found"] * 50
    assert billed(ledger) == served(server) == (50, 60_000, 15_000)
    rows = ledger.sessions()
    assert Counter((row["framework"], row["llm_calls"], row["tool_calls"]) for row in rows) == {("langchain", 1, 1): 50}
    assert client_spans.processor.open_traces == 0


@pytest.mark.parametrize("how", HOW)
async def test_concurrent_async_steps_calling_the_client_bill_each_call_once_into_their_run(
    client_spans: Otel, ledger: Spool, server: Any, how: str
) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)
    in_flight = asyncio.Semaphore(4)  # the local server's listen backlog is 5

    async def run(question: str) -> str:
        async with in_flight:
            answer = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
            )
        return str(await lookup.ainvoke(str(answer.choices[0].message.content)))

    run_config = config(how)
    await asyncio.gather(*(RunnableLambda(run).ainvoke("same", config=run_config) for _ in range(20)))
    assert billed(ledger) == served(server) == (20, 24_000, 6_000)
    rows = ledger.sessions()
    assert Counter((row["framework"], row["llm_calls"], row["tool_calls"]) for row in rows) == {("langchain", 1, 1): 20}


@pytest.mark.parametrize("how", HOW)
def test_client_calls_in_parallel_branches_are_billed_into_the_handlers_session(
    client_spans: Otel, ledger: Spool, server: Any, client: Any, how: str
) -> None:
    # RunnableParallel runs its branches in LangChain's executor, which copies the context.
    branches = RunnableParallel(first=step_calling(client), second=step_calling(client))
    assert branches.invoke("q", config=config(how)) == {"first": "found", "second": "found"}
    assert billed(ledger) == served(server) == (2, 2400, 600)
    [row] = ledger.sessions()
    assert (row["framework"], row["llm_calls"], row["tool_calls"]) == ("langchain", 2, 2)


@pytest.fixture
def threads() -> Iterator[None]:
    from keito_instrument.integrations import threading as keito_threading

    keito_threading.instrument()
    try:
        yield
    finally:
        keito_threading.uninstrument()


@pytest.mark.parametrize("how", HOW)
def test_a_client_called_in_a_pool_thread_of_a_chain_step_is_billed_into_the_handlers_session(
    client_spans: Otel, ledger: Spool, server: Any, client: Any, threads: None, how: str
) -> None:
    # The threading integration (on with keito.instrument()) carries the run's mark into the pool.
    def run(question: str) -> int:
        with ThreadPoolExecutor(2) as pool:
            return len(list(pool.map(lambda _: ask(client), range(3))))

    assert RunnableLambda(run).invoke("q", config=config(how)) == 3
    assert billed(ledger) == served(server) == (3, 3600, 900)
    [row] = ledger.sessions()
    assert (row["framework"], row["llm_calls"]) == ("langchain", 3)
