"""Child processes of the billing-engine acceptance tests: `python _engine_child.py MODE [ARGS]`.

Every child is configured by `KEITO_*` environment variables set by the parent (ledger, and
for those that deliver, the credentials and base URL of a `KeitoTestServer`). Modes:

lc-turns N STYLE    N LangChain turns of thread "t-1" (STYLE: langgraph or lcel), a line per
                    finished turn, then "done"; then waits to be killed (SIGKILL: no atexit).
decorator-turns N   the same with `@keito.track_agent(session_id="t-1")` calls.
record-turns N      the same with `keito.record_llm_call(..., session_id="t-1")` alone.
worker              a web worker serving turns of conversation "thread-x", driven by commands
                    on stdin (begin / call IN OUT / end_run / end_session / exit), answering
                    one line per command.
fold [LATER]        fold the journals of dead processes into the ledger (twice), print "folded";
                    LATER moves the engine's clock that many seconds forward (a later process).
random SEED N MARK  a seeded mix of N sessions, resuming from the durable progress marker file
                    MARK; prints a JSON line before ("begin") and after ("done") each step.
recover             the last process: end what is left, deliver everything, print the counts.

ENGINE_CHILD_TICK (seconds) changes how often the billing thread folds when nothing wakes it.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import keito_instrument as keito

THREAD = "t-1"


def say(*parts: object) -> None:
    """One line to the parent, flushed at once (the parent may SIGKILL us right after)."""
    print(*parts, flush=True)


def turn_usage(k: int) -> tuple[int, int]:
    """The usage of turn k (1-based) of the kill tests: distinct per turn."""
    return 1000 * k + 17, 100 * k + 3


def park() -> int:
    """Wait to be killed."""
    time.sleep(120)
    return 3  # never reached in the tests


# -- test 1: a named session's turns, then SIGKILL ----------------------------------------------
def lc_turns(n: int, style: str) -> int:
    """LangChain turns of thread "t-1": a real LangGraph graph (`configurable.thread_id`, which
    LangGraph copies into the run metadata) or a plain LCEL runnable (`metadata.thread_id`: since
    langchain-core 1.0 `configurable` is no longer copied there), calling a real chat model of
    langchain-core whose canned replies carry `usage_metadata` as provider integrations do."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.runnables import RunnableLambda

    from keito_instrument.integrations.langchain import KeitoCallbackHandler

    replies = []
    for k in range(1, n + 1):
        inp, out = turn_usage(k)
        replies.append(
            AIMessage(
                content=f"answer {k}",
                usage_metadata={"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out},
                response_metadata={"model_name": "gpt-4o-mini"},
            )
        )
    model = GenericFakeChatModel(messages=iter(replies))
    handler = KeitoCallbackHandler(agent_id="lc-bot")
    app: Any
    config: dict[str, Any]
    if style == "langgraph":
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.graph import START, MessagesState, StateGraph

        def call_model(state: MessagesState) -> dict[str, list[Any]]:
            return {"messages": [model.invoke(state["messages"])]}

        graph = StateGraph(MessagesState)
        graph.add_node("agent", call_model)
        graph.add_edge(START, "agent")
        app = graph.compile(checkpointer=InMemorySaver())
        config = {"configurable": {"thread_id": THREAD}, "callbacks": [handler]}
    else:
        app = RunnableLambda(lambda q: {"messages": [model.invoke(q)]})
        config = {"configurable": {"thread_id": THREAD}, "metadata": {"thread_id": THREAD}, "callbacks": [handler]}
    for k in range(1, n + 1):
        result = app.invoke({"messages": [("human", f"question {k}")]} if style == "langgraph" else f"q {k}",
                            config=config)
        assert result["messages"][-1].content == f"answer {k}"
        say("turn", k, *turn_usage(k))
    say("done")
    return park()


def decorator_turns(n: int) -> int:
    """Turns as calls of a function decorated with a fixed session id."""

    @keito.track_agent(session_id=THREAD, agent_id="decorated")
    def serve(k: int) -> None:
        inp, out = turn_usage(k)
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=inp, output_tokens=out)

    for k in range(1, n + 1):
        serve(k)
        say("turn", k, *turn_usage(k))
    say("done")
    return park()


