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


class HoursLedger:
    """The running totals, read and written inside the fold's transaction."""

    def __init__(self, conn: sqlite3.Connection, settings: Settings) -> None:
        self.conn, self.settings = conn, settings

    def carry(self, key: tuple[Any, ...], day: str, seconds: float) -> float:
        """The hours to bill for `seconds` more of `key` on `day`."""
        agent, project, task = (str(k) if k is not None else "" for k in key)
        row = self.conn.execute(
            "SELECT seconds, hours FROM hours_carry WHERE agent_id=? AND project_id=? AND task_id=? AND spent_date=?",
            (agent, project, task, day),
        ).fetchone()
        done_s, done_h = (float(row[0]), Decimal(str(row[1]))) if row else (0.0, Decimal(0))
        total = done_s + seconds
        target = rounded_total(total, self.settings.hours_increment, self.settings.rounding)
        hours = max(Decimal(0), min(Decimal(str(MAX_ENTRY_HOURS)), target - done_h))
        self.conn.execute(
            "INSERT OR REPLACE INTO hours_carry (agent_id, project_id, task_id, spent_date, seconds, hours)"
            " VALUES (?,?,?,?,?,?)",
            (agent, project, task, day, total, float(done_h + hours)),
        )
        return float(hours)
