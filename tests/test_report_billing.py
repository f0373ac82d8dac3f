"""`report` for billing: a period of days (both included, in the workspace time zone), one or two
groupings (week, month, task and outcome among them), revenue at an hourly rate, and outcome sums
that outlive pruning and the upgrade of an older ledger."""

from __future__ import annotations

import json
import time
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import keito_instrument as keito
from keito_instrument import _daily, _prune, _records
from keito_instrument._config import get_settings
from keito_instrument._session import Outcome, SessionOptions, SessionSnapshot
from keito_instrument._spool import Spool, get_spool
from keito_instrument._usage import ModelUsage
from keito_instrument.cli import main
from keito_instrument.cli._groups import bucket, parse_by
from keito_instrument.cli._report import summarise

TZ = "Pacific/Kiritimati"  # UTC+14: most of its local day is another day in UTC
ZONE = ZoneInfo(TZ)
TODAY = datetime.now(ZONE).date()
D = TODAY - timedelta(days=5)


def at(day: date, hour: int, minute: int) -> float:
    """An epoch timestamp for a wall-clock time in the workspace time zone."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZONE).timestamp()


def work(sid: str, start: float, minutes: float, *, agent: str = "alpha", project: str = "p1",
         task: str | None = "t1", calls: int = 1, outcomes: tuple[Outcome, ...] = ()) -> None:
    """One ended session of exactly `minutes`, with `calls` priced LLM calls, written to the ledger
    as the billing engine writes it (records built from its snapshot; the API cannot back-date a
    session by days)."""
    usage = (ModelUsage("gpt-4o-mini", "openai", 1000 * calls, 100 * calls, calls=calls),)
    end = start + minutes * 60
    snap = SessionSnapshot(
        session_id=sid, options=SessionOptions(agent_id=agent, project_id=project, task_id=task),
        opened_at=start, started_at=start, ended_at=end, intervals=((start, end),), usage=usage,
        llm_calls=calls, tool_calls=0, errors=0, outcomes=outcomes, breakdown={}, end_reason="completed",
        had_runs=True)
    get_spool().append(_records.build(snap, get_settings()), "local")


# (session, day, hour, minute, minutes, agent, project, task)
SESSIONS = [
    ("before", D - timedelta(days=1), 23, 50, 6, "alpha", "p1", "t1"),  # the day before, 10 min before midnight
    ("first", D, 0, 10, 30, "alpha", "p1", "t1"),  # 10 minutes after the local midnight (D - 1 in UTC)
    ("last", D, 23, 40, 15, "beta", "p2", "t2"),  # 20 minutes before the next local midnight
    ("after", D + timedelta(days=1), 0, 5, 60, "beta", "p1", None),  # the next day
]


@pytest.fixture
def week(ledger: Spool) -> Spool:
    keito.configure(timezone=TZ)
    for sid, day, hour, minute, minutes, agent, project, task in SESSIONS:
        logged = {"last": at(D, 23, 58), "after": at(D + timedelta(days=1), 0, 1)}.get(sid)
        done = (Outcome("ticket_resolved", 2, 5.0, True, None, None, {}, 1, logged),) if logged else ()
        work(sid, at(day, hour, minute), minutes, agent=agent, project=project, task=task, outcomes=done)
    return ledger


def report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", "--format", "json", *args]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def test_since_and_until_are_whole_days_in_the_workspace_time_zone(
        week: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    assert {r["session_id"]: r["spent_date"] for r in week.sessions()} == {
        "before": str(D - timedelta(days=1)), "first": str(D), "last": str(D), "after": str(D + timedelta(days=1))}
    one_day = report(capsys, "--since", str(D), "--until", str(D))
    assert [r["group"] for r in one_day["rows"]] == [str(D)]
    assert one_day["total"]["sessions"] == 2 and one_day["total"]["hours"] == pytest.approx(0.75)
    assert (one_day["since"], one_day["until"]) == (str(D), str(D))
    assert one_day["total"]["outcomes"] == 1 and one_day["total"]["outcome_revenue"] == 10  # 23:58 on D
    two_days = report(capsys, "--since", str(D), "--until", str(D + timedelta(days=1)))
    assert two_days["total"]["sessions"] == 3 and two_days["total"]["hours"] == pytest.approx(1.75)
    assert two_days["total"]["outcomes"] == 2
    until_only = report(capsys, "--until", str(D - timedelta(days=1)))
    assert until_only["total"]["sessions"] == 1 and until_only["total"]["hours"] == pytest.approx(0.1)
    nd = report(capsys, "--since", "5d", "--until", "5d")  # days before today, in the workspace's zone
    assert nd["total"]["sessions"] == 2
    # The library takes the same days; a timestamp that is not a midnight is a moment.
    assert summarise("day", D, until=D)[1]["sessions"] == 2
    assert summarise("day", at(D, 12, 0))[1]["sessions"] == 2  # "last" and "after"


def test_until_before_since_is_refused(week: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--since", str(D), "--until", str(D - timedelta(days=1))]) == 2
    assert "before --since" in capsys.readouterr().err


def test_two_groupings_key_rows_by_both(week: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--by", "project,agent")
    assert data["by"] == "project,agent"
    rows = {(r["project"], r["agent"]): r for r in data["rows"]}
    assert sorted(rows) == [("p1", "alpha"), ("p1", "beta"), ("p2", "beta")]
    assert rows[("p1", "alpha")]["sessions"] == 2 and rows[("p1", "alpha")]["hours"] == pytest.approx(0.6)
    assert rows[("p1", "beta")]["group"] == "p1 / beta" and rows[("p1", "beta")]["hours"] == pytest.approx(1.0)
    assert data["total"]["sessions"] == 4
    by_model = report(capsys, "--by", "agent,model")
    assert {(r["agent"], r["model"]): r["llm_calls"] for r in by_model["rows"]} == {
        ("alpha", "gpt-4o-mini"): 2, ("beta", "gpt-4o-mini"): 2}
    assert by_model["total"]["sessions"] == 4
    assert main(["report", "--by", "day,project"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["day", "project", "sessions"]
    assert f"{D}  p2" in table


def test_week_and_month_buckets(week: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    assert bucket("week", "2026-01-01") == "2026-W01" and bucket("week", "2027-01-01") == "2026-W53"
    assert bucket("month", "2026-11-30") == "2026-11" and bucket("day", "") == "(none)"
    weeks = report(capsys, "--by", "week")
    expected: dict[str, int] = {}
    for _sid, day, *_rest in SESSIONS:
        year, number, _ = day.isocalendar()
        expected[f"{year}-W{number:02d}"] = expected.get(f"{year}-W{number:02d}", 0) + 1
    assert {r["group"]: r["sessions"] for r in weeks["rows"]} == expected
    months = report(capsys, "--by", "month,agent")
    assert sum(r["sessions"] for r in months["rows"]) == 4
    assert {r["month"] for r in months["rows"]} == {str(s[1])[:7] for s in SESSIONS}


def test_by_task_names_the_sessions_without_one(week: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    rows = {r["group"]: r for r in report(capsys, "--by", "task")["rows"]}
    assert {k: v["sessions"] for k, v in rows.items()} == {"t1": 2, "t2": 1, "(none)": 1}
    assert rows["t2"]["hours"] == pytest.approx(0.25)


def test_revenue_at_an_hourly_rate(week: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--by", "agent", "--hourly-rate", "120")
    rows = {r["group"]: r for r in data["rows"]}
    assert rows["alpha"]["time_revenue"] == pytest.approx(0.6 * 120)
    assert rows["beta"]["revenue"] == pytest.approx(1.25 * 120 + 20)  # beta logged both outcomes
    assert data["total"]["time_revenue"] == pytest.approx(1.85 * 120) and data["hourly_rate"] == 120
    assert data["total"]["revenue"] == pytest.approx(1.85 * 120 + 2 * 10)  # and the outcomes' 2 x 5.00 twice
    assert "time_revenue" not in report(capsys, "--by", "agent")["rows"][0]  # no rate, no revenue columns
    assert main(["report", "--by", "agent", "--hourly-rate", "120"]) == 0
    table = capsys.readouterr().out
    assert "revenue (USD)" in table.splitlines()[0] and "$222.00" in table and "$242.00" in table
    with pytest.raises(SystemExit):
        main(["report", "--hourly-rate", "-5"])


def outcomes(ledger: Spool) -> None:
    keito.configure(timezone=TZ)
    with keito.session(agent_id="alpha", project_id="p1", task_id="t1"):
        keito.log_outcome("ticket_resolved", quantity=3, unit_price=2.5)
        keito.log_outcome("ticket_resolved", unit_price=2.5, success=False)
        keito.log_outcome("refund_issued", quantity=2, unit_price=10)
    with keito.session(agent_id="beta", project_id="p2"):
        keito.log_outcome("ticket_resolved", quantity=1, unit_price=4)
        keito.log_outcome("call_summarised")  # no unit price: counted, not guessed
    assert keito.flush(10.0)


def test_outcomes_counted_and_priced_by_type(ledger: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    outcomes(ledger)
    data = report(capsys, "--by", "outcome")
    rows = {r["group"]: r for r in data["rows"]}
    assert rows["ticket_resolved"]["outcomes"] == 3 and rows["ticket_resolved"]["outcome_quantity"] == 5
    assert rows["ticket_resolved"]["outcome_successes"] == 2
    assert rows["ticket_resolved"]["outcome_revenue"] == pytest.approx(3 * 2.5 + 4)  # the failed one earns nothing
    assert rows["refund_issued"]["outcome_revenue"] == pytest.approx(20)
    assert rows["call_summarised"]["unpriced_outcomes"] == 1 and rows["call_summarised"]["outcome_revenue"] == 0
    assert data["total"]["outcome_revenue"] == pytest.approx(31.5) and data["total"]["outcomes"] == 5
    assert "hours" not in data["total"]
    by_project = report(capsys, "--by", "project,outcome")
    assert {(r["project"], r["outcome"]): r["outcomes"] for r in by_project["rows"]} == {
        ("p1", "refund_issued"): 1, ("p1", "ticket_resolved"): 2, ("p2", "call_summarised"): 1,
        ("p2", "ticket_resolved"): 1}
    agents = {r["group"]: r for r in report(capsys, "--by", "agent", "--hourly-rate", "100")["rows"]}
    assert agents["alpha"]["outcome_revenue"] == pytest.approx(27.5) and agents["alpha"]["outcomes"] == 3
    assert agents["alpha"]["revenue"] == pytest.approx(agents["alpha"]["time_revenue"] + 27.5)
    tasks = {r["group"]: r["outcomes"] for r in report(capsys, "--by", "task")["rows"]}
    assert tasks == {"t1": 3, "(none)": 2}
    assert main(["report", "--by", "outcome"]) == 0
    table = capsys.readouterr().out
    assert "$31.50 + 1 unpriced" in table and "ticket_resolved" in table
    assert report(capsys, "--until", str(TODAY - timedelta(days=1)), "--by", "outcome")["rows"] == []


def test_outcomes_of_an_open_session_count_with_it(ledger: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    keito.configure(timezone=TZ)
    run = keito.begin_run("chat", close="idle", agent_id="alpha")
    assert run is not None
    keito.log_outcome("lead_qualified", quantity=2, unit_price=7.5, session_id="chat")
    keito.log_outcome("lead_qualified", quantity=5, unit_price=7.5, success=False, session_id="chat")
    keito.end_run(run)
    rows = {r["group"]: r for r in report(capsys, "--by", "outcome")["rows"]}
    assert rows["lead_qualified"]["outcome_revenue"] == pytest.approx(15)
    assert (rows["lead_qualified"]["outcomes"], rows["lead_qualified"]["outcome_successes"]) == (2, 1)
    day = report(capsys, "--by", "day")
    assert day["total"]["open"] == 1 and day["total"]["outcomes"] == 2


def test_outcome_sums_survive_pruning(ledger: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    outcomes(ledger)
    before = report(capsys, "--by", "project,outcome")
    conn = ledger.connect()
    conn.execute("UPDATE records SET state = 'delivered', delivered_at = ?", (time.time(),))
    result = _prune.prune(ledger, 30, now=time.time() + 40 * 86_400)
    assert result.records > 0 and conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0
    assert report(capsys, "--by", "project,outcome") == before


def test_a_ledger_without_tasks_in_its_daily_sums_is_rebuilt_once(
        week: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    expected = report(capsys, "--by", "agent")
    conn = week.connect()
    sums = ", ".join(f"SUM({c}) AS {c}" for c in _daily._SUMS)
    conn.executescript(  # the first version's daily table: keyed by the local day started, no task
        "DROP TRIGGER daily_session; DROP TRIGGER daily_usage;"
        f" CREATE TABLE old AS SELECT spent_date, spent_date AS start_day, project_id, agent_id, model, {sums}"
        " FROM daily GROUP BY spent_date, project_id, agent_id, model;"
        " DROP TABLE daily; ALTER TABLE old RENAME TO daily;"
        " CREATE TRIGGER daily_session AFTER INSERT ON sessions BEGIN SELECT 1; END;"
        " CREATE TRIGGER daily_usage AFTER INSERT ON usage BEGIN SELECT 1; END;")
    assert not _daily._daily_current(conn)
    pruned = conn.execute("SELECT session_key FROM sessions WHERE session_id = 'first'").fetchone()[0]
    conn.execute("DELETE FROM usage WHERE session_key = ?", (pruned,))
    conn.execute("DELETE FROM sessions WHERE session_key = ?", (pruned,))
    _daily.ensure_schema(conn)  # what opening it with this version does
    assert _daily._daily_current(conn)
    assert report(capsys, "--by", "agent") == expected  # the pruned session's sums are kept
    tasks = {r["group"]: r["sessions"] for r in report(capsys, "--by", "task")["rows"]}
    assert tasks == {"t1": 1, "t2": 1, "(none)": 2}  # ... without its task
    _daily.ensure_schema(conn)  # and never twice
    assert report(capsys, "--by", "agent") == expected
    work("later", time.time() - 120, 1, task="t9")
    assert {r["group"] for r in report(capsys, "--by", "task")["rows"]} == {"t1", "t2", "t9", "(none)"}


@pytest.mark.parametrize("text", ["colour", "day,day", "model,outcome", "day,project,agent", ""])
def test_bad_groupings_are_a_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--by", text])
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err
    assert parse_by("project, agent") == ("project", "agent")