def record_turns(n: int) -> int:
    """Turns recorded with `record_llm_call(session_id=...)` alone (no run)."""
    for k in range(1, n + 1):
        inp, out = turn_usage(k)
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=inp, output_tokens=out, session_id=THREAD)
        say("turn", k, inp, out)
    say("done")
    return park()


def fold(later: float) -> int:
    """A recovering process, started `later` seconds from now as far as the engine's clock goes
    (an idle conversation is due then): fold the dead processes' journals (twice: the second
    adds nothing)."""
    from keito_instrument import _engine, _pipeline
    from keito_instrument._engine import fold as engine_fold

    if later:
        engine_fold.clock = lambda: time.time() + later
    path = _pipeline.ledger_path()
    _engine.fold_ledger(path, include_live=False)
    _engine.fold_ledger(path, include_live=False)
    say("folded")
    return 0


# -- test 2: one conversation served by several live workers -------------------------------------
def worker() -> int:
    """Serve turns of "thread-x" as the parent commands; stay alive until told to exit."""
    conversation = "thread-x"
    run: keito.Run | None = None
    say("ready", os.getpid())
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "begin":
            run = keito.begin_run(conversation, close="idle", agent_id="web", framework="test")
            say("ok", f"{time.time():.6f}")
        elif cmd == "call":
            counted = keito.record_llm_call(
                "gpt-4o", "openai", input_tokens=int(args[0]), output_tokens=int(args[1]), session_id=conversation
            )
            say("ok", counted)
        elif cmd == "end_run":
            at = time.time()
            keito.end_run(run)
            say("ok", f"{at:.6f}")
        elif cmd == "end_session":
            say("ok", keito.end_session(conversation))
        elif cmd == "exit":
            break
        else:
            say("error", cmd)
    return 0


# -- test 4: a seeded random mix, killed and restarted -------------------------------------------
Step = tuple[str, list[list[int]], bool]  # (kind, calls [[input, output], ...], logs an outcome)


def plan(seed: int, index: int) -> tuple[str, list[Step]]:
    """Session `index` of the seeded mix: its id and its steps, the same in every incarnation."""
    rng = random.Random(f"{seed}:{index}")
    roll = rng.random()

    def calls() -> list[list[int]]:
        return [[rng.randint(100, 5000), rng.randint(10, 800)] for _ in range(rng.randint(1, 3))]

    if roll < 0.45:  # a named conversation: several turns, then (usually) an explicit end
        sid = f"conv-{seed}-{index}"
        steps: list[Step] = [("turn", calls(), False) for _ in range(rng.randint(2, 4))]
        if rng.random() < 0.7:
            steps.append(("end", [], False))  # else: ends when idle (or at the last shutdown)
        return sid, steps
    if roll < 0.8:
        return f"agent-{seed}-{index}", [("agent", calls(), False)]
    return f"outcome-{seed}-{index}", [("outcome", calls(), True)]


def read_marker(path: str) -> tuple[int, int]:
    """(session index, step index) to resume from."""
    try:
        with open(path) as fh:
            index, step = fh.read().split()
        return int(index), int(step)
    except FileNotFoundError:
        return 0, 0


