"""Fixtures of the Anthropic integration tests: a local fake Messages API and real SDK clients.

Every test runs with the integration instrumented (and uninstrumented after it), against a
`FakeAnthropic` on 127.0.0.1; the clients are the SDK's own `Anthropic` / `AsyncAnthropic` with
`base_url` pointed at it, a fake key and no retries. The root conftest refuses any connection
beyond loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("anthropic")

import anthropic
from _fake_anthropic import FakeAnthropic

from keito_instrument._spool import Spool
from keito_instrument.integrations import anthropic as keito_anthropic

MODEL = "claude-sonnet-4-5"
# Whether this SDK's own accumulator (`get_final_message()`) applies the cumulative input and cache
# counts of `message_delta` (newer SDKs); older ones keep the start's. Keito applies them either way.
SDK_APPLIES_DELTA_TOTALS = "input_tokens" in getattr(anthropic.types.MessageDeltaUsage, "model_fields", {})


@pytest.fixture(autouse=True)
def _instrumented() -> Iterator[None]:
    keito_anthropic.instrument()
    yield
    keito_anthropic.uninstrument()


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def client(server: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="fake-key", max_retries=0) as sync_client:
        yield sync_client


@pytest.fixture
async def aclient(server: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="fake-key", max_retries=0) as async_client:
        yield async_client


def ask(**extra: Any) -> dict[str, Any]:
    """The arguments of one small Messages request."""
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **extra}


def billed(ledger: Spool) -> dict[str, int]:
    """What keito billed, summed over the ledger's usage rows (the same keys as `FakeAnthropic.totals`)."""
    out = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
           "cache_write_1h_tokens": 0, "web_searches": 0}
    import json

    for row in ledger.usage():
        details = json.loads(row["details"] or "{}")
        out["calls"] += row["llm_calls"]
        for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            out[key] += row[key]
        out["cache_write_1h_tokens"] += details.get("cache_write_1h_tokens", 0)
        out["web_searches"] += details.get("web_searches", 0)
    return out
