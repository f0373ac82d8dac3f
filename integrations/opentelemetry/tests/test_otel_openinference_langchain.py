"""Acceptance: a real instrumentor's spans (OpenInference over LangChain) bill what LangChain itself counts.

The references: our direct LangChain integration (`KeitoCallbackHandler`) on the same workload, and
langchain-core's own `UsageMetadataCallbackHandler` on the same run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _lc_models import FakeOpenAIChat, reply
from _otel_fakes import Otel
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.runnables import RunnableLambda

from keito_instrument._spool import Spool
from keito_instrument.integrations.langchain import KeitoCallbackHandler


def billed(ledger: Spool, framework: str) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """The one session billed by `framework`, and its per-model usage rows."""
    [row] = [r for r in ledger.sessions() if r["framework"] == framework]
    keys = ("model", "provider", "input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")
    usage = sorted(tuple(u[k] for k in keys) for u in ledger.usage() if u["session_id"] == row["session_id"])
    return row, usage


def test_same_totals_as_the_direct_langchain_handler(instrumented: Otel, ledger: Spool) -> None:
    # Two models and a tool, run twice: with our LangChain handler (which then bills the run: the
    # processor leaves the handler's calls to it) and with the OpenInference spans alone. Both must
    # bill the same calls, tokens, cost and tool calls.
    from langchain_core.tools import tool

    @tool
    def lookup(query: str) -> str:
        """Look something up."""
        return "found"

    def run(config: Any) -> None:
        mini = FakeOpenAIChat(messages=iter([reply(1200, 300, cache_read=1000, reasoning=120), reply(800, 90)]))
        big = FakeOpenAIChat(model_name="gpt-4o", messages=iter([reply(2000, 150, cache_read=512, model="gpt-4o")]))

        def agent(question: str) -> str:
            first = mini.invoke(question)
            found = lookup.invoke(str(first.content))
            second = big.invoke(f"{question} {found}")
            return str(mini.invoke(str(second.content)).content)

        chain = RunnableLambda(agent) | RunnableLambda(lambda text: text.upper())
        assert chain.invoke("why?", config=config) == "FINE"

    run({"callbacks": [KeitoCallbackHandler(agent_id="lc-direct")]})
    via_handler, handler_usage = billed(ledger, "langchain")
    assert [r["framework"] for r in ledger.sessions()] == ["langchain"]  # counted once: the handler won
    run({})
    via_otel, otel_usage = billed(ledger, "otel")

    assert (via_otel["agent_id"], via_handler["agent_id"]) == ("lc-otel", "lc-direct")
    fields = ("llm_calls", "input_tokens", "output_tokens", "cost_usd", "tool_calls")
    assert [via_otel[f] for f in fields] == [via_handler[f] for f in fields]
    assert (via_otel["llm_calls"], via_otel["input_tokens"], via_otel["output_tokens"]) == (3, 4000, 540)
    assert otel_usage == handler_usage
    assert {u[:2] for u in otel_usage} == {("gpt-4o-mini", "openai"), ("gpt-4o", "openai")}
    assert via_otel["cost_usd"] is not None and via_otel["cost_usd"] > 0
    assert via_otel["tool_calls"] == 1
    assert instrumented.processor.open_traces == 0


def test_same_totals_as_langchain_usage_handler(instrumented: Otel, ledger: Spool) -> None:
    replies = [reply(1200, 300, cache_read=1000, reasoning=120), reply(800, 90), reply(50, 7, reasoning=3)]
    model = FakeOpenAIChat(messages=iter(replies))

    def agent(question: str) -> str:
        first = model.invoke(question)
        second = model.invoke(f"{question} {first.content}")
        return str(model.invoke(str(second.content)).content)

    chain = RunnableLambda(agent) | RunnableLambda(lambda text: text.upper())
    handler = UsageMetadataCallbackHandler()
    assert chain.invoke("why?", config={"callbacks": [handler]}) == "FINE"

    expected = handler.usage_metadata["gpt-4o-mini"]
    [row] = ledger.sessions()
    [usage] = ledger.usage()
    assert row["llm_calls"] == 3 and row["framework"] == "otel" and row["agent_id"] == "lc-otel"
    assert (row["input_tokens"], row["output_tokens"]) == (
        expected["input_tokens"],
        expected["output_tokens"],
    )
    assert usage["model"] == "gpt-4o-mini" and usage["provider"] == "openai"
    assert usage["cache_read_tokens"] == expected["input_token_details"]["cache_read"]
    assert usage["reasoning_tokens"] == expected["output_token_details"]["reasoning"]
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    # The chain spans repeated nothing: OpenInference marked them CHAIN and they carried no extra usage.
    kinds = [(s.attributes or {}).get("openinference.span.kind") for s in instrumented.exported.get_finished_spans()]
    assert kinds.count("LLM") == 3 and "CHAIN" in kinds
    assert instrumented.processor.open_traces == 0


def test_each_top_level_invoke_is_its_own_session(instrumented: Otel, ledger: Spool) -> None:
    model = FakeOpenAIChat(messages=iter([reply(10, 1), reply(20, 2)]))
    handler = UsageMetadataCallbackHandler()
    model.invoke("a", config={"callbacks": [handler]})
    model.invoke("b", config={"callbacks": [handler]})
    rows = ledger.sessions()
    assert len(rows) == 2
    assert sum(r["input_tokens"] for r in rows) == handler.usage_metadata["gpt-4o-mini"]["input_tokens"] == 30


async def test_concurrent_async_runs_match_the_handler(instrumented: Otel, ledger: Spool) -> None:
    model = FakeOpenAIChat(messages=iter([reply(100 + n, 10 + n, cache_read=n) for n in range(8)]))

    async def agent(question: str) -> str:
        first = await model.ainvoke(question)
        return str((await model.ainvoke(str(first.content))).content)

    chain = RunnableLambda(agent)
    handler = UsageMetadataCallbackHandler()
    await asyncio.gather(*(chain.ainvoke(f"q{n}", config={"callbacks": [handler]}) for n in range(4)))

    expected = handler.usage_metadata["gpt-4o-mini"]
    rows = ledger.sessions()
    assert len(rows) == 4 and all(r["llm_calls"] == 2 for r in rows)  # one trace, one session, per run
    assert sum(r["input_tokens"] for r in rows) == expected["input_tokens"] == sum(100 + n for n in range(8))
    assert sum(r["output_tokens"] for r in rows) == expected["output_tokens"]
    cache_read = sum(u["cache_read_tokens"] for u in ledger.usage())
    assert cache_read == expected["input_token_details"]["cache_read"]
    assert instrumented.processor.open_traces == 0
