"""The pure usage helpers: every provider shape normalised (input includes cache, output reasoning)."""

from __future__ import annotations

from keito_instrument.integrations._langchain_usage import (
    CallUsage,
    from_llm_output,
    from_usage_metadata,
    model_name,
    session_id_from,
)


def test_usage_metadata_with_details() -> None:
    got = from_usage_metadata(
        {
            "input_tokens": 100,
            "output_tokens": 40,
            "total_tokens": 140,
            "input_token_details": {"cache_read": 60, "cache_creation": 10, "audio": 0},
            "output_token_details": {"reasoning": 25},
        }
    )
    assert got == CallUsage(100, 40, 60, 10, 25, cached=False, missing=False)


def test_cache_hit_marker() -> None:
    assert from_usage_metadata({"input_tokens": 5, "output_tokens": 1, "total_cost": 0}).cached
    assert not from_usage_metadata({"input_tokens": 5, "output_tokens": 1, "total_cost": 0.2}).cached


def test_openai_token_usage() -> None:
    got = from_llm_output(
        {
            "token_usage": {
                "prompt_tokens": 30,
                "completion_tokens": 9,
                "total_tokens": 39,
                "prompt_tokens_details": {"cached_tokens": 12},
                "completion_tokens_details": {"reasoning_tokens": 4},
            }
        }
    )
    assert got == CallUsage(30, 9, 12, 0, 4)


def test_anthropic_usage_adds_cache_back() -> None:
    got = from_llm_output(
        {
            "usage": {
                "input_tokens": 5,
                "output_tokens": 7,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 20,
            }
        }
    )
    assert got == CallUsage(125, 7, 100, 20, 0)
    assert from_llm_output({"usage": {"input_tokens": 5, "output_tokens": 7}}) == CallUsage(5, 7)


def test_no_usage_block() -> None:
    assert from_llm_output(None) is None
    assert from_llm_output({}) is None
    assert from_llm_output({"token_usage": {}}) is None
    assert from_llm_output({"usage": {"weird": 1}}) is None


def test_bad_values_are_zero() -> None:
    got = from_usage_metadata({"input_tokens": -3, "output_tokens": True, "input_token_details": "x"})
    assert got == CallUsage(0, 0, 0, 0, 0)


def test_model_name_order() -> None:
    assert model_name(None, {"model": "claude"}, {"model_name": "gpt"}) == "claude"
    assert model_name({"model_name": ""}, {"model_id": "m"}) == "m"
    assert model_name({}, None) is None


def test_session_id_order() -> None:
    assert session_id_from({"thread_id": "t", "session_id": "s"}) == "s"
    assert session_id_from({"thread_id": 7}) == "7"
    assert session_id_from({"keito_session_id": "k", "session_id": "s"}) == "k"
    assert session_id_from({"session_id": ""}) is None
    assert session_id_from(None) is None
