"""Real usage shapes, priced call by call: our reading of each provider's usage block, priced by
our pricing path, against genai-prices' own extractor and calculator for the same response."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

import keito_instrument as keito
from keito_instrument._pricing import price
from keito_instrument._provider_usage import usage_kwargs
from keito_instrument._spool import Spool
from keito_instrument._usage import normalised_call

SHAPES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "corpus" / "usage_shapes.json").read_text())
_TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def model_of(response: dict[str, Any]) -> str:
    return str(response.get("model") or response.get("modelVersion") or response.get("modelId"))


def reference(shape: dict[str, Any]) -> tuple[Decimal, Any]:
    response = {**shape["response"], "model": model_of(shape["response"])}  # (where genai-prices looks)
    extracted = genai_prices.extract_usage(response, provider_id=shape["provider"],
                                           api_flavor=shape["flavor"])
    return Decimal(extracted.calc_price().total_price), extracted.usage


def ours(shape: dict[str, Any]) -> dict[str, int]:
    response = shape["response"]
    found = usage_kwargs(response.get("usage") or response.get("usageMetadata"))
    assert found is not None, shape["name"]
    return found


@pytest.mark.parametrize("shape", SHAPES, ids=[s["name"] for s in SHAPES])
def test_each_shape_is_read_and_priced_as_genai_prices_does(shape: dict[str, Any]) -> None:
    want, their_usage = reference(shape)
    kwargs = ours(shape)
    usage = normalised_call(model_of(shape["response"]), shape["provider"],
                            details={k: v for k, v in kwargs.items() if k not in _TOKEN_KEYS},
                            **{k: v for k, v in kwargs.items() if k in _TOKEN_KEYS})
    assert usage.input_tokens == their_usage.input_tokens
    assert usage.output_tokens == their_usage.output_tokens
    assert usage.cache_read_tokens == (their_usage.cache_read_tokens or 0)
    assert usage.cache_write_tokens == (their_usage.cache_write_tokens or 0)
    got = price(usage).usd
    assert got is not None
    assert abs(got - want) <= Decimal("1e-9"), (shape["name"], got, want)


def test_the_whole_corpus_billed_through_the_engine_is_the_sum_of_its_calls(ledger: Spool) -> None:
    with keito.session(session_id="corpus"):
        for shape in SHAPES:
            keito.record_llm_call(model_of(shape["response"]), shape["provider"], **ours(shape))
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    want = sum((reference(shape)[0] for shape in SHAPES), Decimal(0))
    assert row["llm_calls"] == len(SHAPES)
    assert row["cost_usd"] == pytest.approx(float(want), abs=1e-6)
