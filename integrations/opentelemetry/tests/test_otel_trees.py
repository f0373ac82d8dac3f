"""Hand-built GenAI span trees in each convention, on a real TracerProvider: counted once, per trace."""

from __future__ import annotations

from typing import Any

from _otel_fakes import Otel
from opentelemetry.trace import Status, StatusCode

from keito_instrument._spool import Spool


def expense_meta(ledger: Spool, session_id: str) -> dict[str, Any]:
    [expense] = [r for r in ledger.records(session_id=session_id) if r["kind"] == "expense"]
    meta: dict[str, Any] = expense["payload"]["metadata"]
    return meta


def test_genai_semconv_tree_counts_only_model_calls(otel: Otel, ledger: Spool) -> None:
    tracer = otel.tracer
    with tracer.start_as_current_span("invoke_agent support") as root:
        # The agent span repeats its children's totals: it must never be added again.
        root.set_attributes(
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "support",
                "gen_ai.usage.input_tokens": 3000,
                "gen_ai.usage.output_tokens": 500,
            }
        )
        with tracer.start_as_current_span("chat gpt-4o") as llm:
            llm.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.response.model": "gpt-4o-2024-08-06",
                    "gen_ai.usage.input_tokens": 1000,
                    "gen_ai.usage.output_tokens": 200,
                    "gen_ai.usage.cache_read.input_tokens": 400,
                    "gen_ai.usage.cache_creation.input_tokens": 100,
                    "gen_ai.usage.reasoning.output_tokens": 50,
                }
            )
        with tracer.start_as_current_span("execute_tool lookup") as tool:
            tool.set_attribute("gen_ai.operation.name", "execute_tool")
        with tracer.start_as_current_span("chat gpt-4o") as llm:
            llm.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.response.model": "gpt-4o-2024-08-06",
                    "gen_ai.usage.input_tokens": 2000,
                    "gen_ai.usage.output_tokens": 300,
                }
            )
        trace_hex = f"{root.get_span_context().trace_id:032x}"

    [row] = ledger.sessions()
    assert row["session_id"] == trace_hex
    assert (row["llm_calls"], row["tool_calls"], row["errors"]) == (2, 1, 0)
    assert (row["input_tokens"], row["output_tokens"]) == (3000, 500)
    assert row["framework"] == "otel" and row["agent_id"] == "otel-agent"
    meta = expense_meta(ledger, trace_hex)
    assert (meta["cache_read_tokens"], meta["cache_write_tokens"], meta["reasoning_tokens"]) == (400, 100, 50)
    [usage] = ledger.usage()
    assert (usage["model"], usage["provider"]) == ("gpt-4o-2024-08-06", "openai")
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    assert otel.processor.open_traces == 0


def test_openinference_tree_ignores_chain_and_agent_totals(otel: Otel, ledger: Spool) -> None:
    tracer = otel.tracer
    with tracer.start_as_current_span("RunnableSequence") as root:
        root.set_attributes(
            {
                "openinference.span.kind": "CHAIN",
                "llm.token_count.prompt": 90,
                "llm.token_count.completion": 30,
            }
        )
        with tracer.start_as_current_span("AgentExecutor") as agent:
            agent.set_attributes(
                {
                    "openinference.span.kind": "AGENT",
                    "llm.token_count.prompt": 90,
                    "llm.token_count.completion": 30,
                }
            )
            for prompt, completion in ((40, 10), (50, 20)):
                with tracer.start_as_current_span("ChatAnthropic") as llm:
                    llm.set_attributes(
                        {
                            "openinference.span.kind": "LLM",
                            "llm.model_name": "claude-haiku-4-5",
                            "llm.provider": "anthropic",
                            "llm.token_count.prompt": prompt,
                            "llm.token_count.completion": completion,
                            "llm.token_count.prompt_details.cache_read": 20,
                        }
                    )
            with tracer.start_as_current_span("search") as tool:
                tool.set_attribute("openinference.span.kind", "TOOL")

    [row] = ledger.sessions()
    assert (row["llm_calls"], row["tool_calls"], row["input_tokens"], row["output_tokens"]) == (2, 1, 90, 30)
    [usage] = ledger.usage()
    assert (usage["model"], usage["provider"], usage["cache_read_tokens"]) == (
        "claude-haiku-4-5",
        "anthropic",
        40,
    )


