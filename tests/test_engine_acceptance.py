"""Acceptance tests of the billing engine: real processes, real SIGKILL, a real Keito server on 127.0.0.1.

- a SIGKILL right after a turn of a named session: the next process bills every turn once;
- three live workers serving one conversation: one time entry and one expense in Keito; a
  worker killed in the middle of a turn bills no time after its death;
- 360 back-dated sessions of 10 s: the day bills exactly 1.00 h;
- a seeded random mix of sessions, killed and restarted, through injected delivery faults:
  nothing lost, nothing duplicated, every completed turn's tokens billed exactly once.

The child processes are in `_engine_child.py`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument._config import get_settings
from keito_instrument._records import round_hours
from keito_instrument._spool import Spool
from keito_instrument.testing import Fault, KeitoTestServer

ROOT = Path(__file__).resolve().parents[1]
CHILD = [sys.executable, str(Path(__file__).with_name("_engine_child.py"))]
THREAD = "t-1"


def child_env(ledger: Path, **settings: str) -> dict[str, str]:
    """The environment of a child process: ours without any KEITO_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEITO_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["KEITO_LEDGER"] = str(ledger)
    env.update(settings)
    return env


def server_env(server: KeitoTestServer) -> dict[str, str]:
    """Settings that make a child deliver to `server`."""
    return {
        "KEITO_API_KEY": server.api_key,
        "KEITO_ACCOUNT_ID": server.account_id,
        "KEITO_BASE_URL": server.url,
        "KEITO_PROJECT_ID": server.project_id,
        "KEITO_TASK_ID": server.task_id,
        "KEITO_EXPENSE_CATEGORY_ID": server.expense_category_id,
    }


