"""KeitoCallbackHandler on real langchain-core runnables with fake chat models that report usage."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import pytest
from _lc_fakes import UsageChatModel, reply
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_core.tools import tool

import keito_instrument as keito
from keito_instrument import _pipeline
from keito_instrument._spool import Spool
from keito_instrument.integrations import langchain as keito_lc
from keito_instrument.integrations.langchain import KeitoCallbackHandler, _handler

PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])


def only_session(ledger: Spool) -> dict[str, Any]:
    sessions = ledger.sessions()
    assert len(sessions) == 1, sessions
    return sessions[0]


def expense_meta(ledger: Spool, session_id: str) -> dict[str, Any]:
    expenses = [r for r in ledger.records(session_id=session_id) if r["kind"] == "expense"]
    assert len(expenses) == 1
    meta: dict[str, Any] = expenses[0]["payload"]["metadata"]
    return meta


def test_chain_is_one_session_with_the_calls_usage(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply(inp=120, out=30, cache_read=20, cache_write=10, reasoning=8)])
    handler = KeitoCallbackHandler(project_id="p1", task_id="t1", agent_id="bot")
    result = (PROMPT | llm).invoke({"q": "hi"}, config={"callbacks": [handler]})
    assert isinstance(result, AIMessage)
    row = only_session(ledger)
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (1, 120, 30)
    assert (row["project_id"], row["task_id"], row["agent_id"], row["framework"]) == (
        "p1",
        "t1",
        "bot",
        "langchain",
    )
    assert row["active_seconds"] > 0
    meta = expense_meta(ledger, row["session_id"])
    assert (meta["cache_read_tokens"], meta["cache_write_tokens"], meta["reasoning_tokens"]) == (20, 10, 8)
    assert meta["model"] == "gpt-4o-mini"
    assert len(keito_lc._table) == 0


def test_totals_equal_langchains_own_usage_handler(ledger: Spool) -> None:
    replies = [reply(inp=100 + i, out=10 + i, cache_read=i, reasoning=i % 3) for i in range(5)]
    llm = UsageChatModel(replies=replies)
    inner = PROMPT | llm
    # Nested chains, a parallel fan-out and a map: each model call must still count once.
    chain = RunnableParallel(a=inner, b=RunnableLambda(lambda x: x) | inner) | RunnableLambda(
        lambda out: [out["a"].content, out["b"].content]
    )
    reference = UsageMetadataCallbackHandler()
    with keito.session() as s:
        chain.invoke({"q": "x"}, config={"callbacks": [KeitoCallbackHandler(), reference]})
        inner.batch(
            [{"q": "1"}, {"q": "2"}, {"q": "3"}], config={"callbacks": [KeitoCallbackHandler(), reference]}
        )
        sid = s.session_id
    expected = reference.usage_metadata["gpt-4o-mini"]
    row = only_session(ledger)
    assert row["session_id"] == sid
    assert row["llm_calls"] == 5
    assert row["input_tokens"] == expected["input_tokens"]
    assert row["output_tokens"] == expected["output_tokens"]
    meta = expense_meta(ledger, sid)
    assert meta["cache_read_tokens"] == expected["input_token_details"]["cache_read"]
    assert meta["reasoning_tokens"] == expected["output_token_details"]["reasoning"]


async def test_async_chain_and_streaming_final_usage_chunk(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply("one two three", inp=40, out=3)])
    reference = UsageMetadataCallbackHandler()
    config: Any = {"callbacks": [KeitoCallbackHandler(), reference]}
    await (PROMPT | llm).ainvoke({"q": "a"}, config=config)
    chunks = [c async for c in (PROMPT | llm).astream({"q": "b"}, config=config)]
    assert "".join(str(c.content) for c in chunks) == "one two three"
    for _ in llm.stream("c", config=config):
        pass
    rows = ledger.sessions()
    assert len(rows) == 3
    assert all((r["llm_calls"], r["input_tokens"], r["output_tokens"]) == (1, 40, 3) for r in rows)
    assert sum(r["input_tokens"] for r in rows) == reference.usage_metadata["gpt-4o-mini"]["input_tokens"]


def test_streaming_without_usage_is_counted_as_missing_not_zero(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply("a b", inp=40, out=3)], stream_usage=False)
    for _ in llm.stream("c", config={"callbacks": [KeitoCallbackHandler()]}):
        pass
    row = only_session(ledger)
    assert row["llm_calls"] == 1
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)
    usage = ledger.usage()
    assert len(usage) == 1 and usage[0]["llm_calls"] == 1
    meta = expense_meta(ledger, row["session_id"])
    assert meta.get("usage_missing")


def test_llm_output_fallback_when_message_has_no_usage(ledger: Spool) -> None:
    from langchain_core.outputs import ChatGeneration, ChatResult

    class LegacyModel(UsageChatModel):
        def _generate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            return ChatResult(
                generations=[ChatGeneration(message=AIMessage(content="hi"))],
                llm_output={
                    "model": "claude-sonnet-4-5",
                    "usage": {
                        "input_tokens": 50,
                        "output_tokens": 9,
                        "cache_read_input_tokens": 30,
                        "cache_creation_input_tokens": 20,
                    },
                },
            )

    LegacyModel(replies=[reply()], provider="anthropic").invoke(
        "x", config={"callbacks": [KeitoCallbackHandler()]}
    )
    row = only_session(ledger)
    # Anthropic's input excludes cache parts: normalised to the whole prompt.
    assert (row["input_tokens"], row["output_tokens"]) == (100, 9)
    meta = expense_meta(ledger, row["session_id"])
    assert meta["model"] == "claude-sonnet-4-5"
    assert (meta["cache_read_tokens"], meta["cache_write_tokens"]) == (30, 20)


def test_model_falls_back_to_invocation_params(ledger: Spool) -> None:
    message = AIMessage(
        content="x", usage_metadata={"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}
    )

    class Named(UsageChatModel):
        model_name: str = "gpt-4.1-nano"

        @property
        def _identifying_params(self) -> dict[str, Any]:
            return {"model_name": self.model_name}

    Named(replies=[message]).invoke("x", config={"callbacks": [KeitoCallbackHandler()]})
    row = only_session(ledger)
    assert expense_meta(ledger, row["session_id"])["model"] == "gpt-4.1-nano"


def test_cache_hit_costs_nothing(ledger: Spool) -> None:
    set_llm_cache(InMemoryCache())
    llm = UsageChatModel(replies=[reply(inp=500, out=50)])
    handler = KeitoCallbackHandler()
    with keito.session():
        first = llm.invoke("same prompt", config={"callbacks": [handler]})
        second = llm.invoke("same prompt", config={"callbacks": [handler]})
    assert first.content == second.content
    row = only_session(ledger)
    assert row["llm_calls"] == 2
    assert (row["input_tokens"], row["output_tokens"]) == (500, 50)  # the hit added nothing
    usage = ledger.usage()
    assert len(usage) == 1 and usage[0]["llm_calls"] == 2


def test_tools_and_errors_are_counted_and_spend_still_billed(ledger: Spool) -> None:
    @tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return f"order {order_id}: shipped"

    @tool
    def broken(x: str) -> str:
        """Always fails."""
        raise ValueError("tool down")

    llm = UsageChatModel(replies=[reply(inp=70, out=7)])

    def body(q: dict[str, str]) -> str:
        lookup.invoke({"order_id": q["q"]})
        llm.invoke("summarise")
        with contextlib.suppress(ValueError):
            broken.invoke({"x": "1"})
        raise RuntimeError("agent gave up")

    with pytest.raises(RuntimeError, match="agent gave up"):
        RunnableLambda(body).invoke({"q": "42"}, config={"callbacks": [KeitoCallbackHandler()]})
    row = only_session(ledger)
    assert (row["tool_calls"], row["errors"], row["llm_calls"]) == (2, 2, 1)  # each exception once
    assert row["input_tokens"] == 70
    assert row["end_reason"] == "completed"


def test_failing_model_counts_an_error_and_no_call(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply()], fail_with="provider 500")
    with pytest.raises(RuntimeError):
        (PROMPT | llm).invoke({"q": "x"}, config={"callbacks": [KeitoCallbackHandler()]})
    rows = ledger.sessions()
    assert len(rows) == 1 and rows[0]["errors"] == 1 and rows[0]["llm_calls"] == 0
    assert len(keito_lc._table) == 0


def test_root_inside_keito_session_joins_it(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply(inp=11, out=2)])

    @keito.track_agent(agent_id="outer")
    def agent() -> str:
        llm.invoke("a", config={"callbacks": [KeitoCallbackHandler()]})
        (PROMPT | llm).invoke({"q": "b"}, config={"callbacks": [KeitoCallbackHandler()]})
        session = keito.current_session()
        assert session is not None
        return session.session_id

    sid = agent()
    row = only_session(ledger)
    assert (row["session_id"], row["agent_id"], row["llm_calls"], row["input_tokens"]) == (
        sid,
        "outer",
        2,
        22,
    )


def test_metadata_session_id_joins_turns_until_ended(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply(inp=5, out=1)])
    handler = KeitoCallbackHandler()
    for q in ("turn 1", "turn 2", "turn 3"):
        (PROMPT | llm).invoke({"q": q}, config={"callbacks": [handler], "metadata": {"session_id": "conv-7"}})
    assert ledger.sessions() == []  # a conversation stays open across turns
    assert keito.end_session("conv-7")
    row = only_session(ledger)
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == ("conv-7", 3, 15)


def test_explicit_handler_session_and_metadata_overrides(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply()])
    handler = KeitoCallbackHandler("ticket-9", project_id="p1", task_id="t1")
    llm.invoke("x", config={"callbacks": [handler], "metadata": {"keito_task_id": "t-override"}})
    row = only_session(ledger)
    assert (row["session_id"], row["project_id"], row["task_id"]) == ("ticket-9", "p1", "t-override")


def test_handler_on_inner_runnable_only(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply(inp=8, out=2)]).with_config(callbacks=[KeitoCallbackHandler()])
    (PROMPT | llm | RunnableLambda(lambda m: m.content)).invoke({"q": "x"})
    row = only_session(ledger)
    assert (row["llm_calls"], row["input_tokens"]) == (1, 8)


def test_disabled_records_nothing(ledger: Spool) -> None:
    keito.configure(disabled=True)
    llm = UsageChatModel(replies=[reply()])
    assert (PROMPT | llm).invoke({"q": "x"}, config={"callbacks": [KeitoCallbackHandler()]}).content == "ok"
    assert ledger.sessions() == [] and len(keito_lc._table) == 0


def test_bad_close_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="close"):
        KeitoCallbackHandler(close="never")


@pytest.mark.guard_errors_expected
def test_internal_error_never_breaks_the_chain(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch, _guard_failures: list[tuple[str, BaseException]]
) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug in keito")

    monkeypatch.setattr(keito_lc.KeitoCallbackHandler, "_record", explode)
    monkeypatch.setattr(_handler, "from_usage_metadata", explode)
    llm = UsageChatModel(replies=[reply()])
    handler = KeitoCallbackHandler()
    assert (PROMPT | llm).invoke({"q": "x"}, config={"callbacks": [handler]}).content == "ok"
    assert "".join(str(c.content) for c in llm.stream("x", config={"callbacks": [handler]})) == "ok"
    monkeypatch.setattr(keito_lc._table, "add", explode)
    assert (PROMPT | llm).invoke({"q": "y"}, config={"callbacks": [handler]}).content == "ok"
    assert any("bug in keito" in str(exc) for _, exc in _guard_failures)
    # Every session still ended: none is left open, no run is left in the table. (Two root runs, then
    # with the run table broken each run of the third invoke, chain, prompt and model, on its own.)
    assert len(ledger.sessions()) == 5
    assert _pipeline.registry.open_sessions() == [] and len(keito_lc._table) == 0


def test_stream_closed_early_counts_the_call_not_an_error(ledger: Spool) -> None:
    llm = UsageChatModel(replies=[reply("a b c d", inp=10, out=4)])
    stream: Any = llm.stream("x", config={"callbacks": [KeitoCallbackHandler()]})
    assert next(stream).content == "a"
    stream.close()  # the consumer stops reading: the provider was called, its usage never arrives
    row = only_session(ledger)
    assert (row["llm_calls"], row["errors"], row["input_tokens"]) == (1, 0, 0)
    assert expense_meta(ledger, row["session_id"]).get("usage_missing")


def test_text_completion_llm_and_retriever_roots(ledger: Spool) -> None:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.language_models.llms import LLM
    from langchain_core.outputs import Generation, LLMResult
    from langchain_core.retrievers import BaseRetriever

    class CompletionLLM(LLM):
        @property
        def _llm_type(self) -> str:
            return "completion-fake"

        def _call(self, prompt: str, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
            return "done"

        def _generate(
            self, prompts: list[str], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> LLMResult:
            return LLMResult(
                generations=[[Generation(text="done")] for _ in prompts],
                llm_output={
                    "model_name": "gpt-3.5-turbo-instruct",
                    "token_usage": {"prompt_tokens": 9, "completion_tokens": 2},
                },
            )

    class Docs(BaseRetriever):
        def _get_relevant_documents(
            self, query: str, *, run_manager: CallbackManagerForRetrieverRun
        ) -> list[Document]:
            return [Document(page_content=query)]

    handler = KeitoCallbackHandler()
    assert CompletionLLM().invoke("x", config={"callbacks": [handler]}) == "done"
    assert Docs().invoke("q", config={"callbacks": [handler]})[0].page_content == "q"
    rows = sorted(ledger.sessions(), key=lambda r: r["llm_calls"])
    assert [(r["llm_calls"], r["input_tokens"], r["output_tokens"]) for r in rows] == [(0, 0, 0), (1, 9, 2)]
    assert expense_meta(ledger, rows[1]["session_id"])["model"] == "gpt-3.5-turbo-instruct"
    assert len(keito_lc._table) == 0


def test_a_stream_cut_after_its_output_began_is_counted_with_usage_missing(ledger: Spool) -> None:
    class CutStream(UsageChatModel):
        def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
            # Two words, then the connection drops before the usage chunk.
            yield from itertools.islice(super()._stream(messages, stop, run_manager, **kw), 2)
            raise ConnectionError("peer closed connection without sending complete message body")

    llm = CutStream(replies=[reply("one two three", inp=40, out=3)])
    with pytest.raises(ConnectionError):
        for _ in llm.stream("c", config={"callbacks": [KeitoCallbackHandler()]}):
            pass
    before = UsageChatModel(replies=[reply("x", inp=40, out=3)], fail_with="refused before any output")
    with pytest.raises(RuntimeError):
        before.invoke("c", config={"callbacks": [KeitoCallbackHandler()]})
    rows = sorted(ledger.sessions(), key=lambda r: r["llm_calls"])
    # Refused before any output: an error, no call. Cut mid-stream: a call whose cost is unknown.
    assert [(r["llm_calls"], r["errors"]) for r in rows] == [(0, 1), (1, 1)]
    assert expense_meta(ledger, rows[1]["session_id"]).get("usage_missing") == 1
