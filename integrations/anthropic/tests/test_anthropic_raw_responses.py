"""`.with_raw_response` and `.with_streaming_response`: each call counted once, the caller's objects unchanged.

A raw response is counted from the body the SDK read (its usage, model and id); a raw
`stream=True` response from its events when the caller reads `.parse()`, else with
`usage_missing` when it is dropped; a `.with_streaming_response` body the caller reads themselves
with `usage_missing`. What the caller gets (the response object, its `.parse()`, headers, the
body) is what the SDK gives without the hook. The async raw response's `.parse()` is a coroutine
on newer SDKs and a plain method on older ones (`LegacyAPIResponse`).
"""

from __future__ import annotations

import gc
import inspect
from typing import Any

import anthropic
import pytest
from _fake_anthropic import FakeAnthropic

import keito_instrument as keito
from conftest import ask, awith_and_without, billed, expenses, with_and_without
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel
from keito_instrument.integrations import anthropic as keito_anthropic


async def parsed(raw: Any) -> Any:
    """An async raw response's `.parse()`, whichever kind this SDK has."""
    value = raw.parse()
    return await value if inspect.isawaitable(value) else value


def headers(response: Any) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name != "date"}  # (the clock's)


async def events_of(stream: anthropic.AsyncStream[Any]) -> list[Any]:
    return [event async for event in stream]


def test_raw_responses_bill_the_servers_usage_once(client: anthropic.Anthropic, server: FakeAnthropic,
                                                   ledger: Spool) -> None:
    with keito.session(session_id="raw"):
        raw = client.messages.with_raw_response.create(**ask())
        message = raw.parse()
        raw_stream = client.messages.with_raw_response.create(**ask(stream=True))
        events = list(raw_stream.parse())
        with client.messages.with_streaming_response.create(**ask(stream=True)) as response:
            streamed = list(response.parse())
        beta = client.beta.messages.with_raw_response.create(**ask()).parse()
    assert keito.flush(5.0)
    assert raw.parse() is message and message.content[0].text == "Hello, world!"  # type: ignore[union-attr]
    assert raw.headers["request-id"] == "req_fake" and beta.type == "message"
    assert events[-1].type == streamed[-1].type == "message_stop"
    totals = server.totals()
    assert totals["calls"] == 4 and billed(ledger) == totals
    [meta] = expenses(ledger)  # (the session's one expense)
    assert meta["llm_calls"] == 4 and "usage_missing" not in meta and meta["model"] == "claude-sonnet-4-5"


async def test_async_raw_responses_bill_the_servers_usage_once(aclient: anthropic.AsyncAnthropic,
                                                               server: FakeAnthropic, ledger: Spool) -> None:
    with keito.session(session_id="async-raw"):
        raw = await aclient.messages.with_raw_response.create(**ask())
        message = await parsed(raw)
        raw_stream = await aclient.messages.with_raw_response.create(**ask(stream=True))
        events = await events_of(await parsed(raw_stream))
        async with aclient.messages.with_streaming_response.create(**ask(stream=True)) as response:
            streamed = await events_of(await response.parse())
        beta = await parsed(await aclient.beta.messages.with_raw_response.create(**ask()))
    assert keito.flush(5.0)
    assert await parsed(raw) is message and message.content[0].text == "Hello, world!"
    assert raw.headers["request-id"] == "req_fake" and beta.type == "message"
    assert events[-1].type == streamed[-1].type == "message_stop"
    assert billed(ledger) == server.totals() and server.totals()["calls"] == 4


def test_raw_parse_of_structured_output_is_counted(client: anthropic.Anthropic, server: FakeAnthropic,
                                                   ledger: Spool) -> None:
    # `with_raw_response.parse` (newer SDKs, under beta): the body's usage, whatever `.parse()` makes of it.
    raw_messages = client.beta.messages.with_raw_response
    if not hasattr(raw_messages, "parse"):
        pytest.skip("this SDK has no beta.messages.with_raw_response.parse")
    with keito.session(session_id="raw-parse"):
        raw = raw_messages.parse(**ask())
    assert keito.flush(5.0)
    assert raw.parse().content[0].text == "Hello, world!"
    assert billed(ledger) == server.totals() and server.totals()["calls"] == 1


def test_a_body_the_caller_reads_is_usage_missing(client: anthropic.Anthropic, server: FakeAnthropic,
                                                  ledger: Spool) -> None:
    # `.with_streaming_response` leaves the body unread; a raw stream read as bytes never shows
    # its events to keito. Each is one call, counted with `usage_missing` (cost unknown, not zero).
    with keito.session(session_id="unread"):
        with client.messages.with_streaming_response.create(**ask()) as response:
            assert response.parse().usage.output_tokens == 48
        raw_stream = client.messages.with_raw_response.create(**ask(stream=True))
        lines = list(raw_stream.http_response.iter_lines())
        with client.messages.with_streaming_response.create(**ask(stream=True)) as streamed:
            body = streamed.read()
        del response, raw_stream, streamed
        gc.collect()
    assert keito.flush(5.0)
    assert "event: message_stop" in lines and b"message_stop" in body and len(server.billed) == 3
    [meta] = expenses(ledger)
    assert (meta["llm_calls"], meta["usage_missing"], meta["model"]) == (3, 3, "claude-sonnet-4-5")
    [row] = ledger.sessions()
    assert row["llm_calls"] == 3 and row["cost_unknown"] == 1