def test_openllmetry_tree(otel: Otel, ledger: Spool) -> None:
    tracer = otel.tracer
    with tracer.start_as_current_span("research.workflow") as root:
        root.set_attributes(
            {
                "traceloop.span.kind": "workflow",
                "traceloop.entity.name": "research",
                "gen_ai.usage.prompt_tokens": 700,
                "gen_ai.usage.completion_tokens": 80,
            }
        )
        with tracer.start_as_current_span("summarise.task") as task:
            task.set_attribute("traceloop.span.kind", "task")
            with tracer.start_as_current_span("anthropic.chat") as llm:
                llm.set_attributes(
                    {
                        "llm.request.type": "chat",
                        "gen_ai.system": "Anthropic",
                        "gen_ai.request.model": "claude-sonnet-4-5",
                        "gen_ai.usage.prompt_tokens": 700,
                        "gen_ai.usage.completion_tokens": 80,
                        "gen_ai.usage.cache_read_input_tokens": 300,
                        "gen_ai.usage.cache_creation_input_tokens": 100,
                        "llm.usage.total_tokens": 780,
                    }
                )

    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (1, 700, 80)
    [usage] = ledger.usage()
    assert (usage["provider"], usage["cache_read_tokens"], usage["cache_write_tokens"]) == (
        "anthropic",
        300,
        100,
    )


def test_older_semconv_names_and_unmarked_model_span(otel: Otel, ledger: Spool) -> None:
    tracer = otel.tracer
    with tracer.start_as_current_span("agent"):
        with tracer.start_as_current_span("chat") as old:
            old.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": "gcp.vertex_ai",
                    "gen_ai.request.model": "gemini-2.5-flash",
                    "gen_ai.usage.prompt_tokens": 100,
                    "gen_ai.usage.completion_tokens": 10,
                }
            )
        with tracer.start_as_current_span("model request") as bare:
            bare.set_attributes(
                {
                    "gen_ai.request.model": "gemini-2.5-flash",
                    "gen_ai.usage.input_tokens": 50,
                    "gen_ai.usage.output_tokens": 5,
                }
            )

    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (2, 150, 15)
    providers = {(u["model"], u["provider"]) for u in ledger.usage()}
    assert ("gemini-2.5-flash", "google") in providers
    assert row["cost_usd"] is not None and row["cost_usd"] > 0  # priced under the mapped provider id


def test_provider_name_wins_over_the_older_system_attribute(otel: Otel, ledger: Spool) -> None:
    # Instrumentations moving to the current conventions emit both names; the current one is read.
    with otel.tracer.start_as_current_span("chat gpt-4o") as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "azure.ai.openai",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 1000,
                "gen_ai.usage.output_tokens": 100,
            }
        )
    [usage] = ledger.usage()
    assert (usage["model"], usage["provider"]) == ("gpt-4o", "azure")
    [row] = ledger.sessions()
    assert row["cost_usd"] is not None and row["cost_usd"] > 0


def test_crew_spans_never_add_their_totals(otel: Otel, ledger: Spool) -> None:
    # The shape of OpenLLMetry's CrewAI instrumentation: crew workflow > task > agent > LLM call, where
    # the crew and agent spans carry the totals of the calls under them and the LLM span has no kind.
    tracer = otel.tracer
    totals = {"gen_ai.usage.prompt_tokens": 900, "gen_ai.usage.completion_tokens": 90}
    with tracer.start_as_current_span("crewai.workflow") as crew:
        crew.set_attributes({"traceloop.span.kind": "workflow", "gen_ai.system": "crewai", **totals})
        for task_name, calls in (("research", ((300, 30), (200, 20))), ("write", ((400, 40),))):
            with (
                tracer.start_as_current_span(f"{task_name}.task") as task,
                tracer.start_as_current_span("Researcher.agent") as agent,
            ):
                task.set_attribute("traceloop.span.kind", "task")
                agent.set_attributes(
                    {
                        "traceloop.span.kind": "agent",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.usage.prompt_tokens": sum(c[0] for c in calls),
                        "gen_ai.usage.completion_tokens": sum(c[1] for c in calls),
                    }
                )
                for prompt, completion in calls:
                    with tracer.start_as_current_span("gpt-4o-mini.llm") as llm:
                        llm.set_attributes(
                            {
                                "gen_ai.system": "openai",
                                "gen_ai.request.model": "gpt-4o-mini",
                                "gen_ai.response.model": "gpt-4o-mini",
                                "gen_ai.usage.prompt_tokens": prompt,
                                "gen_ai.usage.completion_tokens": completion,
                            }
                        )
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (3, 900, 90)
    [usage] = ledger.usage()
    assert (usage["model"], usage["provider"]) == ("gpt-4o-mini", "openai")


