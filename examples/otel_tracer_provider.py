"""Bill any OpenTelemetry-instrumented agent: add KeitoSpanProcessor to your TracerProvider. Runs offline.

    python examples/otel_tracer_provider.py

Whatever emits GenAI spans (OpenInference, OpenLLMetry, Logfire / pydantic-ai, the official
`opentelemetry-instrumentation-*` GenAI packages) is billed: one session per trace, or per
`session.id` / `gen_ai.conversation.id` across traces. Here the spans are made by hand with the
GenAI semantic conventions, exactly as an instrumentor would emit them, so no model or key is
needed. With no Keito credentials the records stay in the local ledger (KEITO_LEDGER).
"""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import keito_instrument as keito
from keito_instrument.integrations.otel import KeitoSpanProcessor

keito.configure(project_id="proj-demo", task_id="task-agent-work", expense_category_id="cat-llm-usage")

provider = TracerProvider()
provider.add_span_processor(KeitoSpanProcessor(agent_id="research-agent", agent_type="otel-demo"))
exported = InMemorySpanExporter()  # stands in for your usual exporter (OTLP, Phoenix, Langfuse ...)
provider.add_span_processor(SimpleSpanProcessor(exported))
tracer = provider.get_tracer("example.agent")


def model_call(
    model: str, provider_name: str, input_tokens: int, output_tokens: int, cache_read: int = 0
) -> None:
    """One leaf model-call span, as an instrumented client library would emit it."""
    with tracer.start_as_current_span(f"chat {model}") as span:
        time.sleep(0.02)  # the provider round trip
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider_name,
                "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "gen_ai.usage.cache_read.input_tokens": cache_read,
            }
        )


def research(question: str, conversation_id: str | None = None) -> None:
    """An agent run: the root span is the agent; it repeats its calls' totals, which are not re-billed."""
    start_attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "research"}
    if conversation_id:
        start_attributes["gen_ai.conversation.id"] = conversation_id
    with tracer.start_as_current_span("invoke_agent research", attributes=start_attributes) as agent:
        model_call("gpt-4o-mini", "openai", 1200, 150, cache_read=1000)
        with tracer.start_as_current_span("execute_tool web_search") as tool:
            tool.set_attribute("gen_ai.operation.name", "execute_tool")
            time.sleep(0.01)
        model_call("claude-sonnet-4-5", "anthropic", 2400, 380)
        agent.set_attributes({"gen_ai.usage.input_tokens": 3600, "gen_ai.usage.output_tokens": 530})
    print(f"answered {question!r}")


def main() -> None:
    research("What changed in the Q3 numbers?")  # one trace: one session, ended with its root span
    # Two turns of one conversation: one session across two traces, the gap between them not billed.
    research("Summarise the contract", conversation_id="conv-2026-11-22")
    time.sleep(0.1)
    research("And the renewal terms?", conversation_id="conv-2026-11-22")
    keito.end_session("conv-2026-11-22")  # or let it close after idle_timeout

    provider.shutdown()
    keito.shutdown(timeout=5.0)
    print(f"{len(exported.get_finished_spans())} spans exported as usual")

    from keito_instrument.cli import main as cli

    cli(["report", "--by", "agent"])  # the same report as `keito-instrument report --by agent`


if __name__ == "__main__":
    main()
