"""Added time per `chat.completions.create` of the OpenAI client hook, side by side with peers.

Every variant makes the same call with a real `openai.OpenAI` client against a local server on
127.0.0.1 (keep-alive, a fixed completion with usage), in the same process, interleaved: each
round runs every variant once, in a freshly shuffled order, and a variant's added time is its
per-call time minus that of the bare call in the same round. Medians over the rounds are reported.

Variants: the bare call; the floor, a wrapper that only reads `response.usage`; ours
(`keito_openai.instrument()`, inside one open keito session); LangSmith's `wrap_openai` (tracing
on, exporting to a local sink server and nowhere else); OpenLLMetry's `OpenAIInstrumentor`
(an SDK TracerProvider with an in-memory exporter).

Targets: ours adds at most 2x what the floor adds, and at most 0.2x what each peer adds. The
default clock is the CPU time of the calling thread (the server and the peers' exporters run on
other threads and do not count, which only flatters the peers); `--clock process|wall` exist too.

    .venv/bin/python benchmarks/bench_openai.py            # 30 rounds x 100 calls
    .venv/bin/python benchmarks/bench_openai.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai

import keito_instrument as keito
from keito_instrument.integrations import openai as keito_openai

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132,
              "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 0}},
}).encode()
MESSAGES: Any = [{"role": "user", "content": "hello"}]


class _API(BaseHTTPRequestHandler):
    """The model API: every POST gets the same completion (a fresh id each, as the API does)."""

    protocol_version = "HTTP/1.1"
    n = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _API.n += 1
        body = COMPLETION.replace(b"chatcmpl-bench", b"chatcmpl-bench%d" % _API.n)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.do_POST()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Variant:
    """One way of making the call, with optional setup/teardown around each turn."""

    name: str
    call: Callable[[], object]
    setup: Callable[[], None] = lambda: None
    teardown: Callable[[], None] = lambda: None
    scope: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    peer: bool = False
    samples: list[float] = field(default_factory=list)


def _peers(client: openai.OpenAI, sink_url: str) -> list[Variant]:
    peers: list[Variant] = []
    try:
        from langsmith import Client
        from langsmith.wrappers import wrap_openai

        ls_client = Client(api_url=sink_url, api_key="ls-bench", auto_batch_tracing=True)
        wrapped = wrap_openai(openai.OpenAI(base_url=str(client.base_url), api_key="sk-bench", max_retries=0),
                              tracing_extra={"client": ls_client})
        peers.append(Variant("LangSmith wrap_openai", lambda: wrapped.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES), peer=True))
    except ImportError as exc:
        print(f"  (skipping LangSmith: {exc})")
    try:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        instrumentor = OpenAIInstrumentor()

        def openllmetry_off() -> None:
            instrumentor.uninstrument()
            exporter.clear()

        peers.append(Variant("OpenLLMetry OpenAIInstrumentor", lambda: bare(client),
                             setup=lambda: instrumentor.instrument(tracer_provider=provider),
                             teardown=openllmetry_off, peer=True))
    except ImportError as exc:
        print(f"  (skipping OpenLLMetry: {exc})")
    return peers


def bare(client: openai.OpenAI) -> object:
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def floor(client: openai.OpenAI) -> object:
    """The least a client hook can do: call through, read the usage."""
    response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    usage = response.usage
    return usage.prompt_tokens if usage is not None else None


def variants(client: openai.OpenAI, sink_url: str, with_peers: bool) -> list[Variant]:
    """Every variant measured, the bare call first."""
    found = [
        Variant("bare call", lambda: bare(client)),
        Variant("floor: wrapper reading response.usage", lambda: floor(client)),
        Variant("keito instrument() (in a session)", lambda: bare(client), setup=keito_openai.instrument,
                teardown=keito_openai.uninstrument, scope=keito.session),
    ]
    return found + (_peers(client, sink_url) if with_peers else [])


def measure(variant: Variant, calls: int, clock: Callable[[], float]) -> float:
    """Seconds per call of `calls` calls under this variant."""
    variant.setup()
    try:
        with variant.scope():
            gc.collect()
            start = clock()
            for _ in range(calls):
                variant.call()
            elapsed = clock() - start
    finally:
        variant.teardown()
    return elapsed / calls


def report(found: list[Variant], rounds: int, calls: int) -> bool:
    """Print the table and the verdict; True when both targets are met."""
    base = found[0].samples
    added = {v.name: statistics.median(s - b for s, b in zip(v.samples, base, strict=True)) for v in found}
    print(f"\nper-call time, median of {rounds} rounds x {calls} calls (order shuffled each round)")
    print(f"{'variant':40} {'call us':>9} {'added us':>9}")
    for v in found:
        print(f"{v.name:40} {statistics.median(v.samples) * 1e6:9.1f} {added[v.name] * 1e6:9.1f}")
    ours, low = added["keito instrument() (in a session)"], added["floor: wrapper reading response.usage"]
    ok = ours <= 2 * max(low, 0.0)
    print(f"\ntarget 1: ours adds <= 2x the floor: {ours * 1e6:.1f} us vs {2 * low * 1e6:.1f} us "
          f"-> {'met' if ok else 'NOT met'}")
    for v in (v for v in found if v.peer):
        met = ours <= 0.2 * added[v.name]
        ok = ok and met
        print(f"target 2: ours adds <= 0.2x {v.name}: {ours * 1e6:.1f} us vs {0.2 * added[v.name] * 1e6:.1f} us "
              f"-> {'met' if met else 'NOT met'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=100, help="calls per variant per round")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds x 5 calls")
    parser.add_argument("--no-peers", action="store_true", help="skip LangSmith and OpenLLMetry")
    parser.add_argument("--clock", choices=["thread", "process", "wall"], default="thread")
    args = parser.parse_args(argv)
    rounds, calls = (3, 5) if args.quick else (args.rounds, args.calls)

    logging.getLogger().setLevel(logging.CRITICAL)
    for name in ("OPENAI_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "TRACELOOP_BASE_URL"):
        os.environ.pop(name, None)
    os.environ["TRACELOOP_TRACE_CONTENT"] = "true"  # OpenLLMetry's default: prompts and completions on spans
    tmp = tempfile.mkdtemp(prefix="keito-bench-")
    os.environ["KEITO_LEDGER"] = os.path.join(tmp, "ledger.sqlite3")
    keito.configure()
    clock = {"thread": time.thread_time, "process": time.process_time, "wall": time.perf_counter}[args.clock]
    rng = random.Random(1234)
    with serve(_API) as api_url, serve(_API) as sink_url:
        os.environ.update(LANGSMITH_TRACING="true", LANGSMITH_ENDPOINT=sink_url, LANGSMITH_API_KEY="ls-bench")
        client = openai.OpenAI(base_url=f"{api_url}/v1", api_key="sk-bench", max_retries=0)
        found = variants(client, sink_url, with_peers=not args.no_peers)
        print(f"python {sys.version.split()[0]}, openai {openai.__version__}, {os.cpu_count()} cpus, "
              f"{len(found)} variants")
        for v in found:  # warm-up: imports, caches, first connections
            measure(v, max(2, calls // 5), clock)
        for _ in range(rounds):
            order = list(found)
            rng.shuffle(order)
            for v in order:
                v.samples.append(measure(v, calls, clock))
        print(f"clock: {args.clock}")
        ok = report(found, rounds, calls)
        keito.shutdown(timeout=2.0)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
