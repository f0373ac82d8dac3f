"""The pure attribute reader: every convention, the counting rule's span roles, provider names."""

from __future__ import annotations

from typing import Any

import pytest

from keito_instrument.integrations.otel import _attrs as a


@pytest.mark.parametrize(
    ("attributes", "role"),
    [
        ({"gen_ai.operation.name": "chat"}, a.MODEL_CALL),
        ({"gen_ai.operation.name": "text_completion"}, a.MODEL_CALL),
        ({"gen_ai.operation.name": "generate_content"}, a.MODEL_CALL),
        ({"gen_ai.operation.name": "embeddings"}, a.MODEL_CALL),
        ({"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 9}, a.AGGREGATE),
        ({"gen_ai.operation.name": "invoke_workflow", "gen_ai.usage.input_tokens": 9}, a.AGGREGATE),
        ({"gen_ai.operation.name": "create_agent"}, a.AGGREGATE),
        ({"gen_ai.operation.name": "execute_tool"}, a.TOOL),
        ({"gen_ai.operation.name": "something_new"}, a.OTHER),
        ({"openinference.span.kind": "LLM"}, a.MODEL_CALL),
        ({"openinference.span.kind": "EMBEDDING"}, a.MODEL_CALL),
        ({"openinference.span.kind": "TOOL"}, a.TOOL),
        ({"openinference.span.kind": "CHAIN", "llm.token_count.prompt": 50}, a.AGGREGATE),
        ({"openinference.span.kind": "AGENT", "llm.token_count.prompt": 50}, a.AGGREGATE),
        ({"traceloop.span.kind": "workflow", "gen_ai.usage.prompt_tokens": 5}, a.AGGREGATE),
        ({"traceloop.span.kind": "agent"}, a.AGGREGATE),
        ({"traceloop.span.kind": "tool"}, a.TOOL),
        ({"llm.request.type": "chat", "gen_ai.system": "OpenAI"}, a.MODEL_CALL),
        ({"llm.request.type": "embedding"}, a.MODEL_CALL),
        # No marker: a model name plus token counts is a call, unless it is an agent's summary.
        ({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 3}, a.MODEL_CALL),
        (
            {"gen_ai.agent.name": "x", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 3},
            a.AGGREGATE,
        ),
        ({"gen_ai.usage.input_tokens": 3}, a.OTHER),
        ({"http.method": "GET"}, a.OTHER),
        ({}, a.OTHER),
    ],
)
def test_classify(attributes: dict[str, Any], role: str) -> None:
    assert a.classify(attributes) == role


def test_read_usage_genai_semconv_current_names() -> None:
    usage = a.read_usage(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "aws.bedrock",
            "gen_ai.request.model": "claude-requested",
            "gen_ai.response.model": "claude-served",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 200,
            "gen_ai.usage.cache_read.input_tokens": 300,
            "gen_ai.usage.cache_creation.input_tokens": 100,
            "gen_ai.usage.reasoning.output_tokens": 50,
        }
    )
    assert usage == a.CallUsage("claude-served", "aws", 1000, 200, 300, 100, 50, False)


def test_read_usage_older_semconv_names() -> None:
    usage = a.read_usage(
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.prompt_tokens": "12",
            "gen_ai.usage.completion_tokens": 7.0,
        }
    )
    assert (usage.model, usage.provider, usage.input_tokens, usage.output_tokens) == (
        "gpt-4o",
        "openai",
        12,
        7,
    )


def test_read_usage_openinference() -> None:
    usage = a.read_usage(
        {
            "llm.model_name": "gpt-4o-mini",
            "llm.provider": "xai",
            "llm.system": "openai",
            "llm.token_count.prompt": 40,
            "llm.token_count.completion": 9,
            "llm.token_count.total": 49,
            "llm.token_count.prompt_details.cache_read": 10,
            "llm.token_count.prompt_details.cache_write": 5,
            "llm.token_count.completion_details.reasoning": 4,
        }
    )
    assert usage == a.CallUsage("gpt-4o-mini", "x-ai", 40, 9, 10, 5, 4, False)


def test_read_usage_openllmetry() -> None:
    usage = a.read_usage(
        {
            "llm.request.type": "chat",
            "gen_ai.system": "Anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.usage.prompt_tokens": 500,
            "gen_ai.usage.completion_tokens": 60,
            "gen_ai.usage.cache_read_input_tokens": 200,
            "gen_ai.usage.cache_creation_input_tokens": 100,
            "llm.usage.total_tokens": 560,
        }
    )
    assert usage == a.CallUsage("claude-sonnet-4-5", "anthropic", 500, 60, 200, 100, 0, False)


