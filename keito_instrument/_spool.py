"""The spool and local ledger: one SQLite file (WAL) holding every record until it is delivered.

An ended session is written in one transaction (its records, its report row, its usage rows):
once `append` returns, a kill -9 of the process loses nothing. WAL with synchronous=NORMAL keeps
committed transactions through a process crash; only an OS crash or power loss can drop the last
few. Record states: local (no credentials yet), pending, sending (claimed by a process), delivered,
dead (refused for good, with the server's reason).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import _forksafe
from ._metadata import payload_json
from ._records import Built

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    session_id TEXT NOT NULL,
    spent_date TEXT NOT NULL,
    project_id TEXT,
    path TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    claim_owner TEXT,
    claim_until REAL,
    ambiguous INTEGER NOT NULL DEFAULT 0,
    remote_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS records_state ON records (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS records_day ON records (spent_date, project_id);
CREATE TABLE IF NOT EXISTS sessions (
    session_key TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    spent_date TEXT NOT NULL,
    project_id TEXT, task_id TEXT, agent_id TEXT, agent_type TEXT, framework TEXT,
    active_seconds REAL NOT NULL, hours REAL NOT NULL,
    llm_calls INTEGER NOT NULL, tool_calls INTEGER NOT NULL, errors INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cost_usd REAL, billed_cost REAL, cost_unknown INTEGER NOT NULL, end_reason TEXT
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_at);
CREATE TABLE IF NOT EXISTS usage (
    session_key TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, llm_calls INTEGER NOT NULL, cost_usd REAL,
    details TEXT,
    PRIMARY KEY (session_key, model, provider)
);
CREATE TABLE IF NOT EXISTS live (
    key TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    state TEXT NOT NULL,
    last_activity REAL NOT NULL,
    due_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS live_due ON live (due_at);
CREATE TABLE IF NOT EXISTS named (session_id TEXT PRIMARY KEY, options TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS journal_offsets (segment TEXT PRIMARY KEY, offset INTEGER NOT NULL, updated_at REAL);
CREATE TABLE IF NOT EXISTS hours_carry (
    agent_id TEXT NOT NULL, project_id TEXT NOT NULL, task_id TEXT NOT NULL, spent_date TEXT NOT NULL,
    seconds REAL NOT NULL, hours REAL NOT NULL,
    PRIMARY KEY (agent_id, project_id, task_id, spent_date)
);
CREATE TABLE IF NOT EXISTS rollups (
    key TEXT PRIMARY KEY, period_end REAL NOT NULL, state TEXT NOT NULL, billed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rollups_due ON rollups (billed, period_end);
"""

STATES = ("local", "pending", "sending", "delivered", "dead")
before_read: Callable[[str], None] | None = None  # set by the billing engine
after_reopen: Callable[[str, sqlite3.Connection], None] | None = None  # set by the billing engine
_stale: list[sqlite3.Connection] = []  # connections to ledger files deleted while open


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def open_ledger(path: Path) -> sqlite3.Connection:
    """Connect to the ledger file; where there is none, first remove the -wal and -shm files a
    deleted ledger may have left (SQLite would read them as the new file's), under a lock on the
    folder so that two processes recreating it never remove each other's."""
    if path.exists():
        return sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    import fcntl

    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not path.exists():
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA schema_version").fetchone()  # the file exists before the lock is released
        return conn
    finally:
        os.close(fd)  # (releases the lock)


