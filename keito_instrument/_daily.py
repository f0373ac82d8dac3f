"""The compact form of the ledger that reports read: ended sessions and outcomes summed per day.

One `daily` row per (day billed, project, task, agent) sums that group's ended sessions
(`model` = ''), and one per model sums their usage; one `daily_outcomes` row per (day logged,
project, task, agent, outcome type) sums the outcomes. SQLite triggers on the `sessions`, `usage`
and `records` tables keep the rows up to date inside the very transaction that writes a session,
so they can never disagree with it, and cost nothing on the host's thread. `report` reads these
rows instead of every session (a million sessions sum in milliseconds), and pruning may delete
session, usage and delivered outcome rows past the retention: their sums stay here (a few
hundred bytes per day).

Days are the workspace's (`spent_date`, in the `timezone` setting): a session counts on the day
its billed time starts, an outcome on the day it was logged.
"""

from __future__ import annotations

import sqlite3
from datetime import date, datetime
from typing import Any

_KEY = "spent_date, project_id, task_id, agent_id, model"
_UNKNOWN = "({t}.cost_unknown OR {t}.cost_usd IS NULL)"
_UNKNOWN_OF_NEW = f"SELECT {_UNKNOWN.format(t='sessions')} FROM sessions WHERE session_key = NEW.session_key"
_IDS = "coalesce({t}.project_id, ''), coalesce({t}.task_id, ''), coalesce({t}.agent_id, '')"

# Tokens by kind, summed in the model rows only (`report --by model`): the usage columns, then the
# kinds kept in the usage row's `details` JSON.
KINDS = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cache_write_1h_tokens",
         "input_audio_tokens", "input_image_tokens", "output_audio_tokens", "web_searches")
_COLUMN_KINDS = KINDS[:3]
_KIND_DDL = ", ".join(f"{k} INTEGER NOT NULL DEFAULT 0" for k in KINDS)


def _kind_value(kind: str, t: str) -> str:
    if kind in _COLUMN_KINDS:
        return f"{t}.{kind}"
    return f"coalesce(json_extract({t}.details, '$.{kind}'), 0)"


_KIND_NAMES = ", ".join(KINDS)
_KIND_NEW = ", ".join(_kind_value(k, "NEW") for k in KINDS)
_KIND_SUM = ", ".join(f"SUM({_kind_value(k, 'u')})" for k in KINDS)
_KIND_ADD = ", ".join(f"{k} = {k} + excluded.{k}" for k in KINDS)

