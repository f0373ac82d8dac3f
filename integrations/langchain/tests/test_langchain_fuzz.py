"""Fuzzing KeitoCallbackHandler with hostile values (issue 11's acceptance).

Real langchain-core runnables and a real chat model whose `AIMessage` carries hostile
`usage_metadata` / `response_metadata`, run with hostile run metadata; and the handler's hooks
called directly with hostile arguments. Every model call is billed (a bad count is dropped, the
call kept), nothing escapes into the host, what is delivered to the local Keito server is
contract-valid and nothing is left `sending`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("hypothesis")

from _lc_fakes import UsageChatModel
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.prompts import ChatPromptTemplate

from keito_instrument.integrations.langchain import KeitoCallbackHandler
from tests._hostile import (
    Checker,
    delivering,
    fuzz_settings,
    hostile_keys,
    hostile_metadata,
    hostile_scalars,
    hostile_values,
    nested_values,
    token_counts,
    unique_id,
)

PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])

# langchain-core's UsageMetadata shape, every value hostile (or the whole thing not a mapping).
usage_metadata = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "input_tokens": token_counts,
            "output_tokens": token_counts,
            "total_tokens": token_counts,
            "total_cost": st.one_of(st.just(0), hostile_scalars),
            "input_token_details": st.one_of(
                st.fixed_dictionaries({}, optional={k: token_counts for k in (
                    "cache_read", "cache_creation", "audio", "ephemeral_5m_input_tokens",
                    "ephemeral_1h_input_tokens")}),
                hostile_scalars,
            ),
            "output_token_details": st.one_of(
                st.fixed_dictionaries({}, optional={"reasoning": token_counts, "audio": token_counts}),
                hostile_scalars,
            ),
        },
    ),
    st.dictionaries(hostile_keys, nested_values, max_size=4),
)

response_metadata = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "model_name": st.one_of(st.just("gpt-4o-mini"), hostile_scalars),
            "model": hostile_scalars,
            "usage": nested_values,
            "token_usage": st.one_of(
                st.fixed_dictionaries({}, optional={k: token_counts for k in (
                    "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
                    "cache_read_input_tokens", "cache_creation_input_tokens")}),
                nested_values,
            ),
        },
    ),
    st.dictionaries(hostile_keys, nested_values, max_size=4),
)

# Run metadata, as `config={"metadata": ...}` passes it to every run (LangChain wants a dict).
run_metadata = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "ls_provider": hostile_scalars, "ls_model_name": hostile_scalars,
            "langgraph_node": hostile_scalars, "keito_project_id": hostile_scalars,
            "keito_agent_id": hostile_scalars, "keito_task_id": hostile_scalars,
        },
    ),
    st.dictionaries(st.text(max_size=8), nested_values, max_size=4),
)


# What streaming can carry: langchain-core adds the usage of a stream's chunks itself (and raises
# into the host on a value it cannot add, before any callback runs), so ints only, hostile ones.
hostile_ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([2**63, -1, 10**30, 0]))
stream_usage = st.fixed_dictionaries(
    {"input_tokens": hostile_ints, "output_tokens": hostile_ints, "total_tokens": hostile_ints},
    optional={"input_token_details": st.fixed_dictionaries({}, optional={"cache_read": hostile_ints,
                                                                         "cache_creation": hostile_ints}),
              "output_token_details": st.fixed_dictionaries({}, optional={"reasoning": hostile_ints})},
)


def hostile_reply(usage: Any, meta: Any) -> AIMessage:
    """An AIMessage as a provider integration might (wrongly) return it: validation bypassed, so
    the values reach the handler exactly as given."""
    message = AIMessage(content="fine")
    object.__setattr__(message, "usage_metadata", usage)
    object.__setattr__(message, "response_metadata", meta)
    return message


class HostileChatModel(UsageChatModel):
    """Streams its reply as one chunk carrying the hostile usage (langchain-core itself would
    choke adding hostile usage of two chunks together: that is its failure, not ours)."""

    def _chunks(self) -> list[ChatGenerationChunk]:
        message = self._next()
        chunk = AIMessageChunk(content=str(message.content))
        object.__setattr__(chunk, "usage_metadata", message.usage_metadata)
        object.__setattr__(chunk, "response_metadata", message.response_metadata)
        return [ChatGenerationChunk(message=chunk)]


@pytest.fixture
def checker() -> Iterator[Checker]:
    with delivering() as server:
        check = Checker(server)
        try:
            yield check
        finally:
            check.close()


@fuzz_settings(examples=30, slow_examples=300)
@given(usage=usage_metadata, ints=stream_usage, meta=response_metadata, run_meta=run_metadata,
       mode=st.sampled_from(["invoke", "stream", "ainvoke", "batch"]), named=st.booleans())
def test_chain_with_hostile_usage_and_metadata_bills_every_call(
    checker: Checker, usage: Any, ints: dict[str, Any], meta: Any, run_meta: dict[str, Any], mode: str,
    named: bool,
) -> None:
    checker.mark()
    if mode == "stream":
        usage = ints
    sid = unique_id("lc")
    if named:  # a session named by the run's metadata (kept open until ended)
        handler = KeitoCallbackHandler(agent_id="fuzz")
        run_meta = {**run_meta, "keito_session_id": sid}
    else:
        handler = KeitoCallbackHandler(sid, agent_id="fuzz")
    llm = HostileChatModel(replies=[hostile_reply(usage, meta)])
    chain = PROMPT | llm
    config: Any = {"callbacks": [handler], "metadata": run_meta}
    calls = 1
    if mode == "invoke":
        assert isinstance(chain.invoke({"q": "hi"}, config=config), AIMessage)
    elif mode == "stream":
        assert list(chain.stream({"q": "hi"}, config=config))
    elif mode == "ainvoke":
        assert isinstance(asyncio.run(chain.ainvoke({"q": "hi"}, config=config)), AIMessage)
    else:
        calls = 2
        assert len(chain.batch([{"q": "a"}, {"q": "b"}], config=config)) == 2
    if named:
        import keito_instrument as keito

        assert keito.end_session(sid)
    checker.check({sid: calls})


# -- the hooks called directly -----------------------------------------------------------------------
kwargs_strategy = st.dictionaries(
    st.sampled_from(["tags", "name", "invocation_params", "run_type", "extra"]),
    hostile_values, max_size=3,
)


def _result(usage: Any, meta: Any, llm_output: Any) -> LLMResult:
    return LLMResult.model_construct(generations=[[ChatGeneration(message=hostile_reply(usage, meta))]],
                                     llm_output=llm_output)


@fuzz_settings(examples=30, slow_examples=300)
@given(usage=usage_metadata, meta=response_metadata, metadata=st.one_of(hostile_metadata, run_metadata),
       llm_output=st.one_of(st.none(), hostile_values, response_metadata), extra=kwargs_strategy,
       serialized=hostile_values, inputs=hostile_values, error=st.booleans())
def test_hooks_called_directly_with_hostile_values(
    checker: Checker, usage: Any, meta: Any, metadata: Any, llm_output: Any, extra: dict[str, Any],
    serialized: Any, inputs: Any, error: bool,
) -> None:
    """Real UUIDs (the protocol), everything else hostile: a chain, a model call, a tool, in order."""
    checker.mark()
    sid = unique_id("lc-hooks")
    handler = KeitoCallbackHandler(sid)
    root, call, tool = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    handler.on_chain_start(serialized, inputs, run_id=root, parent_run_id=None, metadata=metadata, **extra)
    handler.on_chat_model_start(serialized, inputs, run_id=call, parent_run_id=root, metadata=metadata, **extra)
    handler.on_llm_new_token(inputs, run_id=call, **extra)
    if error:
        handler.on_llm_error(RuntimeError("provider down"), run_id=call, response=_result(usage, meta, llm_output))
    else:
        handler.on_llm_end(_result(usage, meta, llm_output), run_id=call, **extra)
    handler.on_tool_start(serialized, inputs, run_id=tool, parent_run_id=root, metadata=metadata, **extra)
    handler.on_tool_end(inputs, run_id=tool, **extra)
    handler.on_chain_end(inputs, run_id=root, **extra)
    checker.check({sid: 1})  # (a failed call whose output had begun streaming is billed too)


@pytest.mark.guard_errors_expected  # a run id that is not a UUID breaks LangChain's own protocol
@fuzz_settings(examples=25, slow_examples=200)
@given(run_id=st.one_of(hostile_scalars, st.uuids()), parent=st.one_of(st.none(), hostile_scalars, st.uuids()),
       metadata=hostile_metadata, response=st.one_of(hostile_values, st.builds(lambda: LLMResult(generations=[]))))
def test_hooks_with_protocol_violations_never_raise(
    checker: Checker, run_id: Any, parent: Any, metadata: Any, response: Any
) -> None:
    """Run ids that are not UUIDs, responses that are not LLMResults: the guard may have to catch
    these (they are LangChain bugs), but nothing reaches the host and the next real run is billed."""
    checker.mark()
    handler = KeitoCallbackHandler()
    handler.on_chain_start({}, {}, run_id=run_id, parent_run_id=parent, metadata=metadata)
    handler.on_chat_model_start({}, [], run_id=run_id, parent_run_id=parent, metadata=metadata)
    handler.on_llm_end(response, run_id=run_id)
    handler.on_llm_error(RuntimeError("x"), run_id=run_id, response=response)
    handler.on_tool_start({}, "x", run_id=run_id, parent_run_id=parent, metadata=metadata)
    handler.on_tool_error(ValueError("x"), run_id=run_id)
    handler.on_chain_end({}, run_id=run_id)
    handler.on_chain_error(KeyError("x"), run_id=run_id)
    # The same handler still bills a real run afterwards.
    sid = unique_id("lc-after")
    llm = UsageChatModel(replies=[hostile_reply({"input_tokens": 3, "output_tokens": 1}, {})])
    (PROMPT | llm).invoke({"q": "hi"}, config={"callbacks": [KeitoCallbackHandler(sid), handler]})
    checker.swallowed.clear()  # (allowed here: see the mark above)
    checker.check({sid: 1})


# -- plain examples: the bugs the fuzzing found ------------------------------------------------------
def test_nan_and_infinite_usage_keep_the_call(checker: Checker) -> None:
    """`_int(nan)` / `_int(inf)` raised, so the call (and its usage) was lost."""
    checker.mark()
    sid = unique_id("lc-nan")
    llm = UsageChatModel(replies=[hostile_reply({"input_tokens": float("nan"), "output_tokens": float("inf"),
                                                 "input_token_details": {"cache_read": float("-inf")}}, {})])
    (PROMPT | llm).invoke({"q": "hi"}, config={"callbacks": [KeitoCallbackHandler(sid)]})
    checker.check({sid: 1})


def test_run_metadata_that_is_not_a_mapping_or_has_unprintable_values(checker: Checker) -> None:
    from tests._hostile import Unprintable

    checker.mark()
    handler = KeitoCallbackHandler()
    root, call = uuid.uuid4(), uuid.uuid4()
    handler.on_chain_start({}, {}, run_id=root, metadata=float("nan"))  # type: ignore[arg-type]
    handler.on_chain_end({}, run_id=root)
    sid = unique_id("lc-meta")
    bad = {"keito_session_id": sid, "langgraph_node": Unprintable(), "ls_provider": Unprintable()}
    handler.on_chain_start({}, {}, run_id=root, metadata=bad)
    handler.on_chat_model_start({}, [], run_id=call, parent_run_id=root, metadata=bad)
    handler.on_llm_end(_result({"input_tokens": 5, "output_tokens": 1}, {}, None), run_id=call)
    handler.on_chain_end({}, run_id=root)
    import keito_instrument as keito

    assert keito.end_session(sid)
    checker.check({sid: 1})
