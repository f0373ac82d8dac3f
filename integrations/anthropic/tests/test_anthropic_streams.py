"""Streams that end early, and what the user sees: identical with and without the hook.

A stream cut after output began (connection dropped, body ended early, an SSE `error` event), left
early by the user or dropped unread is counted with `usage_missing`; a call that fails before any
output is not a call. Events, text, final messages and exceptions are the SDK's own.
"""

from __future__ import annotations

import gc
from typing import Any

import anthropic
import pytest
from _fake_anthropic import FakeAnthropic

import keito_instrument as keito
from conftest import ask, blank_ids, expenses, with_and_without
from keito_instrument._spool import Spool
from keito_instrument.integrations import anthropic as keito_anthropic


@pytest.mark.parametrize("mode", ["cut", "truncated", "error-event"])
def test_a_stream_cut_after_output_began_is_usage_missing(client: anthropic.Anthropic, server: FakeAnthropic,
                                                          ledger: Spool, mode: str) -> None:
    headers = {"x-fake-mode": mode}
    with keito.session(session_id=f"cut-{mode}"):
        bare, hooked = with_and_without(lambda: list(client.messages.create(**ask(stream=True),
                                                                            extra_headers=headers)))
    assert keito.flush(5.0)
    assert hooked == bare  # the same events, or the same exception
    if mode != "truncated":
        assert hooked[0] == "raised"
    [meta] = expenses(ledger)
    assert (meta["usage_missing"], meta["llm_calls"], meta["cost_unknown"], meta["pricing"]) == (1, 1, True, "unpriced")
    [row] = ledger.sessions()
    assert row["llm_calls"] == 1 and row["cost_unknown"] == 1 and len(server.cut) == 2


async def test_an_async_stream_cut_is_usage_missing(aclient: anthropic.AsyncAnthropic, ledger: Spool) -> None:
    headers = {"x-fake-mode": "cut"}
    with keito.session(session_id="async-cut"):
        async with aclient.messages.stream(**ask(), extra_headers=headers) as stream:
            with pytest.raises(Exception, match="incomplete chunked read") as raised:
                await stream.get_final_message()
        with pytest.raises(type(raised.value)):
            async for _ in await aclient.messages.create(**ask(stream=True), extra_headers=headers):
                pass
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert row["llm_calls"] == 2 and row["cost_unknown"] == 1
    assert {m["usage_missing"] for m in expenses(ledger)} == {2}


def test_leaving_the_helper_early_counts_the_call_at_its_exit(client: anthropic.Anthropic, ledger: Spool) -> None:
    with keito.session(session_id="early-exit"):
        with client.messages.stream(**ask()) as stream:
            first = next(iter(stream.text_stream))
        assert first == "Hello"
    assert keito.flush(5.0)
    [meta] = expenses(ledger)
    assert meta["usage_missing"] == 1 and meta["llm_calls"] == 1


def test_a_dropped_raw_stream_is_counted_when_collected(client: anthropic.Anthropic, ledger: Spool) -> None:
    with keito.session(session_id="dropped"):
        stream = client.messages.create(**ask(stream=True))
        for event in stream:
            if event.type == "content_block_delta":
                break
        stream.close()
        del stream, event
        gc.collect()
    assert keito.flush(5.0)
    [meta] = expenses(ledger)
    assert meta["usage_missing"] == 1


def test_a_stream_dropped_unread_is_usage_missing(client: anthropic.Anthropic, ledger: Spool) -> None:
    # The API accepted the request (and bills it) when create() returned: a call, usage unknown.
    with keito.session(session_id="unread"):
        stream = client.messages.create(**ask(stream=True))
        stream.close()
        del stream
        gc.collect()
    assert keito.flush(5.0)
    [meta] = expenses(ledger)
    assert meta["usage_missing"] == 1 and meta["llm_calls"] == 1


def test_a_user_leaving_after_message_stop_is_counted_with_its_usage(client: anthropic.Anthropic,
                                                                     server: FakeAnthropic, ledger: Spool) -> None:
    with keito.session(session_id="stop"), client.messages.create(**ask(stream=True)) as stream:
        for event in stream:
            if event.type == "message_stop":
                break
    assert keito.flush(5.0)
    [meta] = expenses(ledger)
    assert "usage_missing" not in meta and meta["input_tokens"] == server.totals()["input_tokens"]


def test_a_call_failing_before_output_is_not_a_call_and_raises_the_same(client: anthropic.Anthropic,
                                                                        ledger: Spool) -> None:
    headers = {"x-fake-mode": "status"}
    with keito.session(session_id="failed"):
        for action in (
            lambda: client.messages.create(**ask(), extra_headers=headers),
            lambda: client.messages.create(**ask(stream=True), extra_headers=headers),
            lambda: client.messages.stream(**ask(), extra_headers=headers).__enter__(),
        ):
            bare, hooked = with_and_without(action)
            assert bare == hooked and hooked[0] == "raised"
            assert hooked[1][0] is anthropic.BadRequestError and hooked[1][2][0] == 400
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert row["llm_calls"] == 0 and expenses(ledger) == []


def test_the_user_sees_the_same_events_text_and_messages(client: anthropic.Anthropic) -> None:
    def helper() -> Any:
        with client.messages.stream(**ask()) as stream:
            events = [event.to_dict() for event in stream]
            return events, stream.get_final_message(), stream.get_final_text()

    def text_stream() -> Any:
        with client.messages.stream(**ask()) as stream:
            return list(stream.text_stream), stream.current_message_snapshot

    for action in (lambda: client.messages.create(**ask()),
                   lambda: list(client.messages.create(**ask(stream=True))),
                   helper, text_stream):
        bare, hooked = with_and_without(action)
        assert hooked == bare and hooked[0] == "returned"
    raw = client.messages.create(**ask(stream=True))
    assert type(raw) is anthropic.Stream and isinstance(client.messages.create(**ask()), anthropic.types.Message)
    raw.close()


async def test_async_users_see_the_same_events_and_messages(aclient: anthropic.AsyncAnthropic) -> None:
    async def run() -> Any:
        stream_events = [e.to_dict() async for e in await aclient.messages.create(**ask(stream=True))]
        async with aclient.messages.stream(**ask()) as stream:
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
        return blank_ids([stream_events, texts, final, await aclient.messages.create(**ask())])

    keito_anthropic.uninstrument()
    bare = await run()
    keito_anthropic.instrument()
    assert await run() == bare
