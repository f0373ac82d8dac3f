"""Cost of the keito CrewAI listener per LLM call, next to the same crew run without it.

    python benchmarks/bench_crewai.py            # full run
    python benchmarks/bench_crewai.py --quick    # smoke run (CI)

Three measurements, in one process, side by side:
  1. handler cost: our handler fed real CrewAI event objects (start + completion of one LLM call),
     in microseconds per call; this is the CPU we add on CrewAI's handler threads;
  2. crew runs on a bus with only our listener vs. an empty bus (a crew of 2 agents, a fake LLM
     making `--calls` calls per kickoff), interleaved, median and min wall time per kickoff until
     the session is stored (so "with keito" includes the session's one local ledger write), and
     the difference divided by the kickoff's LLM calls;
  3. the same on CrewAI's default bus (its console/trace handlers), with and without us.
The ratios are what matter; absolute numbers depend on the machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_DISABLE_VERSION_CHECK", "true")

import argparse
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from crewai import Agent, Crew, Task
from crewai.events import LLMCallCompletedEvent, LLMCallStartedEvent, crewai_event_bus
from crewai.events.event_context import event_scope
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context

import keito_instrument as keito
from keito_instrument.integrations import crewai as keito_crewai

FINAL = "Thought: done\nFinal Answer: ok"
STEP = 'Thought: keep going\nAction: noop\nAction Input: {{"x": {n}}}'  # distinct args: crewai stops repeats


class BenchLLM(BaseLLM):
    """Emits the LLM events with usage, as a provider does; `steps` tool rounds before answering."""

    steps: int = 0
    turn: int = 0

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        with llm_call_context():
            self._emit_call_started_event(messages=messages, from_task=from_task, from_agent=from_agent)
            text = FINAL if self.turn % (self.steps + 1) == self.steps else STEP.format(n=self.turn)
            self.turn += 1
            usage = {"prompt_tokens": 500, "completion_tokens": 50}
            self._track_token_usage_internal(usage)
            self._emit_call_completed_event(
                response=text,
                call_type=LLMCallType.LLM_CALL,
                from_task=from_task,
                from_agent=from_agent,
                messages=messages,
                usage=usage,
            )
            return text

    def get_input_tokens_count(self, messages: Any, tools: Any = None) -> int:  # type: ignore[override]
        return 500

    def get_context_window_size(self) -> int:
        return 128_000


def make_crew(calls_per_agent: int) -> Crew:
    from crewai.tools import tool

    @tool("noop")
    def noop(x: int) -> int:
        """Return x."""
        return x

    llm = BenchLLM(model="gpt-4o-mini", steps=calls_per_agent - 1)
    agents: list[Any] = [
        Agent(role=f"A{i}", goal="g", backstory="b", llm=llm, tools=[noop]) for i in range(2)
    ]
    tasks = [Task(name=f"t{i}", description="d", expected_output="o", agent=a) for i, a in enumerate(agents)]
    return Crew(agents=agents, tasks=tasks)


@contextlib.contextmanager
def bus(keep_defaults: bool, ours: bool) -> Iterator[keito_crewai.KeitoCrewListener | None]:
    scope = contextlib.nullcontext() if keep_defaults else crewai_event_bus.scoped_handlers()
    with scope:
        listener = keito_crewai.instrument() if ours else None
        try:
            yield listener
        finally:
            if ours:
                keito_crewai.uninstrument()


def kickoff_time(crew: Crew, listener: keito_crewai.KeitoCrewListener | None) -> float:
    start = time.perf_counter()
    crew.kickoff()
    crewai_event_bus.flush(timeout=30)
    if listener is not None:
        listener.wait(timeout=30)
    return time.perf_counter() - start


def handler_cost(n: int) -> float:
    """Microseconds our handler spends on one LLM call (started + completed events), in one kickoff."""
    with crewai_event_bus.scoped_handlers():
        listener = keito_crewai.instrument()
        llm = BenchLLM(model="gpt-4o-mini")
        kickoff_id = str(uuid.uuid4())
        events: list[tuple[Any, Any]] = []
        for _ in range(n):
            call_id = str(uuid.uuid4())
            events.append((LLMCallStartedEvent(model="gpt-4o-mini", call_id=call_id), None))
            done = LLMCallCompletedEvent(
                model="gpt-4o-mini",
                call_id=call_id,
                response="ok",
                call_type=LLMCallType.LLM_CALL,
                usage={"prompt_tokens": 500, "completion_tokens": 50},
            )
            events.append((done, None))
        with event_scope(kickoff_id, "crew_kickoff_started"):  # what the bus copies into handlers
            start = time.perf_counter()
            for event, _ in events:
                listener._handle(llm, event)
            elapsed = time.perf_counter() - start
        keito_crewai.uninstrument()
    return elapsed / n * 1e6


def compare(
    label: str, keep_defaults: bool, crew_factory: Callable[[], Crew], rounds: int, calls: int
) -> None:
    base: list[float] = []
    ours: list[float] = []
    for flag in (False, True):  # warm-up: first-kickoff costs (imports, caches) are not ours
        with bus(keep_defaults, ours=flag) as listener:
            kickoff_time(crew_factory(), listener)
    for _ in range(rounds):  # interleaved, so drift affects both sides alike
        with bus(keep_defaults, ours=False) as listener:
            base.append(kickoff_time(crew_factory(), listener))
        with bus(keep_defaults, ours=True) as listener:
            ours.append(kickoff_time(crew_factory(), listener))
    for stat, b, o in (
        ("median", statistics.median(base), statistics.median(ours)),
        ("min", min(base), min(ours)),
    ):
        print(
            f"{label:<31} {stat:>6}  without: {b * 1e3:8.2f} ms   with keito: {o * 1e3:8.2f} ms   "
            f"ratio {o / b:5.3f}   {(o - b) * 1e3:+6.2f} ms/kickoff   {(o - b) / calls * 1e6:+7.1f} us/LLM call"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--calls", type=int, default=10, help="LLM calls per agent per kickoff")
    args = parser.parse_args()
    rounds = 3 if args.quick else 25
    n = 2_000 if args.quick else 50_000
    calls = 2 * args.calls
    os.environ["KEITO_LEDGER"] = os.path.join(tempfile.mkdtemp(prefix="keito-bench-"), "ledger.sqlite3")
    keito.configure()

    print(f"crewai benchmark: {calls} LLM calls per kickoff, {rounds} rounds, {n} calls for the handler cost")
    print(f"{'handler cost (started + completed)':<38} {handler_cost(n):8.2f} us per LLM call")
    make = lambda: make_crew(args.calls)  # noqa: E731
    compare("crew, empty bus", keep_defaults=False, crew_factory=make, rounds=rounds, calls=calls)
    compare(
        "crew, crewai default handlers", keep_defaults=True, crew_factory=make, rounds=rounds, calls=calls
    )
    keito.shutdown(timeout=5)


if __name__ == "__main__":
    main()
