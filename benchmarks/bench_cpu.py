"""CPU a session costs the whole process (every thread, delivery included), next to Langfuse and LangSmith.

The same LangChain chain as bench_langchain (`ChatPromptTemplate | fake chat model with usage`)
runs under every variant, interleaved: each round runs every variant once, in a freshly shuffled
order. One turn is `--calls` invokes followed by the variant's own flush until what those invokes
produced is delivered (Langfuse's `flush()`, LangSmith's `flush()`, `keito.flush()`, which bills
and delivers; each bounded). Its cost is `time.process_time()` (all threads of this process: the
host's, the peers' exporters, our billing and exporter threads) per invoke, minus that of "no
callbacks" in the same round; medians over the rounds are reported. The host-thread share
(`time.thread_time()` over the invokes alone) is shown beside it.

Variants: no callbacks; Langfuse's CallbackHandler and LangSmith's LangChainTracer, exporting to
bench_langchain's sink server; ours, KeitoCallbackHandler with one session per invoke, delivering
to a KeitoTestServer, at granularity "session" and at granularity "day" (each with its own
ledger; the settings are switched before each of our turns, outside the timing, as
bench_delivery does). Both servers run in another process, so their HTTP work is not counted.
Nothing leaves 127.0.0.1.

A day roll-up is delivered once its day is over, so at granularity "day" the delivery part is
near zero: what is timed is the journal lines, the billing (folding each session into the day's
row) and the ledger writes.

Targets: ours adds <= 1.0x Langfuse's CPU per invoke at granularity "session", <= 0.2x at "day".

    .venv/bin/python benchmarks/bench_cpu.py            # 40 rounds x 250 calls, about 2-3 minutes
    .venv/bin/python benchmarks/bench_cpu.py --quick    # a smoke run (numbers mean nothing)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_langchain import FakeChat
from langchain_core.prompts import ChatPromptTemplate

import keito_instrument as keito
from keito_instrument import _config
from keito_instrument.integrations import langchain as keito_lc

FLUSH_TIMEOUT = 10.0  # seconds any variant's flush may take; a flush that hits it is reported
QUESTION = {"q": "hello"}

# Both servers, in one other process: a KeitoTestServer for ours, bench_langchain's sink for the
# peers (with a count of what it received). One line on stdin asks for the counts; EOF stops both.
_SERVERS = r"""
import collections, json, sys
sys.path.insert(0, sys.argv[1])
import bench_langchain
from keito_instrument.testing import KeitoTestServer
received = collections.Counter()
ok = bench_langchain._Sink._ok
def counted(self):
    received[self.command + " " + self.path.split("?")[0]] += 1
    ok(self)
bench_langchain._Sink.do_GET = bench_langchain._Sink.do_POST = counted
bench_langchain._Sink.do_PUT = bench_langchain._Sink.do_PATCH = counted
with KeitoTestServer() as keito_server, bench_langchain.sink_server() as sink_url:
    print(json.dumps({"keito": keito_server.url, "sink": sink_url}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"time_entries": len(keito_server.time_entries), "expenses": len(keito_server.expenses),
                          "duplicates": len(keito_server.duplicates()), "sink": dict(received)}), flush=True)
"""


@dataclass
class Variant:
    """One way of running the chain, and how to wait until what it produced is delivered."""

    name: str
    callbacks: list[Any] | None = None
    setup: Callable[[], None] = lambda: None  # before the timing
    deliver: Callable[[], bool] = lambda: True  # timed; True when everything was delivered
    role: str = "base"  # base | peer | ours
    note: str = ""
    invokes: int = 0  # every invoke made, set-up ones included
    cpu: list[float] = field(default_factory=list)  # process CPU s per invoke, one per round
    host: list[float] = field(default_factory=list)  # this thread's CPU s per invoke, invokes only
    flush: list[float] = field(default_factory=list)  # process CPU s per invoke spent in deliver()
    undelivered: int = 0  # turns whose deliver() gave up


class Servers:
    """The KeitoTestServer and the peers' sink, in a child process."""

    def __init__(self) -> None:
        here = str(Path(__file__).resolve().parent)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVERS, here], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        urls = json.loads(self._proc.stdout.readline())
        self.pid = self._proc.pid
        self.keito_url: str = urls["keito"]
        self.sink_url: str = urls["sink"]

    def counts(self) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("counts\n")
        self._proc.stdin.flush()
        found: dict[str, Any] = json.loads(self._proc.stdout.readline())
        return found

    def stop(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _bounded(work: Callable[[], object], timeout: float = FLUSH_TIMEOUT) -> bool:
    """Run a peer's flush for at most `timeout` seconds; True if it returned (its thread's CPU counts)."""
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout)
    return not worker.is_alive()