def write_marker(path: str, index: int, step: int) -> None:
    """Atomically replace the marker (a SIGKILL leaves the old one or the new one, never half)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{index} {step}")
    os.replace(tmp, path)


@keito.track_agent(session_id=lambda sid, calls, pace: sid, agent_id="agent-bot")
def agent_session(sid: str, calls: list[list[int]], pace: Callable[[], None]) -> None:
    """A per-run session: it ends when this call returns."""
    for inp, out in calls:
        keito.record_llm_call("gpt-4o", "openai", input_tokens=inp, output_tokens=out)
        pace()


def run_step(sid: str, step: Step, pace: Callable[[], None]) -> None:
    """Do one step's work (nothing is printed here)."""
    kind, calls, outcome = step
    if kind == "turn":
        run = keito.begin_run(sid, close="idle", agent_id="chat-bot", framework="test")
        for inp, out in calls:
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=inp, output_tokens=out, session_id=sid)
            pace()
        keito.end_run(run)
    elif kind == "end":
        keito.end_session(sid)
    elif kind == "agent":
        agent_session(sid, calls, pace)
    else:
        with keito.session(sid, agent_id="closer"):
            for inp, out in calls:
                keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=inp, output_tokens=out)
                pace()
            if outcome:
                keito.log_outcome("ticket_resolved", quantity=1, unit_price=0.5, evidence={"ticket": sid})


def random_mix(seed: int, total: int, marker: str) -> int:
    """Run sessions `total` of the seeded mix from the marker on, then deliver."""
    from keito_instrument._export import policy

    policy.set_policy(policy.RetryPolicy(base=0.02, cap=0.3, jitter=0.5, auth_pause=60.0, lease=30.0))
    pace_rng = random.Random(os.getpid())

    def pace() -> None:
        time.sleep(pace_rng.uniform(0.0, 0.004))

    start, first_step = read_marker(marker)
    left = sum(len(plan(seed, i)[1]) for i in range(start, total)) - first_step
    say(json.dumps({"ev": "resume", "index": start, "step": first_step, "left": left}))
    for index in range(start, total):
        sid, steps = plan(seed, index)
        for number in range(first_step if index == start else 0, len(steps)):
            step = steps[number]
            say(json.dumps({"ev": "begin", "sid": sid, "kind": step[0], "calls": step[1], "outcome": step[2]}))
            run_step(sid, step, pace)
            say(json.dumps({"ev": "done", "sid": sid}))
            write_marker(marker, index, number + 1)
        write_marker(marker, index + 1, 0)
    say(json.dumps({"ev": "sessions_done"}))
    ok = keito.flush(30.0)
    say(json.dumps({"ev": "flushed", "ok": ok}))
    return 0


def recover() -> int:
    """End every session the dead processes left open, deliver everything, print the counts."""
    from keito_instrument import _engine, _pipeline
    from keito_instrument._export import policy
    from keito_instrument._spool import get_spool

    policy.set_policy(policy.RetryPolicy(base=0.02, cap=0.3, jitter=0.5, auth_pause=60.0, lease=30.0))
    path = _pipeline.ledger_path()
    spool = get_spool(path)
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        _engine.fold_ledger(path, include_live=False)
        if not spool.live_sessions():
            break
        time.sleep(0.1)
    while time.monotonic() < deadline:
        ok = keito.flush(5.0)
        counts = spool.counts()
        if ok and counts["pending"] == counts["sending"] == 0:
            break
    keito.shutdown(10.0)
    say(json.dumps({"counts": spool.counts(), "live": len(spool.live_sessions())}))
    return 0


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    tick = os.environ.get("ENGINE_CHILD_TICK")
    if tick:  # seconds between the billing thread's folds when nothing wakes it (default 1)
        from keito_instrument import _engine

        _engine.TICK = float(tick)
    if mode == "lc-turns":
        return lc_turns(int(args[0]), args[1])
    if mode == "decorator-turns":
        return decorator_turns(int(args[0]))
    if mode == "record-turns":
        return record_turns(int(args[0]))
    if mode == "fold":
        return fold(float(args[0]) if args else 0.0)
    if mode == "worker":
        return worker()
    if mode == "random":
        return random_mix(int(args[0]), int(args[1]), args[2])
    if mode == "recover":
        return recover()
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    raise SystemExit(main())
