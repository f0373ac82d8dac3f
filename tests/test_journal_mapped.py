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
    (directory / "dead1-00000000.000001.jsonl").write_bytes(segment + bytes(4096 - len(segment)))
    _engine.fold_ledger(str(ledger), include_live=False)
    [row] = Spool(ledger).sessions()
    assert (row["session_id"], row["llm_calls"], row["input_tokens"]) == ("cut-turn", 1, 1200)
    assert not list(directory.glob("*.jsonl"))  # folded to its end: compacted


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
    assert not list(Path(mine.dir).glob("*.000001.jsonl"))  # the segment that failed to map is gone
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