def insert_built(conn: sqlite3.Connection, built: Built, state: str) -> None:
    """Write one ended session's records, report row and usage rows (inside a transaction)."""
    now = time.time()
    conn.executemany(
        "INSERT OR IGNORE INTO records (record_id, kind, session_id, spent_date, project_id, path,"
        " payload, state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
        [
            (r.record_id, r.kind, r.session_id, r.spent_date, r.project_id, r.path,
             payload_json(r.payload, r.kind, r.metadata_json),
             state, now, now)
            for r in built.records
        ],
    )
    row = built.session_row
    if not row:  # a roll-up: records only (its sessions have their own report rows)
        return
    conn.execute(
        f"INSERT OR IGNORE INTO sessions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )
    if built.usage_rows:
        cols = list(built.usage_rows[0])
        conn.executemany(
            f"INSERT OR IGNORE INTO usage ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [tuple(u[c] for c in cols) for u in built.usage_rows],
        )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a ledger written by an older version up to this schema (columns added since)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    if "details" not in columns:
        try:
            conn.execute("ALTER TABLE usage ADD COLUMN details TEXT")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise


def default_path() -> Path:
    """The ledger under the user data directory (KEITO_LEDGER overrides it)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("keito-instrument", appauthor=False)) / "ledger.sqlite3"


class Spool:
    """The SQLite spool. Safe across threads (a connection per thread) and fork (per process)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        # Writers of one process queue on this lock, which wakes the next one the moment it is
        # free, rather than on SQLite's busy handler, which polls with sleeps of up to 100 ms and
        # is unfair; SQLite's own lock then only arbitrates between processes.
        self._write_lock = threading.RLock()
        self._ready_pid = -1

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (a fresh one after fork), with the schema in place."""
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == pid:
            if file_identity(self.path) == self._local.ident:
                return conn
            return self._reopen(conn)  # the ledger was deleted (or replaced) while we had it open
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = open_ledger(self.path)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=NORMAL")
        if self._ready_pid != pid:
            with self._schema_lock:
                if self._ready_pid != pid:
                    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:  # a new file: before any table
                        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(SCHEMA)
                    _migrate(conn)
                    from . import _daily, _prune

                    _daily.ensure_schema(conn)
                    _prune.ensure_schema(conn)
                    self._ready_pid = pid
        self._local.conn, self._local.pid, self._local.ident = conn, pid, file_identity(self.path)
        return conn

    def _reopen(self, stale: sqlite3.Connection) -> sqlite3.Connection:
        # The old connection is kept open, never closed: closing the last connection of a WAL
        # database deletes its -wal file by name, which is now the new ledger's.
        _stale.append(stale)
        self._local.conn = None
        with self._schema_lock:
            self._ready_pid = -1  # the schema is created in the new file
        conn = self.connect()
        hook = after_reopen
        if hook is not None:
            hook(str(self.path), conn)
        return conn

    @contextmanager
    def transaction(self, busy_timeout: float | None = None) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time across threads and processes.

        `busy_timeout` (seconds; None: 30 s) bounds the whole wait for the write lock, whether
        another thread of this process or another process holds it; past it
        `sqlite3.OperationalError` is raised and nothing is written.
        """
        conn = self.connect()
        start = time.monotonic()
        if not self._write_lock.acquire(timeout=-1 if busy_timeout is None else busy_timeout):
            raise sqlite3.OperationalError("database is locked (by another thread of this process)")
        try:
            if busy_timeout is not None:
                left = max(0.0, busy_timeout - (time.monotonic() - start))
                conn.execute(f"PRAGMA busy_timeout={int(left * 1000)}")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                if busy_timeout is not None:
                    conn.execute("PRAGMA busy_timeout=30000")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            # Whatever interrupted us (between BEGIN and the body, or a failed COMMIT), never
            # leave this connection holding SQLite's write lock.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._write_lock.release()

    def append(self, built: Built, state: str, busy_timeout: float | None = None) -> None:
        """Store an ended session durably. Appending the same session twice changes nothing.

        `busy_timeout` (seconds) bounds the wait for another writer's lock; past it
        `sqlite3.OperationalError` is raised and nothing is written.
        """
        with self.transaction(busy_timeout) as conn:
            insert_built(conn, built, state)

    def _read_own_writes(self) -> None:
        # A reader sees every session this process has ended: the journal it wrote is folded
        # first (in the background this happens within a second anyway).
        hook = before_read
        if hook is not None:
            hook(str(self.path))

    def live_sessions(self) -> list[dict[str, Any]]:
        """Open sessions as the ledger holds them (state decoded), oldest activity first."""
        self._read_own_writes()
        rows = self.connect().execute("SELECT key, session_id, state, last_activity FROM live ORDER BY last_activity")
        return [{**dict(r), "state": json.loads(r["state"])} for r in rows]

    def recent_records(self, seconds: float) -> int:
        """How many records were created in the last `seconds` (each is one request to Keito)."""
        self._read_own_writes()
        row = self.connect().execute("SELECT COUNT(*) FROM records WHERE created_at >= ?",
                                     (time.time() - seconds,)).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """Records per state (every state present, zero included)."""
        self._read_own_writes()
        result = dict.fromkeys(STATES, 0)
        for row in self.connect().execute("SELECT state, COUNT(*) AS n FROM records GROUP BY state"):
            result[row["state"]] = row["n"]
        return result

    def last_errors(self, limit: int = 10) -> list[sqlite3.Row]:
        """The most recent records that carry an error (dead letters and retrying ones)."""
        self._read_own_writes()
        return list(
            self.connect().execute(
                "SELECT record_id, kind, session_id, spent_date, state, attempts, last_error, updated_at"
                " FROM records WHERE last_error IS NOT NULL AND state != 'delivered'"
                " ORDER BY updated_at DESC LIMIT ?",
                (limit,),
            )
        )

    def records(self, session_id: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Records with their payloads decoded (for tests, `status` and users' own checks)."""
        self._read_own_writes()
        sql, args = "SELECT * FROM records WHERE 1=1", list[str]()
        if session_id is not None:
            sql, args = sql + " AND session_id = ?", [*args, session_id]
        if state is not None:
            sql, args = sql + " AND state = ?", [*args, state]
        rows = self.connect().execute(sql + " ORDER BY created_at, record_id", args)
        return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]

    def ended(self) -> sqlite3.Connection:
        """A connection to read ended sessions from, with this process's own ends folded first."""
        self._read_own_writes()
        return self.connect()

    def sessions(self, since: float | None = None) -> list[dict[str, Any]]:
        """Ledger rows of ended sessions, oldest first."""
        self._read_own_writes()
        rows = self.connect().execute(
            "SELECT * FROM sessions WHERE started_at >= ? ORDER BY started_at", (since or 0.0,)
        )
        return [dict(r) for r in rows]

    def usage(self, since: float | None = None) -> list[dict[str, Any]]:
        """Per-model usage rows joined with their session's day, project and agent."""
        self._read_own_writes()
        rows = self.connect().execute(
            "SELECT u.*, s.spent_date, s.project_id, s.agent_id, s.session_id FROM usage u"
            " JOIN sessions s ON s.session_key = u.session_key WHERE s.started_at >= ?",
            (since or 0.0,),
        )
        return [dict(r) for r in rows]

    def release_local(self) -> int:
        """Turn `local` records into `pending` (credentials now exist). Returns how many."""
        self._read_own_writes()
        with self.transaction() as conn:
            return conn.execute(
                "UPDATE records SET state='pending', updated_at=? WHERE state='local'", (time.time(),)
            ).rowcount

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local = threading.local()


_spools: dict[str, Spool] = {}
_spools_lock = threading.Lock()


_held_at_fork: list[Spool] = []


def _before_fork() -> None:
    # SQLite keeps a process's file-lock bookkeeping in memory: a child forked while a parent
    # thread is inside a write transaction inherits a record of a lock it does not hold, and its
    # own next BEGIN IMMEDIATE then waits out the busy timeout. Let the transactions in flight
    # finish first (a bounded wait: a fork is never held up for long).
    deadline = time.monotonic() + 2.0
    for spool in list(_spools.values()):
        if spool._write_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            _held_at_fork.append(spool)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop()._write_lock.release()


def _reset_locks_in_child() -> None:
    global _spools_lock
    _held_at_fork.clear()
    _spools_lock = threading.Lock()  # a parent thread may have held it at fork time
    for spool in _spools.values():
        spool._schema_lock = threading.Lock()
        spool._write_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)
_forksafe.in_child(_reset_locks_in_child)


def get_spool(path: str | os.PathLike[str] | None = None) -> Spool:
    """The shared `Spool` for a path (default: the configured ledger)."""
    if path is None:
        from ._config import get_settings

        path = get_settings().ledger_path or default_path()
    key = str(Path(path).expanduser())
    with _spools_lock:
        spool = _spools.get(key)
        if spool is None:
            spool = _spools[key] = Spool(key)
        return spool
