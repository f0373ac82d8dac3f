"""Helpers of the counted-once tests: our LangChain handler attached both ways, a real OpenAI
client's spans (OpenLLMetry's instrumentor) fed to the test's provider, and what was billed.

The handler is attached both ways LangChain orders callbacks differently: passed in the run's
config (it sees each event before OpenInference's tracer) and process-wide with `instrument()`
(after it).
"""

from __future__ import annotations

from typing import Any

from _otel_fakes import Otel
from opentelemetry.sdk.trace import SpanProcessor

from keito_instrument._spool import Spool
from keito_instrument.integrations import langchain as keito_lc

HOW = ("config", "instrument")


def config(how: str, **metadata: Any) -> dict[str, Any]:
    """The run's config: with our handler in it, or nothing (the handler is process-wide)."""
    if how == "instrument":
        keito_lc.instrument()
        return {"metadata": metadata}
    return {"metadata": metadata, "callbacks": [keito_lc.KeitoCallbackHandler()]}


def sessions(ledger: Spool) -> list[tuple[Any, ...]]:
    keys = ("session_id", "framework", "llm_calls", "input_tokens", "output_tokens", "tool_calls")
    return sorted(tuple(row[k] for k in keys) for row in ledger.sessions())


def billed(ledger: Spool) -> tuple[int, int, int]:
    rows = ledger.sessions()
    return (sum(r["llm_calls"] for r in rows), sum(r["input_tokens"] for r in rows),
            sum(r["output_tokens"] for r in rows))


def served(server: Any) -> tuple[int, int, int]:
    return (len(server.served), sum(u["prompt_tokens"] for u in server.served),
            sum(u["completion_tokens"] for u in server.served))


def chat(server: Any, **options: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10,
                      **options)


class ToTheTest(SpanProcessor):  # type: ignore[misc]
    """Hands spans to the current test's processors.

    OpenLLMetry's OpenAI instrumentor cannot be taken off again (on openai 2.x its `uninstrument`
    leaves its wrapper, which goes on sending spans to the provider it was given), so it is
    instrumented once per test session, with a provider that forwards to the test's own.
    """

    target: Otel | None = None

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.target is not None:
            self.target.provider._active_span_processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: Any) -> None:
        if self.target is not None:
            self.target.provider._active_span_processor.on_end(span)
