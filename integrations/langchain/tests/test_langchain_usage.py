"""The pure usage helpers: every provider shape normalised (input includes cache, output reasoning)."""

from __future__ import annotations

import asyncio

from keito_instrument.integrations.langchain._usage import (
    CallUsage,
    from_llm_output,
    from_usage_metadata,
    marks_cache_hits,
    model_name,
    not_a_failure,
    replayed,
    session_id_from,
    stopped,
    with_overrides,
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


def test_replayed_compares_only_langchains_own_message_ids() -> None:
    assert replayed("lc_run--aaaa", "bbbb") and replayed("run-aaaa-0", "bbbb")  # named after another run
    assert not replayed("lc_run--aaaa", "aaaa") and not replayed("run-aaaa-0", "aaaa")  # this run's own
    assert not replayed("chatcmpl-123", "bbbb") and not replayed(None, "bbbb")  # provider ids say nothing


def test_marks_cache_hits_reads_the_converter() -> None:
    from langchain_core.language_models.chat_models import BaseChatModel

    def marking(cached: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{**c, "total_cost": 0} for c in cached]

    assert marks_cache_hits(marking)
    assert not marks_cache_hits(lambda cached: cached) and not marks_cache_hits(None)
    converter = getattr(BaseChatModel, "_convert_cached_generations", None)
    # langchain-core releases that mark cache hits do it in this converter; older ones have none
    assert marks_cache_hits(converter) is (converter is not None)


def test_overrides_and_control_flow() -> None:
    settings = {"project_id": "p", "task_id": "t"}
    assert with_overrides(settings, {"keito_task_id": "t2", "keito_agent_id": ""}) == {
        "project_id": "p",
        "task_id": "t2",
    }
    assert with_overrides(settings, None) is settings

    class GraphInterrupt(Exception):
        pass

    class Subclassed(GraphInterrupt):
        pass

    assert not_a_failure(Subclassed()) and not_a_failure(GeneratorExit())
    assert stopped(asyncio.CancelledError()) and not not_a_failure(ValueError())
