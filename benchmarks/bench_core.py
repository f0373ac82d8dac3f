"""Core overhead, measured side by side in one run (medians of interleaved rounds).

    python benchmarks/bench_core.py [--rounds 40] [--quick]

Rows:
- record_llm_call inside an open session (the per-model-call hot path), next to an empty call;
- a @track_agent function called inside an open session (what the decorator adds to every call
  of a decorated function), next to the same function undecorated: called in a burst (a step
  less than `COVERED_GAP` after the session's last journal line writes its end line only), and
  with every step writing its begin line too (as a step called a while after the last one);
- a whole one-call session, as a @track_agent function and as a `with keito.session()` block
  (start, call, end: each event journalled durably on the host's thread; the billing thread
  folds, prices and stores it afterwards, its CPU shown apart), next to the same function
  undecorated;
- `import keito_instrument` in a fresh interpreter, next to `import json` (median of runs).
Targets (issue 9, docs/performance.md): the hot path and the decorator's per-call overhead stay
under 10 microseconds; a whole session at most 50 microseconds on the host's thread;
`import keito_instrument` under 50 ms.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("KEITO_LEDGER", os.path.join(tempfile.mkdtemp(), "bench.sqlite3"))

import keito_instrument as keito
from keito_instrument import _pipeline, _session

APART = "@track_agent step, begin written"


def per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6  # microseconds


def import_ms(module: str, runs: int) -> float:
    """Median wall time of importing `module` in a fresh interpreter (its start-up excluded).

    Bytecode is written and a first run discarded, as for an installed package (pip compiles it
    at install time): with PYTHONDONTWRITEBYTECODE set, every run would recompile the sources.
    """
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def once() -> float:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        return float(run.stdout)

    once()
    return statistics.median(once() for _ in range(runs)) * 1000


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

    @keito.track_agent
    def tracked_step() -> int:
        return 1

    @keito.track_agent(agent_id="bench")
    def tracked_agent() -> int:
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1200, output_tokens=300)
        return 1

    def with_block() -> None:
        with keito.session(agent_id="bench"):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1200, output_tokens=300)

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

    def bare_in_context() -> None:
        hot_context.run(bare_agent)

    def step_in_context() -> None:
        hot_context.run(tracked_step)

    tracked_agent()  # warm up: pricing data loaded, spool created
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "empty call": (empty_in_context, calls),
        "record_llm_call (hot path)": (hot_path, calls),
        "undecorated step": (bare_in_context, calls),
        "@track_agent step in a session": (step_in_context, calls),
        APART: (step_in_context, calls),
        "undecorated agent": (bare_agent, sessions),
        "@track_agent session": (tracked_agent, sessions),
        "with keito.session() session": (with_block, sessions),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    background: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        order = list(cases)
        random.shuffle(order)
        for name in order:
            fn, n = cases[name]
            # The billing thread's work for the previous case is done before this one is timed
            # (else it would compete for the GIL inside the timing), and its CPU for this case is
            # measured apart: the process's CPU over the timed run and the settling, minus
            # this thread's CPU in the timed run.
            _pipeline.settle(30.0)
            gap = _session.COVERED_GAP
            if name == APART:
                _session.COVERED_GAP = 0.0  # every step writes its begin line
            cpu, own = time.process_time(), time.thread_time()
            results[name].append(per_call(fn, n))
            own = time.thread_time() - own
            _session.COVERED_GAP = gap
            _pipeline.settle(30.0)  # (on this thread: the rest of the billing work, counted as background)
            background[name].append(((time.process_time() - cpu) - own) / n * 1e6)
    hot_context.run(open_session.__exit__, None, None, None)
    keito.shutdown(timeout=1.0)
    import_runs = 3 if args.quick else 11
    imports = {module: import_ms(module, import_runs) for module in ("json", "keito_instrument")}

    med = {name: statistics.median(values) for name, values in results.items()}
    bg = {name: statistics.median(values) for name, values in background.items()}
    print(f"{'case':34} {'median us/call':>15} {'background CPU us':>18}")
    for name, value in med.items():
        print(f"{name:34} {value:15.2f} {bg[name]:18.2f}")
    print()
    for module, ms in imports.items():
        print(f"{'import ' + module:32} {ms:12.2f} ms")
    print()
    hot = med["record_llm_call (hot path)"] - med["empty call"]
    step = med["@track_agent step in a session"] - med["undecorated step"]
    apart = med[APART] - med["undecorated step"]
    whole = med["@track_agent session"] - med["undecorated agent"]
    block = med["with keito.session() session"] - med["undecorated agent"]
    print(f"hot path adds          {hot:8.2f} us per LLM call       (target < 10 us)")
    print(f"@track_agent adds      {step:8.2f} us per call          (target < 10 us; in a burst)")
    print(f"                       {apart:8.2f} us per call          (its begin line written too)")
    print(f"a session costs        {whole:8.2f} us once on the host  (target <= 50 us; start + one call + end, "
          "journalled durably)")
    print(f"  as a with block      {block:8.2f} us once on the host")
    print(f"  + billing thread     {bg['@track_agent session']:8.2f} us CPU once (fold, price, records, ledger)")
    print(f"import keito_instrument {imports['keito_instrument']:7.2f} ms                (target < 50 ms)")


if __name__ == "__main__":
    main()
