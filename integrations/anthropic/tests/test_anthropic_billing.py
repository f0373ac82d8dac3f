"""Real `anthropic` clients against the local fake API: what keito bills equals what the server billed.

Sync, async and streamed (`create(stream=True)` and the `messages.stream()` helper), with cache
reads, cache writes split by lifetime and web searches; the cost is genai-prices' own price of
the server's usage, and 1-hour cache writes are priced as 1-hour writes.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import anthropic
import pytest
from _fake_anthropic import USAGE, FakeAnthropic
from genai_prices import Usage, calc_price

import keito_instrument as keito
from conftest import MODEL, SDK_APPLIES_DELTA_TOTALS, ask, billed
from keito_instrument._spool import Spool


def genai_cost(totals: dict[str, int], one_hour: bool = True) -> Decimal:
    counts = {k: v for k, v in totals.items() if k != "calls"}
    if not one_hour:
        counts.pop("cache_write_1h_tokens")
    return Decimal(calc_price(Usage(**counts), MODEL, provider_id="anthropic").total_price)


def session_cost(ledger: Spool) -> float:
    [row] = ledger.sessions()
    assert row["cost_unknown"] == 0
    return float(row["cost_usd"])


def test_sync_calls_bill_the_servers_usage_and_its_price(client: anthropic.Anthropic, server: FakeAnthropic,
                                                         ledger: Spool) -> None:
    with keito.session(session_id="sync"):
        message = client.messages.create(**ask())
        events = list(client.messages.create(**ask(stream=True)))
        with client.messages.stream(**ask()) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert keito.flush(5.0)
    assert isinstance(message, anthropic.types.Message) and message.content[0].text == text == "Hello, world!"
    assert events[-1].type == "message_stop" and final.usage.output_tokens == USAGE["output_tokens"]
    totals = server.totals()
    assert totals["calls"] == 3 and totals["cache_write_1h_tokens"] == 3 * 800
    assert billed(ledger) == totals
    assert session_cost(ledger) == pytest.approx(float(genai_cost(totals)), abs=1e-9)


async def test_async_calls_bill_the_servers_usage_and_its_price(aclient: anthropic.AsyncAnthropic,
                                                                server: FakeAnthropic, ledger: Spool) -> None:
    with keito.session(session_id="async"):
        message = await aclient.messages.create(**ask())
        events = [event async for event in await aclient.messages.create(**ask(stream=True))]
        async with aclient.messages.stream(**ask()) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert keito.flush(5.0)
    assert message.content[0].text == text and events[-1].type == "message_stop"
    assert final.usage.output_tokens == USAGE["output_tokens"]
    assert billed(ledger) == server.totals() and server.totals()["calls"] == 3
    assert session_cost(ledger) == pytest.approx(float(genai_cost(server.totals())), abs=1e-9)


@pytest.mark.parametrize("delta_totals", [True, False], ids=["cumulative-delta", "output-only-delta"])
def test_a_stream_combines_its_start_and_delta_usage(ledger: Spool, delta_totals: bool) -> None:
    # Newer APIs repeat input and cache counts in message_delta as cumulative totals (here the
    # start shows less input than the end); older ones send only the output count there.
    with FakeAnthropic(delta_totals=delta_totals) as server, \
            anthropic.Anthropic(base_url=server.url, api_key="fake", max_retries=0) as client, \
            keito.session(session_id="combined"):
        with client.messages.stream(**ask()) as stream:
            final = stream.get_final_message()
        for _ in client.messages.create(**ask(stream=True)):
            pass
    assert keito.flush(5.0)
    start, delta = server.start_usage(), server.delta_usage()
    assert server.final_usage()["input_tokens"] == USAGE["input_tokens"]
    if SDK_APPLIES_DELTA_TOTALS or not delta_totals:
        assert final.usage.input_tokens == USAGE["input_tokens"]  # the SDK's own sum agrees with the server's
    # Neither event alone holds the call's usage: the start lacks the output (and, with cumulative
    # deltas, some input), an output-only delta lacks the input and cache counts.
    assert start["input_tokens"] < USAGE["input_tokens"] if delta_totals else "cache_read_input_tokens" not in delta
    assert start["output_tokens"] < USAGE["output_tokens"]
    assert billed(ledger) == server.totals() and server.totals()["calls"] == 2


def test_one_hour_cache_writes_are_priced_as_one_hour(client: anthropic.Anthropic, server: FakeAnthropic,
                                                      ledger: Spool) -> None:
    with keito.session(session_id="lifetimes"):
        client.messages.create(**ask())
    assert keito.flush(5.0)
    [meta] = [r["payload"]["metadata"] for r in ledger.records() if r["kind"] == "expense"]
    assert (meta["cache_write_tokens"], meta["cache_write_1h_tokens"], meta["cache_write_5m_tokens"]) == (
        1_200, 800, 400)
    assert meta["cache_read_tokens"] == 1_800 and meta["input_tokens"] == 25 + 1_800 + 1_200
    one_hour, five_minutes = genai_cost(server.totals()), genai_cost(server.totals(), one_hour=False)
    assert one_hour > five_minutes  # (the difference the 1-hour part makes)
    assert meta["cost_usd"] == pytest.approx(float(one_hour), abs=1e-9)


def test_outside_any_session_a_call_is_billed_on_its_own(client: anthropic.Anthropic, server: FakeAnthropic,
                                                         ledger: Spool) -> None:
    client.messages.create(**ask())
    assert keito.flush(5.0)
    assert billed(ledger) == server.totals()
    assert [r["kind"] for r in ledger.records()] == ["expense"]


def test_a_stream_bills_to_the_session_it_started_in(client: anthropic.Anthropic, server: FakeAnthropic,
                                                     ledger: Spool) -> None:
    # Read in a thread that does not carry the session (a consumer thread): still billed to it.
    with keito.session(session_id="producer"):
        stream = client.messages.create(**ask(stream=True))
        reader = threading.Thread(target=lambda: list(stream))
        reader.start()
        reader.join(10)
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == ("producer", 1,
                                                                          server.totals()["input_tokens"])


def test_beta_messages_are_counted_too(client: anthropic.Anthropic, server: FakeAnthropic, ledger: Spool) -> None:
    with keito.session(session_id="beta"):
        client.beta.messages.create(**ask())
        with client.beta.messages.stream(**ask()) as stream:
            stream.until_done()
    assert keito.flush(5.0)
    assert billed(ledger) == server.totals() and server.totals()["calls"] == 2


def test_a_client_made_before_instrument_is_covered(server: FakeAnthropic, ledger: Spool) -> None:
    from keito_instrument.integrations import anthropic as keito_anthropic

    keito_anthropic.uninstrument()
    with anthropic.Anthropic(base_url=server.url, api_key="fake", max_retries=0) as early:
        early.messages.create(**ask())  # not instrumented yet: not billed
        keito_anthropic.instrument()
        with keito.session(session_id="early"):
            early.messages.create(**ask())
    assert keito.flush(5.0)
    assert billed(ledger)["calls"] == 1 and len(server.billed) == 2
