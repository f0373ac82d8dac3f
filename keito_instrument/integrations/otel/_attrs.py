"""Reading billing facts from span attributes, for every GenAI convention in use. No OpenTelemetry import.

Conventions read (first match wins, so the newest name is tried first):

- OpenTelemetry GenAI semantic conventions, current and older names (`gen_ai.usage.input_tokens` /
  `gen_ai.usage.prompt_tokens`, `gen_ai.provider.name` / `gen_ai.system`, ...).
- OpenInference (Arize Phoenix instrumentors): `openinference.span.kind`, `llm.token_count.*`,
  `llm.model_name`, `llm.provider` / `llm.system`, `session.id`.
- OpenLLMetry (traceloop): `traceloop.span.kind`, `llm.request.type`, `gen_ai.usage.prompt_tokens` /
  `completion_tokens`, `gen_ai.usage.cache_read_input_tokens`, `traceloop.association.properties.*`.
- pydantic-ai / Logfire: the GenAI names plus `gen_ai.usage.details.*`.

The counting rule lives here too (`classify`): only model-call spans carry usage that is billed;
aggregate spans (agent, chain, crew, workflow, task) repeat their children's totals and never count.
A call's identity across layers is the provider's response id (`response_id`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Span roles.
MODEL_CALL = "model_call"  # a leaf call to a model: the only spans whose usage is billed
TOOL = "tool"
AGGREGATE = "aggregate"  # agent, chain, workflow, crew, task: repeats its children's totals
OTHER = "other"  # anything else (HTTP, database, a span from an unknown library)

_MODEL_OPERATIONS = frozenset(
    {"chat", "text_completion", "generate_content", "embeddings", "completion", "embedding", "rerank"}
)
_TOOL_OPERATIONS = frozenset({"execute_tool"})
_AGGREGATE_OPERATIONS = frozenset({"invoke_agent", "create_agent", "invoke_workflow", "retrieval"})

_OI_MODEL_KINDS = frozenset({"LLM", "EMBEDDING"})
_OI_TOOL_KINDS = frozenset({"TOOL"})
# Everything else OpenInference names (CHAIN, AGENT, RETRIEVER, RERANKER, GUARDRAIL, EVALUATOR, ...)
# is treated as an aggregate: it may repeat token totals, it is never a call of its own.

_TRACELOOP_TOOL_KINDS = frozenset({"tool"})

INPUT_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion")
TOTAL_KEYS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total")
CACHE_READ_KEYS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
    "gen_ai.usage.details.cache_read_tokens",
    "gen_ai.usage.details.cache_read_input_tokens",
)
CACHE_WRITE_KEYS = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
    "gen_ai.usage.details.cache_write_tokens",
    "gen_ai.usage.details.cache_creation_input_tokens",
)
REASONING_KEYS = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
    "gen_ai.usage.details.reasoning_tokens",
)
# The rarer kinds, under our (genai-prices') names: no convention names them all yet, so the
# spellings of OpenInference, Anthropic's raw fields and `gen_ai.usage.details.*` are read.
KIND_KEYS: Mapping[str, tuple[str, ...]] = {
    "cache_write_1h_tokens": (
        "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens",
        "gen_ai.usage.details.cache_write_1h_tokens",
        "gen_ai.usage.details.ephemeral_1h_input_tokens",
        "llm.token_count.prompt_details.cache_write_1h",
    ),
    "cache_write_5m_tokens": (
        "gen_ai.usage.cache_creation.ephemeral_5m_input_tokens",
        "gen_ai.usage.details.cache_write_5m_tokens",
        "gen_ai.usage.details.ephemeral_5m_input_tokens",
        "llm.token_count.prompt_details.cache_write_5m",
    ),
    "input_audio_tokens": ("llm.token_count.prompt_details.audio", "gen_ai.usage.details.input_audio_tokens"),
    "input_image_tokens": ("llm.token_count.prompt_details.image", "gen_ai.usage.details.input_image_tokens"),
    "output_audio_tokens": ("llm.token_count.completion_details.audio", "gen_ai.usage.details.output_audio_tokens"),
    "web_searches": ("gen_ai.usage.details.web_searches", "gen_ai.usage.details.web_search_requests"),
}
MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name", "llm.response.model")
PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
SESSION_KEYS = (
    "session.id",
    "gen_ai.conversation.id",
    "traceloop.association.properties.session_id",
    "traceloop.association.properties.thread_id",
    "traceloop.association.properties.conversation_id",
    "langfuse.session.id",
)
# The provider's id of the response: OTel GenAI (the official and OpenLLMetry instrumentors, pydantic-ai).
RESPONSE_ID_KEYS = ("gen_ai.response.id",)
# OpenInference's LangChain LLM span has no id attribute; its `output.value` is the run's LLMResult
# as JSON, whose message `response_metadata` and `llm_output` carry the provider's `id`. Keys of
# that JSON are found by their quoted spelling: inside a JSON string a quote is always escaped, so
# a message's text cannot fake one.
_OUTPUT_ID_KEYS = ('"response_metadata":', '"llm_output":')
_JSON = json.JSONDecoder()
# Baggage entries (W3C baggage travels with the request across services) naming a session.
BAGGAGE_SESSION_KEYS = ("session.id", "gen_ai.conversation.id", "keito.session_id")
_SESSION_KEY_SET = frozenset(SESSION_KEYS)
_DETAIL_KEYS = frozenset(CACHE_READ_KEYS + CACHE_WRITE_KEYS + REASONING_KEYS
                         + tuple(key for keys in KIND_KEYS.values() for key in keys))
_ASSOCIATION_SESSION_KEYS = ("session_id", "thread_id", "conversation_id")  # traceloop context values
_GENAI_PREFIXES = ("gen_ai.", "llm.", "openinference.", "traceloop.")

# Provider spellings seen in spans, mapped to the provider ids the pricing library knows. Names
# not listed pass through lower-cased (the core maps a few more, e.g. `x_ai`, `aws.bedrock`).
PROVIDER_MAP: Mapping[str, str] = {
    "az.ai.inference": "azure",
    "az.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "azure.ai.openai": "azure",
    "azure openai": "azure",
    "azureopenai": "azure",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "aws bedrock": "aws",
    "gcp.gen_ai": "google",
    "gcp.vertex_ai": "google",
    "gcp.gemini": "google",
    "vertex_ai": "google",
    "vertexai": "google",
    "vertex ai": "google",
    "gemini": "google",
    "google-gla": "google",
    "google-vertex": "google",
    "google_genai": "google",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "grok": "x-ai",
    "moonshot": "moonshotai",
    "together ai": "together",
    "together_ai": "together",
    "togetherai": "together",
    "fireworks_ai": "fireworks",
    "fireworks-ai": "fireworks",
    "zhipu": "zhipuai",
}


@dataclass(frozen=True)
class CallUsage:
    """One model call read from a span, in the core's token convention."""

    model: str
    provider: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    usage_missing: bool
    details: Mapping[str, int] | None = None  # 1-hour cache writes, audio, web searches


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def first_text(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first non-empty string among `keys`."""
    for key in keys:
        found = _text(attributes.get(key))
        if found is not None:
            return found
    return None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def first_int(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first integer-like value among `keys` (ints, floats and numeric strings are accepted)."""
    for key in keys:
        value = attributes.get(key)
        if value is None:
            continue  # the common case: most names of a convention are absent
        if type(value) is int:
            return value
        found = _int(value)
        if found is not None:
            return found
    return None


def provider_id(name: str | None) -> str | None:
    """Map a provider name from a span to the id the pricing library knows."""
    if not name:
        return None
    key = name.strip().lower()
    return PROVIDER_MAP.get(key, key) or None


def classify(attributes: Mapping[str, Any]) -> str:
    """The span's role: MODEL_CALL, TOOL, AGGREGATE or OTHER.

    Explicit markers decide: `gen_ai.operation.name`, OpenInference `openinference.span.kind`,
    traceloop `traceloop.span.kind` / `llm.request.type`. A span with no marker is a model call only
    if it names a model and carries token counts and nothing says it is an agent; an aggregate
    that repeats its children's totals is never counted.
    """
    operation = _text(attributes.get("gen_ai.operation.name"))
    if operation is not None:
        operation = operation.lower()
        if operation in _MODEL_OPERATIONS:
            return MODEL_CALL
        if operation in _TOOL_OPERATIONS:
            return TOOL
        return AGGREGATE if operation in _AGGREGATE_OPERATIONS else OTHER
    oi_kind = _text(attributes.get("openinference.span.kind"))
    if oi_kind is not None:
        oi_kind = oi_kind.upper()
        if oi_kind in _OI_MODEL_KINDS:
            return MODEL_CALL
        return TOOL if oi_kind in _OI_TOOL_KINDS else AGGREGATE
    tl_kind = _text(attributes.get("traceloop.span.kind"))
    if tl_kind is not None:
        return TOOL if tl_kind.lower() in _TRACELOOP_TOOL_KINDS else AGGREGATE
    request_type = _text(attributes.get("llm.request.type"))
    if request_type is not None and request_type.lower() in _MODEL_OPERATIONS:
        return MODEL_CALL
    if not is_genai(attributes):
        return OTHER  # the common case for a web app's own spans: one pass over the keys
    if any(type(key) is str and key.startswith("gen_ai.agent.") for key in attributes):
        return AGGREGATE
    if first_text(attributes, MODEL_KEYS) is not None and (
        first_int(attributes, INPUT_KEYS) is not None or first_int(attributes, OUTPUT_KEYS) is not None
    ):
        return MODEL_CALL
    return OTHER


def is_genai(attributes: Mapping[str, Any]) -> bool:
    """Whether the span belongs to any GenAI convention (so its trace is billable agent work).

    Every role marker `classify` reads has one of these prefixes, so a span for which this is
    False is always OTHER: the keys alone decide, nothing is copied.
    """
    for key in attributes:  # noqa: SIM110 - a plain loop: no generator per span on the hot path
        if type(key) is str and key.startswith(_GENAI_PREFIXES):  # (a hand-made span may have other keys)
            return True
    return False


def read_usage(attributes: Mapping[str, Any]) -> CallUsage:
    """The usage of a model-call span.

    `input_tokens` is the whole prompt (cache reads and writes included), as in the GenAI
    conventions, OpenInference and OpenLLMetry; a span that reports only a total gets it as input.
    A model-call span without any token count is still a call: it is flagged `usage_missing`.
    """
    return CallUsage(**_usage_fields(attributes))


def _usage_fields(attributes: Mapping[str, Any]) -> dict[str, Any]:
    input_tokens = first_int(attributes, INPUT_KEYS)
    output_tokens = first_int(attributes, OUTPUT_KEYS)
    missing = input_tokens is None and output_tokens is None
    if missing:
        total = first_int(attributes, TOTAL_KEYS)
        if total is not None:
            input_tokens, missing = total, False
    cache_read = cache_write = reasoning = None
    details: dict[str, int] | None = None
    if not _DETAIL_KEYS.isdisjoint(attributes):  # most calls report no cache or reasoning counts
        cache_read = first_int(attributes, CACHE_READ_KEYS)
        cache_write = first_int(attributes, CACHE_WRITE_KEYS)
        reasoning = first_int(attributes, REASONING_KEYS)
        details = {kind: n for kind, keys in KIND_KEYS.items() if (n := first_int(attributes, keys) or 0) > 0}
    return {
        "model": first_text(attributes, MODEL_KEYS) or "unknown",
        "provider": provider_id(first_text(attributes, PROVIDER_KEYS)),
        "input_tokens": max(0, input_tokens or 0),
        "output_tokens": max(0, output_tokens or 0),
        "cache_read_tokens": max(0, cache_read or 0),
        "cache_write_tokens": max(0, cache_write or 0),
        "reasoning_tokens": max(0, reasoning or 0),
        "usage_missing": missing,
        "details": details or None,
    }


def session_id_from(attributes: Mapping[str, Any] | None) -> str | None:
    """A session id named by span attributes or context values, if any."""
    if not attributes or _SESSION_KEY_SET.isdisjoint(attributes):
        return None  # one scan of the keys: the SDK's mapping raises on every missed lookup
    return first_text(attributes, SESSION_KEYS)


def context_session_id(context: Mapping[str, Any], baggage: Mapping[str, Any]) -> str | None:
    """A session id carried by an OpenTelemetry context (a mapping) or its baggage entries:
    OpenInference `using_session` (`session.id`), traceloop association properties, baggage."""
    found = _text(context.get("session.id"))
    if found is not None:
        return found
    props = context.get("association_properties")
    if isinstance(props, Mapping):
        found = first_text(props, _ASSOCIATION_SESSION_KEYS)
        if found is not None:
            return found
    return first_text(baggage, BAGGAGE_SESSION_KEYS) if baggage else None


def response_id(attributes: Mapping[str, Any]) -> str | None:
    """The provider's id of a model call's response, if the span carries it.

    `gen_ai.response.id`; for an OpenInference LLM span (no such attribute), the `id` in the
    first message's `response_metadata` or in `llm_output` of its `output.value` (LangChain's
    result as JSON; absent when outputs are hidden or a stream reported none).
    """
    found = first_text(attributes, RESPONSE_ID_KEYS)
    if found is not None:
        return found
    output = attributes.get("output.value")
    if type(output) is not str or _text(attributes.get("openinference.span.kind")) != "LLM":
        return None
    for key in _OUTPUT_ID_KEYS:
        at = output.find(key) if key == _OUTPUT_ID_KEYS[0] else output.rfind(key)
        if at < 0:
            continue
        at += len(key)
        while at < len(output) and output[at] in " \t\n\r":
            at += 1
        try:
            value, _ = _JSON.raw_decode(output, at)  # that one object, not the whole output
        except ValueError:
            continue
        if isinstance(value, dict):
            found = _text(value.get("id"))
            if found is not None:
                return found
    return None


def model_names(attributes: Mapping[str, Any]) -> frozenset[str]:
    """Every model name the span gives (request and response model, OpenInference's name): two
    libraries reporting one call may name it differently (`gpt-4o-mini`, `gpt-4o-mini-2024-07-18`)."""
    return frozenset(name for key in MODEL_KEYS if (name := _text(attributes.get(key))) is not None)


def call_kwargs(attributes: Mapping[str, Any], span_id: int) -> dict[str, Any]:
    """The arguments of `record_llm_call` for a model-call span (its span id is the call id)."""
    fields = _usage_fields(attributes)
    fields["call_id"] = f"{span_id:016x}"
    fields.update(fields.pop("details") or ())
    return fields
