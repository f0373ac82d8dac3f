"""Core overhead, measured side by side in one run (medians of interleaved rounds).

    python benchmarks/bench_core.py [--rounds 40] [--quick]

Rows:
- record_llm_call inside an open session (the per-model-call hot path), next to an empty call;
- a whole @track_agent session with one LLM call (start, call, end: records built, priced and
  written durably to the SQLite spool), next to the same function undecorated.
Targets (documented in docs/performance.md): the hot path stays within a few microseconds; a
whole session stays within a few milliseconds (it is dominated by one durable SQLite commit).
"""

from __future__ import annotations

import argparse
import contextvars
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("KEITO_LEDGER", os.path.join(tempfile.mkdtemp(), "bench.sqlite3"))

import keito_instrument as keito


def per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6  # microseconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="a few rounds, for a smoke run")
    args = parser.parse_args()
    rounds, calls, sessions = (3, 200, 20) if args.quick else (args.rounds, 5_000, 200)

    def empty() -> None:
        return None

    def bare_agent() -> int:
        return 1

    @keito.track_agent(agent_id="bench")
    def tracked_agent() -> int:
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1200, output_tokens=300)
        return 1

    # The hot-path session is current only inside its own context, so the whole-session case
    # below starts real sessions instead of joining this one.
    hot_context = contextvars.copy_context()
    open_session = keito.session(session_id="bench-hot-path")
    hot_context.run(open_session.__enter__)

    def record() -> None:
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1200, output_tokens=300)

    def hot_path() -> None:
        hot_context.run(record)

    def empty_in_context() -> None:
        hot_context.run(empty)

    tracked_agent()  # warm up: pricing data loaded, spool created
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "empty call": (empty_in_context, calls),
        "record_llm_call (hot path)": (hot_path, calls),
        "undecorated agent": (bare_agent, sessions),
        "@track_agent session": (tracked_agent, sessions),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        order = list(cases)
        random.shuffle(order)
        for name in order:
            fn, n = cases[name]
            results[name].append(per_call(fn, n))
    hot_context.run(open_session.__exit__, None, None, None)
    keito.shutdown(timeout=1.0)

    med = {name: statistics.median(values) for name, values in results.items()}
    print(f"{'case':32} {'median us/call':>15}")
    for name, value in med.items():
        print(f"{name:32} {value:15.2f}")
    print()
    print(f"hot path adds        {med['record_llm_call (hot path)'] - med['empty call']:8.2f} us per LLM call")
    print(f"a session costs      {med['@track_agent session'] - med['undecorated agent']:8.2f} us "
          "(start + one call + end with a durable spool write)")


if __name__ == "__main__":
    main()
