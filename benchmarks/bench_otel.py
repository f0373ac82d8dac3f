"""Per-span cost of KeitoSpanProcessor, side by side with a TracerProvider without it and with peers.

Every variant is its own opentelemetry-sdk TracerProvider running the same workload in the same
process, interleaved: each round runs every variant once, in a freshly shuffled order, and the
overhead of a variant is its per-span time minus the per-span time of the bare provider in the same
round. Medians over the rounds are reported.

Workload: one trace = an `invoke_agent` root span, four `chat` model-call spans with GenAI usage
attributes and one `execute_tool` span (6 spans), or, for "plain HTTP trace", six spans carrying
no GenAI attribute at all (a web app's ordinary traffic: it must cost little and bill nothing).

Variants: bare provider (no processor); a no-op SpanProcessor; BatchSpanProcessor with a no-op
exporter (the standard export path, a peer); ours with one session per trace (includes ending the
session and its ledger write, amortised over the trace's spans); ours inside one open keito
session (the hooks alone); ours and the BatchSpanProcessor peer on plain HTTP traces (ours opens no
session for them: a light per-trace record only).

    .venv/bin/python benchmarks/bench_otel.py            # 30 rounds x 200 traces
    .venv/bin/python benchmarks/bench_otel.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Tracer

import keito_instrument as keito
from keito_instrument.integrations.otel import KeitoSpanProcessor

SPANS_PER_TRACE = 6
CHAT: dict[str, str | int] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 12,
}


class NoOpProcessor(SpanProcessor):
    """The cheapest possible processor: both hooks do nothing."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        pass


class NoOpExporter(SpanExporter):
    """Accepts every batch at once (the export path without a network)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def genai_trace(tracer: Tracer) -> None:
    with tracer.start_as_current_span(
        "invoke_agent bench", attributes={"gen_ai.operation.name": "invoke_agent"}
    ):
        for _ in range(4):
            with tracer.start_as_current_span("chat gpt-4o-mini", attributes=CHAT):
                pass
        with tracer.start_as_current_span(
            "execute_tool search", attributes={"gen_ai.operation.name": "execute_tool"}
        ):
            pass


def http_trace(tracer: Tracer) -> None:
    with tracer.start_as_current_span("GET /items", attributes={"http.request.method": "GET"}):
        for _ in range(SPANS_PER_TRACE - 1):
            with tracer.start_as_current_span("SELECT items", attributes={"db.system": "postgresql"}):
                pass


@dataclass
class Variant:
    """One provider setup and the workload it runs."""

    name: str
    processors: list[SpanProcessor]
    workload: Callable[[Tracer], None] = genai_trace
    scope: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    ours: bool = False
    samples: list[float] = field(default_factory=list)  # per-span seconds, one per round
    provider: TracerProvider = field(init=False)

    def __post_init__(self) -> None:
        self.provider = TracerProvider()
        for processor in self.processors:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("bench")

    def run(self, traces: int) -> float:
        with self.scope():
            start = time.perf_counter()
            for _ in range(traces):
                self.workload(self.tracer)
            elapsed = time.perf_counter() - start
        return elapsed / (traces * SPANS_PER_TRACE)


def variants() -> list[Variant]:
    return [
        Variant("bare provider (no processor)", []),
        Variant("no-op SpanProcessor", [NoOpProcessor()]),
        Variant("BatchSpanProcessor + no-op exporter (peer)", [BatchSpanProcessor(NoOpExporter())]),
        Variant("KeitoSpanProcessor, session per trace", [KeitoSpanProcessor(agent_id="bench")], ours=True),
        Variant(
            "KeitoSpanProcessor, inside keito.session()",
            [KeitoSpanProcessor(agent_id="bench")],
            scope=lambda: keito.session(session_id="bench-open"),
            ours=True,
        ),
        Variant(
            "KeitoSpanProcessor, plain HTTP trace",
            [KeitoSpanProcessor(agent_id="bench")],
            workload=http_trace,
            ours=True,
        ),
        Variant(
            "BatchSpanProcessor, plain HTTP trace (peer)",
            [BatchSpanProcessor(NoOpExporter())],
            workload=http_trace,
        ),
        Variant("bare provider, plain HTTP trace", [], workload=http_trace),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, few traces")
    args = parser.parse_args(argv)
    rounds, traces = (3, 20) if args.quick else (30, 200)
    if not os.environ.get("KEITO_LEDGER"):
        os.environ["KEITO_LEDGER"] = os.path.join(tempfile.mkdtemp(prefix="keito-bench-"), "bench.sqlite3")
    keito.configure(project_id="bench", task_id="bench")

    setups = variants()
    for variant in setups:  # warm up imports, pricing tables and the ledger
        variant.run(5)
    rng = random.Random(7)
    for _ in range(rounds):
        order = setups[:]
        rng.shuffle(order)
        gc.collect()
        for variant in order:
            variant.samples.append(variant.run(traces))

    bare = {"genai": setups[0].samples, "http": setups[-1].samples}
    print(
        f"OpenTelemetry span processor overhead: {rounds} rounds x {traces} traces "
        f"x {SPANS_PER_TRACE} spans, median per span (Python {sys.version.split()[0]})"
    )
    print(f"{'variant':48} {'per span':>10} {'overhead':>10} {'x bare':>8}")
    for variant in setups:
        base = bare["http"] if variant.workload is http_trace else bare["genai"]
        per_span = statistics.median(variant.samples)
        overhead = statistics.median(a - b for a, b in zip(variant.samples, base, strict=True))
        ratio = f"{per_span / statistics.median(base):8.2f}"
        print(f"{variant.name:48} {per_span * 1e6:8.2f}us {overhead * 1e6:8.2f}us {ratio}")
    for variant in setups:
        variant.provider.shutdown()
    keito.shutdown(timeout=5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
