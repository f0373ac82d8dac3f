"""Per-LLM-call overhead of KeitoCallbackHandler in a LangChain chain, side by side with peers.

Every variant runs the same chain (`ChatPromptTemplate | fake chat model with usage`) in the same
process, interleaved: each round runs every variant once, in a freshly shuffled order, and the
overhead of a variant is its per-call time minus the per-call time of "no callbacks" in the same
round. Medians over the rounds are reported.

Variants: no callbacks; a no-op inline BaseCallbackHandler; langchain-core's
UsageMetadataCallbackHandler; ours (explicit handler with the calls inside one open keito session;
ours through `instrument()`; ours with one session per invoke, which adds the session's ledger
write); Langfuse's CallbackHandler; LangSmith's LangChainTracer; the OpenInference LangChain
instrumentor. Peers export to a local sink server on 127.0.0.1 and nowhere else.

Targets: ours adds at most 1.5x what the no-op handler adds, and at most 1/10 of the lightest peer.
The default clock is the CPU time of the calling thread: what the host's own thread pays, and far
steadier than wall time on a shared 2-core CI machine. Peers' background exporters do not count
there (which only flatters the peers); each peer is flushed after its turn, outside the timing, so
its export work never spills into another variant's measurement. `--clock process|wall` exist too.

    .venv/bin/python benchmarks/bench_langchain.py            # 40 rounds x 100 calls
    .venv/bin/python benchmarks/bench_langchain.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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

from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate

import keito_instrument as keito
from keito_instrument.integrations import langchain as keito_lc


class FakeChat(BaseChatModel):
    """A chat model whose provider round trip costs nothing: one reply with usage metadata."""

    @property
    def _llm_type(self) -> str:
        return "bench-fake-chat"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = AIMessage(
            content="fine",
            usage_metadata={"input_tokens": 120, "output_tokens": 12, "total_tokens": 132},
            response_metadata={"model_name": "gpt-4o-mini"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class NoOp(BaseCallbackHandler):
    """The cheapest possible handler: inline, does nothing."""

    run_inline = True


class _Sink(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _ok(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = do_PUT = do_PATCH = _ok


@dataclass
class Variant:
    """One way of running the chain: its callbacks, and optional process-wide setup/teardown."""

    name: str
    callbacks: list[Any] | None = None
    setup: Callable[[], None] = lambda: None
    teardown: Callable[[], None] = lambda: None
    scope: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    peer: bool = False
    ours: bool = False
    samples: list[float] = field(default_factory=list)  # per-call seconds, one per round


_flush_timeouts: list[str] = []
_closers: list[Callable[[], object]] = []  # peers' shutdowns, so their threads do not delay exit


def _bounded(flush: Callable[[], object], timeout: float = 3.0) -> Callable[[], None]:
    """A peer's flush, given at most `timeout` seconds: a peer's exporter must not hang the run."""

    def run() -> None:
        worker = threading.Thread(target=flush, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            _flush_timeouts.append(getattr(flush, "__qualname__", repr(flush)))

    return run


def _peers(sink_url: str) -> list[Variant]:
    peers: list[Variant] = []
    try:
        from langfuse import Langfuse
        from langfuse.langchain import CallbackHandler as LangfuseHandler

        langfuse = Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench", base_url=sink_url)
        _closers.append(langfuse.shutdown)
        peers.append(
            Variant(
                "Langfuse CallbackHandler",
                [LangfuseHandler(public_key="pk-lf-bench")],
                teardown=_bounded(langfuse.flush),
                peer=True,
            )
        )
    except ImportError as exc:
        print(f"  (skipping Langfuse: {exc})")
    try:
        from langchain_core.tracers.langchain import LangChainTracer
        from langsmith import Client

        client = Client(api_url=sink_url, api_key="ls-bench", auto_batch_tracing=True)
        tracer = LangChainTracer(client=client, project_name="bench")
        _closers.append(client.cleanup)

        peers.append(
            Variant(
                # No flush between turns: in this process LangSmith's queue join can wait forever;
                # its sender is a background thread, which the default (thread) clock excludes.
                "LangSmith LangChainTracer",
                [tracer],
                peer=True,
            )
        )
    except ImportError as exc:
        print(f"  (skipping LangSmith: {exc})")
    try:
        from openinference.instrumentation.langchain import LangChainInstrumentor
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{sink_url}/v1/traces")))
        instrumentor = LangChainInstrumentor()
        _closers.append(provider.shutdown)

        def openinference_off() -> None:
            instrumentor.uninstrument()
            _bounded(provider.force_flush)()

        peers.append(
            Variant(
                "OpenInference instrumentor",
                setup=lambda: instrumentor.instrument(tracer_provider=provider),
                teardown=openinference_off,
                peer=True,
            )
        )
    except ImportError as exc:
        print(f"  (skipping OpenInference: {exc})")
    return peers


def _instrument() -> None:
    keito_lc.instrument()


def variants(sink_url: str, with_peers: bool) -> list[Variant]:
    """Every variant measured, baseline first."""
    found = [
        Variant("no callbacks"),
        Variant("no-op inline handler", [NoOp()]),
        Variant("UsageMetadataCallbackHandler", [UsageMetadataCallbackHandler()]),
        Variant(
            "keito handler (in a session)", [keito_lc.KeitoCallbackHandler()], scope=keito.session, ours=True
        ),
        Variant(
            "keito instrument() (in a session)",
            setup=_instrument,
            teardown=keito_lc.uninstrument,
            scope=keito.session,
            ours=True,
        ),
        Variant("keito handler (session per invoke)", [keito_lc.KeitoCallbackHandler()]),
    ]
    return found + (_peers(sink_url) if with_peers else [])


def measure(
    variant: Variant, chain: Any, calls: int, clock: Callable[[], float] = time.process_time
) -> float:
    """Seconds per call of `calls` invokes of the chain under this variant."""
    config: Any = {"callbacks": variant.callbacks} if variant.callbacks else None
    variant.setup()
    try:
        with variant.scope():
            gc.collect()
            start = clock()
            for _ in range(calls):
                chain.invoke({"q": "hello"}, config=config)
            elapsed = clock() - start
    finally:
        variant.teardown()
    return elapsed / calls


@contextlib.contextmanager
def sink_server() -> Iterator[str]:
    """A local HTTP server that accepts anything: the only place peers export to."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f}"


