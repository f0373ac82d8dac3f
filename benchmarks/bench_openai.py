"""Added time per `chat.completions.create` of the OpenAI client hook, side by side with peers.

What is measured: a real `openai.OpenAI` client and real httpx, served in process by an
`httpx.MockTransport` that answers every request with the same completion (with usage, a fresh
response id each time). Only the socket is gone: a round trip to a local server costs a few
hundred microseconds and varies by more than the few microseconds a hook adds, so differences
taken over a socket are mostly noise. Two variants still go over a real 127.0.0.1 socket (a
keep-alive local server, TCP_NODELAY so no call waits out a delayed ACK) as the end-to-end check;
they are compared with each other only.

How: every variant runs in the same process, interleaved. Each round runs every variant once, in a
freshly shuffled order, for `--calls` calls; a variant's added time in a round is its per-call
time minus that of the bare call of its group in the same round, so slow drift of the machine
cancels out. Reported: the median over the rounds and the interquartile range (q1..q3) of the
added time. The clock is the CPU time of the calling thread (`time.thread_time`): what the host's
own thread pays, and far steadier than wall time on a shared machine. The peers' background
exporters and the local server run on other threads and do not count there (which only flatters
the peers); each variant's deferred work is flushed after its turn, outside the timing, so it
never spills into another variant's turn. `--clock process|wall` exist too. After the warm-up the
heap is frozen (`gc.freeze`), so collections do not rescan the libraries' long-lived objects.

Variants (in process): the bare call; the floor, a wrapper patched onto the client's
`Completions.create` the way a client hook is (class level) that only reads `response.usage`;
ours (`keito_openai.instrument()`, each turn inside one open `keito.session()`, with a temporary
ledger); LangSmith's `wrap_openai` (tracing on, exporting to a local sink on 127.0.0.1 and
nowhere else; the sink's `/info` offers no run compression, so LangSmith takes its uncompressed
multipart path, the lighter one for the calling thread); OpenLLMetry's `OpenAIInstrumentor` (an
SDK TracerProvider, a SimpleSpanProcessor and an in-memory exporter, prompts on spans as by
default). Each variant's "recorded" column says how many of its calls it counted or exported, so
a variant that silently stopped doing its work shows.

Targets (issue 12): ours adds at most 2x what the floor adds, and at most 0.2x what each peer adds.

    .venv/bin/python benchmarks/bench_openai.py            # 40 rounds x 200 calls, on a quiet machine
    .venv/bin/python benchmarks/bench_openai.py --json     # the same, as JSON on stdout
    .venv/bin/python benchmarks/bench_openai.py --quick    # a smoke run (numbers mean nothing)

The harness (rounds, statistics, table, JSON, the sink) is shared with bench_anthropic.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import json
import logging
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

import keito_instrument as keito

IN_PROCESS, SOCKET = "in-process", "socket"  # the groups: each variant is compared with its group's bare call
TITLES = {IN_PROCESS: "in process (the real client and its HTTP library over a MockTransport: no socket)",
          SOCKET: "end to end over a 127.0.0.1 socket (the check, not a target)"}


# -- the harness, shared with bench_anthropic.py --------------------------------------------------
def _nothing() -> None:
    pass


@dataclass
class Variant:
    """One way of making the call; `setup`/`teardown` run around each turn, outside the timing."""

    name: str
    call: Callable[[], object]
    role: str = "other"  # "bare" (the baseline of its group), "floor", "ours", "peer", "reference"
    group: str = IN_PROCESS
    setup: Callable[[], None] = _nothing
    teardown: Callable[[], None] = _nothing
    scope: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    recorded: Callable[[], int] | None = None  # how many calls it counted/exported so far
    made: int = 0
    samples: list[float] = field(default_factory=list)  # seconds per call, one per round


def fresh_bodies(template: bytes, marker: bytes) -> Callable[[], bytes]:
    """The response body with a fresh response id each time (hooks skip an id already counted)."""
    counter = itertools.count()
    return lambda: template.replace(marker, marker + str(next(counter)).encode())


Switch = tuple[Callable[[], None], Callable[[], None]]  # (put the wrapper on, put the original back)


def switch(cls: type, name: str, wrapper: Any) -> Switch:
    """Turn `wrapper` on `cls.name` on and off around each turn (the original is the one there now)."""
    original = cls.__dict__[name]
    return (lambda: setattr(cls, name, wrapper)), (lambda: setattr(cls, name, original))


def class_patch(cls: type, name: str, after: Callable[[Any], object]) -> Switch:
    """A wrapper on `cls.name` the way a client hook is: it calls through and shows `after` the result."""
    original = cls.__dict__[name]

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        after(result)
        return result

    return switch(cls, name, wrapper)


def peer_patch(cls: type, name: str, instrument: Callable[[], object]) -> Switch:
    """A peer's wrapper on `cls.name`, installed once by `instrument` and then switched per turn.

    Not the peer's own uninstrument per turn: OpenLLMetry 0.62's leaves its wrapper in place with
    opentelemetry-instrumentation 0.66 (it passes `unwrap` a module path it no longer parses), so
    every turn would stack one more wrapper, on every other variant's calls too.
    """
    original = cls.__dict__[name]
    instrument()
    wrapper = cls.__dict__[name]
    setattr(cls, name, original)
    return switch(cls, name, wrapper)


class Tally:
    """A count fed from scopes and teardowns (e.g. calls counted by keito sessions)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


