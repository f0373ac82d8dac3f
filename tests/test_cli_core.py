"""The CLI: report, status, demo; bad arguments give a usage error, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument.cli import main
from keito_instrument.cli._report import since_arg


def make_sessions() -> None:
    keito.configure(project_id="p1")

    @keito.track_agent(agent_id="alpha")
    def alpha() -> None:
        keito.record_llm_call("gpt-4o", "openai", input_tokens=1000, output_tokens=100)
        keito.record_llm_call("claude-sonnet-4-5", "anthropic", input_tokens=2000, output_tokens=200)

    @keito.track_agent(agent_id="beta", project_id="p2")
    def beta() -> None:
        keito.record_llm_call("gpt-4o", "openai", input_tokens=500, output_tokens=50)

    alpha()
    alpha()
    beta()


def test_report_json_totals(capsys: pytest.CaptureFixture[str]) -> None:
    make_sessions()
    assert main(["report", "--format", "json", "--by", "agent"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_agent = {row["group"]: row for row in data["rows"]}
    assert by_agent["alpha"]["sessions"] == 2 and by_agent["alpha"]["input_tokens"] == 6000
    assert by_agent["beta"]["llm_calls"] == 1
    assert data["total"]["sessions"] == 3 and data["total"]["output_tokens"] == 650


def test_report_by_model_counts_each_session_once_in_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    make_sessions()
    assert main(["report", "--format", "json", "--by", "model"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["group"]: r["sessions"] for r in data["rows"]} == {"claude-sonnet-4-5": 2, "gpt-4o": 3}
    assert data["total"]["sessions"] == 3
    assert data["total"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in data["rows"]))


def test_report_csv_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    make_sessions()
    assert main(["report", "--format", "csv", "--by", "project"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["group"], r["sessions"]) for r in rows] == [("p1", "2"), ("p2", "1")]
    assert main(["report"]) == 0
    table = capsys.readouterr().out
    assert "TOTAL" in table and "sessions" in table


def test_report_since_filters(capsys: pytest.CaptureFixture[str]) -> None:
    make_sessions()
    assert main(["report", "--format", "json", "--since", "2999-01-01"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == []
    assert since_arg("7d") < since_arg("1d")


def test_status_counts_by_state(capsys: pytest.CaptureFixture[str]) -> None:
    make_sessions()
    assert main(["status", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["local"] == 6 and data["credentials"] is False


@pytest.mark.parametrize("argv", [["report", "--since", "yesterday-ish"], ["report", "--by", "colour"],
                                  ["nonsense"], ["status", "--errors", "x"]])
def test_bad_arguments_are_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_demo_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--tickets", "0"]) == 2
    assert "--tickets" in capsys.readouterr().err


def test_console_script_demo_runs_offline(tmp_path: Path) -> None:
    ledger = tmp_path / "demo.sqlite3"
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "KEITO_LEDGER": str(tmp_path / "real")}
    result = subprocess.run([sys.executable, "-m", "keito_instrument.cli", "--ledger", str(ledger), "demo",
                             "--step-seconds", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "TOTAL" in result.stdout and "claude-sonnet-4-5" in result.stdout
    status = subprocess.run([sys.executable, "-m", "keito_instrument.cli", "--ledger", str(ledger), "status",
                             "--format", "json"], capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(status.stdout)["counts"]["local"] == 9  # 3 sessions x (entry + expense + outcome)
    assert not (tmp_path / "real").exists()  # the real ledger is never touched


def test_demo_ignores_real_credentials_and_ledger(tmp_path: Path) -> None:
    real = tmp_path / "real.sqlite3"
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg"),
           "KEITO_LEDGER": str(real), "KEITO_API_KEY": "kto_real", "KEITO_ACCOUNT_ID": "cm_real",
           "KEITO_PROJECT_ID": "REAL-PROJECT", "KEITO_BASE_URL": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "keito_instrument.cli", "demo", "--tickets", "1",
                             "--step-seconds", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not real.exists()
    demo_ledgers = list((tmp_path / "xdg").rglob("demo-ledger.sqlite3"))
    assert len(demo_ledgers) == 1
    from keito_instrument._spool import Spool

    records = Spool(demo_ledgers[0]).records()
    assert {r["state"] for r in records} == {"local"}  # nothing queued for sending with the real key
    assert {r["project_id"] for r in records} == {"demo-project"}


def test_report_and_status_show_an_open_conversation_before_it_ends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_sessions()  # three ended sessions
    run = keito.begin_run("chat-42", close="idle", agent_id="alpha", project_id="p1")
    keito.record_llm_call("gpt-4o", "openai", input_tokens=700, output_tokens=70, session_id="chat-42")
    keito.end_run(run)  # the turn is over; the conversation stays open until idle
    assert keito.get_session("chat-42") is not None
    assert main(["report", "--format", "json", "--by", "agent"]) == 0
    data = json.loads(capsys.readouterr().out)
    alpha = {row["group"]: row for row in data["rows"]}["alpha"]
    assert (alpha["sessions"], alpha["open"]) == (3, 1)
    assert alpha["input_tokens"] == 6000 + 700 and alpha["llm_calls"] == 5
    assert data["total"]["open"] == 1 and data["total"]["sessions"] == 4
    assert main(["report", "--format", "json", "--by", "model"]) == 0
    by_model = {row["group"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert (by_model["gpt-4o"]["sessions"], by_model["gpt-4o"]["open"]) == (4, 1)
    assert by_model["gpt-4o"]["input_tokens"] == 1000 * 2 + 500 + 700
    assert main(["status", "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["open_sessions"]["count"] == 1 and status["open_sessions"]["cost_usd"] > 0
    assert status["counts"]["local"] == 6  # the open conversation has no records yet
    assert main(["status"]) == 0
    assert "open:        1 session(s) not yet billed" in capsys.readouterr().out
    keito.end_session("chat-42")
    assert keito.flush(5.0)
    assert main(["report", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["open"] == 0


def test_status_warns_when_a_day_of_sessions_exceeds_the_free_plan() -> None:
    from keito_instrument.cli._status import plan_check

    assert plan_check("session", 999)["warning"] is None
    warning = plan_check("session", 1_200)["warning"]
    assert warning is not None and "Free" in warning and "Pro" not in warning.split("limit")[0]
    assert "granularity='day'" in warning
    assert "Free and Pro" in (plan_check("day", 60_000)["warning"] or "")
    assert "granularity='day'" not in (plan_check("day", 60_000)["warning"] or "")