def test_read_usage_total_only_and_missing() -> None:
    embedded = a.read_usage({"llm.request.type": "embedding", "llm.usage.total_tokens": 33})
    assert (embedded.input_tokens, embedded.output_tokens, embedded.usage_missing) == (33, 0, False)
    missing = a.read_usage({"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"})
    assert missing.usage_missing and missing.input_tokens == 0 and missing.model == "m"
    assert a.read_usage({}).model == "unknown"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        (5.9, 5),
        ("7", 7),
        (" 8 ", 8),
        ("x", None),
        (True, None),
        (float("nan"), None),
        ("inf", None),
        (None, None),
        ([1], None),
    ],
)
def test_first_int_accepts_only_numbers(value: object, expected: int | None) -> None:
    assert a.first_int({"k": value}, ("k",)) == expected


def test_negative_counts_are_zero() -> None:
    usage = a.read_usage(
        {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": -5, "gen_ai.usage.output_tokens": 3}
    )
    assert (usage.input_tokens, usage.output_tokens) == (0, 3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gcp.vertex_ai", "google"),
        ("gcp.gemini", "google"),
        ("google-gla", "google"),
        ("Vertex AI", "google"),
        ("azure.ai.openai", "azure"),
        ("Azure OpenAI", "azure"),
        ("az.ai.inference", "azure"),
        ("mistral_ai", "mistral"),
        ("MistralAI", "mistral"),
        ("x_ai", "x-ai"),
        ("moonshot", "moonshotai"),
        ("Together AI", "together"),
        ("OpenAI", "openai"),
        ("groq", "groq"),
        ("", None),
        (None, None),
    ],
)
def test_provider_id(name: str | None, expected: str | None) -> None:
    assert a.provider_id(name) == expected


def test_session_id_from_each_convention() -> None:
    assert a.session_id_from({"session.id": "s-1"}) == "s-1"
    assert a.session_id_from({"gen_ai.conversation.id": "c-1"}) == "c-1"
    assert a.session_id_from({"traceloop.association.properties.session_id": "t-1"}) == "t-1"
    assert a.session_id_from({"session.id": "  "}) is None
    assert a.session_id_from(None) is None


def test_is_genai() -> None:
    assert a.is_genai({"llm.model_name": "x"})
    assert a.is_genai({"gen_ai.system": "openai"})
    assert not a.is_genai({"http.route": "/chat", "session.id": "x"})


# -- the names above, checked against the conventions' own published constants ------------------------
# (the semantic-conventions packages installed beside the SDK), so a renamed attribute cannot go unseen.


def _current_semconv() -> None:
    """These checks read the conventions' own constants: they need a release that publishes the
    names we read first (the oldest supported SDK's conventions predate some of them)."""
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as G

    if not hasattr(G, "GenAiProviderNameValues"):
        pytest.skip("opentelemetry-semantic-conventions older than gen_ai.provider.name")


def test_attribute_names_are_the_published_ones() -> None:
    _current_semconv()
    from openinference.semconv.trace import SpanAttributes as OI
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as G

    assert a.INPUT_KEYS[:2] == (G.GEN_AI_USAGE_INPUT_TOKENS, G.GEN_AI_USAGE_PROMPT_TOKENS)
    assert a.OUTPUT_KEYS[:2] == (G.GEN_AI_USAGE_OUTPUT_TOKENS, G.GEN_AI_USAGE_COMPLETION_TOKENS)
    assert a.CACHE_READ_KEYS[0] == G.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
    assert a.CACHE_WRITE_KEYS[0] == G.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
    assert a.REASONING_KEYS[0] == G.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS
    assert a.MODEL_KEYS[:2] == (G.GEN_AI_RESPONSE_MODEL, G.GEN_AI_REQUEST_MODEL)
    assert a.PROVIDER_KEYS[:2] == (G.GEN_AI_PROVIDER_NAME, G.GEN_AI_SYSTEM)
    assert G.GEN_AI_CONVERSATION_ID in a.SESSION_KEYS
    assert OI.LLM_TOKEN_COUNT_PROMPT in a.INPUT_KEYS and OI.LLM_TOKEN_COUNT_COMPLETION in a.OUTPUT_KEYS
    assert OI.LLM_TOKEN_COUNT_TOTAL in a.TOTAL_KEYS
    assert OI.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_READ in a.CACHE_READ_KEYS
    assert OI.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_WRITE in a.CACHE_WRITE_KEYS
    assert OI.LLM_TOKEN_COUNT_COMPLETION_DETAILS_REASONING in a.REASONING_KEYS
    assert OI.LLM_MODEL_NAME in a.MODEL_KEYS and OI.LLM_PROVIDER in a.PROVIDER_KEYS
    assert OI.SESSION_ID in a.SESSION_KEYS
    assert a.RESPONSE_ID_KEYS == (G.GEN_AI_RESPONSE_ID,)


