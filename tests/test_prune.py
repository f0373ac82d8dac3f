"""A ledger of bounded size: delivered records and old session rows are pruned after the retention,
reports keep their daily sums, and the space goes back to the file system."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument import _config, _daily, _prune
from keito_instrument._spool import SCHEMA, Spool
from keito_instrument.cli import main
from keito_instrument.cli._report import summarise

LATER = time.time() + 40 * 86_400  # "now" for a prune that finds everything older than 30 days


def _mixed_sessions() -> None:
    for agent, project in (("a", "p1"), ("a", "p2"), ("b", "p1")):
        with keito.session(agent_id=agent, project_id=project):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1000, output_tokens=10)
            keito.record_llm_call("gpt-4o", "openai", input_tokens=50, output_tokens=5)
    with keito.session(agent_id="b", project_id="p2"):  # an unpriced model next to a priced one
        keito.record_llm_call("a-private-model", "acme", input_tokens=70, output_tokens=7)
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=30, output_tokens=3)
    with keito.session(agent_id="c") as only_tools:  # no LLM call at all
        only_tools.record_tool_call(2)
    assert keito.flush(10.0)


def _all_reports(since: float | None) -> dict[str, object]:
    return {by: summarise(by, since) for by in ("day", "project", "agent", "model")}


def test_the_daily_sums_give_the_same_report_as_every_session(ledger: Spool) -> None:
    _mixed_sessions()
    assert _daily.day_boundary(1.5) is None  # not a midnight: the report reads every session
    assert _all_reports(None) == _all_reports(1.5)
    rows, total = summarise("model")
    assert total["sessions"] == 4 and {r["group"]: r["sessions"] for r in rows}["gpt-4o-mini"] == 4
    assert {r["group"]: r["unpriced_calls"] for r in rows}["a-private-model"] == 1


def test_a_ledger_from_an_older_version_gets_its_daily_sums_once(tmp_path: Path, ledger: Spool) -> None:
    _mixed_sessions()
    expected = _all_reports(None)
    conn = ledger.connect()
    conn.executescript("DROP TRIGGER daily_session; DROP TRIGGER daily_usage; DROP TABLE daily;")
    _daily.ensure_schema(conn)  # what opening the ledger with this version does
    assert _all_reports(None) == expected
    _daily.ensure_schema(conn)  # and never twice
    assert _all_reports(None) == expected


def test_prune_deletes_delivered_records_and_old_sessions_and_reports_keep_their_sums(ledger: Spool) -> None:
    _mixed_sessions()
    conn = ledger.connect()
    kinds = [tuple(r) for r in conn.execute("SELECT state, COUNT(*) FROM records GROUP BY state")]
    assert kinds == [("local", 9)]
    conn.execute("UPDATE records SET state = 'delivered', delivered_at = ? WHERE rowid % 3 != 0", (time.time(),))
    conn.execute("UPDATE records SET state = 'dead', last_error = 'refused' WHERE rowid % 3 = 0 AND rowid % 2 = 0")
    before = {state: n for state, n in conn.execute("SELECT state, COUNT(*) FROM records GROUP BY state")}
    report = _all_reports(None)
    assert _prune.prune(ledger, 30, now=time.time()).records == 0  # nothing is old enough yet
    result = _prune.prune(ledger, 30, now=LATER)
    assert result.records == before["delivered"] and result.sessions == 5
    after = {state: n for state, n in conn.execute("SELECT state, COUNT(*) FROM records GROUP BY state")}
    assert after == {s: n for s, n in before.items() if s != "delivered"}  # local and dead records stay
    assert ledger.sessions() == [] and ledger.usage() == []
    assert _all_reports(None) == report
    assert _prune.meta(conn, "pruned_delivered") == before["delivered"]


def test_a_new_ledger_gives_freed_pages_back_at_once(ledger: Spool) -> None:
    conn = ledger.connect()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    _fill_delivered(ledger, 3000)
    size = _file_size(ledger.path)
    _prune.prune(ledger, 30, now=LATER)
    assert _file_size(ledger.path) < size / 4


def test_an_old_ledger_is_rebuilt_once_for_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.executescript(SCHEMA)  # as an older version created it: no auto_vacuum
    raw.close()
    spool = Spool(path)
    assert spool.connect().execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    _fill_delivered(spool, 3000)
    size = _file_size(path)
    assert _prune.prune(spool, 30, now=LATER).vacuumed is False
    assert _file_size(path) >= size  # freed pages stay in the file without a vacuum
    result = _prune.prune(spool, 30, vacuum=True, now=LATER)
    assert result.vacuumed and _file_size(path) < size / 4
    assert spool.connect().execute("PRAGMA auto_vacuum").fetchone()[0] == 2


def test_the_billing_thread_prunes_at_most_once_an_hour(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = _prune.prune

    def counting(spool: Spool, days: float, vacuum: bool = False, now: float | None = None) -> _prune.PruneResult:
        if spool.path == ledger.path:  # (earlier tests' ledgers may still be folded and pruned)
            calls.append(days)
        return real(spool, days, vacuum, now)

    monkeypatch.setattr(_prune, "prune", counting)
    monkeypatch.setattr(_prune, "_last", {})
    keito.configure(ledger_retention_days=7)
    for _ in range(3):
        _mixed_sessions()
    assert calls == [7]
    assert _prune.meta(ledger.connect(), "pruned_at") > time.time() - 60
    _prune._last.clear()  # another process: the time kept in the ledger stops it too
    _mixed_sessions()
    assert calls == [7]


def test_a_retention_of_zero_keeps_everything(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_prune, "_last", {})
    keito.configure(ledger_retention_days=0)
    _mixed_sessions()
    assert _prune.meta(ledger.connect(), "pruned_at") == 0


def test_the_retention_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEITO_LEDGER_RETENTION_DAYS", "7")
    _config.reset_settings()
    assert _config.get_settings().ledger_retention_days == 7.0
    assert _config.Settings().ledger_retention_days == 30.0
    with pytest.raises(ValueError, match="ledger_retention_days"):
        keito.configure(ledger_retention_days=-1)


def test_the_prune_command_reports_what_it_removed(ledger: Spool) -> None:
    _fill_delivered(ledger, 10)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["prune", "--days", "0.0001", "--format", "json"]) == 0
    result = json.loads(out.getvalue())
    assert result["ledger"] == str(ledger.path) and result["records"] == 10
    with redirect_stdout(io.StringIO()):
        assert main(["prune", "--days", "0"]) == 2


def test_status_counts_the_delivered_records_pruning_removed(ledger: Spool) -> None:
    _fill_delivered(ledger, 10)
    _prune.prune(ledger, 30, now=LATER)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", "--format", "json"]) == 0
    assert json.loads(out.getvalue())["pruned_delivered"] == 10
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status"]) == 0
    assert "10 delivered record(s) past the retention" in out.getvalue()


def _fill_delivered(spool: Spool, n: int) -> None:
    payload = json.dumps({"notes": "x" * 1500})
    now = time.time() - 3600
    with spool.transaction() as conn:
        conn.executemany(
            "INSERT INTO records (record_id, kind, session_id, spent_date, path, payload, state, created_at,"
            " updated_at, delivered_at) VALUES (?, 'time_entry', ?, '2026-01-01', '/api', ?, 'delivered', ?, ?, ?)",
            [(f"r{i}", f"s{i}", payload, now, now, now) for i in range(n)],
        )


def _file_size(path: Path) -> int:
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))
