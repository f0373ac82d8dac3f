"""Real openai clients against the local fake API: every call counted once, with the server's usage."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from _fake_server import CHAT_USAGE, EMBEDDINGS_USAGE, RESPONSES_USAGE, FakeOpenAI
from _openai_support import async_client, client, expenses, genai_cost, one_session, served_totals, usage_rows
from pydantic import BaseModel

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import openai as keito_openai

pytestmark = pytest.mark.usefixtures("instrumented")

HI: Any = [{"role": "user", "content": "hi"}]
MINI = "gpt-4o-mini-2024-07-18"  # the model the server's responses name
O4 = "o4-mini-2025-04-16"


def assert_billed_as_served(ledger: Spool, server: FakeOpenAI, calls: int) -> dict[str, Any]:
    row = one_session(ledger)
    inp, out, cached, reasoning = served_totals(server)
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (calls, inp, out)
    kinds = usage_rows(ledger).values()
    assert sum(u["cache_read_tokens"] for u in kinds) == cached
    assert sum(u["reasoning_tokens"] for u in kinds) == reasoning
    return row


def test_chat_plain_and_streamed_with_usage(ledger: Spool, server: FakeOpenAI) -> None:
    c = client(server)
    with keito.session():
        reply = c.chat.completions.create(model="gpt-4o-mini", messages=HI)
        stream = c.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        assert type(stream) is openai.Stream
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert reply.choices[0].message.content == text == "Hello from the fake server"
    row = assert_billed_as_served(ledger, server, 2)
    [usage] = usage_rows(ledger).values()
    assert (usage["model"], usage["provider"], usage["cache_read_tokens"]) == (MINI, "openai", 1600)
    assert row["cost_usd"] == pytest.approx(float(2 * genai_cost(MINI, CHAT_USAGE)), abs=1e-9)
    assert row["cost_unknown"] == 0


async def test_async_chat_plain_and_streamed(ledger: Spool, server: FakeOpenAI) -> None:
    c = async_client(server)
    with keito.session():
        await c.chat.completions.create(model="gpt-4o-mini", messages=HI)
        stream = await c.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        assert type(stream) is openai.AsyncStream
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1200
    row = assert_billed_as_served(ledger, server, 2)
    assert row["cost_usd"] == pytest.approx(float(2 * genai_cost(MINI, CHAT_USAGE)), abs=1e-9)


def test_a_stream_without_usage_is_usage_missing_never_zero(ledger: Spool, server: FakeOpenAI) -> None:
    with keito.session():
        for _ in client(server).chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True):
            pass
    row = one_session(ledger)
    assert (row["llm_calls"], row["input_tokens"], row["cost_unknown"]) == (1, 0, 1)
    assert row["cost_usd"] is None or row["cost_unknown"]
    [expense] = expenses(ledger)
    assert expense["usage_missing"] == 1 and expense["model"] == MINI


def _cut_stream(server: FakeOpenAI) -> tuple[list[str], BaseException]:
    server.cut = 1
    seen: list[str] = []
    stream = client(server).chat.completions.create(
        model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    with pytest.raises(Exception) as failure:
        seen.extend(ch.id for ch in stream)
    return seen, failure.value


async def test_a_stream_cut_after_output_began_counts_with_usage_missing(ledger: Spool, server: FakeOpenAI) -> None:
    keito_openai.uninstrument()
    bare_seen, bare_error = _cut_stream(server)  # what the client does on its own
    keito_openai.instrument()
    with keito.session():
        seen, error = _cut_stream(server)
        server.cut = 1
        astream = await async_client(server).chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        with pytest.raises(type(bare_error)):
            [ch async for ch in astream]
    assert (type(error), str(error), len(seen)) == (type(bare_error), str(bare_error), len(bare_seen)) == (
        type(bare_error), str(bare_error), 2)
    row = one_session(ledger)
    assert (row["llm_calls"], row["input_tokens"], row["cost_unknown"]) == (2, 0, 1)


def test_responses_plain_streamed_and_the_stream_helper(ledger: Spool, server: FakeOpenAI) -> None:
    c = client(server)
    with keito.session():
        assert c.responses.create(model="o4-mini", input="hi").output_text == "Hello from the fake server"
        events = list(c.responses.create(model="o4-mini", input="hi", stream=True))
        with c.responses.stream(model="o4-mini", input="hi") as helper:
            final = helper.get_final_response()
    assert events[-1].type == "response.completed" and final.usage is not None
    row = assert_billed_as_served(ledger, server, 3)
    [usage] = usage_rows(ledger).values()
    assert (usage["model"], usage["cache_read_tokens"], usage["reasoning_tokens"]) == (O4, 3 * 1024, 3 * 256)
    assert row["cost_usd"] == pytest.approx(float(3 * genai_cost(O4, RESPONSES_USAGE)), abs=1e-9)


async def test_async_responses_and_embeddings(ledger: Spool, server: FakeOpenAI) -> None:
    c = async_client(server)
    with keito.session():
        await c.responses.create(model="o4-mini", input="hi")
        stream = await c.responses.create(model="o4-mini", input="hi", stream=True)
        [event async for event in stream]
        vectors = await c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [v.embedding for v in vectors.data] == [[0.25, -0.5, 1.0]] * 2
    row = assert_billed_as_served(ledger, server, 3)
    rows = usage_rows(ledger)
    assert rows["text-embedding-3-small"]["input_tokens"] == EMBEDDINGS_USAGE["prompt_tokens"]
    expected = 2 * genai_cost(O4, RESPONSES_USAGE) + genai_cost("text-embedding-3-small", EMBEDDINGS_USAGE)
    assert row["cost_usd"] == pytest.approx(float(expected), abs=1e-9)


class Answer(BaseModel):
    answer: int


def test_parse_raw_responses_and_the_chat_stream_helper(ledger: Spool, server: FakeOpenAI) -> None:
    c = client(server)
    with keito.session():
        helpers: Any = c.chat.completions if hasattr(c.chat.completions, "parse") else c.beta.chat.completions
        parsed = helpers.parse(model="gpt-4o-mini", messages=HI, response_format=Answer)  # (beta on openai 1.x)
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        with helpers.stream(
            model="gpt-4o-mini", messages=HI, stream_options={"include_usage": True}
        ) as helper:
            helper.until_done()
        c.embeddings.create(model="text-embedding-3-small", input="a")
    assert parsed.choices[0].message.parsed == Answer(answer=42)
    assert raw.parse() is raw.parse() and raw.parse().usage is not None  # the caller's parse: one object
    assert_billed_as_served(ledger, server, 4)


def test_calls_outside_any_session_are_billed_on_their_own(ledger: Spool, server: FakeOpenAI) -> None:
    client(server).chat.completions.create(model="gpt-4o-mini", messages=HI)
    client(server).responses.create(model="o4-mini", input="hi")
    assert keito.flush(5.0)
    rows = ledger.sessions()
    assert len(rows) == 2 and {r["llm_calls"] for r in rows} == {1}
    assert sum(r["input_tokens"] for r in rows) == 1200 + 1500


def test_inside_track_agent_calls_bill_to_its_session(ledger: Spool, server: FakeOpenAI) -> None:
    c = client(server)

    @keito.track_agent(agent_id="writer")
    def agent() -> str:
        c.chat.completions.create(model="gpt-4o-mini", messages=HI)
        return str(c.responses.create(model="o4-mini", input="hi").output_text)

    assert agent() == "Hello from the fake server"
    row = one_session(ledger)
    assert (row["agent_id"], row["llm_calls"], row["input_tokens"]) == ("writer", 2, 2700)


def test_azure_clients_are_covered_and_priced_as_azure(ledger: Spool, server: FakeOpenAI) -> None:
    azure = openai.AzureOpenAI(
        azure_endpoint=server.base_url.removesuffix("/v1"), api_key="az-test", api_version="2024-10-21",
        max_retries=0,
    )
    with keito.session():
        azure.chat.completions.create(model="my-deployment", messages=HI)
    assert server.requests[0][0].startswith("/openai/deployments/my-deployment/chat/completions")
    [usage] = usage_rows(ledger).values()
    assert (usage["model"], usage["provider"], usage["input_tokens"]) == (MINI, "azure", 1200)
    assert one_session(ledger)["cost_usd"] == pytest.approx(float(genai_cost(MINI, CHAT_USAGE, "azure")), abs=1e-9)
