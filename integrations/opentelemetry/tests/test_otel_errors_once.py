"""A failed call is one error of its session, however many layers see it fail.

Our OpenAI client hook counts a failed call's exception (`count_error`: once per session); an
instrumentor ends the call's span, failed, in its own `except` block, so the processor counts the
same exception object, and `@track_agent` does not count it again either. The real packages
(OpenLLMetry's OpenAI instrumentor, OpenInference's LangChain one) run against the local fake
OpenAI server answering HTTP 500; hand-made spans check the rule's edges.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from _layers import ToTheTest
from _otel_fakes import Otel
from langchain_core.runnables import RunnableLambda
from opentelemetry.trace import Status, StatusCode

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import openai as keito_openai

openai = pytest.importorskip("openai")  # (not in this integration's oldest-versions run)

HI: Any = [{"role": "user", "content": "hi"}]
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini"}
TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"}


@pytest.fixture
def client_spans(otel: Otel, _openai_instrumentor: ToTheTest) -> Iterator[Otel]:
    """OpenLLMetry's OpenAI instrumentor feeding the test's provider (our processor on it)."""
    _openai_instrumentor.target = otel
    try:
        yield otel
    finally:
        _openai_instrumentor.target = None


@pytest.fixture(params=["hook", "no hook"])
def hook(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Our client hook on (it wraps the instrumentor's wrapper: the span ends first) or off."""
    if request.param == "hook":
        keito_openai.instrument()
    try:
        yield request.param == "hook"
    finally:
        keito_openai.uninstrument()


def errors(ledger: Spool) -> list[int]:
    return [row["errors"] for row in ledger.sessions()]


def failed_spans(otel: Otel) -> list[Any]:
    return [s for s in otel.exported.get_finished_spans() if s.status.status_code is StatusCode.ERROR]


def test_a_failed_call_caught_inside_track_agent_is_one_error(
    client_spans: Otel, hook: bool, ledger: Spool, server: Any
) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    @keito.track_agent(agent_id="retrier")
    def work() -> str:
        server.fail = (500, 1)
        with contextlib.suppress(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        return str(client.chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content)

    assert work() == "Hello from the fake server"
    assert len(failed_spans(client_spans)) == 1
    assert errors(ledger) == [1]


async def test_an_async_failed_call_caught_inside_track_agent_is_one_error(
    client_spans: Otel, hook: bool, ledger: Spool, server: Any
) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    @keito.track_agent
    async def work() -> None:
        server.fail = (500, 1)
        with contextlib.suppress(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    await work()
    assert len(failed_spans(client_spans)) == 1
    assert errors(ledger) == [1]


def test_a_failure_leaving_track_agent_is_one_error(client_spans: Otel, hook: bool, ledger: Spool, server: Any) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    @keito.track_agent
    def work() -> None:
        server.fail = (500, 1)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    with pytest.raises(openai.InternalServerError):
        work()
    assert errors(ledger) == [1]


async def test_an_async_failure_leaving_track_agent_is_one_error(
    client_spans: Otel, hook: bool, ledger: Spool, server: Any
) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    @keito.track_agent
    async def work() -> None:
        server.fail = (500, 1)
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    with pytest.raises(openai.InternalServerError):
        await work()
    assert errors(ledger) == [1]


def test_two_failed_calls_are_two_errors(client_spans: Otel, hook: bool, ledger: Spool, server: Any) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    @keito.track_agent
    def work() -> None:
        server.fail = (500, 2)
        for _ in range(2):
            with contextlib.suppress(openai.InternalServerError):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    work()
    assert errors(ledger) == [2]


def test_a_chain_step_failing_under_openinference_spans_is_one_error(instrumented: Otel, ledger: Spool) -> None:
    # OpenInference ends the chain's span in the callback LangChain calls from its `except`
    # block; the step's exception then leaves @track_agent.
    def step(question: str) -> str:
        raise ValueError("bad step")

    @keito.track_agent
    def work() -> None:
        RunnableLambda(step).invoke("q")

    with pytest.raises(ValueError, match="bad step"):
        work()
    [span] = failed_spans(instrumented)
    assert span.attributes["openinference.span.kind"] == "CHAIN"
    assert errors(ledger) == [1]


# -- the rule's edges, with hand-made spans -----------------------------------------------------


def test_a_span_failed_in_a_with_block_is_the_exception_leaving_track_agent(otel: Otel, ledger: Spool) -> None:
    @keito.track_agent
    def work() -> None:
        with otel.tracer.start_as_current_span("chat", attributes=CHAT):
            raise TimeoutError("slow")

    with pytest.raises(TimeoutError):
        work()
    assert errors(ledger) == [1]


def test_a_failed_tool_held_until_the_session_opens_is_still_that_exception(otel: Otel, ledger: Spool) -> None:
    # The tool's span fails before any model call: its error waits for the trace's session
    # (opened at the root's end), with its exception, which then leaves @track_agent.
    @keito.track_agent
    def work() -> None:
        with (otel.tracer.start_as_current_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"}),
              otel.tracer.start_as_current_span("tool", attributes=TOOL)):
            raise LookupError("no such record")

    with pytest.raises(LookupError):
        work()
    [row] = ledger.sessions()
    assert (row["tool_calls"], row["errors"]) == (1, 1)


def test_a_span_failed_for_its_own_reason_while_another_exception_is_handled_is_two_errors(
    otel: Otel, ledger: Spool
) -> None:
    # The span recorded an exception of another type than the one being handled: not the same
    # failure, so the handled one still counts when it leaves @track_agent.
    @keito.track_agent
    def work() -> None:
        try:
            raise KeyError("unrelated")
        except KeyError:
            span = otel.tracer.start_span("chat", attributes=CHAT)
            span.record_exception(ConnectionError("rate limited"))
            span.set_status(Status(StatusCode.ERROR, "rate limited"))
            span.end()
            raise

    with pytest.raises(KeyError):
        work()
    assert errors(ledger) == [2]


def test_a_failed_span_with_no_exception_in_flight_is_one_error(otel: Otel, ledger: Spool) -> None:
    @keito.track_agent
    def work() -> None:
        span = otel.tracer.start_span("chat", attributes=CHAT)
        span.set_status(Status(StatusCode.ERROR, "rate limited"))
        span.end()

    work()
    assert errors(ledger) == [1]