_TABLE = f"""
CREATE TABLE daily (
    spent_date TEXT NOT NULL, project_id TEXT NOT NULL, task_id TEXT NOT NULL, agent_id TEXT NOT NULL,
    model TEXT NOT NULL,
    sessions INTEGER NOT NULL DEFAULT 0, active_seconds REAL NOT NULL DEFAULT 0, hours REAL NOT NULL DEFAULT 0,
    llm_calls INTEGER NOT NULL DEFAULT 0, tool_calls INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0, billed_cost REAL NOT NULL DEFAULT 0, unknown INTEGER NOT NULL DEFAULT 0,
    priced_part REAL NOT NULL DEFAULT 0, unpriced_calls INTEGER NOT NULL DEFAULT 0,
    with_usage INTEGER NOT NULL DEFAULT 0,
    {_KIND_DDL},
    PRIMARY KEY ({_KEY})
) WITHOUT ROWID;
"""
_TRIGGERS = f"""
CREATE TRIGGER daily_session AFTER INSERT ON sessions BEGIN
    INSERT INTO daily ({_KEY}, sessions, active_seconds, hours, llm_calls, tool_calls, errors, input_tokens,
                       output_tokens, cost_usd, billed_cost, unknown, unpriced_calls)
    VALUES (NEW.spent_date, {_IDS.format(t="NEW")}, '', 1, NEW.active_seconds, NEW.hours, NEW.llm_calls,
            NEW.tool_calls, NEW.errors, NEW.input_tokens, NEW.output_tokens,
            CASE WHEN {_UNKNOWN.format(t="NEW")} THEN 0 ELSE NEW.cost_usd END,
            CASE WHEN {_UNKNOWN.format(t="NEW")} THEN 0 ELSE coalesce(NEW.billed_cost, 0) END,
            {_UNKNOWN.format(t="NEW")}, {_UNKNOWN.format(t="NEW")})
    ON CONFLICT ({_KEY}) DO UPDATE SET sessions = sessions + 1,
        active_seconds = active_seconds + excluded.active_seconds, hours = hours + excluded.hours,
        llm_calls = llm_calls + excluded.llm_calls, tool_calls = tool_calls + excluded.tool_calls,
        errors = errors + excluded.errors, input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens, cost_usd = cost_usd + excluded.cost_usd,
        billed_cost = billed_cost + excluded.billed_cost, unknown = unknown + excluded.unknown,
        unpriced_calls = unpriced_calls + excluded.unpriced_calls;
END;
CREATE TRIGGER daily_usage AFTER INSERT ON usage BEGIN
    INSERT INTO daily ({_KEY}, sessions, llm_calls, input_tokens, output_tokens, cost_usd, unknown,
                       unpriced_calls, {_KIND_NAMES})
    SELECT s.spent_date, {_IDS.format(t="s")}, NEW.model,
           (SELECT COUNT(*) = 1 FROM usage WHERE session_key = NEW.session_key AND model = NEW.model),
           NEW.llm_calls, NEW.input_tokens, NEW.output_tokens, coalesce(NEW.cost_usd, 0), NEW.cost_usd IS NULL,
           CASE WHEN NEW.cost_usd IS NULL THEN NEW.llm_calls ELSE 0 END, {_KIND_NEW}
    FROM sessions s WHERE s.session_key = NEW.session_key
    ON CONFLICT ({_KEY}) DO UPDATE SET sessions = sessions + excluded.sessions,
        llm_calls = llm_calls + excluded.llm_calls, input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens, cost_usd = cost_usd + excluded.cost_usd,
        unknown = unknown + excluded.unknown, unpriced_calls = unpriced_calls + excluded.unpriced_calls,
        {_KIND_ADD};
    UPDATE daily SET
        with_usage = with_usage + (SELECT COUNT(*) = 1 FROM usage WHERE session_key = NEW.session_key),
        priced_part = priced_part + CASE WHEN ({_UNKNOWN_OF_NEW}) THEN coalesce(NEW.cost_usd, 0) ELSE 0 END,
        -- an unpriced session counts max(its unpriced calls, 1): its session row counted 1 already
        unpriced_calls = unpriced_calls + CASE WHEN ({_UNKNOWN_OF_NEW}) AND NEW.cost_usd IS NULL THEN NEW.llm_calls
            - ((SELECT COUNT(*) FROM usage WHERE session_key = NEW.session_key AND cost_usd IS NULL) = 1)
            ELSE 0 END
    WHERE ({_KEY}) = (SELECT spent_date, {_IDS.format(t="sessions")}, '' FROM sessions
                      WHERE session_key = NEW.session_key);
END;
"""

# The ended sessions' sums (`sessions`), then the models' (`usage`), from the per-session rows:
# the backfill of a ledger that has none yet, and the report of a moment that is not a midnight.
_SESSION_SUMS = f"""
SELECT spent_date, {_IDS.format(t="s")}, '' AS model, COUNT(*),
       SUM(active_seconds), SUM(hours), SUM(llm_calls), SUM(tool_calls), SUM(errors), SUM(input_tokens),
       SUM(output_tokens), SUM(CASE WHEN {_UNKNOWN.format(t="s")} THEN 0 ELSE cost_usd END),
       SUM(CASE WHEN {_UNKNOWN.format(t="s")} THEN 0 ELSE coalesce(billed_cost, 0) END),
       SUM({_UNKNOWN.format(t="s")}),
       SUM(CASE WHEN {_UNKNOWN.format(t="s")} THEN
           (SELECT coalesce(SUM(cost_usd), 0) FROM usage u WHERE u.session_key = s.session_key) ELSE 0 END),
       SUM(CASE WHEN {_UNKNOWN.format(t="s")} THEN max(1, (SELECT coalesce(SUM(llm_calls), 0) FROM usage u
           WHERE u.session_key = s.session_key AND u.cost_usd IS NULL)) ELSE 0 END),
       SUM(EXISTS (SELECT 1 FROM usage u WHERE u.session_key = s.session_key)), {", ".join("0" for _ in KINDS)}
FROM sessions s WHERE s.started_at >= ? GROUP BY 1, 2, 3, 4"""
_USAGE_SUMS = f"""
SELECT s.spent_date, {_IDS.format(t="s")}, u.model,
       COUNT(DISTINCT u.session_key), 0, 0, SUM(u.llm_calls), 0, 0, SUM(u.input_tokens), SUM(u.output_tokens),
       SUM(coalesce(u.cost_usd, 0)), 0, SUM(u.cost_usd IS NULL), 0,
       SUM(CASE WHEN u.cost_usd IS NULL THEN u.llm_calls ELSE 0 END), 0, {_KIND_SUM}
FROM usage u JOIN sessions s ON s.session_key = u.session_key WHERE s.started_at >= ? GROUP BY 1, 2, 3, 4, 5"""
_SUMS = ("sessions", "active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens",
         "output_tokens", "cost_usd", "billed_cost", "unknown", "priced_part", "unpriced_calls", "with_usage",
         *KINDS)
