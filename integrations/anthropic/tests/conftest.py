"""Fixtures of the Anthropic integration tests: a local fake Messages API and real SDK clients.

Every test runs with the integration instrumented (and uninstrumented after it), against a
`FakeAnthropic` on 127.0.0.1; the clients are the SDK's own `Anthropic` / `AsyncAnthropic` with
`base_url` pointed at it, a fake key and no retries. The root conftest refuses any connection
beyond loopback.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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


def expenses(ledger: Spool) -> list[dict[str, Any]]:
    """The metadata of every expense the ledger holds."""
    return [r["payload"]["metadata"] for r in ledger.records() if r["kind"] == "expense"]


# -- what the user sees, with and without the hook ------------------------------------------------
Outcome = tuple[str, Any]


def blank_ids(value: Any) -> Any:
    """`value` with the message ids blanked (the server numbers its messages), models as dicts."""
    if isinstance(value, list | tuple):
        return [blank_ids(v) for v in value]
    if isinstance(value, dict):
        return {k: "<id>" if k == "id" else blank_ids(v) for k, v in value.items()}
    if isinstance(value, str | bytes):
        return re.sub(r"msg_\w+" if isinstance(value, str) else rb"msg_\w+",
                      "<id>" if isinstance(value, str) else b"<id>", value)
    if hasattr(value, "to_dict"):
        return blank_ids(value.to_dict())
    return value


def _raised(exc: Exception) -> Outcome:
    details = (getattr(exc, "status_code", None), getattr(exc, "body", None), getattr(exc, "request_id", None))
    return "raised", (type(exc), str(exc), details)


def outcome(action: Callable[[], Any]) -> Outcome:
    """What the user sees: the value (ids blanked) or the exception's type, text and details."""
    try:
        value = action()
    except Exception as exc:
        return _raised(exc)
    return "returned", blank_ids(value)


async def aoutcome(action: Callable[[], Awaitable[Any]]) -> Outcome:
    try:
        value = await action()
    except Exception as exc:
        return _raised(exc)
    return "returned", blank_ids(value)


def with_and_without(action: Callable[[], Any]) -> tuple[Outcome, Outcome]:
    """`action`'s outcome without the hook, then with it."""
    keito_anthropic.uninstrument()
    bare = outcome(action)
    keito_anthropic.instrument()
    return bare, outcome(action)


async def awith_and_without(action: Callable[[], Awaitable[Any]]) -> tuple[Outcome, Outcome]:
    keito_anthropic.uninstrument()
    bare = await aoutcome(action)
    keito_anthropic.instrument()
    return bare, await aoutcome(action)
