"""The delivery queue over the SQLite spool: atomic claims across threads and processes, results.

A claim moves records from `pending` to `sending` under `BEGIN IMMEDIATE`, stamped with the
claiming exporter (host, pid, token) and an expiry, so two processes sharing one spool never
send the same record. A claim whose owner died (kill -9) or expired is taken over, and such a
record is marked ambiguous: the dead process may have sent it, so it is reconciled by listing
before it is POSTed again.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._config import Settings
from .._spool import Spool
from .policy import Outcome

MISSING_PREFIX = "missing setting "
_REQUIRED = {
    "time_entry": ("project_id", "task_id"),
    "outcome": ("project_id", "task_id"),
    "expense": ("project_id", "expense_category_id"),
}
_ENV = {
    "project_id": "KEITO_PROJECT_ID",
    "task_id": "KEITO_TASK_ID",
    "expense_category_id": "KEITO_EXPENSE_CATEGORY_ID",
}


def _host() -> str:
    # The pid namespace joins the host name: two containers with the same host name sharing a
    # ledger volume must not judge each other's pids (a pid of another namespace looks dead here).
    try:
        namespace = f"/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return socket.gethostname().replace(":", "_") + namespace


def new_owner() -> str:
    """A claim owner id: host (and pid namespace), pid and a random token (one per exporter)."""
    return f"{_host()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _owner_dead(owner: str, host: str) -> bool:
    """True when the owner is a process of this host that no longer exists."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host:
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours (EPERM)
        return False
    return False


@dataclass
class Claimed:
    """A record this exporter holds the claim on."""

    record_id: str
    kind: str
    path: str
    spent_date: str
    project_id: str | None
    payload: dict[str, Any]
    attempts: int
    ambiguous: bool

    @property
    def group(self) -> tuple[str, str, str | None]:
        """What one listing reconciles: the API path, the day and the project."""
        return (self.path, self.spent_date, self.project_id)


def fill_missing(kind: str, payload: dict[str, Any], settings: Settings) -> tuple[bool, str | None]:
    """Fill ids left None at session end from the current settings: (changed, first still missing)."""
    changed = False
    for name in _REQUIRED.get(kind, ("project_id",)):
        if payload.get(name) is None:
            value = getattr(settings, name)
            if value is None:
                return changed, name
            payload[name] = value
            changed = True
    return changed, None


def missing_reason(name: str) -> str:
    """The last_error of a record waiting for a setting (names the variable to set)."""
    return f"{MISSING_PREFIX}{name}: configure({name}=...) or set {_ENV.get(name, name.upper())}"


