"""What the threading integration adds to `ThreadPoolExecutor.submit` and `Thread.start`,
measured side by side in one run (medians of interleaved rounds).

    python benchmarks/bench_threading.py [--rounds 30] [--quick]

Rows, per call, with the integration off (the stdlib) and on:
- `submit()` of a no-op from outside any session (the integration only reads two context
  variables and hands the call on);
- `submit()` from inside an open session (the work is wrapped, the session held open while the
  work is outstanding, the session set and reset around it in the worker);
- `Thread.start()` + `join()` of a no-op thread inside a session;
- for scale, one `record_llm_call` (one journal write, the core's durable append per event).
The submit rows time each `submit()` call alone, in the caller's CPU time (`time.thread_time`:
what the caller spends, not the time other threads hold the GIL; wall-clock readings on a loaded
machine vary by more than the difference measured). Inside a session the first
piece of outstanding work opens a run and the last one ends it (two journal writes per burst, not
per task): "fan-out" submits while the pool is busy, "one at a time" waits for each no-op first.
Target (docs/performance.md): a few microseconds per submit, far below one model call.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

os.environ.setdefault("KEITO_LEDGER", os.path.join(tempfile.mkdtemp(), "bench.sqlite3"))

import keito_instrument as keito
from keito_instrument.integrations import threading as keito_threading

WORKERS = 2


def noop() -> None:
    return None


def submit_loop(pool: ThreadPoolExecutor, n: int, burst: bool) -> float:
    """Per-submit time on the caller's thread. `burst`: the pool's workers are busy meanwhile (the
    work of one fan-out overlaps); otherwise each no-op is done before the next submit, the worst
    case for the integration (every submit starts a new burst of outstanding work)."""
    gate = threading.Event()
    blockers = [pool.submit(gate.wait) for _ in range(WORKERS)] if burst else []
    total = 0.0
    futures = []
    for _ in range(n):
        start = time.thread_time()
        futures.append(pool.submit(noop))
        total += time.thread_time() - start
        if not burst:
            futures[-1].result()
    gate.set()
    wait(futures + blockers)
    return total / n * 1e6


def record_call() -> float:
    start = time.perf_counter()
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)
    return (time.perf_counter() - start) * 1e6


def in_session(fn: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        with keito.session():
            return fn()

    return run


def thread_loop(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        t = threading.Thread(target=noop)
        t.start()
        t.join()
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="a few rounds, to check the script runs")
    args = parser.parse_args()
    rounds, n, n_threads = (3, 200, 20) if args.quick else (args.rounds, 2000, 200)
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    rows: dict[str, Callable[[], float]] = {
        "submit, no session": lambda: submit_loop(pool, n, burst=True),
        "submit, in a session (fan-out)": in_session(lambda: submit_loop(pool, n, burst=True)),
        "submit, in a session (one at a time)": in_session(lambda: submit_loop(pool, n // 4, burst=False)),
        "Thread start+join, in a session": in_session(lambda: thread_loop(n_threads)),
        "(for scale: record_llm_call)": in_session(lambda: statistics.median(record_call() for _ in range(200))),
    }
    results: dict[tuple[str, bool], list[float]] = {(name, on): [] for name in rows for on in (False, True)}
    order = [(name, on) for name in rows for on in (False, True)]
    for _ in range(rounds):
        random.shuffle(order)
        for name, on in order:
            if on:
                keito_threading.instrument()
            else:
                keito_threading.uninstrument()
            results[(name, on)].append(rows[name]())
    keito_threading.uninstrument()
    pool.shutdown()
    print(f"{'microseconds per call (median)':38} {'stdlib':>9} {'instrumented':>13} {'added':>8}")
    for name in rows:
        off = statistics.median(results[(name, False)])
        on = statistics.median(results[(name, True)])
        print(f"{name:38} {off:9.2f} {on:13.2f} {on - off:+8.2f}")
    print(f"(python {sys.version.split()[0]}, {rounds} rounds)")
    keito.shutdown(5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
