"""The compact form of the ledger that reports read: ended sessions summed per day.

One `daily` row per (day billed, local day started, project, agent) sums that group's ended
sessions (`model` = ''), and one per model sums their usage. SQLite triggers on the `sessions`
and `usage` tables keep the rows up to date inside the very transaction that writes a session,
so they can never disagree with it, and cost nothing on the host's thread. `report` reads these
rows instead of every session (a million sessions sum in milliseconds), and pruning may delete
session and usage rows past the retention: their sums stay here (a few hundred bytes per day).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

_KEY = "spent_date, start_day, project_id, agent_id, model"
_START_DAY = "date({t}.started_at, 'unixepoch', 'localtime')"
_UNKNOWN = "({t}.cost_unknown OR {t}.cost_usd IS NULL)"
_UNKNOWN_OF_NEW = f"SELECT {_UNKNOWN.format(t='sessions')} FROM sessions WHERE session_key = NEW.session_key"

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

SCHEMA = f"""
CREATE TABLE daily (
    spent_date TEXT NOT NULL, start_day TEXT NOT NULL, project_id TEXT NOT NULL, agent_id TEXT NOT NULL,
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
CREATE TRIGGER daily_session AFTER INSERT ON sessions BEGIN
    INSERT INTO daily ({_KEY}, sessions, active_seconds, hours, llm_calls, tool_calls, errors, input_tokens,
                       output_tokens, cost_usd, billed_cost, unknown, unpriced_calls)
    VALUES (NEW.spent_date, {_START_DAY.format(t="NEW")}, coalesce(NEW.project_id, ''),
            coalesce(NEW.agent_id, ''), '', 1, NEW.active_seconds, NEW.hours, NEW.llm_calls, NEW.tool_calls,
            NEW.errors, NEW.input_tokens, NEW.output_tokens,
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
    SELECT s.spent_date, {_START_DAY.format(t="s")}, coalesce(s.project_id, ''), coalesce(s.agent_id, ''),
           NEW.model, (SELECT COUNT(*) = 1 FROM usage WHERE session_key = NEW.session_key AND model = NEW.model),
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
    WHERE ({_KEY}) = (SELECT spent_date, {_START_DAY.format(t="sessions")}, coalesce(project_id, ''),
                             coalesce(agent_id, ''), '' FROM sessions WHERE session_key = NEW.session_key);
END;
"""

_BACKFILL = f"""
INSERT INTO daily ({_KEY}, sessions, active_seconds, hours, llm_calls, tool_calls, errors, input_tokens,
                   output_tokens, cost_usd, billed_cost, unknown, priced_part, unpriced_calls, with_usage)
SELECT spent_date, {_START_DAY.format(t="s")}, coalesce(project_id, ''), coalesce(agent_id, ''), '', COUNT(*),
       SUM(active_seconds), SUM(hours), SUM(llm_calls), SUM(tool_calls), SUM(errors), SUM(input_tokens),
       SUM(output_tokens), SUM(CASE WHEN {_UNKNOWN.format(t="s")} THEN 0 ELSE cost_usd END),
       SUM(CASE WHEN {_UNKNOWN.format(t="s")} THEN 0 ELSE coalesce(billed_cost, 0) END),
       SUM({_UNKNOWN.format(t="s")}),
       SUM(CASE WHEN {_UNKNOWN.format(t="s")} THEN
           (SELECT coalesce(SUM(cost_usd), 0) FROM usage u WHERE u.session_key = s.session_key) ELSE 0 END),
       SUM(CASE WHEN {_UNKNOWN.format(t="s")} THEN max(1, (SELECT coalesce(SUM(llm_calls), 0) FROM usage u
           WHERE u.session_key = s.session_key AND u.cost_usd IS NULL)) ELSE 0 END),
       SUM(EXISTS (SELECT 1 FROM usage u WHERE u.session_key = s.session_key))
FROM sessions s GROUP BY 1, 2, 3, 4;
INSERT INTO daily ({_KEY}, sessions, llm_calls, input_tokens, output_tokens, cost_usd, unknown, unpriced_calls,
                   {_KIND_NAMES})
SELECT s.spent_date, {_START_DAY.format(t="s")}, coalesce(s.project_id, ''), coalesce(s.agent_id, ''), u.model,
       COUNT(DISTINCT u.session_key), SUM(u.llm_calls), SUM(u.input_tokens), SUM(u.output_tokens),
       SUM(coalesce(u.cost_usd, 0)), SUM(u.cost_usd IS NULL),
       SUM(CASE WHEN u.cost_usd IS NULL THEN u.llm_calls ELSE 0 END), {_KIND_SUM}
FROM usage u JOIN sessions s ON s.session_key = u.session_key GROUP BY 1, 2, 3, 4, 5;
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the daily table and its triggers, summing the sessions a ledger already holds
    (once, in one transaction, so that no session is counted twice or missed)."""
    if _exists(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not _exists(conn):
            for statement in _statements(SCHEMA + _BACKFILL):
                conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _exists(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'daily_usage'").fetchone() is not None


def _statements(script: str) -> list[str]:
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


_GROUP = {"day": "spent_date", "project": "project_id", "agent": "agent_id", "model": "model"}
_SUMS = ("sessions", "active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens",
         "output_tokens", "cost_usd", "billed_cost", "unknown", "priced_part", "unpriced_calls", "with_usage",
         *KINDS)


def day_boundary(since: float | None) -> str | None:
    """The local day `since` starts, if it is a midnight (what `report --since` passes); else None."""
    if since is None:
        return ""
    moment = datetime.fromtimestamp(since)
    if moment.time() != datetime.min.time():
        return None
    return date.isoformat(moment.date())


def summary(conn: sqlite3.Connection, by: str, since: float | None) -> tuple[dict[str, dict[str, Any]], int] | None:
    """Ended sessions per group (`by`: day, project, agent or model) that started on or after
    `since`, and how many sessions the groups hold in all; None if `since` is not a midnight."""
    day = day_boundary(since)
    if day is None:
        return None
    column = _GROUP[by]
    model_clause = "model != ''" if by == "model" else "model = ''"
    sums = ", ".join(f"SUM({c}) AS {c}" for c in _SUMS)
    rows = conn.execute(f"SELECT {column} AS name, {sums} FROM daily WHERE start_day >= ? AND {model_clause}"
                        f" GROUP BY {column}", (day,)).fetchall()
    total = conn.execute(f"SELECT SUM({'with_usage' if by == 'model' else 'sessions'}) FROM daily"
                         " WHERE start_day >= ? AND model = ''", (day,)).fetchone()[0]
    return {str(r[0]) or "(none)": dict(zip(_SUMS, r[1:], strict=True)) for r in rows}, int(total or 0)


def merge(groups: dict[str, dict[str, Any]], ended: dict[str, dict[str, Any]], by: str,
          empty: Callable[[], dict[str, Any]]) -> None:
    """Add the ended sessions' sums to report rows (of open sessions, or new ones)."""
    for name, sums in ended.items():
        row = groups.get(name)
        if row is None:
            row = groups[name] = empty()
            if by == "model":
                row.update(active_seconds=None, hours=None, tool_calls=None, errors=None, billed_cost=None)
        row["_ended"] = row.get("_ended", 0) + sums["sessions"]
        columns = ("llm_calls", "input_tokens", "output_tokens", *KINDS) if by == "model" else (
            "active_seconds", "hours", "llm_calls", "tool_calls", "errors", "input_tokens", "output_tokens")
        for column in columns:
            row[column] += sums[column]
        row["unpriced_calls"] += sums["unpriced_calls"]
        row["cost_usd"] = round(row["cost_usd"] + sums["cost_usd"] + sums["priced_part"], 8)
        if by != "model":
            row["billed_cost"] = round(row["billed_cost"] + sums["billed_cost"], 8)
