"""Calls that raise: one the API answered (and billed) is counted once with its usage, the caller
gets the SDK's own exception; one it refused is no call. Either is one error of the session it
runs in, counted once (not again as it leaves `@track_agent`, nor per retry of the SDK's).

`messages.parse` validates the answer's text against `output_format` inside the call: the fake
API answers "Hello, world!", which is no `Answer`, so the SDK raises pydantic's ValidationError
after the API billed the request.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import anthropic
import pydantic
import pytest
from _fake_anthropic import FakeAnthropic

import keito_instrument as keito
from conftest import ask, awith_and_without, billed, with_and_without
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel


class Answer(pydantic.BaseModel):
    answer: int


def parsers(messages: Any) -> list[Any]:
    """`messages.parse` and, on SDKs that have it, `beta.messages.parse`, of one client."""
    beta = getattr(getattr(messages, "beta", None), "messages", None)
    found = [messages.messages.parse] if hasattr(messages.messages, "parse") else []
    return found + ([beta.parse] if hasattr(beta, "parse") else [])


def test_a_parse_whose_answer_does_not_validate_is_counted_once(client: anthropic.Anthropic, server: FakeAnthropic,
                                                                ledger: Spool) -> None:
    parse_calls = parsers(client)
    if not parse_calls:
        pytest.skip("this SDK has no messages.parse")
    with keito.session(session_id="parse-fails"):
        for parse in parse_calls:
            with pytest.raises(pydantic.ValidationError):
                parse(**ask(), output_format=Answer)
    assert keito.flush(5.0)
    totals = server.totals()
    assert totals["calls"] == len(parse_calls) and billed(ledger) == totals
    assert ledger.sessions()[0]["errors"] == len(parse_calls)


async def test_an_async_parse_whose_answer_does_not_validate_is_counted_once(
        aclient: anthropic.AsyncAnthropic, server: FakeAnthropic, ledger: Spool) -> None:
    parse_calls = parsers(aclient)
    if not parse_calls:
        pytest.skip("this SDK has no messages.parse")
    with keito.session(session_id="async-parse-fails"):
        for parse in parse_calls:
            with pytest.raises(pydantic.ValidationError):
                await parse(**ask(), output_format=Answer)
    assert keito.flush(5.0)
    totals = server.totals()
    assert totals["calls"] == len(parse_calls) and billed(ledger) == totals


def test_a_failed_parse_raises_what_the_sdk_raises(client: anthropic.Anthropic) -> None:
    for parse in parsers(client):
        bare, hooked = with_and_without(lambda parse=parse: parse(**ask(), output_format=Answer))
        assert hooked == bare and hooked[1][0] is pydantic.ValidationError


async def test_a_failed_async_parse_raises_what_the_sdk_raises(aclient: anthropic.AsyncAnthropic) -> None:
    for parse in parsers(aclient):
        bare, hooked = await awith_and_without(lambda parse=parse: parse(**ask(), output_format=Answer))
        assert hooked == bare and hooked[1][0] is pydantic.ValidationError


def test_a_refused_call_is_no_call(client: anthropic.Anthropic, server: FakeAnthropic, ledger: Spool) -> None:
    refused = 1
    with keito.session(session_id="refused"):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.create(**ask(), extra_headers={"x-fake-mode": "status"})
        if hasattr(client.messages, "parse"):  # (an older anthropic has none)
            refused += 1
            with pytest.raises(anthropic.BadRequestError):
                client.messages.parse(**ask(), output_format=Answer, extra_headers={"x-fake-mode": "status"})
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["errors"]) == (0, refused) and server.billed == []


# -- errors of the session ------------------------------------------------------------------------
@pytest.fixture
def failing() -> Iterator[FakeAnthropic]:
    """A fake API answering every request with HTTP 500 (and `retry-after-ms: 1`)."""
    with FakeAnthropic(mode="status", error_status=500) as fake:
        yield fake


def only_session(ledger: Spool) -> dict[str, Any]:
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    return dict(row)


def test_a_failed_call_caught_inside_track_agent_is_one_error_and_the_session_bills(
        client: anthropic.Anthropic, failing: FakeAnthropic, ledger: Spool) -> None:
    broken = anthropic.Anthropic(base_url=failing.url, api_key="fake-key", max_retries=0)

    @keito.track_agent(agent_id="retrier")
    def work() -> str:
        with contextlib.suppress(anthropic.InternalServerError):  # (the step retries on its own)
            broken.messages.create(**ask())
        return str(client.messages.create(**ask()).content[0].text)  # type: ignore[union-attr]

    assert work() == "Hello, world!"
    row = only_session(ledger)
    assert (row["errors"], row["llm_calls"]) == (1, 1)
    assert {r["kind"] for r in ledger.records()} == {"time_entry", "expense"}


async def test_an_async_failed_call_caught_inside_track_agent_is_one_error(
        aclient: anthropic.AsyncAnthropic, failing: FakeAnthropic, ledger: Spool) -> None:
    broken = anthropic.AsyncAnthropic(base_url=failing.url, api_key="fake-key", max_retries=0)

    @keito.track_agent
    async def work() -> None:
        with contextlib.suppress(anthropic.InternalServerError):
            await broken.messages.create(**ask())
        await aclient.messages.create(**ask())

    await work()
    row = only_session(ledger)
    assert (row["errors"], row["llm_calls"]) == (1, 1)


def test_a_failure_leaving_track_agent_is_counted_once(failing: FakeAnthropic, ledger: Spool) -> None:
    broken = anthropic.Anthropic(base_url=failing.url, api_key="fake-key", max_retries=0)

    @keito.track_agent
    def inner() -> None:
        with broken.messages.stream(**ask()) as stream:  # (the helper's request fails on entry)
            stream.until_done()

    @keito.track_agent
    def outer() -> None:
        inner()  # (a nested run of the same session: the error passes through two scopes)

    with pytest.raises(anthropic.InternalServerError):
        outer()
    assert only_session(ledger)["errors"] == 1


async def test_an_async_failure_leaving_track_agent_is_counted_once(failing: FakeAnthropic, ledger: Spool) -> None:
    broken = anthropic.AsyncAnthropic(base_url=failing.url, api_key="fake-key", max_retries=0)

    @keito.track_agent
    async def work() -> None:
        await broken.messages.create(**ask())

    with pytest.raises(anthropic.InternalServerError):
        await work()
    assert only_session(ledger)["errors"] == 1


def test_a_call_the_sdk_retries_counts_its_final_failure_once(failing: FakeAnthropic, ledger: Spool) -> None:
    retrying = anthropic.Anthropic(base_url=failing.url, api_key="fake-key", max_retries=2)

    @keito.track_agent
    def work() -> None:
        retrying.messages.create(**ask())

    with pytest.raises(anthropic.InternalServerError):
        work()
    assert len(failing.requests) == 3
    assert only_session(ledger)["errors"] == 1


async def test_an_async_call_the_sdk_retries_counts_its_final_failure_once(failing: FakeAnthropic,
                                                                         ledger: Spool) -> None:
    retrying = anthropic.AsyncAnthropic(base_url=failing.url, api_key="fake-key", max_retries=2)
    with keito.session(session_id="retried"):
        with pytest.raises(anthropic.InternalServerError):
            await retrying.messages.create(**ask())
        with pytest.raises(anthropic.InternalServerError):
            async with retrying.messages.stream(**ask()) as stream:
                await stream.until_done()
    assert len(failing.requests) == 6
    assert only_session(ledger)["errors"] == 2


def test_a_connection_refused_is_one_error(ledger: Spool) -> None:
    with socket.socket() as probe:  # a port on 127.0.0.1 nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="fake-key", max_retries=0, timeout=5)
    with keito.session(session_id="refused"), pytest.raises(anthropic.APIConnectionError):
        refused.messages.create(**ask())
    assert only_session(ledger)["errors"] == 1


def test_outside_any_session_a_failed_call_records_nothing(failing: FakeAnthropic, ledger: Spool) -> None:
    with pytest.raises(anthropic.InternalServerError):
        anthropic.Anthropic(base_url=failing.url, api_key="fake-key", max_retries=0).messages.create(**ask())
    assert keito.flush(5.0)
    assert ledger.sessions() == [] and ledger.records() == []


def test_a_call_a_framework_records_leaves_its_error_to_it(failing: FakeAnthropic, ledger: Spool) -> None:
    broken = anthropic.Anthropic(base_url=failing.url, api_key="fake-key", max_retries=0)
    with keito.session(session_id="framework"), _kernel.framework_call("langchain"), \
            pytest.raises(anthropic.InternalServerError):
        broken.messages.create(**ask())
    assert only_session(ledger)["errors"] == 0
