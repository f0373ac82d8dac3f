"""Pruning: the ledger keeps what is still needed, and gives the rest back to the file system.

Past `ledger_retention_days` (default 30; 0 keeps everything) a prune deletes:
- records delivered to Keito (their payloads are never read again: the exporter only claims
  pending records, and reconciliation lists what Keito holds; their number is kept in
  `ledger_meta` so `status` still counts them);
- the `sessions` and `usage` rows of sessions that started before the cutoff (reports read their
  sums from the `daily` table, see `_daily.py`);
- the bookkeeping of old days: hours carried between entries, billed roll-ups, named
  conversations idle since, offsets of journal segments that no longer exist.
Records that are local, pending, sending or dead are never pruned, whatever their age.

Deletions run in batches of `BATCH` rows (one short transaction each, so other writers never wait
long), then `PRAGMA incremental_vacuum` returns the freed pages to the file system. A ledger created
before incremental vacuum existed needs one full `VACUUM` (`keito-instrument prune --vacuum`).
The billing thread prunes at most once an hour per ledger (the time is shared by every process
through `ledger_meta`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

from . import _forksafe

if TYPE_CHECKING:
    from ._config import Settings
    from ._spool import Spool

_log = logging.getLogger("keito_instrument")

PRUNE_EVERY = 3600.0  # seconds between automatic prunes of one ledger
BATCH = 5000  # rows deleted per transaction
DAY = 86_400.0
_last: dict[str, float] = {}  # ledger -> monotonic time this process last looked
_last_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _last_lock
    _last_lock = threading.Lock()  # (a fork while another thread held it must not wedge the child)


_forksafe.in_child(_after_fork_in_child)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS records_delivered ON records (delivered_at) WHERE state = 'delivered'",
)


class PruneResult(NamedTuple):
    """What one prune removed."""

    records: int
    sessions: int
    other_rows: int
    bytes_before: int
    bytes_after: int
    vacuumed: bool


def ensure_schema(conn: sqlite3.Connection) -> None:
    """The bookkeeping table and the index the prune queries use."""
    for statement in SCHEMA:
        conn.execute(statement)


def meta(conn: sqlite3.Connection, key: str) -> float:
    """A number kept in `ledger_meta` (0 if unset)."""
    row = conn.execute("SELECT value FROM ledger_meta WHERE key = ?", (key,)).fetchone()
    return float(row[0]) if row else 0.0


def _add_meta(conn: sqlite3.Connection, key: str, value: float, add: bool = True) -> None:
    conn.execute(
        "INSERT INTO ledger_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
        + ("value + excluded.value" if add else "excluded.value"),
        (key, value),
    )


def _batched(spool: Spool, select: str, deletes: tuple[str, ...], args: tuple[object, ...],
             counter: str | None = None) -> int:
    """Delete in batches: `select` picks up to BATCH keys, each of `deletes` removes them, and
    `counter` (a `ledger_meta` key) adds up how many."""
    total = 0
    while True:
        with spool.transaction() as conn:
            keys = [(r[0],) for r in conn.execute(f"{select} LIMIT {BATCH}", args)]
            for statement in deletes:
                conn.executemany(statement, keys)
            if counter and keys:
                _add_meta(conn, counter, len(keys))
        total += len(keys)
        if len(keys) < BATCH:
            return total


def prune(spool: Spool, retention_days: float, vacuum: bool = False, now: float | None = None) -> PruneResult:
    """Delete what is older than `retention_days` and give the space back (see the module doc).

    `vacuum`: rebuild the file once if it was created without incremental vacuum (a full
    `VACUUM`: it needs free disk space about the ledger's size, and the write lock meanwhile).
    """
    cutoff = (time.time() if now is None else now) - retention_days * DAY
    before = _size(spool)
    records = _batched(spool, "SELECT rowid FROM records WHERE state = 'delivered' AND delivered_at < ?",
                       ("DELETE FROM records WHERE rowid = ?",), (cutoff,), counter="pruned_delivered")
    sessions = _batched(spool, "SELECT session_key FROM sessions WHERE started_at < ?",
                        ("DELETE FROM usage WHERE session_key = ?", "DELETE FROM sessions WHERE session_key = ?"),
                        (cutoff,))
    other = _prune_bookkeeping(spool, cutoff)
    vacuumed = _give_back(spool, vacuum)
    with spool.transaction() as conn:
        _add_meta(conn, "pruned_at", time.time(), add=False)
    return PruneResult(records, sessions, other, before, _size(spool), vacuumed)


def _prune_bookkeeping(spool: Spool, cutoff: float) -> int:
    from datetime import date

    from ._journal import journal_dir

    old_day = date.fromtimestamp(cutoff).isoformat()
    directory = journal_dir(str(spool.path))
    with spool.transaction() as conn:
        count = conn.execute("DELETE FROM hours_carry WHERE spent_date < ?", (old_day,)).rowcount
        count += conn.execute("DELETE FROM rollups WHERE billed = 1 AND period_end < ?", (cutoff,)).rowcount
        count += conn.execute("DELETE FROM named WHERE updated_at < ?", (cutoff,)).rowcount
        gone = [(name,) for (name,) in conn.execute(
            "SELECT segment FROM journal_offsets WHERE updated_at < ?", (cutoff,))
            if not os.path.exists(os.path.join(directory, name))]
        conn.executemany("DELETE FROM journal_offsets WHERE segment = ?", gone)
    return count + len(gone)


def _give_back(spool: Spool, vacuum: bool) -> bool:
    conn = spool.connect()
    mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    if mode == 0 and vacuum:
        with spool._write_lock:  # (no other thread of ours writes meanwhile)
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")  # a one-time rebuild: incremental from now on
        mode = 2
    elif mode == 2:
        with spool._write_lock:
            conn.executescript("PRAGMA incremental_vacuum;")  # (execute() would free one page only)
    if mode != 0:
        with contextlib.suppress(sqlite3.OperationalError):  # busy readers: the next checkpoint shrinks it
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return mode == 2 and vacuum


def _size(spool: Spool) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(f"{spool.path}{suffix}")
    return total


def maybe_prune(spool: Spool, settings: Settings) -> None:
    """Prune if the retention allows and no process has in the last hour (the billing thread)."""
    days = settings.ledger_retention_days
    if not days:
        return
    key, now = str(spool.path), time.monotonic()
    with _last_lock:  # (the billing thread and a ledger read may both get here at once)
        if now - _last.get(key, -PRUNE_EVERY) < PRUNE_EVERY:
            return
        _last[key] = now
    if time.time() - meta(spool.connect(), "pruned_at") < PRUNE_EVERY:
        return
    try:
        result = prune(spool, days)
    except Exception as exc:
        from ._writer import is_ledger_error

        if not is_ledger_error(exc):
            raise
        _log.warning("keito-instrument: could not prune the ledger %s (%s); trying again in an hour", spool.path, exc)
        return
    if result.records or result.sessions:
        _log.info("keito-instrument: pruned %d delivered record(s) and %d session row(s) older than %g days "
                  "from %s", result.records, result.sessions, days, spool.path)