def keito_session_scope(tally: Tally) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """One open keito session around a turn; what it counted goes to `tally`, and the session's
    end (its ledger write) is flushed before the next turn starts."""

    @contextlib.contextmanager
    def scope() -> Iterator[None]:
        with keito.session() as session:
            yield
        tally.n += session.llm_calls
        keito.flush(timeout=5.0)

    return scope


def bounded(work: Callable[[], object], timeout: float = 5.0) -> Callable[[], None]:
    """`work` given at most `timeout` seconds on a helper thread: a peer's flush must not hang the run."""

    def run() -> None:
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(timeout)

    return run


class Sink:
    """A local server that accepts anything (the only place peers export to), counting LangSmith runs."""

    RUN = re.compile(rb'name="(?:post|patch)\.([0-9a-f-]{36})"')

    def __init__(self) -> None:
        self.run_ids: set[bytes] = set()
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _ok(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    sink.run_ids.update(Sink.RUN.findall(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")  # also /info: no batch config, no run compression offered

            do_GET = do_POST = do_PUT = do_PATCH = _ok

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.handler = Handler

    def runs(self) -> int:
        with self._lock:
            return len(self.run_ids)


def api_handler(body: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    """A model API for a real socket: every request gets `body()` as JSON.

    TCP_NODELAY on the server's side: it writes the headers and the body separately, and with
    Nagle's algorithm the body then waits for the client's delayed ACK, about 40 ms a call (idle
    time, not the host's CPU, but it made a full run take over ten minutes)."""

    class API(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return API


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 in a thread; yields its base URL."""
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
class Bench:
    """What a benchmark's `build` gets: the sink and its URL, a printer for notes, and an exit
    stack for the servers and clients it starts (closed, peers' shutdowns bounded, at the end)."""

    sink_url: str
    sink: Sink
    say: Callable[[str], None]
    stack: contextlib.ExitStack
    with_peers: bool = True


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
            variant.made += calls
    finally:
        variant.teardown()
    return elapsed / calls


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summarize(found: list[Variant]) -> list[dict[str, Any]]:
    """Per variant: median call time, and the median and quartiles of its added time per round."""
    bare = {v.group: v.samples for v in found if v.role == "bare"}
    rows = []
    for v in found:
        added = [s - b for s, b in zip(v.samples, bare[v.group], strict=True)]
        q1, median, q3 = _quartiles(added)
        rows.append({
            "name": v.name, "group": v.group, "role": v.role, "call_us": statistics.median(v.samples) * 1e6,
            "added_us": median * 1e6, "added_q1_us": q1 * 1e6, "added_q3_us": q3 * 1e6,
            "recorded": v.recorded() if v.recorded is not None else None, "made": v.made,
        })
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 12's targets, on the in-process rows: ours <= 2x the floor, <= 0.2x each peer."""
    by_role = {r["role"]: r for r in rows if r["group"] == IN_PROCESS and r["role"] in ("ours", "floor")}
    ours, low = by_role["ours"]["added_us"], by_role["floor"]["added_us"]
    found = [{"target": "ours <= 2x the floor", "ours_us": ours, "limit_us": 2 * max(low, 0.0)}]
    for peer in (r for r in rows if r["role"] == "peer"):
        found.append({"target": f"ours <= 0.2x {peer['name']}", "ours_us": ours,
                      "limit_us": 0.2 * peer["added_us"]})
    for t in found:
        t["met"] = t["ours_us"] <= t["limit_us"]
    return found


def print_table(rows: list[dict[str, Any]], goals: list[dict[str, Any]], rounds: int, calls: int,
                out: IO[str]) -> None:
    floor = next(r["added_us"] for r in rows if r["role"] == "floor" and r["group"] == IN_PROCESS)
    ours = next(r["added_us"] for r in rows if r["role"] == "ours" and r["group"] == IN_PROCESS)
    print(f"\nper-call time, {rounds} rounds x {calls} calls (order shuffled each round); added = minus the "
          "bare call of the same group and round: median [q1 .. q3]", file=out)
    for group in dict.fromkeys(r["group"] for r in rows):
        print(f"\n{TITLES[group]}", file=out)
        print(f"{'variant':44} {'call us':>9} {'added us':>9} {'[q1 .. q3]':>19} {'x floor':>8} "
              f"{'ours/it':>8} {'recorded':>11}", file=out)
        for r in (r for r in rows if r["group"] == group):
            spread = f"[{r['added_q1_us']:7.1f} .. {r['added_q3_us']:7.1f}]"
            x_floor = f"{r['added_us'] / floor:8.2f}" if floor > 0 and group == IN_PROCESS else f"{'':8}"
            ratio = (f"{ours / r['added_us']:8.2f}" if r["role"] in ("peer", "reference") and r["added_us"] > 0
                     else f"{'':8}")
            recorded = f"{r['recorded']}/{r['made']}" if r["recorded"] is not None else "-"
            print(f"{r['name']:44} {r['call_us']:9.1f} {r['added_us']:9.1f} {spread:>19} {x_floor} {ratio} "
                  f"{recorded:>11}", file=out)
    print("", file=out)
    for t in goals:
        print(f"target: {t['target']}: {t['ours_us']:.1f} us vs {t['limit_us']:.1f} us -> "
              f"{'met' if t['met'] else 'NOT met'}", file=out)


def _join_keito_warm_up() -> None:
    """Wait for keito's one-off warm-up thread (price data imports), so it overlaps no turn."""
    for thread in threading.enumerate():
        if thread.name == "keito-instrument-warmup":
            thread.join(30.0)


def run(argv: list[str] | None, *, name: str, doc: str, client: str,
        build: Callable[[Bench], list[Variant]]) -> int:
    """Parse the options, isolate the process, run `build`'s variants in shuffled rounds, report."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=200, help="calls per variant per round")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds x 5 calls")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--clock", choices=["thread", "process", "wall"], default="thread",
                        help="thread: CPU time of the calling thread (default); process: of all threads; wall")
    args = parser.parse_args(argv)
    rounds, calls = (3, 5) if args.quick else (args.rounds, args.calls)
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out)

    logging.getLogger().setLevel(logging.CRITICAL)  # peers log about the sink's bare answers
    for var in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_PYTHON_TRACER_PROVIDER", "TRACELOOP_BASE_URL",
                 "KEITO_API_KEY", "KEITO_ACCOUNT_ID", "KEITO_DISABLED", "LANGSMITH_RUNS_ENDPOINTS"):
        os.environ.pop(var, None)  # nothing leaves 127.0.0.1, and ours is on
    os.environ["TRACELOOP_TRACE_CONTENT"] = "true"  # OpenLLMetry's default: prompts and completions on spans
    os.environ["KEITO_LEDGER"] = os.path.join(tempfile.mkdtemp(prefix="keito-bench-"), "ledger.sqlite3")
    keito.configure()
    clock = {"thread": time.thread_time, "process": time.process_time, "wall": time.perf_counter}[args.clock]
    sink = Sink()
    with contextlib.ExitStack() as stack:
        sink_url = stack.enter_context(serve(sink.handler))
        os.environ.update(LANGSMITH_TRACING="true", LANGSMITH_ENDPOINT=sink_url, LANGSMITH_API_KEY="ls-bench")
        stack.callback(keito.shutdown, timeout=2.0)  # (runs after the peers' shutdowns: last in, first out)
        found = build(Bench(sink_url, sink, say, stack, with_peers=not args.no_peers))
        say(f"python {sys.version.split()[0]}, {client}, {os.cpu_count()} cpus, {len(found)} variants, "
            f"clock: {args.clock}")
        for _ in range(2):  # warm-up: imports, caches, pools, first connections
            for v in found:
                measure(v, max(2, calls // 5), clock)
        _join_keito_warm_up()
        gc.collect()
        gc.freeze()
        for v in found:
            v.samples.clear()
        rng = random.Random(1234)
        for _ in range(rounds):
            order = list(found)
            rng.shuffle(order)
            for v in order:
                v.samples.append(measure(v, calls, clock))
        rows = summarize(found)
        goals = targets(rows)
        if args.json:
            print(json.dumps({
                "benchmark": name, "client": client,
                "python": sys.version.split()[0], "cpus": os.cpu_count(), "clock": args.clock,
                "rounds": rounds, "calls": calls, "quick": args.quick, "variants": rows, "targets": goals,
            }, indent=2))
        else:
            print_table(rows, goals, rounds, calls, out)
    return 0 if all(t["met"] for t in goals) or args.quick else 1


# -- the OpenAI client ----------------------------------------------------------------------------
COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132,
              "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 0}},
}).encode()
MESSAGES: Any = [{"role": "user", "content": "hello"}]


def read_usage(response: Any) -> object:
    """All the floor does with an answer: read its usage."""
    usage = response.usage
    return (usage.prompt_tokens, usage.completion_tokens) if usage is not None else None


def langsmith_peer(bench: Bench, wrapper: str, in_process: Callable[..., Any],
                   create: Callable[[Any], object]) -> Variant | None:
    """LangSmith's `langsmith.wrappers.<wrapper>` around a fresh client, exporting to the bench's
    local sink only (None, said, when this langsmith lacks it)."""
    try:
        from langsmith import Client, wrappers
    except ImportError as exc:
        bench.say(f"  (skipping LangSmith: {exc})")
        return None
    wrap = getattr(wrappers, wrapper, None)
    if wrap is None:
        bench.say(f"  (skipping LangSmith: this langsmith has no wrappers.{wrapper})")
        return None
    ls_client = Client(api_url=bench.sink_url, api_key="ls-bench", auto_batch_tracing=True)
    bench.stack.callback(bounded(ls_client.cleanup, 3.0))
    wrapped = wrap(in_process(), tracing_extra={"client": ls_client})  # (it patches the instance)
    return Variant(f"LangSmith {wrapper}", lambda: create(wrapped), role="peer",
                   teardown=bounded(lambda: ls_client.flush(timeout=5.0)), recorded=bench.sink.runs)


def memory_tracer() -> tuple[Any, Any]:
    """An SDK TracerProvider exporting every span, as it ends, to an in-memory exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _openai_peers(bench: Bench, in_process: Callable[[], Any], create: Callable[[Any], object]) -> list[Variant]:
    from openai.resources.chat.completions import Completions

    peers = [peer for peer in [langsmith_peer(bench, "wrap_openai", in_process, create)] if peer is not None]
    try:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        provider, exporter = memory_tracer()
        instrumentor = OpenAIInstrumentor()
        on, off = peer_patch(Completions, "create", lambda: instrumentor.instrument(tracer_provider=provider))
        spans = Tally()
        client = in_process()

        def openllmetry_off() -> None:  # spans are counted, never cleared before: any left by other turns show
            off()
            spans.n += len(exporter.get_finished_spans())
            exporter.clear()

        peers.append(Variant("OpenLLMetry OpenAIInstrumentor", lambda: create(client), role="peer", setup=on,
                             teardown=openllmetry_off, recorded=spans))
    except ImportError as exc:
        bench.say(f"  (skipping OpenLLMetry: {exc})")
    return peers


def build_openai(bench: Bench) -> list[Variant]:
    """Every variant measured: the bare calls first, then the floor, ours and the peers."""
    import httpx
    import openai
    from openai.resources.chat.completions import Completions

    from keito_instrument.integrations import openai as keito_openai

    body = fresh_bodies(COMPLETION, b"chatcmpl-bench")

    def answer(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(200, content=body(), headers={"Content-Type": "application/json"})

    def in_process() -> openai.OpenAI:
        return openai.OpenAI(base_url="http://api.bench.invalid/v1", api_key="sk-bench", max_retries=0,
                             http_client=httpx.Client(transport=httpx.MockTransport(answer)))

    def create(client: openai.OpenAI) -> object:
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    client = in_process()
    api_url = bench.stack.enter_context(serve(api_handler(body)))
    socket_client = openai.OpenAI(base_url=f"{api_url}/v1", api_key="sk-bench", max_retries=0)
    floor_on, floor_off = class_patch(Completions, "create", read_usage)
    ours, ours_socket = Tally(), Tally()
    found = [
        Variant("bare call", lambda: create(client), role="bare"),
        Variant("floor: class-level wrapper reading .usage", lambda: create(client), role="floor",
                setup=floor_on, teardown=floor_off),
        Variant("keito instrument() (in a session)", lambda: create(client), role="ours",
                setup=keito_openai.instrument, teardown=keito_openai.uninstrument,
                scope=keito_session_scope(ours), recorded=ours),
        *(_openai_peers(bench, in_process, create) if bench.with_peers else []),
        Variant("bare call", lambda: create(socket_client), role="bare", group=SOCKET),
        Variant("keito instrument() (in a session)", lambda: create(socket_client), role="ours", group=SOCKET,
                setup=keito_openai.instrument, teardown=keito_openai.uninstrument,
                scope=keito_session_scope(ours_socket), recorded=ours_socket),
    ]
    return found


def main(argv: list[str] | None = None) -> int:
    import openai

    return run(argv, name="bench_openai", doc=__doc__ or "", client=f"openai {openai.__version__}",
               build=build_openai)


if __name__ == "__main__":
    sys.exit(main())
