"""How the host writes the journal: few writes, each durable, and readable by every version.

- lines of one instant share one write (a session's opening and its first run; a run's end and
  the session's end); a write cut short keeps in memory exactly the lines not wholly on disk;
- a burst of nested steps writes one line per step (their runs are covered by the open run whose
  begin is on disk); a covered run that outlives its cover gets its begin line before the cover
  ends; a process killed in the middle of a burst is billed up to its last step;
- a journal written by the previous version (one write per line, every begin line) still bills.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument import _engine, _pipeline, _session
from keito_instrument._engine import fold as fold_module
from keito_instrument._journal import TORN_END, Journal
from keito_instrument._session import SessionOptions
from keito_instrument._spool import Spool

ROOT = Path(__file__).resolve().parents[1]


def journal_events(ledger: Path) -> list[list[Any]]:
    """Every event in the journal segments beside a ledger, in the order written."""
    events = []
    for path in sorted(p for p in Path(f"{ledger}.journal").iterdir() if p.suffix in (".jsonl", ".jmap")):
        data = path.read_bytes()
        data = data[: data.find(b"\0")] if b"\0" in data else data  # (a mapped segment's unwritten rest)
        events += [json.loads(line) for line in data.splitlines()]
    return events


def kinds(events: list[list[Any]], sid: str) -> list[str]:
    return [e[0] for e in events if e[1] == sid]


# -- the previous version's journal ------------------------------------------------------------
def test_a_journal_written_by_the_previous_version_still_bills(tmp_path: Path) -> None:
    """The lines as the previous version wrote them (one write each, a begin line for every run,
    the opening and the end through the JSON encoder), left by a process that is gone."""
    ledger = tmp_path / "upgraded.sqlite3"
    t0 = time.time() - 3600.0
    ident = f"{t0:.6f}"

    def line(kind: str, t: float, *fields: object) -> str:
        return json.dumps([kind, "old-turn", ident, "r", t, *fields], separators=(",", ":"))

    lines = [
        line("o", t0, "runs", {"agent_id": "old-bot", "metadata": {}, "billable": True}),
        line("b", t0 + 0.001, 1, t0 + 0.001),
        line("b", t0 + 1.0, 2, t0 + 1.0),  # a nested step, begin line and all
        line("c", t0 + 1.5, "gpt-4o-mini", "openai", 1200, 300, 0, 0, 0, 0, 0, None, None),
        line("r", t0 + 2.0, 2, t0 + 1.0, t0 + 2.0),
        line("n", t0 + 2.5, 1, 0),
        line("r", t0 + 10.001, 1, t0 + 0.001, t0 + 10.001),
        line("e", t0 + 10.001, "completed", [], [2, 1, 1, 0, 0]),
    ]
    directory = Path(f"{ledger}.journal")
    directory.mkdir()
    (directory / "dead0-00000000.000001.jsonl").write_text("\n".join(lines) + "\n")  # no lock: its owner is gone
    _engine.fold_ledger(str(ledger), include_live=False)
    _engine.fold_ledger(str(ledger), include_live=False)  # folded once only
    spool = Spool(ledger)
    [row] = spool.sessions()
    assert (row["session_id"], row["llm_calls"], row["tool_calls"]) == ("old-turn", 1, 1)
    assert (row["input_tokens"], row["output_tokens"]) == (1200, 300)
    assert row["active_seconds"] == pytest.approx(10.0, abs=1e-6)
    assert sorted(r["kind"] for r in spool.records(session_id="old-turn")) == ["expense", "time_entry"]
    assert not list(directory.glob("*.jsonl"))  # folded and compacted


# -- lines of one instant share a write ----------------------------------------------------------
def test_a_one_call_session_is_three_writes(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    real = Journal.append_line

    def counting(self: Journal, data: bytes, wake: bool = False) -> None:
        writes.append(data)
        real(self, data, wake)

    monkeypatch.setattr(Journal, "append_line", counting)

    @keito.track_agent(agent_id="bot")
    def turn() -> None:
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100, output_tokens=10)

    turn()
    assert [[json.loads(x)[0] for x in w.splitlines()] for w in writes] == [["o", "b"], ["c"], ["r", "e"]]
    assert keito.flush(10.0)
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"]) == (1, 100)


def test_a_write_cut_short_keeps_in_memory_only_the_lines_not_wholly_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(str(tmp_path / "full.sqlite3"))
    journal.mapped = False  # a plain segment, written with write() (where mapping is not possible)
    first, second, third = (json.dumps(["n", "s", "1.0", "r", 1.0, k, 0]).encode() + b"\n" for k in (1, 2, 3))
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:  # the disk fills up in the middle of the second line
        return real_write(fd, data[: len(first) + 5])

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", full_disk)
        journal.append_line(first + second + third)
    assert journal.torn and list(journal.memory) == [second, third]  # one line per item, as the fold reads them
    journal.append_line(first)  # the disk has room again
    on_disk = Path(journal.segment_path(journal.seq)).read_bytes()
    assert on_disk == first + second[:5] + TORN_END + first
    readable = []
    for raw in on_disk.splitlines():
        with contextlib.suppress(ValueError):  # (the cut line, ended by the mark, is never an event)
            readable.append(json.loads(raw))
    assert [e[5] for e in readable] == [1, 1] and not journal.torn
    journal.close()


# -- nested steps ------------------------------------------------------------------------------------
def test_a_burst_of_nested_steps_writes_one_line_per_step(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session, "COVERED_GAP", 60.0)  # every step of the burst counts as close behind

    @keito.track_agent
    def step(k: int) -> None:
        if k == 2:
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=50, output_tokens=5)

    with keito.session(session_id="burst"):
        for k in range(5):
            step(k)
    events = journal_events(Path(ledger.path))
    assert kinds(events, "burst") == ["o", "b", "r", "r", "c", "r", "r", "r", "r", "e"]
    outer = next(e for e in events if e[0] == "r" and e[5] == 1)
    assert keito.flush(10.0)
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"]) == (1, 50)
    assert row["active_seconds"] == pytest.approx(outer[7] - outer[6], abs=1e-6)  # the steps add nothing to it


def test_steps_apart_from_the_last_line_write_their_begin(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session, "COVERED_GAP", 0.0)

    @keito.track_agent
    def step() -> None:
        pass

    with keito.session(session_id="apart"):
        step()
        step()
    assert kinds(journal_events(Path(ledger.path)), "apart") == ["o", "b", "b", "r", "b", "r", "r", "e"]


def test_runs_of_a_conversation_always_write_their_begin(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session, "COVERED_GAP", 60.0)
    outer = keito.begin_run("conversation", close="idle")
    assert outer is not None
    inner = keito.begin_run("conversation", close="idle")
    keito.end_run(inner)
    keito.end_run(outer)
    assert kinds(journal_events(Path(ledger.path)), "conversation") == ["o", "b", "b", "r", "r"]
    assert keito.end_session("conversation")


def test_a_covered_run_that_outlives_its_cover_writes_its_begin_first(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step started in a thread of the session that is still going when the run that started it
    ends: its begin line is written before that run's end, in the same write."""
    monkeypatch.setattr(_session, "COVERED_GAP", 60.0)
    session = _pipeline.new_session("outlived", SessionOptions())
    cover = session.begin_run()
    step = session.begin_run()
    assert cover is not None and step is not None
    assert kinds(journal_events(Path(ledger.path)), "outlived") == ["o", "b"]  # the step is covered
    assert session.end_run(cover) is None  # the step still runs
    events = journal_events(Path(ledger.path))
    assert kinds(events, "outlived") == ["o", "b", "b", "r"]
    begun = events[-2]
    assert begun[5] == step.run_id and begun[6] == pytest.approx(session.wall(step.start), abs=1e-9)
    [live] = ledger.live_sessions()  # the ledger knows the step is still going
    assert list(live["state"]["open_runs"]) == [f"{_pipeline_owner()}:{session.ident}:{step.run_id}"]
    assert session.end_run(step) is not None
    assert kinds(journal_events(Path(ledger.path)), "outlived")[-2:] == ["r", "e"]
    assert keito.flush(10.0)
    [row] = ledger.sessions()
    assert row["active_seconds"] == pytest.approx(session.wall(time.monotonic()) - session.wall(cover.start), abs=0.5)


