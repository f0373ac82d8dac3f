"""The mapped journal: appends are copies into a memory-mapped segment (no system call, so the
host's thread never gives up the GIL to write), and everything that reads a segment stops at
its unwritten zeros.

- appends after the first make no system call, and what they hold is billed once;
- a full segment goes on in the next one; a line bigger than a segment gets one of its own;
- a dead process's segment whose last line was cut short (killed while copying it) is billed up
  to that line and then deleted;
- where a segment cannot be mapped, appends are plain `write()`s and bill the same;
- a SIGKILL right after a session ends loses nothing of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument import _engine, _journal, _pipeline
from keito_instrument._spool import Spool


@keito.track_agent(agent_id="mapped-bot")
def turn(tokens: int) -> None:
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=tokens, output_tokens=10)


def journal() -> _journal.Journal:
    return _journal.get_journal(_pipeline.ledger_path())


def test_appends_after_the_first_are_copies_with_no_system_call(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    turn(1)  # the first append creates and maps the segment
    mine = journal()
    assert mine.mm is not None and len(mine.mm) == _journal.SEGMENT_BYTES
    calls: list[int] = []
    real_write, real_pwrite = os.write, os.pwrite

    def write(fd: int, data: bytes) -> int:
        calls.append(fd)
        return real_write(fd, data)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append(fd)
        return real_pwrite(fd, data, offset)

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", write)
        patched.setattr(os, "pwrite", pwrite)
        for tokens in range(2, 22):
            turn(tokens)
        assert mine.fd not in calls  # (other threads may write elsewhere: the journal did not)
    segment = Path(mine.segment_path(mine.seq)).read_bytes()
    assert len(segment) == _journal.SEGMENT_BYTES
    written = segment[: segment.index(b"\0")]
    assert written.endswith(b"\n") and not segment[len(written):].strip(b"\0")
    assert keito.flush(10.0)
    billed = sorted(row["input_tokens"] for row in ledger.sessions())
    assert billed == list(range(1, 22))


def test_a_full_segment_goes_on_in_the_next(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 2048)  # (this test's ledger has a fresh journal)
    for tokens in range(1, 201):
        turn(tokens)
    assert journal().seq > 3  # several segments were filled
    assert keito.flush(10.0)
    rows = ledger.sessions()
    assert len(rows) == 200 and sum(r["input_tokens"] for r in rows) == sum(range(1, 201))


def test_a_line_bigger_than_a_segment_gets_a_segment_of_its_own(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 1024)
    turn(5)
    note = "n" * 1500  # (a line of its own bigger than the segment, within what Keito keeps)

    @keito.track_agent(agent_id="mapped-bot", metadata={"note": note})
    def big() -> None:
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=7, output_tokens=1)

    big()
    turn(9)
    assert keito.flush(10.0)
    assert sorted(r["input_tokens"] for r in ledger.sessions()) == [5, 7, 9]
    [entry] = [r for r in ledger.records() if r["kind"] == "time_entry" and '"note"' in json.dumps(r["payload"])]
    assert note in json.dumps(entry["payload"])


def test_a_dead_process_segment_with_a_cut_last_line_bills_up_to_it_and_is_deleted(tmp_path: Path) -> None:
    ledger = tmp_path / "cut.sqlite3"
    t0 = time.time() - 3600.0
    ident = f"{t0:.6f}"

    def line(kind: str, t: float, *fields: object) -> bytes:
        return json.dumps([kind, "cut-turn", ident, "r", t, *fields], separators=(",", ":")).encode() + b"\n"

    whole = b"".join([
        line("o", t0, "runs", {"agent_id": "cut-bot", "metadata": {}, "billable": True}),
        line("b", t0 + 0.001, 1, t0 + 0.001),
        line("c", t0 + 1.0, "gpt-4o-mini", "openai", 1200, 300, 0, 0, 0, 0, 0, None, None),
        line("r", t0 + 2.0, 1, t0 + 0.001, t0 + 2.0),
        line("e", t0 + 2.0, "completed", [], [1, 0, 0, 0, 0]),
    ])
    cut = line("c", t0 + 3.0, "gpt-4o-mini", "openai", 999, 9, 0, 0, 0, 0, 0, None, None)[:25]
    directory = Path(f"{ledger}.journal")
    directory.mkdir()
    segment = whole + cut
    (directory / "dead1-00000000.000001.jmap").write_bytes(segment + bytes(4096 - len(segment)))
    _engine.fold_ledger(str(ledger), include_live=False)
    [row] = Spool(ledger).sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == ("cut-turn", 1, 1200)
    assert not list(directory.glob("*.jmap"))  # folded to its end: compacted


def test_where_a_segment_cannot_be_mapped_appends_are_writes(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_mapping(*args: object, **kwargs: object) -> object:
        raise OSError("mmap not supported here")

    monkeypatch.setattr(_journal.mmap, "mmap", no_mapping)
    for tokens in (3, 4, 5):
        turn(tokens)
    mine = journal()
    assert mine.mm is None and mine.fd >= 0
    on_disk = Path(mine.segment_path(mine.seq)).read_bytes()
    assert b"\0" not in on_disk and on_disk.count(b"\n") >= 9  # plain lines, nothing padded
    assert not list(Path(mine.dir).glob("*.jmap"))  # the segment that failed to map is gone
    assert keito.flush(10.0)
    assert sorted(r["input_tokens"] for r in ledger.sessions()) == [3, 4, 5]


_KILLED = """
import os, signal, sys
import keito_instrument as keito
keito.configure(ledger_path=sys.argv[1])
@keito.track_agent(agent_id="killed-bot")
def turn(tokens):
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=tokens, output_tokens=1)
for tokens in range(1, 31):
    turn(tokens)