def peers(sink_url: str, closers: list[Callable[[], object]]) -> list[Variant]:
    """Langfuse and LangSmith, as bench_langchain sets them up, each flushed inside its timing."""
    found: list[Variant] = []
    try:
        from langfuse import Langfuse
        from langfuse.langchain import CallbackHandler as LangfuseHandler

        langfuse = Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench", base_url=sink_url)
        closers.append(langfuse.shutdown)
        found.append(
            Variant(
                "Langfuse CallbackHandler",
                [LangfuseHandler(public_key="pk-lf-bench")],
                deliver=lambda: _bounded(langfuse.flush),
                role="peer",
            )
        )
    except ImportError as exc:
        print(f"  (skipping Langfuse: {exc})")
    try:
        from langchain_core.tracers.langchain import LangChainTracer
        from langsmith import Client

        client = Client(api_url=sink_url, api_key="ls-bench", auto_batch_tracing=True)
        tracer = LangChainTracer(client=client, project_name="bench")
        closers.append(client.cleanup)

        def langsmith_flush() -> None:
            tracer.wait_for_futures()
            client.flush(timeout=FLUSH_TIMEOUT)

        def langsmith_deliver() -> bool:
            queue = client.tracing_queue
            return _bounded(langsmith_flush) and (queue is None or queue.unfinished_tasks == 0)

        found.append(Variant("LangSmith LangChainTracer", [tracer], deliver=langsmith_deliver, role="peer"))
    except ImportError as exc:
        print(f"  (skipping LangSmith: {exc})")
    return found


def ours(name: str, granularity: str, ledger: Path, credentials: dict[str, str], chain: Any) -> Variant:
    """KeitoCallbackHandler, one session per invoke, delivering at `granularity` from its own ledger."""
    handler = keito_lc.KeitoCallbackHandler()
    variant = Variant(name, [handler], deliver=lambda: keito.flush(FLUSH_TIMEOUT), role="ours")

    def setup() -> None:
        # Switch the settings, then one session and a flush, so that whatever a change of settings
        # costs once (the ledger opened, the exporter's new settings) is not timed.
        _config.reset_settings()
        keito.configure(ledger_path=str(ledger), granularity=granularity, **credentials)
        # A fold the billing thread began before the switch bills with the settings it read then,
        # lines appended meanwhile included (granularity is not fixed at a session's open): the
        # flush waits for that fold to finish before this variant journals anything.
        keito.flush(FLUSH_TIMEOUT)
        chain.invoke(QUESTION, config={"callbacks": [handler]})
        variant.invokes += 1
        keito.flush(FLUSH_TIMEOUT)

    variant.setup = setup
    if granularity != "session":
        variant.note = f"(a {granularity} roll-up is delivered once its {granularity} is over: delivery ~0 here)"
    return variant


def turn(variant: Variant, chain: Any, calls: int) -> tuple[float, float, float, bool]:
    """(process CPU s, host-thread CPU s, process CPU s of the flush) per invoke; delivered?"""
    config: Any = {"callbacks": variant.callbacks} if variant.callbacks else None
    variant.setup()
    gc.collect()
    cpu, host = time.process_time(), time.thread_time()
    for _ in range(calls):
        chain.invoke(QUESTION, config=config)
    host_end, flush_start = time.thread_time(), time.process_time()
    delivered = variant.deliver()
    end = time.process_time()
    variant.invokes += calls
    return (end - cpu) / calls, (host_end - host) / calls, (end - flush_start) / calls, delivered


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f}"