def run_child(env: dict[str, str], *args: str, timeout: float = 60.0) -> str:
    """Run a child to completion; its stdout."""
    done = subprocess.run([*CHILD, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def turns_then_kill(env: dict[str, str], *args: str) -> list[tuple[int, int, int]]:
    """Start a child that runs turns, SIGKILL it the moment it says "done"; the turns it reported."""
    child = subprocess.Popen(
        [*CHILD, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    turns: list[tuple[int, int, int]] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            words = line.split()
            if words == ["done"]:
                os.kill(child.pid, signal.SIGKILL)  # no atexit, no flush: only what is on disk survives
                break
            assert words[0] == "turn", line
            turns.append((int(words[1]), int(words[2]), int(words[3])))
        code = child.wait(timeout=10)
        assert code == -signal.SIGKILL, child.stderr.read() if child.stderr else code
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    return turns


def journal_segments(ledger: Path) -> list[str]:
    """The journal segments still beside the ledger."""
    directory = Path(f"{ledger}.journal")
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".jsonl", ".jmap")) if directory.exists() else []


def live_totals(spool: Spool) -> dict[str, tuple[int, int, int, int]]:
    """Per open ledger session: (input tokens, output tokens, LLM calls, runs still open) folded so far."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for row in spool.live_sessions():
        state = row["state"]
        slots = state["usage"].values()
        out[row["key"]] = (sum(s[0] for s in slots), sum(s[1] for s in slots), state["calls"], len(state["open_runs"]))
    return out


# -- 1. SIGKILL right after a turn of a named session ---------------------------------------------
@pytest.mark.parametrize("style", ["langgraph", "lcel", "record_llm_call"])
def test_kill_9_after_the_turns_of_a_named_conversation_bills_each_turn_once(tmp_path: Path, style: str) -> None:
    """A conversation that stays open across turns (LangGraph thread, LCEL run metadata, or
    `record_llm_call(session_id=...)`), killed right after its last turn: a new process finds it
    open with every turn's tokens, then ends it once it is idle and bills it once."""
    if style == "record_llm_call":
        args = ["record-turns", "3"]
    else:
        pytest.importorskip("langchain_core")
        if style == "langgraph":
            pytest.importorskip("langgraph")
        args = ["lc-turns", "3", style]
    ledger = tmp_path / "killed.sqlite3"
    turns = turns_then_kill(child_env(ledger), *args)
    assert [k for k, _i, _o in turns] == [1, 2, 3]
    tokens_in, tokens_out = sum(t[1] for t in turns), sum(t[2] for t in turns)
    spool = Spool(ledger)

    # A new process with the default idle timeout (30 min): the conversation is still open,
    # with all three turns folded in, and nothing is billed yet.
    assert run_child(child_env(ledger), "fold").split() == ["folded"]
    assert live_totals(spool) == {THREAD: (tokens_in, tokens_out, 3, 0)}
    assert spool.sessions() == [] and spool.records() == []
    assert journal_segments(ledger) == []  # the dead process's journal is folded and deleted

    # A process that starts once the conversation has been idle for its timeout (the engine's
    # clock moved 30 min forward) ends and bills it: once.
    later = str(get_settings().idle_timeout + 1)
    run_child(child_env(ledger), "fold", later)
    [row] = spool.sessions()
    assert (row["session_id"], row["input_tokens"], row["output_tokens"], row["llm_calls"]) == (
        THREAD, tokens_in, tokens_out, 3)
    assert row["end_reason"] == "idle_timeout"
    records = spool.records(session_id=THREAD)
    kinds = sorted(r["kind"] for r in records)
    assert kinds == (["expense"] if style == "record_llm_call" else ["expense", "time_entry"])
    [expense] = [r["payload"] for r in records if r["kind"] == "expense"]
    meta = expense["metadata"]
    assert (meta["session_id"], meta["input_tokens"], meta["output_tokens"], meta["llm_calls"]) == (
        THREAD, tokens_in, tokens_out, 3)
    assert spool.live_sessions() == []
    # Yet another process changes nothing.
    run_child(child_env(ledger), "fold", later)
    assert [r["record_id"] for r in spool.records()] == [r["record_id"] for r in records]
    assert len(spool.sessions()) == 1


def test_kill_9_after_decorated_turns_bills_each_call_once(tmp_path: Path) -> None:
    """`@track_agent(session_id="t-1")`: each call is a session of its own that ends when the call
    returns (the decorator's rule). Killed right after the third: three sessions, each billed once."""
    ledger = tmp_path / "decorated.sqlite3"
    turns = turns_then_kill(child_env(ledger), "decorator-turns", "3")
    assert [k for k, _i, _o in turns] == [1, 2, 3]
    spool = Spool(ledger)
    run_child(child_env(ledger), "fold")
    rows = spool.sessions()
    assert sorted((r["session_id"], r["input_tokens"], r["output_tokens"], r["llm_calls"]) for r in rows) == sorted(
        (THREAD, i, o, 1) for _k, i, o in turns)
    assert {r["end_reason"] for r in rows} == {"completed"}
    assert spool.live_sessions() == [] and journal_segments(ledger) == []
    records = spool.records(session_id=THREAD)
    assert Counter(r["kind"] for r in records) == {"time_entry": 3, "expense": 3}
    assert len({r["record_id"] for r in records}) == 6
    expenses = [r["payload"]["metadata"] for r in records if r["kind"] == "expense"]
    assert sorted((m["input_tokens"], m["output_tokens"]) for m in expenses) == sorted((i, o) for _k, i, o in turns)
    assert {r["payload"]["metadata"]["agent_id"] for r in records} == {"decorated"}
    run_child(child_env(ledger), "fold", "3600")  # another recovery, an hour later: nothing more
    assert len(spool.records()) == 6 and len(spool.sessions()) == 3


# -- 2. one conversation, three live workers ------------------------------------------------------
class Worker:
    """A live worker process serving turns of conversation "thread-x" on command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*CHILD, "worker"], env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            bufsize=1,
        )
        assert self.read()[0] == "ready"

    def read(self) -> list[str]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"worker {self.proc.pid} died (exit code {self.proc.poll()})"
        return line.split()

    def ask(self, command: str) -> str:
        """Send one command; its answer (after "ok")."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        words = self.read()
        assert words[0] == "ok", words
        return words[1] if len(words) > 1 else ""

    def exit(self) -> int:
        """Ask the worker to exit (its atexit shutdown runs); its exit code."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write("exit\n")
            self.proc.stdin.close()
        code = self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Started by the test (it sets their environment); killed if the test left any running."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def keito_records(server: KeitoTestServer, session_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(time entries, expenses) Keito holds for a session id."""
    def mine(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [i for i in items if (i.get("metadata") or {}).get("session_id") == session_id]

    return mine(list(server.time_entries)), mine(list(server.expenses))


@pytest.mark.parametrize(
    "ending",
    [
        "end_session",
        "end_session_at_once",  # before the other workers' billing threads have folded their turns
        "idle_timeout",
    ],
)
def test_three_live_workers_serving_one_conversation_bill_it_once(
    tmp_path: Path, workers: list[Worker], ending: str
) -> None:
    """Three processes on one ledger each serve a turn of "thread-x" (the runs overlap), all stay
    alive; the conversation ends (end_session in one of them, or its idle timeout): Keito gets one
    time entry and one expense, with all three turns' tokens and the union of their run times.

    `end_session` waits until the workers' billing threads have folded their turns (they do
    within a second); `end_session_at_once` ends it right after the last turn, before they have
    (their folds are made rare, so that this is certain rather than likely)."""
    ledger = tmp_path / "web.sqlite3"
    usage = [(1200, 120), (2300, 230), (3400, 340)]
    with KeitoTestServer() as server:
        extra = {"KEITO_IDLE_TIMEOUT": "2"} if ending == "idle_timeout" else {}
        if ending == "end_session_at_once":
            extra["ENGINE_CHILD_TICK"] = "60"
        env = child_env(ledger, **server_env(server), **extra)
        for _ in range(3):
            workers.append(Worker(env))
        w1, w2, w3 = workers
        # Overlapping runs: w1 [b1, e1], w2 [b2, e2], w3 [b3, e3], with b2 < e1 and b3 < e2.
        b1 = float(w1.ask("begin"))
        time.sleep(0.15)
        b2 = float(w2.ask("begin"))
        time.sleep(0.15)
        assert w1.ask("call {} {}".format(*usage[0])) == "True"
        b3 = float(w3.ask("begin"))
        time.sleep(0.1)
        e1 = float(w1.ask("end_run"))
        assert w2.ask("call {} {}".format(*usage[1])) == "True"
        time.sleep(0.1)
        e2 = float(w2.ask("end_run"))
        assert w3.ask("call {} {}".format(*usage[2])) == "True"
        time.sleep(0.05)
        e3 = float(w3.ask("end_run"))
        runs = [(b1, e1), (b2, e2), (b3, e3)]
        assert b2 < e1 and b3 < e2  # they really overlapped
        spool = Spool(ledger)
        if ending == "end_session":
            # Every worker's billing thread folds its journal within a second or so: wait until
            # the ledger's open conversation holds all three turns (calls and run ends), then end
            # it from the middle worker.
            deadline = time.monotonic() + 15
            while live_totals(spool).get("thread-x") != (6900, 690, 3, 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert live_totals(spool) == {"thread-x": (6900, 690, 3, 0)}
            assert w2.ask("end_session") == "True"
        elif ending == "end_session_at_once":
            assert w3.ask("end_session") == "True"
        assert server.wait_for(time_entries=1, expenses=1, timeout=20.0)

        def check() -> None:
            entries, expenses = keito_records(server, "thread-x")
            assert len(entries) == 1 and len(expenses) == 1, (entries, expenses)
            assert len(server.time_entries) == 1 and len(server.expenses) == 1
            assert server.duplicates() == {}
            meta = expenses[0]["metadata"]
            assert (meta["input_tokens"], meta["output_tokens"], meta["llm_calls"]) == (6900, 690, 3)
            entry = entries[0]["metadata"]
            assert entry["end_reason"] == ("idle_timeout" if ending == "idle_timeout" else "explicit")
            union = max(e for _b, e in runs) - min(b for b, _e in runs)
            assert entry["duration_seconds"] == pytest.approx(union, abs=0.08)
            assert entry["duration_seconds"] < sum(e - b for b, e in runs) - 0.2  # overlaps billed once

        check()  # all three workers still alive
        assert [w.exit() for w in workers] == [0, 0, 0]
        check()  # their exits (shutdown, atexit) billed no second part
        assert spool.live_sessions() == []
        assert Counter(r["state"] for r in spool.records()) == {"delivered": 2}


def test_a_dead_workers_open_run_is_billed_up_to_its_own_last_activity(tmp_path: Path, workers: list[Worker]) -> None:
    """A worker is killed in the middle of a turn of "thread-x"; another worker serves the next
    turn a while later and ends the conversation. The dead worker's run stopped when its process
    died: the gap before the next turn is idle time, not billed (as between two turns)."""
    ledger = tmp_path / "gap.sqlite3"
    env = child_env(ledger)
    workers.append(Worker(env))
    dead = workers[0]
    begun = float(dead.ask("begin"))
    assert dead.ask("call 500 50") == "True"
    last_seen = time.time()
    os.kill(dead.proc.pid, signal.SIGKILL)
    assert dead.proc.wait(timeout=10) == -signal.SIGKILL
    run_child(env, "fold")  # the next process on the ledger folds the dead worker's journal
    assert live_totals(Spool(ledger)) == {"thread-x": (500, 50, 1, 1)}  # its run is still open
    time.sleep(1.5)  # the user reads the (lost) answer and asks again
    workers.append(Worker(env))
    alive = workers[1]
    start = float(alive.ask("begin"))
    assert alive.ask("call 700 70") == "True"
    time.sleep(0.1)
    end = float(alive.ask("end_run"))
    assert alive.ask("end_session") == "True"
    assert alive.exit() == 0
    [row] = Spool(ledger).sessions()
    assert (row["session_id"], row["input_tokens"], row["llm_calls"]) == ("thread-x", 1200, 2)
    dead_run_at_most = last_seen - begun  # its last journalled event came before `last_seen`
    assert row["active_seconds"] == pytest.approx((end - start) + dead_run_at_most, abs=0.1)


# -- 3. hours rounded once per day -----------------------------------------------------------------
def quiet_hour_start(now: float, span: float) -> float:
    """A start about 3 hours ago such that [start, start + span] lies in one UTC day, away from
    midnight (and within the day that back-dating allows)."""
    start = now - 3 * 3600
    midnight = start - start % 86400
    if start - midnight < 600:
        start = midnight + 600
    if start + span > midnight + 86400 - 600:
        start = midnight + 86400 - 600 - span
    return start


def test_360_sessions_of_10_seconds_bill_exactly_one_hour(ledger: Spool) -> None:
    keito.configure(timezone="UTC")
    settings = get_settings()
    # Rounded on its own, each entry would be 0.00 h: the running total is what makes 1.00 h.
    assert round_hours(10.0, settings.hours_increment, settings.rounding) == 0.0
    start = quiet_hour_start(time.time(), 360 * 10.0)
    for n in range(360):
        begun = start + 10.0 * n
        run = keito.begin_run(None, started_at=begun, agent_id="meter", project_id="p-1", task_id="t-1",
                              framework="test")
        assert run is not None
        keito.end_run(run, ended_at=begun + 10.0)
    assert keito.flush(30.0)
    entries = [r["payload"] for r in ledger.records() if r["kind"] == "time_entry"]
    assert len(entries) == 360
    assert {e["spent_date"] for e in entries} == {datetime.fromtimestamp(start, UTC).date().isoformat()}
    assert sum(Decimal(str(e["hours"])) for e in entries) == Decimal("1.00")
    assert {e["hours"] for e in entries} == {0.0, 0.01}  # never rounded twice, never negative
    assert [e["metadata"]["duration_seconds"] for e in entries] == [10.0] * 360  # exact seconds kept
    assert sum(e["metadata"]["duration_seconds"] for e in entries) == pytest.approx(3600.0, abs=1e-6)
    rows = ledger.sessions()
    assert len(rows) == 360
    assert sum(r["active_seconds"] for r in rows) == pytest.approx(3600.0, abs=1e-6)
    assert sum(Decimal(str(r["hours"])) for r in rows) == Decimal("1.00")


# -- 4. a random mix of sessions, killed and restarted, through delivery faults ----------------------
class Faults:
    """A seeded share of requests fails: 5xx before storing, drops and errors after committing, 429."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.left_429 = 3
        self.drawn: Counter[str] = Counter()

    def __call__(self, method: str, path: str) -> Fault | None:
        with self.lock:
            roll = self.rng.random()
            fault: Fault | None = None
            if roll < 0.05:
                fault = Fault("status", status=self.rng.choice([500, 502, 503, 504]))
            elif roll < 0.07:
                fault = Fault("drop_after_commit")
            elif roll < 0.09:
                fault = Fault("error_after_commit", status=500)
            elif roll < 0.095 and self.left_429 > 0:
                self.left_429 -= 1
                fault = Fault("status", status=429, retry_after=0.2)
            if fault is not None and (fault.kind == "status" or method == "POST"):
                self.drawn[fault.kind] += 1
            return fault


@dataclass
class Incarnation:
    """One run of the random-mix child: what it printed, and whether we killed it."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    killed: bool = False


KillWhen = Callable[[list[dict[str, Any]], "subprocess.Popen[str]"], bool]


def run_incarnation(env: dict[str, str], args: list[str], kill: KillWhen | None) -> Incarnation:
    """Run the child; `kill(lines, proc)` waits for the moment to SIGKILL it and says whether to
    (None: let it run to its end)."""
    proc = subprocess.Popen([*CHILD, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    seen = Incarnation()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if kill is not None and kill(seen.lines, proc):
            os.kill(proc.pid, signal.SIGKILL)
            seen.killed = True
        code = proc.wait(timeout=120)
        assert code == (-signal.SIGKILL if seen.killed else 0), (code, seen.lines[-3:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        if proc.stdout is not None:
            proc.stdout.close()
    return seen


def wait_lines(lines: list[dict[str, Any]], proc: subprocess.Popen[str], count: int, timeout: float = 60.0) -> bool:
    """Wait until the child printed `count` lines; False if it exited first."""
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


Usage = tuple[int, int]


@dataclass
class Expected:
    """What the children reported: per session id, the tokens of completed steps, the steps in
    flight when a kill struck (billed in part, in full or not at all), and outcomes."""

    completed: Counter[str] = field(default_factory=Counter)
    completed_out: Counter[str] = field(default_factory=Counter)
    in_flight: dict[str, list[list[list[int]]]] = field(default_factory=lambda: defaultdict(list))
    outcomes: Counter[str] = field(default_factory=Counter)
    outcomes_in_flight: Counter[str] = field(default_factory=Counter)
    work: set[str] = field(default_factory=set)
    begun: set[str] = field(default_factory=set)
    mid_step_kills: int = 0

    def add(self, incarnation: Incarnation) -> None:
        step: dict[str, Any] | None = None
        for event in incarnation.lines:
            if event["ev"] == "begin":
                step = event
                self.begun.add(event["sid"])
            elif event["ev"] == "done":
                assert step is not None and step["sid"] == event["sid"]
                sid = step["sid"]
                self.completed[sid] += sum(c[0] for c in step["calls"])
                self.completed_out[sid] += sum(c[1] for c in step["calls"])
                self.outcomes[sid] += int(step["outcome"])
                if step["kind"] != "end":
                    self.work.add(sid)
                step = None
        if step is not None:
            assert incarnation.killed
            self.mid_step_kills += 1
            self.in_flight[step["sid"]].append(step["calls"])
            self.outcomes_in_flight[step["sid"]] += int(step["outcome"])

    def allowed(self, sid: str) -> set[Usage]:
        """Every (input, output) total the session may be billed: completed steps in full, plus a
        prefix of the calls of each step that was in flight at a kill."""
        totals = {(self.completed[sid], self.completed_out[sid])}
        for calls in self.in_flight.get(sid, []):
            prefixes = [(sum(c[0] for c in calls[:n]), sum(c[1] for c in calls[:n])) for n in range(len(calls) + 1)]
            totals = {(a + i, b + o) for a, b in totals for i, o in prefixes}
        return totals


def killed_mix(tmp_path: Path, seed: int, sessions: int, kills: int) -> None:
    """Run `sessions` seeded sessions in a child killed `kills` times mid-work (plus once while it
    delivers), restarted each time from its durable progress marker; a last process ends what is
    open and delivers. Then check Keito against what the children reported."""
    rng = random.Random(seed)
    ledger = tmp_path / "mix.sqlite3"
    marker = str(tmp_path / "progress")
    args = ["random", str(seed), str(sessions), marker]
    expected = Expected()
    incarnations: list[Incarnation] = []
    with KeitoTestServer() as server:
        faults = Faults(seed)
        server.fault_hook = faults
        server.set_latency(0.001)
        env = child_env(ledger, **server_env(server), KEITO_IDLE_TIMEOUT="3")

        def mid_work(lines: list[dict[str, Any]], proc: subprocess.Popen[str]) -> bool:
            if not wait_lines(lines, proc, 1):
                return False
            left = int(lines[0]["left"])
            share = max(1, 2 * left // (kills - len(incarnations) + 1))
            if not wait_lines(lines, proc, 1 + rng.randint(1, share)):
                return False
            time.sleep(rng.uniform(0.0, 0.003))
            return proc.poll() is None

        def mid_delivery(lines: list[dict[str, Any]], proc: subprocess.Popen[str]) -> bool:
            while not any(e["ev"] == "sessions_done" for e in list(lines)):
                if proc.poll() is not None:
                    return False
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.05))
            return proc.poll() is None

        while len(incarnations) < kills:
            incarnations.append(run_incarnation(env, args, mid_work))
            assert incarnations[-1].killed, "the child finished before it could be killed"
        incarnations.append(run_incarnation(env, args, mid_delivery))
        if incarnations[-1].killed:
            incarnations.append(run_incarnation(env, args, None))  # the last one runs to its end
        for incarnation in incarnations:
            expected.add(incarnation)
        assert incarnations[-1].lines[-1]["ev"] == "flushed"
        resumed = [i.lines[0] for i in incarnations[1:]]
        assert any(r["index"] > 0 or r["step"] > 0 for r in resumed)  # restarts continued mid-way

        # The last process: sessions the dead ones left open end (idle timeout), everything is delivered.
        final = json.loads(run_child({**env, "KEITO_IDLE_TIMEOUT": "0.3"}, "recover", timeout=120))
        assert final["live"] == 0
        counts = final["counts"]
        assert counts["pending"] == counts["sending"] == counts["local"] == counts["dead"] == 0, counts
        server.clear_faults()

        # 0 lost, 0 duplicated: Keito holds exactly the ledger's records, each once.
        spool = Spool(ledger)
        records = spool.records()
        assert {r["state"] for r in records} == {"delivered"}
        assert server.duplicates() == {}
        on_server = Counter(server.record_ids("time_entries")) + Counter(server.record_ids("expenses"))
        assert set(on_server) == {r["record_id"] for r in records}
        assert len(records) == counts["delivered"]
        assert spool.live_sessions() == []

        # Every completed step billed exactly once; a step in flight at a kill in part or not at all.
        billed_in: Counter[str] = Counter()
        billed_out: Counter[str] = Counter()
        outcomes = Counter(
            e["metadata"]["session_id"] for e in server.time_entries if "outcome_type" in e["metadata"]
        )
        for expense in server.expenses:
            meta = expense["metadata"]
            billed_in[meta["session_id"]] += meta["input_tokens"]
            billed_out[meta["session_id"]] += meta["output_tokens"]
        assert set(billed_in) <= expected.begun  # nothing invented
        assert set(outcomes) <= expected.begun
        for sid in expected.work:
            assert (billed_in[sid], billed_out[sid]) in expected.allowed(sid), (sid, expected.in_flight.get(sid))
        for sid in set(billed_in) - expected.work:  # only ever in flight
            assert (billed_in[sid], billed_out[sid]) in expected.allowed(sid), sid
        for sid in expected.begun:
            assert expected.outcomes[sid] <= outcomes[sid] <= expected.outcomes[sid] + expected.outcomes_in_flight[sid]
        worked = {e["metadata"]["session_id"] for e in server.time_entries if "outcome_type" not in e["metadata"]}
        assert expected.work <= worked  # every session that worked has its time billed
        # The ledger's own report agrees with what Keito holds.
        assert sum(r["input_tokens"] for r in spool.sessions()) == sum(billed_in.values())
    assert expected.mid_step_kills >= 1, "no kill struck in the middle of a step"
    assert sum(faults.drawn.values()) > 0


def test_a_random_mix_killed_3_times_bills_every_completed_turn_once(tmp_path: Path) -> None:
    killed_mix(tmp_path, seed=int(os.environ.get("KEITO_MIX_SEED", "4242")), sessions=150, kills=3)


def _slow_enabled(config: pytest.Config) -> bool:
    return "slow" in (config.getoption("markexpr") or "") or os.environ.get("KEITO_SLOW_TESTS") == "1"


@pytest.mark.slow
def test_1000_sessions_killed_10_times_bill_every_completed_turn_once(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    if not _slow_enabled(pytestconfig):
        pytest.skip("slow: run with -m slow or KEITO_SLOW_TESTS=1")
    killed_mix(tmp_path, seed=int(os.environ.get("KEITO_MIX_SEED", "777")), sessions=1000, kills=10)