_ALL = f"{_KEY}, {', '.join(_SUMS)}"

# A `daily` table of the first version (keyed by the local day started instead of the task):
# what its sums hold beyond the sessions still in the ledger (those pruned since) is kept, under
# no task.
_CARRY_PRUNED = f"""
INSERT INTO daily ({_ALL})
SELECT o.spent_date, o.project_id, '', o.agent_id, o.model,
       {", ".join(f"o.{c} - coalesce(n.{c}, 0)" for c in _SUMS)}
FROM (SELECT spent_date, project_id, agent_id, model, {", ".join(f"SUM({c}) AS {c}" for c in _SUMS)}
      FROM daily_v1 GROUP BY 1, 2, 3, 4) o
LEFT JOIN (SELECT spent_date, project_id, agent_id, model, {", ".join(f"SUM({c}) AS {c}" for c in _SUMS)}
           FROM daily GROUP BY 1, 2, 3, 4) n USING (spent_date, project_id, agent_id, model)
WHERE o.sessions - coalesce(n.sessions, 0) > 0
ON CONFLICT ({_KEY}) DO UPDATE SET {", ".join(f"{c} = {c} + excluded.{c}" for c in _SUMS)}
"""

_OUTCOME_KEY = "spent_date, project_id, task_id, agent_id, outcome_type"
_OUTCOME_SUMS = ("outcomes", "quantity", "successes", "revenue", "unpriced_outcomes")
_Q = "coalesce(json_extract({t}.payload, '$.metadata.outcome_quantity'), 1)"
_PRICE = "json_extract({t}.payload, '$.metadata.outcome_unit_price')"


def _outcome_values(t: str) -> str:
    """One outcome record's key and sums: revenue (quantity x unit price) and the count of those
    without a unit price are of the successful outcomes only, as an invoice bills them."""
    ok = f"(coalesce(json_extract({t}.payload, '$.metadata.outcome_success'), 1) != 0)"
    return (f"{t}.spent_date, coalesce({t}.project_id, ''), coalesce(json_extract({t}.payload, '$.task_id'), ''),"
            f" coalesce(json_extract({t}.payload, '$.metadata.agent_id'), ''),"
            f" coalesce(json_extract({t}.payload, '$.metadata.outcome_type'), ''), 1, {_Q.format(t=t)}, {ok},"
            f" CASE WHEN {ok} THEN coalesce({_Q.format(t=t)} * {_PRICE.format(t=t)}, 0) ELSE 0 END,"
            f" {ok} AND {_PRICE.format(t=t)} IS NULL")