os.kill(os.getpid(), signal.SIGKILL)  # the instant the last session ended
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_sigkill_right_after_sessions_end_loses_none_of_them(tmp_path: Path) -> None:
    ledger = tmp_path / "killed.sqlite3"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED), str(ledger)], timeout=60)
    assert done.returncode == -signal.SIGKILL
    _engine.fold_ledger(str(ledger), include_live=False)
    _engine.fold_ledger(str(ledger), include_live=False)  # (once only)
    rows = Spool(ledger).sessions()
    assert sorted(r["input_tokens"] for r in rows) == list(range(1, 31))


def test_a_segment_a_host_thread_moved_on_from_during_a_fold_is_kept_until_folded(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from keito_instrument._engine import fold as fold_module

    turn(1)
    assert keito.flush(10.0)
    _engine.stop(5.0)  # only this test's fold cycles run: the billing thread would fold turn 2 first
    monkeypatch.setattr(_engine, "ensure_started", lambda: None)
    mine = journal()
    first = mine.segment_path(mine.seq)
    real_fold = fold_module.fold

    def fold_then_host_moves_on(*args: object, **kwargs: object) -> object:
        result = real_fold(*args, **kwargs)  # the segment folded to its end: complete
        folded = args[2]  # (this fold's segments: only the fold of this test's journal counts)
        if mine.segment_path(mine.seq) == first and any(seg.path == first for seg in folded):  # type: ignore[attr-defined]

            def host() -> None:  # a host thread, before the worker compacts: a turn, then a full segment
                turn(2)
                assert mine.mm is not None
                mine.append_line(b'["x","' + b"a" * (len(mine.mm) - mine.pos) + b'"]\n')

            worker = threading.Thread(target=host)
            worker.start()
            worker.join()
        return result

    monkeypatch.setattr(fold_module, "fold", fold_then_host_moves_on)
    _engine.cycle(recover=False)
    assert Path(first).exists()  # it took turn 2 after the fold read it: not deleted
    monkeypatch.setattr(fold_module, "fold", real_fold)
    _engine.cycle(recover=False)
    assert sorted(r["input_tokens"] for r in ledger.sessions()) == [1, 2]


def test_threads_filling_segments_while_the_ledger_is_locked_never_fall_back_to_memory(
    ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(_journal, "SEGMENT_BYTES", 4096)  # many host-side rotations, all at once
    turn(1)
    assert keito.flush(10.0)
    lock = sqlite3.connect(str(ledger.path), isolation_level=None, timeout=0.1)
    lock.execute("BEGIN EXCLUSIVE")  # the worker cannot fold, so it never rotates: the threads do
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(turn, range(100, 900)))
        mine = journal()
        assert not mine.memory and not mine.failed  # every line on disk
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert keito.flush(30.0)
    billed = sorted(r["input_tokens"] for r in ledger.sessions())
    assert billed == [1, *range(100, 900)]


_UNHOOKED_FORK = """
import ctypes, logging, os, sys, time
logging.basicConfig()
import keito_instrument as keito
from keito_instrument import _engine, _registry
keito.configure(ledger_path=sys.argv[1])

@keito.track_agent(agent_id="forked")
def turn(tokens):
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=tokens, output_tokens=1)

turn(1)  # the parent's segment is mapped and its billing thread runs
assert keito.flush(10)
pid = ctypes.PyDLL(None).fork()  # libc's fork: none of Python's at-fork hooks run (uWSGI's default)
if pid == 0:
    for tokens in range(1000, 1050):
        turn(tokens)
    ids = [_registry.new_session_id() for _ in range(5)]
    with open(sys.argv[2], "w") as out:
        out.write(" ".join(ids))
    os._exit(0)  # (journalled; billed once it has exited)
ids = [_registry.new_session_id() for _ in range(5)]
for tokens in range(2000, 2050):
    turn(tokens)
os.waitpid(pid, 0)
assert keito.flush(20)
_engine.fold_ledger(sys.argv[1], include_live=False)  # the child's journal: its process is gone
print(" ".join(ids))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libc fork via ctypes")
def test_a_child_forked_without_pythons_hooks_journals_its_own_sessions_billed_once(tmp_path: Path) -> None:
    ledger, child_out = tmp_path / "forked.sqlite3", tmp_path / "child.txt"
    done = subprocess.run([sys.executable, "-c", _UNHOOKED_FORK, str(ledger), str(child_out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "forked without Python's at-fork hooks" in done.stderr  # (the child says why it waits)
    assert not set(child_out.read_text().split()) & set(done.stdout.split())  # no session id repeated
    billed = sorted(r["input_tokens"] for r in Spool(ledger).sessions())
    assert billed == [1, *range(1000, 1050), *range(2000, 2050)]
