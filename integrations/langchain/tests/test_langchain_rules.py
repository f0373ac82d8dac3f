"""The issue's rules one by one: where usage, model and provider come from, what is never counted,
inline hooks in async code, the billed interval, and internal errors that never reach the chain."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from _lc_fakes import UsageChatModel, reply
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

import keito_instrument as keito
from keito_instrument import _pipeline
from keito_instrument._spool import Spool
from keito_instrument.integrations import langchain as keito_lc
from keito_instrument.integrations.langchain import KeitoCallbackHandler, _handler

PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])


def expense_meta(ledger: Spool, session_id: str) -> dict[str, Any]:
    [expense] = [r for r in ledger.records(session_id=session_id) if r["kind"] == "expense"]
    meta: dict[str, Any] = expense["payload"]["metadata"]
    return meta


class BothUsages(UsageChatModel):
    """The message carries usage_metadata and llm_output carries a different provider block."""

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
        return ChatResult(
            generations=[ChatGeneration(message=reply(inp=10, out=2))],
            llm_output={"token_usage": {"prompt_tokens": 999, "completion_tokens": 99}, "model_name": "other"},
        )


def test_usage_metadata_wins_over_llm_output(ledger: Spool) -> None:
    reference = UsageMetadataCallbackHandler()
    BothUsages(replies=[reply()]).invoke("x", config={"callbacks": [KeitoCallbackHandler(), reference]})
    [row] = ledger.sessions()
    assert (row["input_tokens"], row["output_tokens"]) == (10, 2)
    assert reference.usage_metadata["gpt-4o-mini"]["input_tokens"] == 10
    assert expense_meta(ledger, row["session_id"])["model"] == "gpt-4o-mini"  # the response's model first


class OnlyLsModel(UsageChatModel):
    """No model name in the response or the invocation params: only LangSmith's `ls_model_name`."""

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = "claude-haiku-4-5"
        return params


def test_model_from_ls_model_name_and_provider_from_ls_provider(ledger: Spool) -> None:
    bare = AIMessage(content="x", usage_metadata={"input_tokens": 30, "output_tokens": 3, "total_tokens": 33})
    OnlyLsModel(replies=[bare], provider="anthropic").invoke("x", config={"callbacks": [KeitoCallbackHandler()]})
    [usage] = ledger.usage()
    assert (usage["model"], usage["provider"], usage["input_tokens"]) == ("claude-haiku-4-5", "anthropic", 30)


def test_usage_is_never_read_from_chain_outputs(ledger: Spool) -> None:
    # A step that returns an AIMessage with usage is not a model call: only the real call counts.
    canned: RunnableLambda[Any, AIMessage] = RunnableLambda(lambda _: reply("canned", inp=900, out=90))
    llm = UsageChatModel(replies=[reply(inp=12, out=4)])
    chain = canned | RunnableLambda(lambda m: {"q": m.content}) | PROMPT | llm | RunnableLambda(lambda m: m)
    reference = UsageMetadataCallbackHandler()
    chain.invoke({}, config={"callbacks": [KeitoCallbackHandler(), reference]})
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (1, 12, 4)
    assert reference.usage_metadata["gpt-4o-mini"]["input_tokens"] == row["input_tokens"]