OUTCOMES = f"""
CREATE TABLE IF NOT EXISTS daily_outcomes (
    spent_date TEXT NOT NULL, project_id TEXT NOT NULL, task_id TEXT NOT NULL, agent_id TEXT NOT NULL,
    outcome_type TEXT NOT NULL, outcomes INTEGER NOT NULL DEFAULT 0, quantity REAL NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0, revenue REAL NOT NULL DEFAULT 0,
    unpriced_outcomes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY ({_OUTCOME_KEY})
) WITHOUT ROWID;
DELETE FROM daily_outcomes;
CREATE TRIGGER daily_outcome AFTER INSERT ON records WHEN NEW.kind = 'outcome' BEGIN
    INSERT INTO daily_outcomes ({_OUTCOME_KEY}, {", ".join(_OUTCOME_SUMS)}) VALUES ({_outcome_values("NEW")})
    ON CONFLICT ({_OUTCOME_KEY}) DO UPDATE SET {", ".join(f"{c} = {c} + excluded.{c}" for c in _OUTCOME_SUMS)};
END;
INSERT INTO daily_outcomes ({_OUTCOME_KEY}, {", ".join(_OUTCOME_SUMS)})
WITH o ({_OUTCOME_KEY}, {", ".join(_OUTCOME_SUMS)}) AS (
    SELECT {_outcome_values("r")} FROM records r WHERE r.kind = 'outcome')
SELECT {_OUTCOME_KEY}, {", ".join(f"SUM({c})" for c in _OUTCOME_SUMS)} FROM o GROUP BY 1, 2, 3, 4, 5;
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the daily tables and their triggers, summing what a ledger already holds (once, in
    one transaction, so that nothing is counted twice or missed).

    A `daily` table of the first version (no task) is rebuilt from the session and usage rows still
    in the ledger; the sums of sessions pruned since are kept, without their task. Outcome sums
    start from the outcome records present (delivered ones pruned before this version are gone).
    """
    if _daily_current(conn) and _exists(conn, "daily_outcome"):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not _daily_current(conn):
            _build_daily(conn)
        if not _exists(conn, "daily_outcome"):
            for statement in _statements(OUTCOMES):
                conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _build_daily(conn: sqlite3.Connection) -> None:
    old = _exists(conn, "daily")
    if old:
        conn.execute("DROP TRIGGER IF EXISTS daily_session")
        conn.execute("DROP TRIGGER IF EXISTS daily_usage")
        conn.execute("ALTER TABLE daily RENAME TO daily_v1")
    for statement in _statements(_TABLE + _TRIGGERS):
        conn.execute(statement)
    for select in (_SESSION_SUMS, _USAGE_SUMS):
        conn.execute(f"INSERT INTO daily ({_ALL}) {select}", (0.0,))
    if old:
        conn.execute(_CARRY_PRUNED)
        conn.execute("DROP TABLE daily_v1")


def _daily_current(conn: sqlite3.Connection) -> bool:
    if not _exists(conn, "daily_usage"):
        return False
    return any(row[1] == "task_id" for row in conn.execute("PRAGMA table_info(daily)"))


def _exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None


def _statements(script: str) -> list[str]:
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


def day_boundary(since: float | None) -> str | None:
    """The local day `since` starts, if it is a midnight; else None (a moment, not a day)."""
    if since is None:
        return ""
    moment = datetime.fromtimestamp(since)
    if moment.time() != datetime.min.time():
        return None
    return date.isoformat(moment.date())


COLUMNS = {"day": "spent_date", "project": "project_id", "task": "task_id", "agent": "agent_id",
           "model": "model", "outcome": "outcome_type"}


def facts(conn: sqlite3.Connection, columns: tuple[str, ...], models: bool, first: str, last: str,
          since: float = 0.0) -> list[dict[str, Any]]:
    """The ended sessions' sums (or with `models`, the models' sums) grouped by `columns` (of
    `daily`), over the days `first` to `last` (ISO dates, both included). `since` > 0: only the
    sessions that started at or after that moment, summed from the per-session rows instead."""
    source, args = "daily", list[Any]()
    if since > 0:
        source = f"WITH raw ({_ALL}) AS ({_USAGE_SUMS if models else _SESSION_SUMS}) "
        source, args = source + "SELECT * FROM raw", [since]
        source = f"({source})"
    keys = ", ".join(columns) or "NULL"
    sums = ", ".join(f"SUM({c})" for c in _SUMS)
    rows = conn.execute(f"SELECT {keys}, {sums} FROM {source} WHERE model {'!=' if models else '='} ''"
                        f" AND spent_date BETWEEN ? AND ? GROUP BY {keys}", (*args, first, last))
    width = max(len(columns), 1)
    return [{**dict(zip(columns, r[:width], strict=False)), **dict(zip(_SUMS, r[width:], strict=True))}
            for r in rows]


def outcome_facts(conn: sqlite3.Connection, columns: tuple[str, ...], first: str, last: str
                  ) -> list[dict[str, Any]]:
    """The outcomes' sums grouped by `columns` (of `daily_outcomes`) over the days `first` to `last`."""
    keys = ", ".join(columns) or "NULL"
    sums = ", ".join(f"SUM({c})" for c in _OUTCOME_SUMS)
    rows = conn.execute(f"SELECT {keys}, {sums} FROM daily_outcomes WHERE spent_date BETWEEN ? AND ?"
                        f" GROUP BY {keys}", (first, last))
    width = max(len(columns), 1)
    return [{**dict(zip(columns, r[:width], strict=False)), **dict(zip(_OUTCOME_SUMS, r[width:], strict=True))}
            for r in rows]