def report(found: list[Variant], rounds: int, calls: int) -> None:
    base = found[0]
    print(f"\nCPU per invoke, median of {rounds} rounds x {calls} invokes + the variant's flush (order shuffled)")
    print(f"{'variant':36} {'all thr':>9} {'added':>9} {'of which':>9} {'host thr':>9}")
    print(f"{'':36} {'us':>9} {'us':>9} {'flush us':>9} {'added us':>9}")
    added: dict[str, float] = {}
    for v in found:
        added[v.name] = statistics.median(s - b for s, b in zip(v.cpu, base.cpu, strict=True))
        host = statistics.median(s - b for s, b in zip(v.host, base.host, strict=True))
        print(
            f"{v.name:36} {_us(statistics.median(v.cpu))} {_us(added[v.name])} "
            f"{_us(statistics.median(v.flush))} {_us(host)}  {v.note}".rstrip()
        )
    print("(all thr: time.process_time, every thread, flush included; host thr: time.thread_time of the calling")
    print(" thread over the invokes alone; added: minus 'no callbacks' in the same round)")
    langfuse = next((added[v.name] for v in found if v.name.startswith("Langfuse")), None)
    if langfuse is None or langfuse <= 0:
        print("\nno Langfuse number in this run: the targets cannot be checked")
        return
    for v in (v for v in found if v.role == "ours"):
        limit = 1.0 if "session" in v.name else 0.2
        ratio = added[v.name] / langfuse
        verdict = "met" if ratio <= limit else "NOT met"
        print(
            f"target: {v.name} <= {limit:.1f}x Langfuse: {added[v.name] * 1e6:.1f} us vs "
            f"{langfuse * 1e6:.1f} us = {ratio:.2f}x -> {verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=250, help="invokes per variant per round")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds x 10 calls")
    parser.add_argument("--no-peers", action="store_true", help="skip Langfuse and LangSmith")
    args = parser.parse_args(argv)
    rounds, calls = (3, 10) if args.quick else (args.rounds, args.calls)

    started = time.perf_counter()
    logging.getLogger().setLevel(logging.CRITICAL)  # peers' exporters may log about the sink
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(name, None)
    tmp = Path(tempfile.mkdtemp(prefix="keito-bench-cpu-"))
    servers = Servers()
    closers: list[Callable[[], object]] = []
    try:
        credentials = {
            "api_key": "kto_test_0123456789abcdef",  # KeitoTestServer's defaults
            "account_id": "cm_test_account",
            "base_url": servers.keito_url,
            "project_id": "prj_test",
            "task_id": "tsk_test",
            "expense_category_id": "cat_llm_usage",
        }
        chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | FakeChat()
        found = [
            Variant("no callbacks"),
            *([] if args.no_peers else peers(servers.sink_url, closers)),
            ours("keito handler, granularity=session", "session", tmp / "session.sqlite3", credentials, chain),
            ours("keito handler, granularity=day", "day", tmp / "day.sqlite3", credentials, chain),
        ]
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {len(found)} variants; servers in pid "
              f"{servers.pid}")
        for v in found:  # warm-up: imports, caches, first connections
            turn(v, chain, max(2, calls // 5))
        rng = random.Random(1234)
        for _ in range(rounds):
            order = list(found)
            rng.shuffle(order)
            for v in order:
                cpu, host, flush, delivered = turn(v, chain, calls)
                v.cpu.append(cpu)
                v.host.append(host)
                v.flush.append(flush)
                v.undelivered += not delivered
        report(found, rounds, calls)
        counts = servers.counts()
        sessions = next(v.invokes for v in found if v.name.endswith("session"))
        print(
            f"\ndelivered to the KeitoTestServer: {counts['time_entries']} time entries, {counts['expenses']} "
            f"expenses, {counts['duplicates']} duplicates, for {sessions} sessions at granularity=session "
            f"(and none yet from the day roll-up)"
        )
        # The premise of the numbers above (not a timing): every session of ours was delivered, once
        # (plus, if the run crossed midnight, the closed day's roll-up).
        all_delivered = not counts["duplicates"] and all(
            sessions <= counts[kind] <= sessions + 1 for kind in ("time_entries", "expenses")
        )
        if not all_delivered:
            print("ERROR: not every session was delivered exactly once; the numbers above do not mean much")
        sink = ", ".join(f"{path} x{n}" for path, n in sorted(counts["sink"].items()))
        print(f"the peers' sink received: {sink or 'nothing'}")
        for v in found:
            if v.undelivered:
                print(f"note: {v.name}: {v.undelivered} flush(es) gave up after {FLUSH_TIMEOUT:.0f} s")
    finally:
        keito.shutdown(timeout=5.0)
        for close in closers:
            _bounded(close, 3.0)
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"run took {time.perf_counter() - started:.1f} s")
    return 0 if all_delivered else 1


if __name__ == "__main__":
    sys.exit(main())
