"""Exactly once through faults and crashes: a 2,000-session fault schedule, kill -9, fork, processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.testing import Fault, KeitoTestServer

ROOT = Path(__file__).resolve().parents[2]
CHILD = [sys.executable, str(Path(__file__).with_name("_child.py"))]


def run_sessions(n: int) -> None:
    for _ in range(n):
        with keito.session():
            keito.record_llm_call("gpt-4o", "openai", input_tokens=1200, output_tokens=300)


class Schedule:
    """A seeded mix of every fault delivery must survive, drawn per request on the server threads."""

    def __init__(self, seed: int, max_429: int = 3) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.left_429 = max_429
        self.drawn: dict[str, int] = {}

    def __call__(self, method: str, path: str) -> Fault | None:
        with self.lock:
            roll = self.rng.random()
            fault: Fault | None = None
            if roll < 0.08:
                fault = Fault("status", status=self.rng.choice([500, 502, 503, 504]))
            elif roll < 0.11:
                fault = Fault("drop_after_commit")
            elif roll < 0.14:
                fault = Fault("error_after_commit", status=500)
            elif roll < 0.145 and self.left_429 > 0:
                self.left_429 -= 1
                fault = Fault("status", status=429, retry_after=1)
            if fault is not None and (fault.kind == "status" or method == "POST"):
                name = f"{fault.kind}:{fault.status}"
                self.drawn[name] = self.drawn.get(name, 0) + 1
            return fault


def test_2000_sessions_through_a_fault_schedule_arrive_exactly_once(
    keito_server: KeitoTestServer, ledger: Spool
) -> None:
    schedule = Schedule(seed=int(os.environ.get("KEITO_FAULT_SEED", "20261122")))
    keito_server.fault_hook = schedule
    keito.configure(request_timeout=5.0)
    outage_done = threading.Event()

    def outage() -> None:  # connection refused for a second, mid-delivery
        deadline = time.monotonic() + 60
        while len(keito_server.time_entries) < 600 and time.monotonic() < deadline:
            time.sleep(0.01)
        keito_server.stop()
        time.sleep(1.0)
        keito_server.start()
        outage_done.set()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    run_sessions(2000)
    assert keito.flush(240.0), ledger.counts()  # a budget, not a speed test: it usually takes ~30 s
    assert outage_done.wait(5.0)
    assert len(keito_server.time_entries) == 2000
    assert len(keito_server.expenses) == 2000
    assert keito_server.duplicates() == {}
    assert ledger.counts()["delivered"] == 4000
    assert len({e["metadata"]["session_id"] for e in keito_server.expenses}) == 2000
    # the schedule really exercised every kind of fault
    assert {
        "status:500",
        "status:502",
        "status:503",
        "status:504",
        "status:429",
        "drop_after_commit:503",
        "error_after_commit:500",
    } <= set(schedule.drawn)
    assert any(r.status is None for r in keito_server.requests)
    assert any(r.method == "GET" for r in keito_server.requests)


def test_kill_9_mid_delivery_then_a_new_process_finishes_with_no_duplicates(tmp_path: Path) -> None:
    ledger_path = str(tmp_path / "shared.sqlite3")
    with KeitoTestServer() as server:
        server.set_latency(0.01)
        child = subprocess.Popen([*CHILD, "produce", server.url, ledger_path, "300"], cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while len(server.time_entries) + len(server.expenses) < 150 and time.monotonic() < deadline:
                time.sleep(0.005)
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(10)
        assert child.returncode == -signal.SIGKILL
        assert server.wait_idle(30.0)  # what the child had in flight is now stored (or refused)
        stored_at_kill = len(server.time_entries) + len(server.expenses)
        requests_at_kill = len(server.requests)
        left = Spool(ledger_path).counts()
        assert left["sending"] > 0, "the child held no claim when it was killed"  # killed mid-batch
        server.set_latency(0.0)
        finisher = subprocess.run(
            [*CHILD, "finish", server.url, ledger_path], cwd=ROOT, capture_output=True, text=True, timeout=90
        )
        assert finisher.returncode == 0, finisher.stderr
        counts = json.loads(finisher.stdout)
        sessions = len(Spool(ledger_path).sessions())
        assert counts["delivered"] == 2 * sessions and counts["pending"] == counts["sending"] == 0
        assert stored_at_kill < 2 * sessions
        assert len(server.time_entries) == len(server.expenses) == sessions
        assert server.duplicates() == {}
        # the dead child's claims were taken over as ambiguous: reconciled by listing before any POST
        after = server.requests[requests_at_kill:]
        assert after[0].method == "GET" and after[0].status == 200


def test_the_atexit_drain_delivers_and_is_bounded(tmp_path: Path) -> None:
    with KeitoTestServer() as server:
        up = subprocess.run(
            [*CHILD, "exit", server.url, str(tmp_path / "a.sqlite3"), "20"], cwd=ROOT, timeout=60
        )
        assert up.returncode == 0
        assert len(server.time_entries) == len(server.expenses) == 20
        server.stop()
        # Keito down for good: an unbounded drain would never end and trip the timeout (raises).
        down = subprocess.run(
            [*CHILD, "exit", server.url, str(tmp_path / "b.sqlite3"), "5"], cwd=ROOT, timeout=60
        )
    assert down.returncode == 0
    assert Spool(tmp_path / "b.sqlite3").counts()["pending"] == 10  # kept for the next process


def test_processes_sharing_one_spool_never_send_a_record_twice(ledger: Spool) -> None:
    run_sessions(300)  # no credentials yet: kept locally
    assert ledger.release_local() == 600
    with KeitoTestServer() as server:
        server.set_latency(0.002)
        procs = [
            subprocess.Popen(
                [*CHILD, "finish", server.url, str(ledger.path)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [p.communicate(timeout=90) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        assert len(server.time_entries) == len(server.expenses) == 300
        assert server.duplicates() == {}
        assert len(server.requests) == 600  # no listing: nothing was ever ambiguous
        # more connections than one process's pool holds (8): the processes really competed
        assert len({r.client for r in server.requests}) > 8
    assert ledger.counts()["delivered"] == 600


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_child_delivers_with_a_fresh_exporter(keito_server: KeitoTestServer) -> None:
    run_sessions(20)  # the parent's exporter thread is running now
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            run_sessions(10)
            code = 0 if keito.flush(30.0) else 2
        finally:
            os._exit(code)
    assert keito.flush(30.0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == len(keito_server.expenses) == 30
    assert keito_server.duplicates() == {}


def test_the_fork_hook_holds_no_reference_to_an_exporter() -> None:
    import gc
    import weakref

    from keito_instrument import _export

    _export.notify()
    exporter = _export._exporter
    assert exporter is not None
    ref = weakref.ref(exporter)
    del exporter
    _export.shutdown(2.0)
    gc.collect()
    assert ref() is None