def _pipeline_owner() -> str:
    from keito_instrument._journal import get_journal

    return get_journal(_pipeline.ledger_path()).owner


BURST_THEN_KILLED = textwrap.dedent("""
    import sys, time
    import keito_instrument as keito
    from keito_instrument import _session
    _session.COVERED_GAP = 60.0  # every step of the burst writes its end line only

    @keito.track_agent
    def step():
        pass

    with keito.session(session_id="killed-burst"):
        begun = time.time()
        for _ in range(200):
            step()
        time.sleep(0.3)
        for _ in range(200):
            step()
        print(begun, time.time(), flush=True)
        time.sleep(60)  # killed here, in the middle of the outer run
""")


def test_a_process_killed_after_a_burst_is_billed_up_to_its_last_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "burst.sqlite3"
    env = {**os.environ, "KEITO_LEDGER": str(ledger), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", BURST_THEN_KILLED], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        begun, last_step = (float(x) for x in child.stdout.readline().split())
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    later = time.time() + 7200.0  # past its idle timeout: its process is gone, its run ends where it stopped
    monkeypatch.setattr(fold_module, "clock", lambda: later)
    _engine.fold_ledger(str(ledger), include_live=False)
    _engine.fold_ledger(str(ledger), include_live=False)
    [row] = Spool(ledger).sessions()
    assert row["session_id"] == "killed-burst"
    # Billed up to the last step's end line: both bursts and the pause between them (0.3 s), not
    # the minute until the kill. (`begun` was read just after the run began.)
    assert abs(row["active_seconds"] - (last_step - begun)) < 0.1
