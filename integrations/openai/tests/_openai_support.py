"""Helpers of the OpenAI client tests: real clients for the fake server and the bill's oracle."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
from _fake_server import FakeOpenAI
from genai_prices import Usage, calc_price

import keito_instrument as keito
from keito_instrument._spool import Spool


def client(server: FakeOpenAI, **kwargs: Any) -> openai.OpenAI:
    """A real sync client for the fake server (no retries: a failure is seen as it is)."""
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10, **kwargs)


def async_client(server: FakeOpenAI, **kwargs: Any) -> openai.AsyncOpenAI:
    """A real async client for the fake server."""
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10, **kwargs)


def served_totals(server: FakeOpenAI) -> tuple[int, int, int, int]:
    """(input, output, cache read, reasoning) tokens the server reported, in either API's shape."""
    totals = [0, 0, 0, 0]
    for usage in server.served:
        inp = usage.get("prompt_tokens", usage.get("input_tokens", 0))
        out = usage.get("completion_tokens", usage.get("output_tokens", 0))
        ins = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        outs = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
        for i, n in enumerate((inp, out, ins.get("cached_tokens", 0), outs.get("reasoning_tokens", 0))):
            totals[i] += n
    return totals[0], totals[1], totals[2], totals[3]


def genai_cost(model: str, usage: dict[str, Any], provider: str = "openai") -> Decimal:
    """What genai-prices charges for one call with this usage block (the server's own)."""
    inp = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    priced = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=details.get("cached_tokens") or None)
    return calc_price(priced, model, provider_id=provider).total_price


def one_session(ledger: Spool) -> dict[str, Any]:
    """The single session row stored (after flushing)."""
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    return dict(row)


def usage_rows(ledger: Spool) -> dict[str, dict[str, Any]]:
    """Usage rows by model."""
    return {row["model"]: dict(row) for row in ledger.usage()}


def expenses(ledger: Spool) -> list[dict[str, Any]]:
    """The metadata of every expense record."""
    return [r["payload"]["metadata"] for r in ledger.records() if r["kind"] == "expense"]