class Queue:
    """Claims and results for one exporter (owner) over one spool."""

    def __init__(self, spool: Spool, owner: str) -> None:
        self.spool = spool
        self.owner = owner
        self._host = owner.rsplit(":", 2)[0]

    def claim(
        self, settings: Settings, limit: int, lease: float, missing_retry: float
    ) -> tuple[list[Claimed], list[str]]:
        """Claim up to `limit` due records: (claimed, names of settings missing for some records)."""
        now = time.time()
        missing: list[str] = []
        # A read first: an idle exporter must not take the write lock every interval (the host's
        # session-end append waits at most a few milliseconds for it).
        if (
            self.spool.connect()
            .execute(
                "SELECT 1 FROM records WHERE (state='pending' AND next_attempt_at <= ?) OR state='sending'"
                " LIMIT 1",
                (now,),
            )
            .fetchone()
            is None
        ):
            return [], missing
        with self.spool.transaction() as conn:
            owners = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT claim_owner FROM records WHERE state='sending' AND claim_until >= ?",
                    (now,),
                )
            ]
            dead = [o for o in owners if o and o != self.owner and _owner_dead(o, self._host)]
            if dead:
                # A crashed process may have sent these: reconcile before any new POST.
                conn.execute(
                    f"UPDATE records SET claim_until=0, ambiguous=1 WHERE state='sending' AND claim_owner IN"
                    f" ({','.join('?' * len(dead))})",
                    dead,
                )
            rows = conn.execute(
                "SELECT record_id, kind, path, spent_date, project_id, payload, attempts, ambiguous, state"
                " FROM records WHERE (state='pending' AND next_attempt_at <= ?)"
                " OR (state='sending' AND claim_until < ?) ORDER BY next_attempt_at, created_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            claimed: list[Claimed] = []
            for row in rows:
                payload = json.loads(row["payload"])
                changed, lacking = fill_missing(row["kind"], payload, settings)
                if lacking is not None:
                    missing.append(lacking)
                    conn.execute(
                        "UPDATE records SET last_error=?, next_attempt_at=?, updated_at=?, state='pending',"
                        " ambiguous=CASE WHEN state='sending' THEN 1 ELSE ambiguous END WHERE record_id=?",
                        (missing_reason(lacking), now + missing_retry, now, row["record_id"]),
                    )
                    continue
                ambiguous = bool(row["ambiguous"]) or row["state"] == "sending"
                project_id = payload.get("project_id")
                if changed:
                    conn.execute(
                        "UPDATE records SET payload=?, project_id=? WHERE record_id=?",
                        (json.dumps(payload, separators=(",", ":")), project_id, row["record_id"]),
                    )
                claimed.append(
                    Claimed(
                        row["record_id"],
                        row["kind"],
                        row["path"],
                        row["spent_date"],
                        project_id,
                        payload,
                        row["attempts"],
                        ambiguous,
                    )
                )
            if claimed:
                conn.executemany(
                    "UPDATE records SET state='sending', claim_owner=?, claim_until=?, ambiguous=?,"
                    " updated_at=? WHERE record_id=?",
                    [(self.owner, now + lease, int(c.ambiguous), now, c.record_id) for c in claimed],
                )
        return claimed, missing

    def finish(self, results: Iterable[tuple[Claimed, Outcome, float]]) -> None:
        """Store the outcomes of claimed records in one transaction: (record, outcome, retry delay)."""
        now = time.time()
        mine = "record_id=? AND claim_owner=? AND state='sending'"
        with self.spool.transaction() as conn:
            for rec, out, delay in results:
                if out.kind == "delivered":
                    conn.execute(
                        "UPDATE records SET state='delivered', remote_id=?, delivered_at=?, updated_at=?,"
                        f" attempts=attempts+1, ambiguous=0, last_error=NULL, claim_owner=NULL WHERE {mine}",
                        (out.remote_id, now, now, rec.record_id, self.owner),
                    )
                elif out.kind == "dead":
                    conn.execute(
                        "UPDATE records SET state='dead', last_error=?, updated_at=?, attempts=attempts+1,"
                        f" claim_owner=NULL WHERE {mine}",
                        (out.reason, now, rec.record_id, self.owner),
                    )
                else:  # retry (counts an attempt) or pause / release (does not)
                    counted = 1 if out.kind == "retry" else 0
                    conn.execute(
                        "UPDATE records SET state='pending', attempts=attempts+?, next_attempt_at=?,"
                        " ambiguous=?,"
                        f" last_error=COALESCE(?, last_error), updated_at=?, claim_owner=NULL WHERE {mine}",
                        (
                            counted,
                            now + delay,
                            int(out.ambiguous),
                            out.reason or None,
                            now,
                            rec.record_id,
                            self.owner,
                        ),
                    )

    def mark_found(self, found: dict[str, str]) -> int:
        """Records the listing showed are already in Keito: delivered (unless another process holds them)."""
        if not found:
            return 0
        now = time.time()
        with self.spool.transaction() as conn:
            return conn.executemany(
                "UPDATE records SET state='delivered', remote_id=?, delivered_at=?, updated_at=?,"
                " ambiguous=0,"
                " last_error=NULL, claim_owner=NULL WHERE record_id=? AND (state='pending'"
                " OR (state='sending' AND claim_owner=?))",
                [(remote, now, now, rid, self.owner) for rid, remote in found.items()],
            ).rowcount

    def release_mine(self) -> int:
        """Give back every claim of this exporter (on shutdown); they may have been sent: ambiguous."""
        now = time.time()
        with self.spool.transaction() as conn:
            return conn.execute(
                "UPDATE records SET state='pending', ambiguous=1, claim_owner=NULL, updated_at=?"
                " WHERE state='sending' AND claim_owner=?",
                (now, self.owner),
            ).rowcount

    def wake_missing(self) -> None:
        """Settings changed: look again at once at records that waited for a missing id."""
        with self.spool.transaction() as conn:
            conn.execute(
                "UPDATE records SET next_attempt_at=0 WHERE state='pending' AND last_error LIKE ?",
                (MISSING_PREFIX + "%",),
            )


def open_counts(spool: Spool) -> tuple[int, int, float | None]:
    """(records not yet delivered, of which blocked on a missing setting, earliest due time of the rest)."""
    row = (
        spool.connect()
        .execute(
            "SELECT COUNT(*) AS total,"
            " SUM(CASE WHEN state='pending' AND last_error LIKE ? THEN 1 ELSE 0 END) AS blocked,"
            " MIN(CASE WHEN state='pending' AND (last_error IS NULL OR last_error NOT LIKE ?)"
            "     THEN next_attempt_at"
            "     WHEN state='sending' THEN 0 END) AS due"
            " FROM records WHERE state IN ('pending', 'sending')",
            (MISSING_PREFIX + "%", MISSING_PREFIX + "%"),
        )
        .fetchone()
    )
    return int(row["total"] or 0), int(row["blocked"] or 0), row["due"]


def requeue_dead(spool: Spool) -> int:
    """Send dead letters again (after their cause was fixed, e.g. a project the key may now use).

    A session that could not be billed (kind 'unbillable', its state kept) goes back to the
    billing engine, due at once, so the next fold bills it with the code and settings of now.
    """
    now = time.time()
    with spool.transaction() as conn:
        unbillable = conn.execute(
            "SELECT record_id, session_id, payload FROM records WHERE state='dead' AND kind='unbillable'"
        ).fetchall()
        for record_id, session_id, state in unbillable:
            conn.execute(
                "INSERT OR REPLACE INTO live (key, session_id, state, last_activity, due_at, updated_at)"
                " VALUES (?,?,?,?,0,?)",
                (record_id.removeprefix("unbillable-"), session_id, state, now, now),
            )
            conn.execute("DELETE FROM records WHERE record_id = ?", (record_id,))
        revived: int = conn.execute(
            "UPDATE records SET state='pending', next_attempt_at=0, ambiguous=0, updated_at=?"
            " WHERE state='dead'",
            (now,),
        ).rowcount
    return revived + len(unbillable)


def next_due(spool: Spool) -> float | None:
    """When the earliest pending record (not waiting for a setting) may be tried again."""
    row = (
        spool.connect()
        .execute(
            "SELECT MIN(next_attempt_at) FROM records WHERE state='pending' AND (last_error IS NULL"
            " OR last_error NOT LIKE ?)",
            (MISSING_PREFIX + "%",),
        )
        .fetchone()
    )
    return None if row[0] is None else float(row[0])
