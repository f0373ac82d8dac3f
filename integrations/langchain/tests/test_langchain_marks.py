"""The kernel's marks the handler sets while a client hook or the span processor is installed: a
run mark naming the handler's session while it tracks a run, the call mark while it records a
model call, each gone when its run ends, in sync and async code and in threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from _lc_fakes import UsageChatModel, reply
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel
from keito_instrument.integrations import langchain as keito_lc
from keito_instrument.integrations.langchain import KeitoCallbackHandler

HOW = ("config", "instrument", "both")


@pytest.fixture
def hooked() -> Iterator[None]:
    """A client hook is installed (as the span processor or an instrumented client registers)."""
    key = object()
    _kernel.CLIENT_HOOKS.add(id(key))
    try:
        yield
    finally:
        _kernel.CLIENT_HOOKS.discard(id(key))


def config(how: str, **metadata: Any) -> RunnableConfig:
    if how != "config":
        keito_lc.instrument()
    callbacks = [] if how == "instrument" else [KeitoCallbackHandler()]
    return {"metadata": metadata, "callbacks": callbacks}


def session_id(mark: object) -> str | None:
    return mark.session.session_id if isinstance(mark, _kernel.RunMark) else None


@tool
def probe(query: str) -> str:
    """Say which session the context's run mark names."""
    return str(session_id(_kernel.in_framework_run()))


def use_probe(query: str) -> str:
    return str(probe.invoke(query))


MARKS_SEEN: list[object] = []


class ProbeChat(UsageChatModel):
    """A chat model that notes the mark its provider call runs under (in `MARKS_SEEN`)."""

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        MARKS_SEEN.append(_kernel.framework_mark())
        return super()._generate(*args, **kwargs)


def test_without_a_client_hook_the_handler_marks_nothing(ledger: Spool) -> None:
    seen: list[object] = []
    RunnableLambda(lambda q: seen.append(_kernel.framework_mark())).invoke("q", config=config("config"))
    assert seen == [None]


@pytest.mark.parametrize("how", HOW)
def test_a_run_carries_the_handlers_session_into_its_steps_and_tools(
    hooked: None, ledger: Spool, how: str
) -> None:
    def step(question: str) -> list[str | None]:
        return [session_id(_kernel.in_framework_run()), probe.invoke(question)]

    inside = RunnableLambda(step).invoke("q", config=config(how))
    assert _kernel.framework_mark() is None and len(keito_lc._table) == 0
    [row] = ledger.sessions()
    assert inside == [row["session_id"], row["session_id"]] and row["tool_calls"] == 1


@pytest.mark.parametrize("how", HOW)
def test_a_model_call_runs_under_the_call_mark_and_the_run_mark_comes_back(
    hooked: None, ledger: Spool, how: str
) -> None:
    model = ProbeChat(replies=[reply(inp=10, out=2)])
    MARKS_SEEN.clear()

    def step(question: str) -> str | None:
        model.invoke(question)
        return session_id(_kernel.in_framework_run())

    after = RunnableLambda(step).invoke("q", config=config(how))
    assert MARKS_SEEN == ["langchain"]
    [row] = ledger.sessions()
    assert after == row["session_id"] and row["llm_calls"] == 1


def test_a_run_inside_a_session_names_that_session(hooked: None, ledger: Spool) -> None:
    with keito.session("s1"):
        assert RunnableLambda(use_probe).invoke("q", config=config("config")) == "s1"


@pytest.mark.parametrize("how", HOW)
def test_a_nested_run_in_a_thread_without_the_context_marks_itself_until_its_end(
    hooked: None, ledger: Spool, how: str
) -> None:
    inner = RunnableLambda(lambda q: [session_id(_kernel.in_framework_run()), probe.invoke(q)])
    found: list[Any] = []

    def step(question: str, config: RunnableConfig) -> None:
        def elsewhere() -> None:  # a plain thread: a fresh context, the step's config passed by hand
            found.append(inner.invoke(question, config=config))
            found.append(_kernel.framework_mark())  # the nested run's end took its mark away

        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join()

    RunnableLambda(step).invoke("q", config=config(how))
    [row] = ledger.sessions()
    assert found == [[row["session_id"], row["session_id"]], None]
    assert (row["tool_calls"], len(keito_lc._table)) == (1, 0)


@pytest.mark.parametrize("how", ("config", "instrument"))
def test_fifty_concurrent_runs_on_threads_each_carry_their_own_session(
    hooked: None, ledger: Spool, how: str
) -> None:
    run_config = config(how)
    chain = RunnableLambda(use_probe)
    with ThreadPoolExecutor(8) as pool:
        inside = list(pool.map(lambda _: chain.invoke("q", config=run_config), range(50)))
    assert sorted(inside) == sorted(row["session_id"] for row in ledger.sessions())
    assert len(set(inside)) == 50


@pytest.mark.parametrize("how", ("config", "instrument"))
async def test_fifty_concurrent_async_runs_each_carry_their_own_session(
    hooked: None, ledger: Spool, how: str
) -> None:
    async def step(question: str) -> str:
        await asyncio.sleep(0)  # interleave the runs
        return str(await probe.ainvoke(question))

    run_config = config(how)
    inside = await asyncio.gather(*(RunnableLambda(step).ainvoke("q", config=run_config) for _ in range(50)))
    assert _kernel.framework_mark() is None
    assert sorted(inside) == sorted(row["session_id"] for row in ledger.sessions())
    assert len(set(inside)) == 50
