"""Hours that add up: each (agent, project, task, spent_date) is rounded once, not entry by entry.

The ledger keeps, per key and day, the exact seconds billed so far and the hours sent for them.
A new entry's hours are the rounded running total minus what was already sent, so 360 sessions
of 10 s bill 1.00 h in all (not 360 x 0.00 h), and no entry is ever rounded twice. Exact seconds
stay in each record's metadata. `min_hours` still lifts a single entry.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

from .._config import Settings
from .._records import rounded_total

MAX_ENTRY_HOURS = 24.0
_MAX_ENTRY = Decimal(str(MAX_ENTRY_HOURS))
_Key = tuple[str, str, str, str]
_Row = tuple[float, Decimal]  # seconds billed, hours sent (as the ledger's REAL columns read back)


class HoursLedger:
    """The running totals, read and written inside the fold's transaction.

    A key's row is read once per fold and kept here; what changed is written by `save()`, in the
    same transaction. A session billed in a savepoint that is rolled back undoes its changes here
    too (`mark()`, `undo()`), as the rollback does in the ledger.
    """

    def __init__(self, conn: sqlite3.Connection, settings: Settings) -> None:
        self.conn, self.settings = conn, settings
        self._rows: dict[_Key, _Row] = {}
        self._changed: dict[_Key, tuple[float, float]] = {}
        self._undo: list[tuple[_Key, _Row | None, tuple[float, float] | None]] = []

    def carry(self, key: tuple[Any, ...], day: str, seconds: float) -> float:
        """The hours to bill for `seconds` more of `key` on `day`."""
        agent, project, task = (str(k) if k is not None else "" for k in key)
        at = (agent, project, task, day)
        row = self._rows.get(at)
        if row is None:
            found = self.conn.execute(
                "SELECT seconds, hours FROM hours_carry WHERE agent_id=? AND project_id=? AND task_id=?"
                " AND spent_date=?", at,
            ).fetchone()
            row = (float(found[0]), Decimal(str(found[1]))) if found else (0.0, Decimal(0))
            self._undo.append((at, None, None))
        else:
            self._undo.append((at, row, self._changed.get(at)))
        done_s, done_h = row
        total = done_s + seconds
        target = rounded_total(total, self.settings.hours_increment, self.settings.rounding)
        hours = max(Decimal(0), min(_MAX_ENTRY, target - done_h))
        sent = float(done_h + hours)
        self._changed[at] = (total, sent)
        self._rows[at] = (total, Decimal(str(sent)))  # (what reading the row back would give)
        return float(hours)

    def mark(self) -> int:
        """A point to `undo()` back to."""
        return len(self._undo)

    def undo(self, mark: int) -> None:
        """Forget the changes made since `mark`."""
        while len(self._undo) > mark:
            at, row, changed = self._undo.pop()
            if row is None:
                self._rows.pop(at, None)
            else:
                self._rows[at] = row
            if changed is None:
                self._changed.pop(at, None)
            else:
                self._changed[at] = changed

    def save(self) -> None:
        """Write the changed totals."""
        if self._changed:
            self.conn.executemany(
                "INSERT OR REPLACE INTO hours_carry (agent_id, project_id, task_id, spent_date, seconds, hours)"
                " VALUES (?,?,?,?,?,?)",
                [(*at, total, sent) for at, (total, sent) in self._changed.items()],
            )
        self._changed.clear()
        self._undo.clear()
