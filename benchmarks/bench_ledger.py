"""Ledger size and report time: what 100k and 1M sessions cost, before and after pruning.

    python benchmarks/bench_ledger.py [--sessions 100000] [--report-sessions 1000000] [--quick]

Part 1 (size): a ledger is filled with N sessions shaped like real ones (the sessions, usage and
records rows, payloads included, copied from sessions recorded through the public API), all of
them delivered long ago; then `prune` (retention 30 days) runs. Printed: bytes per session
before and after, and the prune's own time. Target: <= 0.5 KB per session kept after retention.
Part 2 (report): a ledger with M ended sessions (sessions and usage rows only, what reports read;
filled by direct SQL inserts to keep generation fast) and `report` run in-process for each
grouping, best of 3. Target: <= 2 s over 1M sessions on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid

os.environ.setdefault("KEITO_LEDGER", os.path.join(tempfile.mkdtemp(), "template.sqlite3"))
os.environ["KEITO_LEDGER_RETENTION_DAYS"] = "0"  # the benchmark prunes itself, when it says so

import keito_instrument as keito
from keito_instrument import _config, _prune
from keito_instrument._spool import Spool
from keito_instrument.cli._report import summarise

DAY = 86_400.0


def template() -> tuple[dict[str, object], list[dict[str, object]], list[dict[str, object]]]:
    """One real session's rows (recorded offline through the public API)."""
    with keito.session(agent_id="support-bot", project_id="proj-1", task_id="task-1"):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=1200, output_tokens=300)
    assert keito.flush(30)
    spool = Spool(os.environ["KEITO_LEDGER"])
    session = spool.sessions()[-1]
    key = session["session_key"]
    usage = [{k: v for k, v in u.items() if k not in ("spent_date", "project_id", "agent_id", "session_id")}
             for u in spool.usage() if u["session_key"] == key]
    records = [dict(r) for r in spool.connect().execute("SELECT * FROM records WHERE session_id = ?",
                                                         (session["session_id"],))]
    return session, usage, records


def fill(path: str, n: int, with_records: bool, start: float) -> None:
    """N sessions by direct SQL inserts: each a copy of the template with new ids and times."""
    session, usage, records = template()
    spool = Spool(path)
    conn = spool.connect()
    step = 35 * DAY / n  # spread over five weeks, ending a little before `start + 35 days`
    conn.execute("BEGIN")
    for i in range(n):
        key, sid, t = str(uuid.uuid4()), str(uuid.uuid4()), start + i * step
        day = time.strftime("%Y-%m-%d", time.localtime(t))
        _insert(conn, "sessions", {**session, "session_key": key, "session_id": sid, "started_at": t,
                                   "ended_at": t + 4.0, "spent_date": day})
        for u in usage:
            _insert(conn, "usage", {**u, "session_key": key})
        if with_records:
            for r in records:
                _insert(conn, "records", {**r, "record_id": str(uuid.uuid4()), "session_id": sid, "spent_date": day,
                                          "state": "delivered", "created_at": t, "updated_at": t,
                                          "delivered_at": t + 1.0, "remote_id": str(i)})
        if i % 50_000 == 49_999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, object]) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def size(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def bench_size(n: int) -> None:
    path = os.path.join(tempfile.mkdtemp(), "size.sqlite3")
    now = time.time()
    fill(path, n, with_records=True, start=now - 70 * DAY)  # every session older than 30 days
    before = size(path)
    spool = Spool(path)
    began = time.perf_counter()
    result = _prune.prune(spool, 30, now=now)
    took = time.perf_counter() - began
    after = size(path)
    rows, total = summarise_at(path, "day")
    print(f"size, {n:,} delivered sessions older than the retention:")
    print(f"  before prune: {before / 1e6:8.1f} MB  {before / n / 1024:6.2f} KB/session")
    print(f"  after prune:  {after / 1e6:8.1f} MB  {after / n / 1024:6.3f} KB/session   (target <= 0.5 KB)")
    print(f"  prune took {took:.1f} s; {result.records:,} records and {result.sessions:,} session rows deleted; "
          f"report still sums {total['sessions']:,} sessions over {len(rows)} days")


def summarise_at(path: str, by: str) -> tuple[list[dict[str, object]], dict[str, object]]:
    keito.configure(ledger_path=path)
    try:
        return summarise(by)
    finally:
        _config.reset_settings()


def bench_report(m: int) -> None:
    path = os.path.join(tempfile.mkdtemp(), "report.sqlite3")
    began = time.perf_counter()
    fill(path, m, with_records=False, start=time.time() - 35 * DAY)
    print(f"report over {m:,} ended sessions (generated in {time.perf_counter() - began:.0f} s, "
          f"{size(path) / 1e6:.0f} MB), best of 3:")
    for by in ("day", "week", "project", "task", "agent", "model", "project,agent", "outcome"):
        times = []
        for _ in range(3):
            began = time.perf_counter()
            rows, total = summarise_at(path, by)
            times.append(time.perf_counter() - began)
        print(f"  --by {by:13} {min(times) * 1000:8.1f} ms  ({len(rows)} rows, {total.get('sessions', 0):,} sessions)"
              "   (target <= 2000 ms)")
    began = time.perf_counter()
    keito.configure(ledger_path=path)
    raw = summarise("model", since=1.5)  # not a midnight: every session and usage row is read
    _config.reset_settings()
    print(f"  (reading every row instead, as before the daily sums: {time.perf_counter() - began:.1f} s for "
          f"--by model, {raw[1]['sessions']:,} sessions)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--report-sessions", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="2,000 and 5,000 sessions (a check that it runs)")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.report_sessions = 2_000, 5_000
    bench_size(args.sessions)
    bench_report(args.report_sessions)
    json.dump({"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
