"""Added time per `messages.create` of the Anthropic client hook, side by side with peers.

Measured the way bench_openai.py measures the OpenAI hook, with its harness (read its docstring
for the method): a real `anthropic.Anthropic` client and real httpx2 (the SDK's HTTP library),
served in process by an `httpx2.MockTransport` answering every request with the same Message
(usage with cache reads, a fresh id each time); two variants over a real 127.0.0.1 socket as the
end-to-end check; interleaved shuffled rounds, each variant's added time taken against the bare
call of the same round; medians and the interquartile range; the calling thread's CPU clock.

Variants (in process): the bare call; the floor, a wrapper patched onto the SDK's
`Messages.create` (class level, as a client hook is) that only reads `response.usage`; ours
(`keito_instrument.integrations.anthropic.instrument()`, each turn inside one open
`keito.session()`, with a temporary ledger); LangSmith's `wrap_anthropic` (tracing on, exporting
to a local sink on 127.0.0.1 and nowhere else, uncompressed as in bench_openai.py). For
reference, not a target: the SDK's own OpenTelemetry spans (`open_telemetry={"tracer_provider":
...}`, an SDK TracerProvider, a SimpleSpanProcessor and an in-memory exporter). Every client,
the bare one too, keeps the SDK's default tracing option: with no global tracer provider, its
spans are no-ops. No other peer is installed here: neither OpenLLMetry's Anthropic instrumentor
(opentelemetry-instrumentation-anthropic) nor OpenInference's (openinference-instrumentation-
anthropic); if one is added to the dev tools, add it as a peer.

Targets (those issue 12 sets for the OpenAI hook): ours adds at most 2x what the floor adds, and
at most 0.2x what LangSmith adds.

    .venv/bin/python benchmarks/bench_anthropic.py            # 40 rounds x 200 calls, on a quiet machine
    .venv/bin/python benchmarks/bench_anthropic.py --json     # the same, as JSON on stdout
    .venv/bin/python benchmarks/bench_anthropic.py --quick    # a smoke run (numbers mean nothing)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from bench_openai import (
    SOCKET,
    Bench,
    Tally,
    Variant,
    api_handler,
    class_patch,
    fresh_bodies,
    keito_session_scope,
    langsmith_peer,
    memory_tracer,
    run,
    serve,
)

MESSAGE = json.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "fine"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 56, "output_tokens": 12, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 64},
}).encode()
MESSAGES: Any = [{"role": "user", "content": "hello"}]


def read_usage(message: Any) -> object:
    """All the floor does with an answer: read its usage."""
    usage = message.usage
    return usage.input_tokens, usage.output_tokens


def _peers(bench: Bench, in_process: Callable[..., Any], create: Callable[[Any], object]) -> list[Variant]:
    peers = [peer for peer in [langsmith_peer(bench, "wrap_anthropic", in_process, create)] if peer is not None]
    try:
        provider, exporter = memory_tracer()
        traced = in_process(open_telemetry={"tracer_provider": provider})
        spans = Tally()

        def count_spans() -> None:
            spans.n += len(exporter.get_finished_spans())
            exporter.clear()

        peers.append(Variant("anthropic SDK's own OTel spans", lambda: create(traced), role="reference",
                             teardown=count_spans, recorded=spans))
    except ImportError as exc:
        bench.say(f"  (skipping the SDK's own OpenTelemetry spans: {exc})")
    return peers


def build(bench: Bench) -> list[Variant]:
    """Every variant measured: the bare calls first, then the floor, ours and the peers."""
    import anthropic
    import httpx2
    from anthropic.resources.messages.messages import Messages

    from keito_instrument.integrations import anthropic as keito_anthropic

    body = fresh_bodies(MESSAGE, b"msg_bench")

    def answer(request: httpx2.Request) -> httpx2.Response:
        request.read()
        return httpx2.Response(200, content=body(), headers={"Content-Type": "application/json"})

    def in_process(**options: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url="http://api.bench.invalid", api_key="sk-ant-bench", max_retries=0,
                                   http_client=httpx2.Client(transport=httpx2.MockTransport(answer)), **options)

    def create(client: anthropic.Anthropic) -> object:
        return client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES)

    client = in_process()
    api_url = bench.stack.enter_context(serve(api_handler(body)))
    socket_client = anthropic.Anthropic(base_url=api_url, api_key="sk-ant-bench", max_retries=0)
    floor_on, floor_off = class_patch(Messages, "create", read_usage)
    ours, ours_socket = Tally(), Tally()
    return [
        Variant("bare call", lambda: create(client), role="bare"),
        Variant("floor: class-level wrapper reading .usage", lambda: create(client), role="floor",
                setup=floor_on, teardown=floor_off),
        Variant("keito instrument() (in a session)", lambda: create(client), role="ours",
                setup=keito_anthropic.instrument, teardown=keito_anthropic.uninstrument,
                scope=keito_session_scope(ours), recorded=ours),
        *(_peers(bench, in_process, create) if bench.with_peers else []),
        Variant("bare call", lambda: create(socket_client), role="bare", group=SOCKET),
        Variant("keito instrument() (in a session)", lambda: create(socket_client), role="ours", group=SOCKET,
                setup=keito_anthropic.instrument, teardown=keito_anthropic.uninstrument,
                scope=keito_session_scope(ours_socket), recorded=ours_socket),
    ]


def main(argv: list[str] | None = None) -> int:
    import anthropic

    return run(argv, name="bench_anthropic", doc=__doc__ or "", client=f"anthropic {anthropic.__version__}",
               build=build)


if __name__ == "__main__":
    sys.exit(main())