async def test_an_async_body_the_caller_reads_is_usage_missing(aclient: anthropic.AsyncAnthropic,
                                                               ledger: Spool) -> None:
    with keito.session(session_id="async-unread"):
        async with aclient.messages.with_streaming_response.create(**ask()) as response:
            assert (await response.parse()).usage.output_tokens == 48
        raw_stream = await aclient.messages.with_raw_response.create(**ask(stream=True))
        await raw_stream.http_response.aread()
        del response, raw_stream
        gc.collect()
    assert keito.flush(5.0)
    [meta] = expenses(ledger)
    assert meta["llm_calls"] == meta["usage_missing"] == 2


def test_the_caller_gets_what_the_sdk_gives(client: anthropic.Anthropic) -> None:
    def raw() -> Any:
        response = client.messages.with_raw_response.create(**ask())
        return type(response), response.status_code, headers(response), response.parse(), response.http_response.json()

    def raw_stream() -> Any:
        response = client.messages.with_raw_response.create(**ask(stream=True))
        stream = response.parse()
        return type(response), type(stream), [event.to_dict() for event in stream], response.parse() is stream

    def streaming(stream: bool) -> Any:
        with client.messages.with_streaming_response.create(**ask(stream=stream)) as response:
            return type(response), response.is_closed, headers(response), list(response.iter_lines())

    def streaming_parsed() -> Any:
        with client.messages.with_streaming_response.create(**ask(stream=True)) as response:
            return [event.to_dict() for event in response.parse()]

    def refused() -> Any:
        return client.messages.with_raw_response.create(**ask(), extra_headers={"x-fake-mode": "status"})

    for action in (raw, raw_stream, lambda: streaming(False), lambda: streaming(True), streaming_parsed):
        bare, hooked = with_and_without(action)
        assert hooked == bare and hooked[0] == "returned"
    bare, hooked = with_and_without(refused)
    assert hooked == bare and hooked[1][0] is anthropic.BadRequestError


async def test_the_async_caller_gets_what_the_sdk_gives(aclient: anthropic.AsyncAnthropic) -> None:
    async def raw() -> Any:
        response = await aclient.messages.with_raw_response.create(**ask())
        return type(response), headers(response), await parsed(response)

    async def raw_stream() -> Any:
        response = await aclient.messages.with_raw_response.create(**ask(stream=True))
        return type(response), [event.to_dict() for event in await events_of(await parsed(response))]

    async def streaming(stream: bool) -> Any:
        async with aclient.messages.with_streaming_response.create(**ask(stream=stream)) as response:
            return type(response), response.is_closed, [line async for line in response.iter_lines()]

    for action in (raw, raw_stream, lambda: streaming(False), lambda: streaming(True)):
        bare, hooked = await awith_and_without(action)
        assert hooked == bare and hooked[0] == "returned"


def test_raw_calls_an_outer_framework_records_are_left_to_it(client: anthropic.Anthropic, ledger: Spool) -> None:
    with keito.session(session_id="framework-raw"), _kernel.framework_call("langchain"):
        client.messages.with_raw_response.create(**ask()).parse()
        list(client.messages.with_raw_response.create(**ask(stream=True)).parse())
        with client.messages.with_streaming_response.create(**ask()) as response:
            response.read()
    assert keito.flush(5.0)
    assert expenses(ledger) == [] and ledger.sessions()[0]["llm_calls"] == 0


def test_a_raw_response_wrapper_made_before_instrument_keeps_the_sdks_method(client: anthropic.Anthropic,
                                                                            ledger: Spool) -> None:
    # The SDK builds `with_raw_response` once per client, around the method `create` was then.
    keito_anthropic.uninstrument()
    early = client.messages.with_raw_response
    keito_anthropic.instrument()
    with keito.session(session_id="early-raw"):
        assert client.messages.with_raw_response is early
        early.create(**ask())
    assert keito.flush(5.0)
    assert ledger.sessions()[0]["llm_calls"] == 0


@pytest.mark.guard_errors_expected
def test_an_internal_fault_never_reaches_a_raw_caller(client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch,
                                                      _guard_failures: list[tuple[str, BaseException]]) -> None:
    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("injected")

    monkeypatch.setattr(_kernel, "record_provider_call", broken)
    assert client.messages.with_raw_response.create(**ask()).parse().content[0].text == "Hello, world!"  # type: ignore[union-attr]
    with client.messages.with_streaming_response.create(**ask()) as response:
        assert response.parse().type == "message"
    assert [e.type for e in client.messages.with_raw_response.create(**ask(stream=True)).parse()][-1] == "message_stop"
    assert {kind for kind, _ in _guard_failures} == {"anthropic messages call", "anthropic stream event"}
