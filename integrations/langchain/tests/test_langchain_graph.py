"""LangGraph graphs and concurrency: a thread id joins its turns into one session; others stay apart."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from _lc_fakes import EchoUsageModel, UsageChatModel, reply
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import langchain as keito_lc
from keito_instrument.integrations.langchain import KeitoCallbackHandler

langgraph = pytest.importorskip("langgraph")
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import END, START, MessagesState, StateGraph  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402

PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def tool_agent(llm: UsageChatModel) -> Any:
    """A tool-calling agent graph: model -> tools -> model until no tool call is left."""

    def call_model(state: MessagesState) -> dict[str, list[Any]]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=InMemorySaver())


def agent_replies() -> list[AIMessage]:
    call = {"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1", "type": "tool_call"}
    return [reply("", tool_calls=[call], inp=200, out=20), reply("It is sunny.", inp=260, out=12)]


def test_langgraph_thread_turns_join_one_session(ledger: Spool) -> None:
    llm = UsageChatModel(replies=agent_replies())
    app = tool_agent(llm)
    reference = UsageMetadataCallbackHandler()
    config: Any = {
        "callbacks": [KeitoCallbackHandler(project_id="p1"), reference],
        "configurable": {"thread_id": "thread-1"},
    }
    for text in ("weather in Oslo?", "and again?"):
        out = app.invoke({"messages": [("human", text)]}, config=config)
        assert out["messages"][-1].content == "It is sunny."
    assert ledger.sessions() == []  # a thread stays open between turns
    session = keito.get_session("thread-1")
    assert session is not None and session.llm_calls == 4
    assert keito.end_session("thread-1")
    [row] = ledger.sessions()
    expected = reference.usage_metadata["gpt-4o-mini"]
    assert (row["session_id"], row["llm_calls"], row["tool_calls"]) == ("thread-1", 4, 2)
    assert (row["input_tokens"], row["output_tokens"]) == (
        expected["input_tokens"],
        expected["output_tokens"],
    )
    assert row["errors"] == 0
    [expense] = [r for r in ledger.records("thread-1") if r["kind"] == "expense"]
    meta = expense["payload"]["metadata"]
    assert meta["node.agent.llm_calls"] == 4  # per graph node breakdown
    assert meta["node.agent.input_tokens"] == expected["input_tokens"]


def test_instrument_reaches_langgraph_without_callbacks(ledger: Spool) -> None:
    keito_lc.instrument(project_id="p-auto")
    app = tool_agent(UsageChatModel(replies=agent_replies()))
    for text in ("weather in Oslo?", "and again?"):
        app.invoke({"messages": [("human", text)]}, config={"configurable": {"thread_id": "auto-thread"}})
    assert keito.end_session("auto-thread")
    [row] = ledger.sessions()
    assert (row["session_id"], row["project_id"], row["llm_calls"], row["tool_calls"]) == (
        "auto-thread",
        "p-auto",
        4,
        2,
    )
    assert (row["input_tokens"], row["output_tokens"]) == (2 * (200 + 260), 2 * (20 + 12))


def test_langgraph_thread_closes_after_idle_timeout(ledger: Spool) -> None:
    keito.configure(idle_timeout=0.2)
    app = tool_agent(UsageChatModel(replies=agent_replies()))
    app.invoke(
        {"messages": [("human", "hi")]},
        config={"callbacks": [KeitoCallbackHandler()], "configurable": {"thread_id": "t-idle"}},
    )
    for _ in range(100):
        if ledger.sessions():
            break
        threading.Event().wait(0.05)
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["end_reason"]) == ("t-idle", 2, "idle_timeout")


def test_langgraph_interrupt_is_not_an_error(ledger: Spool) -> None:
    from langgraph.types import interrupt

    def ask(state: MessagesState) -> dict[str, list[Any]]:
        answer = interrupt("approve?")
        return {"messages": [("ai", str(answer))]}

    graph = StateGraph(MessagesState)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    graph.add_edge("ask", END)
    app: Any = graph.compile(checkpointer=InMemorySaver())
    app.invoke(
        {"messages": [("human", "go")]},
        config={"callbacks": [KeitoCallbackHandler()], "configurable": {"thread_id": "t-int"}},
    )
    assert keito.end_session("t-int")
    [row] = ledger.sessions()
    assert row["errors"] == 0


async def test_fifty_concurrent_ainvoke_sessions(ledger: Spool) -> None:
    llm = EchoUsageModel()  # each call's usage names the request it served
    chain = PROMPT | llm
    handler = KeitoCallbackHandler()  # one handler shared by every concurrent run
    reference = UsageMetadataCallbackHandler()

    async def one(i: int) -> None:
        await asyncio.sleep(0)
        await chain.ainvoke({"q": str(i)}, config={"callbacks": [handler, reference]})
        await chain.ainvoke(
            {"q": str(i)},
            config={"callbacks": [handler, reference], "metadata": {"session_id": f"u-{i}"}},
        )

    await asyncio.gather(*(one(i) for i in range(50)))
    assert llm.peak > 1  # the calls really overlapped
    assert len(keito_lc._table) == 0
    for i in range(50):
        assert keito.end_session(f"u-{i}")
    assert keito.flush(timeout=30)
    rows = ledger.sessions()
    assert len(rows) == 100 and len({r["session_id"] for r in rows}) == 100
    named = {r["session_id"]: r for r in rows if r["session_id"].startswith("u-")}
    assert sorted(named) == sorted(f"u-{i}" for i in range(50))
    for i in range(50):  # every named session holds exactly its own request's call
        row = named[f"u-{i}"]
        assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (1, *EchoUsageModel.usage_for(i))
    # The 50 sessions opened per root run: one call each, and together exactly the 50 requests.
    fresh = [r for r in rows if not r["session_id"].startswith("u-")]
    assert all(r["llm_calls"] == 1 for r in fresh)
    assert sorted((r["input_tokens"], r["output_tokens"]) for r in fresh) == sorted(
        EchoUsageModel.usage_for(i) for i in range(50)
    )
    expected = reference.usage_metadata["gpt-4o-mini"]
    assert sum(r["input_tokens"] for r in rows) == expected["input_tokens"]
    assert sum(r["output_tokens"] for r in rows) == expected["output_tokens"]


async def test_concurrent_graph_threads_in_tasks(ledger: Spool) -> None:
    app = tool_agent(UsageChatModel(replies=agent_replies()))
    handler = KeitoCallbackHandler()

    async def turn(i: int) -> None:
        await app.ainvoke(
            {"messages": [("human", "hi")]},
            config={"callbacks": [handler], "configurable": {"thread_id": f"th-{i % 5}"}},
        )

    await asyncio.gather(*(turn(i) for i in range(10)))
    keito.shutdown(timeout=1.0)
    rows = ledger.sessions()
    assert sorted(r["session_id"] for r in rows) == [f"th-{i}" for i in range(5)]
    # Replies cycle through one shared model, so only the total is fixed: 10 turns x 2 calls.
    assert sum(r["llm_calls"] for r in rows) == 20 and sum(r["tool_calls"] for r in rows) == 10


def test_threads_running_chains_in_parallel(ledger: Spool) -> None:
    from keito_instrument import _pipeline

    chain = PROMPT | UsageChatModel(replies=[reply(inp=9, out=1)])
    handler = KeitoCallbackHandler()
    errors: list[BaseException] = []
    built: list[tuple[str, int, int]] = []  # what the pipeline received as each session ended

    def listener(b: Any) -> None:
        row = b.session_row
        built.append((row["session_id"], row["llm_calls"], row["input_tokens"]))

    def worker() -> None:
        try:
            for i in range(10):
                chain.invoke({"q": str(i)}, config={"callbacks": [handler]})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    _pipeline.add_record_listener(listener)
    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert keito.flush(10.0)  # billing runs in the background: let it bill every session
    finally:
        _pipeline.remove_record_listener(listener)
    assert not errors
    # The adapter's output: 80 distinct sessions of one call each, as the pipeline received them and
    # as the ledger holds them.
    assert len({sid for sid, _, _ in built}) == 80
    assert all((calls, tokens) == (1, 9) for _, calls, tokens in built)
    assert keito.flush(timeout=30)  # a write that met a busy spool went to the core's fallback writer
    assert len(ledger.sessions()) == 80
