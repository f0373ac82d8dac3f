"""Calls that raise: one the API answered (and billed) is counted once with its usage, the caller
gets the SDK's own exception; one it refused is no call.

`messages.parse` validates the answer's text against `output_format` inside the call: the fake
API answers "Hello, world!", which is no `Answer`, so the SDK raises pydantic's ValidationError
after the API billed the request.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pydantic
import pytest
from _fake_anthropic import FakeAnthropic

import keito_instrument as keito
from conftest import ask, awith_and_without, billed, with_and_without
from keito_instrument._spool import Spool


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
    with keito.session(session_id="refused"):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.create(**ask(), extra_headers={"x-fake-mode": "status"})
        if hasattr(client.messages, "parse"):
            with pytest.raises(anthropic.BadRequestError):
                client.messages.parse(**ask(), output_format=Answer, extra_headers={"x-fake-mode": "status"})
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert row["llm_calls"] == 0 and server.billed == []