class ThreadSpy(KeitoCallbackHandler):
    """Notes the thread every model-call hook ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.threads.append(threading.get_ident())
        super().on_chat_model_start(*args, **kwargs)

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.threads.append(threading.get_ident())
        super().on_llm_end(*args, **kwargs)


async def test_async_hooks_run_inline_and_join_the_enclosing_session(ledger: Spool) -> None:
    handler = ThreadSpy()
    chain = PROMPT | UsageChatModel(replies=[reply(inp=6, out=2)])
    async with keito.session() as s:
        await chain.ainvoke({"q": "a"}, config={"callbacks": [handler]})
        _ = [c async for c in chain.astream({"q": "b"}, config={"callbacks": [handler]})]
    assert handler.threads == [threading.get_ident()] * 4  # the event loop's thread: no executor hop
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == (s.session_id, 2, 12)


def test_billed_time_is_the_root_runs_not_the_gap_between_turns(ledger: Spool) -> None:
    chain = PROMPT | UsageChatModel(replies=[reply()])
    config: Any = {"callbacks": [KeitoCallbackHandler()], "metadata": {"session_id": "conv-gap"}}
    spent = 0.0
    for turn in range(2):
        if turn:
            time.sleep(0.3)  # the user thinks: not billable
        start = time.perf_counter()
        chain.invoke({"q": str(turn)}, config=config)
        spent += time.perf_counter() - start
    assert keito.end_session("conv-gap")
    [row] = ledger.sessions()
    # Each root run lies inside its invoke() call, so the union of their intervals is at most the
    # time spent inside invoke() (clock granularity aside), and excludes the 0.3 s gap.
    assert 0 < row["active_seconds"] <= spent + 0.002
    assert row["llm_calls"] == 2


def test_retriever_error_is_counted(ledger: Spool) -> None:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class Down(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
            raise ConnectionError("index down")

    with pytest.raises(ConnectionError):
        Down().invoke("q", config={"callbacks": [KeitoCallbackHandler()]})
    [row] = ledger.sessions()
    assert (row["errors"], row["llm_calls"]) == (1, 0)
    assert len(keito_lc._table) == 0


def test_cache_hit_on_releases_without_the_zero_cost_mark(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Older langchain-core returns the cached generations as stored (no `total_cost: 0` mark): the
    # hit is recognised by its message id, which names the run that first produced it.
    # (releases older than the mark have no such converter at all: adding this one changes nothing there)
    monkeypatch.setattr(
        BaseChatModel, "_convert_cached_generations", lambda self, cached: list(cached), raising=False
    )
    monkeypatch.setattr(_handler, "_marked", [])
    set_llm_cache(InMemoryCache())
    llm = UsageChatModel(replies=[reply(inp=500, out=50), reply(inp=7, out=1)])
    with keito.session():
        for _ in range(2):
            llm.invoke("same prompt", config={"callbacks": [KeitoCallbackHandler()]})
        llm.invoke("another prompt", config={"callbacks": [KeitoCallbackHandler()]})  # a miss: billed
    assert _handler._marked == [False]  # the adapter saw that this converter does not mark hits
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (3, 507, 51)


@pytest.mark.guard_errors_expected
async def test_internal_errors_never_break_sync_or_async_chains(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch, _guard_failures: list[tuple[str, BaseException]]
) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug in keito")

    llm = UsageChatModel(replies=[reply()])
    handler = KeitoCallbackHandler()
    monkeypatch.setattr(KeitoCallbackHandler, "_record", explode)  # fails in on_llm_end
    assert (PROMPT | llm).invoke({"q": "x"}, config={"callbacks": [handler]}).content == "ok"
    assert (await (PROMPT | llm).ainvoke({"q": "x"}, config={"callbacks": [handler]})).content == "ok"
    assert "".join([str(c.content) async for c in llm.astream("x", config={"callbacks": [handler]})]) == "ok"
    monkeypatch.undo()
    monkeypatch.setattr(keito_lc._table, "add", explode)  # fails in on_chain_start / on_chat_model_start
    assert (await (PROMPT | llm).ainvoke({"q": "y"}, config={"callbacks": [handler]})).content == "ok"
    assert [kind for kind, _ in _guard_failures] == ["langchain on_llm_end"] * 3 + ["langchain run start"] * 3
    assert all("bug in keito" in str(exc) for _, exc in _guard_failures)
    # Every session opened still ended, nothing billed for the failed calls: three root runs, then,
    # with the run table broken, each of the chain's three runs (chain, prompt, model) on its own.
    rows = ledger.sessions()
    assert len(rows) == 6 and all(r["llm_calls"] == 0 for r in rows)
    assert _pipeline.registry.open_sessions() == [] and len(keito_lc._table) == 0


class DiesAfterUsage(UsageChatModel):
    """Streams its reply and the usage chunk, then the connection drops."""

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        yield from super()._stream(messages, stop, run_manager, **kwargs)
        raise ConnectionError("stream cut")


def test_failed_stream_bills_the_usage_it_reported_and_counts_the_error(ledger: Spool) -> None:
    handler = KeitoCallbackHandler()
    with keito.session():
        with pytest.raises(ConnectionError):
            for _ in DiesAfterUsage(replies=[reply("a b", inp=40, out=2)]).stream("x", config={"callbacks": [handler]}):
                pass
        failing = UsageChatModel(replies=[reply()], fail_with="provider 500")
        with pytest.raises(RuntimeError):
            for _ in failing.stream("x", config={"callbacks": [handler]}):
                pass
    [row] = ledger.sessions()
    # The first call reported usage before failing: billed. The second failed before any usage: not a call.
    assert (row["llm_calls"], row["errors"], row["input_tokens"], row["output_tokens"]) == (1, 2, 40, 2)
    assert len(keito_lc._table) == 0
