"""A client call that raises is one error of the session it runs in, counted once.

Caught by the caller (a step that retries) it is still an error, and the session bills what
was spent; let through `@track_agent` it is not counted again; an SDK that retries counts its
final failure once; outside any session it bills nothing. Real `openai` clients against the
local fake API answering HTTP 500 (with `retry-after-ms: 1`, so the SDK's retries are quick).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import openai
import pytest
from _fake_server import FakeOpenAI
from _openai_support import async_client, client, one_session

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel

pytestmark = pytest.mark.usefixtures("instrumented")

HI: Any = [{"role": "user", "content": "hi"}]


def chat(sdk: Any) -> Any:
    return sdk.chat.completions.create(model="gpt-4o-mini", messages=HI)


def time_entry_meta(ledger: Spool) -> dict[str, Any]:
    [entry] = [r for r in ledger.records() if r["kind"] == "time_entry"]
    return dict(entry["payload"]["metadata"])


def test_a_failed_call_caught_inside_track_agent_is_one_error_and_the_session_bills(
        ledger: Spool, server: FakeOpenAI) -> None:
    @keito.track_agent(agent_id="retrier")
    def work() -> str:
        server.fail = (500, 1)
        with contextlib.suppress(openai.InternalServerError):  # (the step retries on its own)
            chat(client(server))
        return str(chat(client(server)).choices[0].message.content)

    assert work() == "Hello from the fake server"
    row = one_session(ledger)
    assert (row["errors"], row["llm_calls"]) == (1, 1)
    assert time_entry_meta(ledger)["errors"] == 1 and {r["kind"] for r in ledger.records()} == {
        "time_entry", "expense"}


async def test_an_async_failed_call_caught_inside_track_agent_is_one_error(ledger: Spool, server: FakeOpenAI) -> None:
    @keito.track_agent
    async def work() -> None:
        server.fail = (500, 1)
        with contextlib.suppress(openai.InternalServerError):
            await chat(async_client(server))
        await chat(async_client(server))

    await work()
    row = one_session(ledger)
    assert (row["errors"], row["llm_calls"]) == (1, 1)


def test_a_failure_leaving_track_agent_is_counted_once(ledger: Spool, server: FakeOpenAI) -> None:
    @keito.track_agent
    def inner() -> None:
        server.fail = (500, 1)
        chat(client(server))

    @keito.track_agent
    def outer() -> None:
        inner()  # (a nested run of the same session: the error passes through two scopes)

    with pytest.raises(openai.InternalServerError):
        outer()
    assert one_session(ledger)["errors"] == 1


async def test_an_async_failure_leaving_track_agent_is_counted_once(ledger: Spool, server: FakeOpenAI) -> None:
    @keito.track_agent
    async def work() -> None:
        server.fail = (500, 1)
        await chat(async_client(server))

    with pytest.raises(openai.InternalServerError):
        await work()
    assert one_session(ledger)["errors"] == 1


def test_a_call_the_sdk_retries_counts_its_final_failure_once(ledger: Spool, server: FakeOpenAI) -> None:
    with keito.session(session_id="retried"):
        server.fail = (500, 3)
        with pytest.raises(openai.InternalServerError):
            chat(openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=2, timeout=10))
        server.fail = (500, 1)  # fails once, then the retry answers
        chat(openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=2, timeout=10))
    assert len(server.requests) == 5
    row = one_session(ledger)
    assert (row["errors"], row["llm_calls"]) == (1, 1)


async def test_an_async_call_the_sdk_retries_counts_its_final_failure_once(ledger: Spool, server: FakeOpenAI) -> None:
    @keito.track_agent
    async def work() -> None:
        server.fail = (500, 3)
        await chat(openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=2, timeout=10))

    with pytest.raises(openai.InternalServerError):
        await work()
    assert len(server.requests) == 3
    assert one_session(ledger)["errors"] == 1


def test_a_connection_refused_is_one_error(ledger: Spool) -> None:
    with socket.socket() as probe:  # a port on 127.0.0.1 nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0, timeout=5)
    with keito.session(session_id="refused"), pytest.raises(openai.APIConnectionError):
        chat(refused)
    assert one_session(ledger)["errors"] == 1


def test_outside_any_session_a_failed_call_records_nothing(ledger: Spool, server: FakeOpenAI) -> None:
    server.fail = (500, 1)
    with pytest.raises(openai.InternalServerError):
        chat(client(server))
    assert keito.flush(5.0)
    assert ledger.sessions() == [] and ledger.records() == []


def test_a_call_a_framework_records_leaves_its_error_to_it(ledger: Spool, server: FakeOpenAI) -> None:
    with keito.session(session_id="framework"):
        server.fail = (500, 1)
        with _kernel.framework_call("langchain"), pytest.raises(openai.InternalServerError):
            chat(client(server))
    assert one_session(ledger)["errors"] == 0


def test_a_failure_in_a_langchain_step_is_counted_once(ledger: Spool, server: FakeOpenAI) -> None:
    runnables = pytest.importorskip("langchain_core.runnables")  # (first: our adapter raises ImportError)
    keito_lc = pytest.importorskip("keito_instrument.integrations.langchain")

    def step(question: str) -> str:
        server.fail = (500, 1)
        return str(chat(client(server)).choices[0].message.content)  # the client called directly

    chain = runnables.RunnableLambda(step) | runnables.RunnableLambda(lambda text: text)
    with pytest.raises(openai.InternalServerError):
        chain.invoke("q", config={"callbacks": [keito_lc.KeitoCallbackHandler()]})
    row = one_session(ledger)
    assert (row["errors"], row["llm_calls"], row["framework"]) == (1, 0, "langchain")
    keito_lc._table.clear()


def test_two_failures_are_two_errors(ledger: Spool, server: FakeOpenAI) -> None:
    async def both() -> None:
        for _ in range(2):
            server.fail = (500, 1)
            with pytest.raises(openai.InternalServerError):
                await chat(async_client(server))

    with keito.session(session_id="twice"):
        asyncio.run(both())
    assert one_session(ledger)["errors"] == 2


def test_a_failed_chatopenai_call_leaving_track_agent_is_counted_once(ledger: Spool, server: FakeOpenAI) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")  # (first: our adapter raises ImportError)
    keito_lc = pytest.importorskip("keito_instrument.integrations.langchain")
    model = langchain_openai.ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                                        max_retries=0, timeout=10)

    @keito.track_agent
    def work() -> None:
        server.fail = (500, 1)
        model.invoke("hi", config={"callbacks": [keito_lc.KeitoCallbackHandler()]})  # the handler counts it

    with pytest.raises(openai.InternalServerError):
        work()
    assert one_session(ledger)["errors"] == 1
    keito_lc._table.clear()


def test_an_error_re_raised_as_another_from_a_counted_one_is_not_counted_again(
        ledger: Spool, server: FakeOpenAI) -> None:
    class StepFailed(RuntimeError):
        """A framework's own error for a failed model call (as langchain-openai raises)."""

    @keito.track_agent
    def work() -> None:
        server.fail = (500, 1)
        try:
            chat(client(server))
        except openai.InternalServerError as exc:
            raise StepFailed("the model call failed") from exc

    with pytest.raises(StepFailed):
        work()
    assert one_session(ledger)["errors"] == 1


def test_chat_openai_failing_inside_track_agent_is_one_error(ledger: Spool, server: FakeOpenAI) -> None:
    chat_models = pytest.importorskip("langchain_openai")

    @keito.track_agent
    def work() -> None:
        server.fail = (500, 1)
        model = chat_models.ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-fake",
                                       max_retries=0)
        model.invoke("hi")

    with pytest.raises(Exception):  # noqa: B017  (whichever error langchain-openai raises for a 500)
        work()
    assert one_session(ledger)["errors"] == 1