def report(found: list[Variant], rounds: int, calls: int) -> bool:
    """Print the table and the verdict; True when both targets are met."""
    base = found[0].samples
    print(f"\nper-LLM-call time, median of {rounds} rounds x {calls} calls (order shuffled each round)")
    print(f"{'variant':40} {'call us':>9} {'added us':>9}  {'x no-op':>8}")
    added: dict[str, float] = {}
    for v in found:
        added[v.name] = statistics.median(s - b for s, b in zip(v.samples, base, strict=True))
    noop = added["no-op inline handler"]
    for v in found:
        ratio = added[v.name] / noop if noop > 0 else float("nan")
        print(f"{v.name:40} {_us(statistics.median(v.samples))} {_us(added[v.name])}  {ratio:8.2f}")
    ours = added["keito handler (in a session)"]
    peers = [added[v.name] for v in found if v.peer]
    ok = ours <= 1.5 * noop
    print(
        f"\ntarget 1: ours adds <= 1.5x the no-op handler: {ours * 1e6:.1f} us vs {1.5 * noop * 1e6:.1f} us "
        f"-> {'met' if ok else 'NOT met'}"
    )
    if peers:
        lightest = min(peers)
        ok2 = ours <= lightest / 10
        ok = ok and ok2
        print(
            f"target 2: ours adds <= 1/10 of the lightest peer: {ours * 1e6:.1f} us "
            f"vs {lightest * 1e5:.1f} us -> {'met' if ok2 else 'NOT met'}"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=100, help="invokes per variant per round")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds x 5 calls")
    parser.add_argument("--no-peers", action="store_true", help="skip Langfuse, LangSmith, OpenInference")
    parser.add_argument(
        "--clock",
        choices=["thread", "process", "wall"],
        default="thread",
        help="thread: CPU time of the calling thread, what the host's thread pays (default; steady on a "
        "shared machine); process: CPU time of all threads, peers' exporters included; wall: elapsed time",
    )
    args = parser.parse_args(argv)
    rounds, calls = (3, 5) if args.quick else (args.rounds, args.calls)

    logging.getLogger().setLevel(logging.CRITICAL)  # peers' exporters may log about the sink
    for name in (
        "LANGSMITH_TRACING",
        "LANGCHAIN_TRACING_V2",
        "LANGSMITH_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ):
        os.environ.pop(name, None)
    tmp = tempfile.mkdtemp(prefix="keito-bench-")
    os.environ["KEITO_LEDGER"] = os.path.join(tmp, "ledger.sqlite3")
    keito.configure()
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | FakeChat()
    rng = random.Random(1234)
    with sink_server() as sink_url:
        found = variants(sink_url, with_peers=not args.no_peers)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {len(found)} variants")
        clock = {"thread": time.thread_time, "process": time.process_time, "wall": time.perf_counter}[
            args.clock
        ]
        for v in found:  # warm-up: imports, caches, first connections
            measure(v, chain, max(2, calls // 5), clock)
        for _ in range(rounds):
            order = list(found)
            rng.shuffle(order)
            for v in order:
                v.samples.append(measure(v, chain, calls, clock))
        print(f"clock: {args.clock}")
        ok = report(found, rounds, calls)
        if _flush_timeouts:
            limited = sorted(set(_flush_timeouts))
            print(f"note: {len(_flush_timeouts)} peer flush(es) hit the 3 s limit: {limited}")
        keito.shutdown(timeout=2.0)
        for close in _closers:
            _bounded(close)()
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