def test_openinference_crew_tree_counts_the_leaf_calls(otel: Otel, ledger: Spool) -> None:
    # OpenInference's CrewAI instrumentor: Crew.kickoff (CHAIN, with the crew's usage metrics) >
    # Task._execute_core (AGENT) > the LiteLLM completion (LLM).
    tracer = otel.tracer
    with tracer.start_as_current_span("Crew.kickoff") as crew:
        crew.set_attributes(
            {"openinference.span.kind": "CHAIN", "llm.token_count.prompt": 150, "llm.token_count.completion": 15}
        )
        for _ in range(3):
            with tracer.start_as_current_span("Task._execute_core") as task:
                task.set_attributes({"openinference.span.kind": "AGENT", "llm.token_count.prompt": 50})
                with tracer.start_as_current_span("completion") as llm:
                    llm.set_attributes(
                        {
                            "openinference.span.kind": "LLM",
                            "llm.model_name": "claude-haiku-4-5",
                            "llm.provider": "anthropic",
                            "llm.token_count.prompt": 50,
                            "llm.token_count.completion": 5,
                        }
                    )
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (3, 150, 15)


def test_model_span_wrapping_another_model_span_counts_once(otel: Otel, ledger: Spool) -> None:
    # Two instrumentors on the same call (OpenInference over LangChain, the official OpenAI
    # instrumentation underneath): the inner span is the call, the outer one repeats it.
    tracer = otel.tracer
    with tracer.start_as_current_span("chain"):
        with tracer.start_as_current_span("ChatOpenAI") as outer:
            outer.set_attributes(
                {
                    "openinference.span.kind": "LLM",
                    "llm.model_name": "gpt-4o-mini",
                    "llm.token_count.prompt": 120,
                    "llm.token_count.completion": 30,
                }
            )
            with (
                tracer.start_as_current_span("POST /v1/chat/completions"),
                tracer.start_as_current_span("chat gpt-4o-mini") as inner,
            ):
                inner.set_attributes(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.usage.input_tokens": 120,
                        "gen_ai.usage.output_tokens": 30,
                    }
                )
        with tracer.start_as_current_span("ChatOpenAI") as alone:
            alone.set_attributes(
                {
                    "openinference.span.kind": "LLM",
                    "llm.model_name": "gpt-4o-mini",
                    "llm.token_count.prompt": 10,
                    "llm.token_count.completion": 5,
                }
            )

    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (2, 130, 35)


def test_root_model_call_is_its_own_session(otel: Otel, ledger: Spool) -> None:
    with otel.tracer.start_as_current_span("chat") as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.output_tokens": 2,
            }
        )
    with otel.tracer.start_as_current_span("chat") as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 20,
                "gen_ai.usage.output_tokens": 4,
            }
        )
    rows = sorted(ledger.sessions(), key=lambda r: r["input_tokens"])
    assert [(r["llm_calls"], r["input_tokens"]) for r in rows] == [(1, 10), (1, 20)]
    assert rows[0]["session_id"] != rows[1]["session_id"]


def test_trace_without_genai_spans_bills_nothing(otel: Otel, ledger: Spool) -> None:
    with otel.tracer.start_as_current_span("GET /health") as root:
        root.set_attribute("http.method", "GET")
        with otel.tracer.start_as_current_span("SELECT"):
            pass
    assert ledger.sessions() == [] and ledger.records() == []
    assert otel.processor.open_traces == 0
    assert len(otel.exported.get_finished_spans()) == 2


def test_web_request_around_an_agent_bills_the_request(otel: Otel, ledger: Spool) -> None:
    with otel.tracer.start_as_current_span("POST /chat") as root:
        root.set_attribute("http.method", "POST")
        with otel.tracer.start_as_current_span("chat") as llm:
            llm.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 10,
                    "gen_ai.usage.output_tokens": 2,
                }
            )
    [row] = ledger.sessions()
    assert row["llm_calls"] == 1 and row["active_seconds"] > 0


def test_failed_model_call_counts_one_error(otel: Otel, ledger: Spool) -> None:
    with otel.tracer.start_as_current_span("agent") as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        with otel.tracer.start_as_current_span("chat") as llm:
            llm.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"})
            llm.set_status(Status(StatusCode.ERROR, "rate limited"))
        root.set_status(Status(StatusCode.ERROR, "agent failed"))
    [row] = ledger.sessions()
    assert (row["errors"], row["llm_calls"]) == (1, 1)  # the call counts, usage missing; one error, not two


def test_failed_root_without_failed_call_counts_one_error(otel: Otel, ledger: Spool) -> None:
    with otel.tracer.start_as_current_span("agent") as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_status(Status(StatusCode.ERROR, "bad input"))
    [row] = ledger.sessions()
    assert (row["errors"], row["llm_calls"]) == (1, 0)