def test_every_published_operation_and_span_kind_has_a_role() -> None:
    _current_semconv()
    from openinference.semconv.trace import OpenInferenceSpanKindValues
    from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import GenAiOperationNameValues

    roles = {op.value: a.classify({"gen_ai.operation.name": op.value}) for op in GenAiOperationNameValues}
    assert a.OTHER not in roles.values()  # none falls through to OTHER (never counted)
    assert {op for op, role in roles.items() if role == a.MODEL_CALL} == {
        "chat",
        "generate_content",
        "text_completion",
        "embeddings",
    }
    kinds = {k.value: a.classify({"openinference.span.kind": k.value}) for k in OpenInferenceSpanKindValues}
    assert a.OTHER not in kinds.values()  # none falls through to OTHER (never counted)
    assert {k for k, role in kinds.items() if role == a.MODEL_CALL} == {"LLM", "EMBEDDING"}


# Published provider names with no provider in genai-prices 0.2.3 at all (priced by model name alone).
_UNPRICED_PROVIDERS = {"ibm.watsonx.ai", "ollama", "oracle"}


def test_every_published_provider_name_maps_to_a_pricing_provider() -> None:
    _current_semconv()
    from genai_prices import data
    from openinference.semconv.trace import OpenInferenceLLMProviderValues, OpenInferenceLLMSystemValues
    from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
        GenAiProviderNameValues,
        GenAiSystemValues,
    )

    from keito_instrument._pricing import normalise_provider

    known = {provider.id for provider in data.providers}
    published = {
        v.value
        for values in (
            GenAiProviderNameValues,
            GenAiSystemValues,
            OpenInferenceLLMProviderValues,
            OpenInferenceLLMSystemValues,
        )
        for v in values
    }
    # Traceloop's display names, as OpenLLMetry's instrumentations write `gen_ai.system`.
    published |= {"OpenAI", "Anthropic", "MistralAI", "Vertex AI", "Together AI", "AWS Bedrock", "Azure OpenAI"}
    unmapped = {name for name in published if normalise_provider(a.provider_id(name)) not in known}
    assert unmapped == _UNPRICED_PROVIDERS
    assert set(a.PROVIDER_MAP.values()) <= known  # every mapping points at a real pricing provider


def _langchain_output(message: dict[str, Any], llm_output: dict[str, Any] | None) -> str:
    """`output.value` as OpenInference writes it for a LangChain LLM run (the LLMResult as JSON)."""
    import json

    generation = {"text": "hi", "type": "ChatGeneration", "message": {"lc": 1, "type": "constructor",
                  "id": ["langchain", "schema", "messages", "AIMessage"], "kwargs": message}}
    return json.dumps({"generations": [[generation]], "llm_output": llm_output, "run": None, "type": "LLMResult"})


@pytest.mark.parametrize(
    ("attributes", "found"),
    [
        ({"gen_ai.response.id": "chatcmpl-1", "gen_ai.operation.name": "chat"}, "chatcmpl-1"),
        ({"gen_ai.response.id": "  "}, None),
        ({"openinference.span.kind": "LLM", "output.value": _langchain_output(
            {"content": "x", "response_metadata": {"id": "chatcmpl-2", "model_name": "m"}, "id": "lc_run--1"},
            {"id": "chatcmpl-2"})}, "chatcmpl-2"),
        ({"openinference.span.kind": "LLM", "output.value": _langchain_output(  # only llm_output names it
            {"content": "x", "response_metadata": {}, "id": "lc_run--1"}, {"id": "msg_3"})}, "msg_3"),
        # A stream that reported no id: LangChain's own message id is not the provider's.
        ({"openinference.span.kind": "LLM", "output.value": _langchain_output(
            {"content": "x", "response_metadata": {"model_name": "m"}, "id": "lc_run--1"}, None)}, None),
        # A reply quoting the keys: inside a JSON string they are escaped, never taken for keys.
        ({"openinference.span.kind": "LLM", "output.value": _langchain_output(
            {"content": '"response_metadata": {"id": "fake"} "llm_output": {"id": "fake"}', "response_metadata": {}},
            None)}, None),
        ({"openinference.span.kind": "LLM", "output.value": "__REDACTED__"}, None),  # outputs hidden
        ({"openinference.span.kind": "CHAIN", "output.value": _langchain_output(
            {"response_metadata": {"id": "chatcmpl-4"}}, None)}, None),  # only a model call's own
        ({"openinference.span.kind": "LLM", "output.value": '{"llm_output": {"id": '}, None),  # cut short
    ],
)
def test_response_id(attributes: dict[str, Any], found: str | None) -> None:
    assert a.response_id(attributes) == found
