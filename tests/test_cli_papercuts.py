"""The CLI as a newcomer meets it: money printed as money, a TOTAL that survives an unpriced
model, global flags after the subcommand, one clear line for a missing or damaged ledger, and a
demo whose ledger `report` can find."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument.cli import _report, main

IDS = {"project_id": "p", "task_id": "t", "expense_category_id": "c"}


def tiny_session() -> None:
    """gpt-4o-mini at $0.15 / $0.60 per million tokens: 100 in + 20 out = $0.000027."""
    keito.configure(**IDS)
    with keito.session(agent_id="tiny"):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100, output_tokens=20)
    assert keito.flush(5.0)


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "$0.00"), (12.5, "$12.50"), (1234.5, "$1,234.50"), (0.01, "$0.01"),
    (0.000027, "$0.000027"), (0.0182, "$0.0182"), (3.10000001, "$3.10000001"), (-0.5, "-$0.50"), (None, "-"),
])
def test_money_is_shown_to_the_cent_with_sub_cents_when_there_are_any(value: float | None, text: str) -> None:
    assert _report.money(value) == text


def test_csv_never_writes_an_exponent() -> None:
    assert _report.plain_number(2.7e-05) == "0.000027"
    assert _report.plain_number(0.0) == "0"
    assert _report.plain_number(3) == 3


def test_report_prints_a_sub_cent_cost_as_money(capsys: pytest.CaptureFixture[str]) -> None:
    tiny_session()
    assert main(["report", "--format", "csv", "--by", "agent"]) == 0
    out = capsys.readouterr().out
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert row["cost_usd"] == "0.000027" and "e-0" not in out
    assert main(["report", "--by", "agent"]) == 0
    table = capsys.readouterr().out
    assert "$0.000027" in table and "$0.0000 " not in table and "unknown" not in table


def test_total_keeps_the_known_cost_and_counts_the_unpriced_calls(capsys: pytest.CaptureFixture[str]) -> None:
    keito.configure(**IDS)
    with keito.session(agent_id="priced"):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100, output_tokens=20)
    with keito.session(agent_id="mixed"):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100, output_tokens=20)
        keito.record_llm_call("house-model-x", "acme", input_tokens=100, output_tokens=20)
        keito.record_llm_call("house-model-x", "acme", input_tokens=100, output_tokens=20)
    assert keito.flush(5.0)
    for by in ("agent", "model", "day"):
        assert main(["report", "--format", "json", "--by", by]) == 0
        total = json.loads(capsys.readouterr().out)["total"]
        assert total["cost_usd"] == pytest.approx(0.000054) and total["unpriced_calls"] == 2, by
    assert main(["report", "--by", "agent"]) == 0
    table = capsys.readouterr().out
    total_line = next(line for line in table.splitlines() if line.startswith("TOTAL"))
    assert "$0.000054 + 2 calls unpriced" in total_line and "unknown" not in table


@pytest.mark.parametrize("command", ["report", "status"])
def test_global_flags_work_after_the_subcommand(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.sqlite3"
    keito.configure(ledger_path=str(other))
    tiny_session()
    keito.shutdown(5.0)
    keito.configure(ledger_path=str(tmp_path / "default.sqlite3"))
    assert main([command, "--ledger", str(other), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    if command == "report":
        assert data["total"]["sessions"] == 1
    else:
        assert data["ledger"] == str(other) and data["counts"]["local"] == 2
    assert main(["--ledger", str(tmp_path / "nowhere.sqlite3"), command, "--ledger", str(other)]) == 0
    with pytest.raises(SystemExit) as done:
        main([command, "--version"])
    assert done.value.code == 0 and "keito-instrument" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["report", "status"])
def test_a_missing_ledger_is_one_clear_line_and_no_file(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.sqlite3"
    assert main([command, "--ledger", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "KEITO_LEDGER" in err
    assert not missing.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["report", "status"])
def test_a_damaged_ledger_is_one_clear_line_without_a_traceback(command: str, tmp_path: Path) -> None:
    damaged = tmp_path / "ledger.sqlite3"
    damaged.write_bytes(b"this is not a database" * 100)
    result = subprocess.run([sys.executable, "-m", "keito_instrument.cli", command, "--ledger", str(damaged)],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(damaged) in result.stderr and "move the file aside" in result.stderr
    assert damaged.read_bytes() == b"this is not a database" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite3"]


def test_report_after_the_demo_finds_the_demos_ledger(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keito_instrument.cli", *argv], capture_output=True,
                              text=True, timeout=120, env=env)

    demo = cli("demo", "--tickets", "2", "--step-seconds", "0")
    assert demo.returncode == 0, demo.stderr
    lines = [line.strip() for line in demo.stderr.splitlines()]
    command = next(line for line in lines if line.startswith("keito-instrument report"))
    plain = cli("report")
    assert plain.returncode == 1 and "demo" in plain.stderr and command.split(" --by")[0] in plain.stderr
    shown = cli(*command.split()[1:], "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["total"]["sessions"] == 2


ROOT = Path(__file__).resolve().parent.parent


def test_the_license_is_mit_and_ships_in_both_distributions() -> None:
    import tomllib

    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 keito-instrument contributors" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # hatchling puts license-files in the sdist and in the wheel's .dist-info/licenses/
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def test_the_demo_script_installs_only_the_core_and_says_so() -> None:
    script = (ROOT / "scripts" / "demo").read_text()
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not any("scripts/bootstrap" in line for line in commands) and "[all" not in script and "dev]" not in script
    assert "pip install --quiet --disable-pip-version-check -e . -c constraints.txt\n" in script
    assert script.count('say "') >= 3  # progress on stderr: venv, install, run


def test_each_demo_run_starts_from_a_fresh_demo_ledger(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    totals = []
    for _ in range(2):
        demo = subprocess.run([sys.executable, "-m", "keito_instrument.cli", "demo", "--tickets", "2",
                               "--step-seconds", "0"], capture_output=True, text=True, timeout=120, env=env)
        assert demo.returncode == 0, demo.stderr
        totals.append(next(line.split()[1] for line in demo.stdout.splitlines() if line.startswith("TOTAL")))
    assert totals == ["2", "2"]  # the second run does not fold the first run's journal again
